"""The real-scan benchmark's cases (dgan.bench.real_scans): the known fields are as long as they
say in millimetres on any grid, the variants keep every voxel where the world has it, the cases
are what the benchmark scores, and the corrected header is used when the data are there."""

import os

import numpy as np
import pytest

from dgan.bench import real_scans as rs
from dgan.data import io as dio
from dgan.data.io import Volume
from dgan.errors import InputError

#: An oblique, anisotropic grid: 1.2 x 1.5 x 2.5 mm voxels, turned 20 degrees about z.
ANGLE = np.deg2rad(20.0)
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0],
                     [0, 0, 1]])
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = ROTATION @ np.diag([1.2, 1.5, 2.5])
OBLIQUE[:3, 3] = (-20.0, 5.0, 3.0)
SHAPE = (24, 20, 12)
DATA = os.environ.get("DGAN_REAL_SCANS", os.path.expanduser("~/realscans"))


def in_mm(flow, affine):
    """A field in voxels of the grid as world millimetres: the columns of the affine."""
    return flow.astype(np.float64) @ np.asarray(affine, np.float64)[:3, :3].T


def test_smooth_field_is_as_long_as_asked_in_millimetres():
    flow = rs.smooth_field_mm(SHAPE, OBLIQUE, 4.0, seed=3)
    lengths = np.linalg.norm(in_mm(flow, OBLIQUE), axis=-1)
    # float32 voxels times a float64 affine: relative round-off ~1e-7 of 4 mm
    assert lengths.max() == pytest.approx(4.0, abs=1e-5)
    assert lengths.min() < 3.9  # a field, not one shift


def test_shift_field_reaches_its_bound_along_each_world_axis_inside_the_region():
    region = np.zeros(SHAPE, bool)
    region[4:20, 3:17, 2:10] = True
    flow = rs.shift_field_mm(SHAPE, OBLIQUE, region, 8.0, seed=5)
    components = in_mm(flow, OBLIQUE)[region]
    np.testing.assert_allclose(np.abs(components).max(0), 8.0, atol=1e-4)
    # mostly one shift: each axis keeps one sign over the region, by construction of the
    # two-standard-deviation offset (the noise would have to reach 2 sigma against it)
    share = np.mean(np.sign(components) == np.sign(components.mean(0)), axis=0)
    assert np.all(share > 0.9)
    # the same seed, the same field
    np.testing.assert_array_equal(flow, rs.shift_field_mm(SHAPE, OBLIQUE, region, 8.0, seed=5))


def world_of(volume):
    """The world (RAS mm) position of every voxel, (X, Y, Z, 3)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij"), -1)
    return grid @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def ramp_volume():
    """Intensity = the world x + 2 y + 3 z coordinate at each voxel: resampling it anywhere reads
    the world position, so a variant that moves voxels shows as a wrong value."""
    grid = Volume(np.zeros(SHAPE, np.float32), OBLIQUE)
    return grid.replace(array=(world_of(grid) @ [1.0, 2.0, 3.0]).astype(np.float32))


def test_slab_and_other_grid_keep_the_world_where_it_was():
    volume = ramp_volume()
    slab = rs.slab(volume, 10.0)
    assert rs.slice_axis(volume) == 2 and slab.shape == (24, 20, 4)  # 10 mm of 2.5 mm slices
    np.testing.assert_allclose(slab.array, world_of(slab) @ [1.0, 2.0, 3.0], atol=1e-3)
    other = rs.other_grid(volume, 1.7)
    assert other.shape[::-1] == dio.resample_to_spacing(volume, 1.7).shape
    inner = (slice(2, -2),) * 3  # linear interpolation of a linear ramp is exact inside
    np.testing.assert_allclose(other.array[inner], (world_of(other) @ [1.0, 2.0, 3.0])[inner],
                               atol=1e-3)


def test_cases_score_the_identity_aligned_and_the_field_when_deformed(tmp_path):
    volume = ramp_volume()
    writer = rs.CaseWriter(str(tmp_path))
    cases = writer.cases("ramp", volume, volume, seed=1, deformations=(4.0,), shifts=(8.0,))
    assert [c.name for c in cases] == ["ramp, aligned", "ramp, deformed 4 mm",
                                       "ramp, shifted up to 8 mm per axis"]
    assert [c.kind for c in cases] == ["aligned", "deformed", "deformed"]
    assert not cases[0].truth.any()
    for case in cases[1:]:
        written = dio.load_volume(case.fixed)
        np.testing.assert_allclose(written.array, rs.deform(volume, case.truth).array, atol=1e-4)
        # the identity's error is the field's own mean length over the region
        record = rs.before(case, written.affine)
        expected = np.linalg.norm(in_mm(case.truth, OBLIQUE), axis=-1)[case.region].mean()
        assert record["epe_mm"] == pytest.approx(expected, rel=1e-5)


def test_build_cases_refuses_a_folder_without_datasets(tmp_path):
    with pytest.raises(InputError, match="no real-scan dataset found"):
        rs.build_cases(str(tmp_path), str(tmp_path / "cases"), progress=lambda text: None)


@pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "chris_rorden_NC", "chris_PD.nii.gz")),
                    reason=f"chris_rorden_NC not under {DATA} (DGAN_REAL_SCANS; "
                           "docs/benchmarks.md says where to get it)")
def test_the_pd_is_read_through_its_corrected_header(tmp_path):
    head = os.path.join(DATA, "chris_rorden_NC")
    original = dio.load_volume(os.path.join(head, "chris_PD.nii.gz"))
    moving_path = rs.CaseWriter(str(tmp_path)).save("pd", original)  # as written, for reference
    cases = [c for c in rs.build_cases(DATA, str(tmp_path / "cases"), progress=lambda t: None)
             if "PD" in c.name]
    written = dio.load_volume(cases[0].moving)
    np.testing.assert_array_equal(written.array, dio.load_volume(moving_path).array)
    np.testing.assert_allclose(written.affine,
                               np.linalg.solve(rs.PD_HEADER_CORRECTION, original.affine),
                               atol=1e-4)
