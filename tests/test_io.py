"""dgan.data.io: every bad input as one line naming the file, NIfTI round trips, atomic writes, and
the geometry helpers against world-coordinate oracles."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from dgan.data import io
from dgan.errors import InputError

# --- helpers ---------------------------------------------------------------------------------


def random_volume(shape=(6, 7, 8), seed=0):
    return np.random.default_rng(seed).uniform(0.1, 1.0, shape).astype(np.float32)


def write_nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
    return str(path)


def expect_input_error(path, problem_part, **kwargs):
    with pytest.raises(InputError) as caught:
        io.load_volume(path, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert problem_part in message, message
    assert "\n" not in message
    assert caught.value.path == str(path)
    return message


def world(affine, ijk):
    """World coordinates of voxel indices. ijk: (..., 3) -> (..., 3)."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


# --- loading: bad inputs ---------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "absent.nii.gz"
    assert expect_input_error(path, "file not found") == f"{path}: file not found"


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "scan.txt"
    path.write_text("hello")
    expect_input_error(path, "unsupported file type")


def test_folder_instead_of_file(tmp_path):
    path = tmp_path / "scan.nii"
    path.mkdir()
    expect_input_error(path, "is a folder")


def _truncated_gzip(path):
    write_nifti(path, random_volume((20, 20, 20)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(bytes(range(256)) * 10)


def _header_only(path):
    full = path.with_name("full.nii")
    write_nifti(full, random_volume((20, 20, 20)))
    path.write_bytes(full.read_bytes()[:400])


def _gzip_of_garbage(path):
    path.write_bytes(gzip.compress(b"not a nifti file at all" * 20))


@pytest.mark.parametrize(
    "name, make",
    [
        ("truncated.nii.gz", _truncated_gzip),
        ("garbage.nii", _garbage),
        ("garbage.nii.gz", _gzip_of_garbage),
        ("header_only.nii", _header_only),
        ("garbage.mgz", _garbage),
        ("garbage.npz", _garbage),
    ],
)
def test_corrupt_file(tmp_path, name, make):
    path = tmp_path / name
    make(path)
    expect_input_error(path, "cannot read the file")


@pytest.mark.parametrize(
    "shape, shown",
    [((8, 9), "(8, 9)"), ((8, 9, 10, 2), "(8, 9, 10, 2)"), ((4, 5, 6, 3, 2), "(4, 5, 6, 3, 2)")],
)
def test_not_3d_is_refused_with_its_shape(tmp_path, shape, shown):
    path = write_nifti(tmp_path / "bad.nii", random_volume(shape))
    message = expect_input_error(path, "expected a 3D volume")
    assert shown in message


def test_2d_npz_is_refused(tmp_path):
    path = tmp_path / "slice.npz"
    np.savez(path, vol=random_volume((8, 9)))
    expect_input_error(path, "expected a 3D volume, got shape (8, 9)")


def test_single_slice_is_refused(tmp_path):
    path = write_nifti(tmp_path / "slice.nii", random_volume((8, 9, 1)))
    expect_input_error(path, "single slice of shape (8, 9, 1)")


def test_trailing_singleton_axis_is_squeezed(tmp_path):
    array = random_volume((5, 6, 7, 1))
    path = write_nifti(tmp_path / "v.nii.gz", array)
    volume = io.load_volume(path)
    assert volume.shape == (5, 6, 7)
    np.testing.assert_array_equal(volume.array, array[..., 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(tmp_path, bad):
    array = random_volume()
    array[1, 2, 3] = bad
    array[2, 2, 2] = bad
    path = write_nifti(tmp_path / "v.nii", array)
    expect_input_error(path, "2 voxels are NaN or Inf")


@pytest.mark.parametrize("value, shown", [(0.0, "every voxel is 0"), (5.0, "every voxel is 5")])
def test_empty_image_is_refused(tmp_path, value, shown):
    path = write_nifti(tmp_path / "v.nii", np.full((5, 6, 7), value, np.float32))
    expect_input_error(path, f"the image is empty ({shown})")


def test_labels_with_non_integer_values_are_refused(tmp_path):
    labels = np.zeros((5, 6, 7), np.float32)
    labels[1:3, 1:3, 1:3] = 2.5
    path = write_nifti(tmp_path / "seg.nii.gz", labels)
    expect_input_error(path, "non-integer values (e.g. 2.5)", kind="labels")


def test_labels_without_a_label_are_refused(tmp_path):
    path = write_nifti(tmp_path / "seg.nii.gz", np.zeros((5, 6, 7), np.int16))
    expect_input_error(path, "no non-zero label", kind="labels")


def test_labels_load_as_int32(tmp_path):
    labels = np.zeros((5, 6, 7), np.float32)
    labels[1:3, 1:3, 1:3] = 41
    labels[0, 0, 0] = 2
    volume = io.load_volume(write_nifti(tmp_path / "seg.nii.gz", labels), kind="labels")
    assert volume.array.dtype == np.int32
    assert sorted(np.unique(volume.array)) == [0, 2, 41]


# --- loading: formats ------------------------------------------------------------------------


def test_mgz(tmp_path):
    array = random_volume()
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    path = tmp_path / "t1.mgz"
    nib.save(nib.MGHImage(array, affine), path)
    volume = io.load_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)  # MGH keeps float32: 2e-6 of 30
    assert volume.path == str(path)


def test_npz_keys_and_affine(tmp_path):
    array = random_volume()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    np.savez(tmp_path / "a.npz", vol=array, seg=np.ones_like(array), affine=affine)
    np.savez(tmp_path / "b.npz", anything=array)
    np.savez(tmp_path / "c.npz", x=array, y=array)

    a = io.load_volume(tmp_path / "a.npz")
    np.testing.assert_array_equal(a.array, array)
    np.testing.assert_array_equal(a.affine, affine)
    assert io.load_volume(tmp_path / "a.npz", kind="labels").array.max() == 1  # 'seg' first
    b = io.load_volume(tmp_path / "b.npz")
    np.testing.assert_array_equal(b.array, array)
    np.testing.assert_array_equal(b.affine, np.eye(4))  # no affine: 1 mm identity
    expect_input_error(tmp_path / "c.npz", "none is named 'vol'")


def test_npz_with_a_bad_affine(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, vol=random_volume(), affine=np.eye(3))
    expect_input_error(path, "finite 4x4 matrix")


# --- saving ----------------------------------------------------------------------------------

#: flips, a permutation and offsets that are exact float32 numbers
AFFINE = np.array(
    [[0.0, 0.0, -1.5, 90.25], [1.25, 0.0, 0.0, -126.5], [0.0, -2.0, 0.0, 72.125], [0, 0, 0, 1]]
)


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz"])
def test_save_load_round_trip_keeps_the_affine_exactly(tmp_path, name):
    array = random_volume()
    io.save_volume(tmp_path / name, array, AFFINE)
    volume = io.load_volume(tmp_path / name)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_array_equal(volume.affine, AFFINE)
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary file left


def test_save_a_flow_field_and_labels(tmp_path):
    flow = np.random.default_rng(0).normal(size=(4, 5, 6, 3)).astype(np.float32)
    io.save_volume(tmp_path / "flow.nii.gz", flow, AFFINE)
    image = nib.load(tmp_path / "flow.nii.gz")
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), flow)
    labels = np.arange(4 * 5 * 6, dtype=np.int64).reshape(4, 5, 6)
    io.save_volume(tmp_path / "seg.nii.gz", labels, AFFINE)
    np.testing.assert_array_equal(io.load_volume(tmp_path / "seg.nii.gz", "labels").array, labels)


def test_save_with_an_mgz_header(tmp_path):
    nib.save(nib.MGHImage(random_volume(), np.eye(4)), tmp_path / "in.mgz")
    volume = io.load_volume(tmp_path / "in.mgz")
    io.save_volume(tmp_path / "out.nii", volume.array * 2, volume.affine, header=volume.header)
    # float32 written and read back: exact
    np.testing.assert_allclose(io.load_volume(tmp_path / "out.nii").array, volume.array * 2)


def test_save_refuses_other_formats(tmp_path):
    with pytest.raises(InputError, match=r"out\.mgz: can only write NIfTI"):
        io.save_volume(tmp_path / "out.mgz", random_volume(), np.eye(4))


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz"])
def test_failed_save_leaves_the_existing_file_intact(tmp_path, monkeypatch, name):
    path = tmp_path / name
    io.save_volume(path, random_volume(seed=1), AFFINE)
    before = path.read_bytes()

    def broken_write(image, file_map=None, dtype=None):  # the disk fills after a few bytes
        holder = (file_map or image.file_map)["image"]
        holder.get_prepare_fileobj(mode="wb").write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib.Nifti1Image, "to_file_map", broken_write)
    with pytest.raises(OSError, match="disk full"):
        io.save_volume(path, random_volume(seed=2), AFFINE)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [name]


def test_a_nii_gz_is_the_nii_in_a_plain_gzip_stream_the_same_bytes_each_time(tmp_path):
    flow = np.zeros((6, 5, 4, 3), np.float32)  # background zeros and a random block
    flow[1:4, 1:4, 1:3] = np.random.default_rng(4).normal(size=(3, 3, 2, 3))
    written = {}
    for name in ("a.nii", "a.nii.gz", "b.nii.gz"):
        io.save_volume(tmp_path / name, flow, AFFINE, description="a flow",
                       intent=("vector", (), "dgan_flow_vox"))
        written[name] = (tmp_path / name).read_bytes()
    assert written["a.nii.gz"][:2] == b"\x1f\x8b"  # gzip's magic number
    assert gzip.decompress(written["a.nii.gz"]) == written["a.nii"]
    assert written["a.nii.gz"] == written["b.nii.gz"]
    np.testing.assert_array_equal(nib.load(tmp_path / "a.nii.gz").get_fdata(dtype=np.float32), flow)


def test_atomic_write_keeps_the_suffix_and_replaces(tmp_path):
    path = tmp_path / "sub" / "table.csv.gz"
    with io.atomic_write(path) as tmp:
        assert os.path.dirname(tmp) == str(path.parent)
        assert tmp.endswith(".csv.gz") and not os.path.exists(tmp)
        with open(tmp, "w") as f:
            f.write("new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["table.csv.gz"]


def test_atomic_write_of_a_folder(tmp_path):
    path = tmp_path / "export"
    path.mkdir()
    (path / "old.txt").write_text("old")
    with io.atomic_write(path) as tmp:
        os.mkdir(tmp)
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("new")
    assert os.listdir(path) == ["new.txt"]
    assert os.listdir(tmp_path) == ["export"]

    with pytest.raises(RuntimeError):
        with io.atomic_write(path) as tmp:
            os.mkdir(tmp)
            raise RuntimeError("export failed")
    assert os.listdir(path) == ["new.txt"]
    assert os.listdir(tmp_path) == ["export"]


# --- geometry --------------------------------------------------------------------------------


def test_voxel_spacing_of_a_rotated_affine():
    angle = 0.3
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 2.0, 3.0])
    np.testing.assert_allclose(io.voxel_spacing(affine), [1.5, 2.0, 3.0])  # float64: ~1e-16
    np.testing.assert_allclose(io.voxel_spacing(AFFINE), [1.25, 2.0, 1.5])


def test_to_canonical_keeps_every_voxel_at_its_world_position():
    array = random_volume((4, 5, 6))
    volume = io.Volume(array, AFFINE)  # voxel axes along +y, -z, -x
    canonical = io.to_canonical(volume)

    # RAS+: diagonal, positive
    linear = canonical.affine[:3, :3]
    np.testing.assert_array_equal(linear, np.diag(np.diag(linear)))
    assert np.all(np.diag(linear) > 0)
    assert canonical.shape == (6, 4, 5)
    # the same content at the same world coordinates
    ijk = np.stack(np.meshgrid(*map(np.arange, array.shape), indexing="ij"), -1).reshape(-1, 3)
    xyz = world(AFFINE, ijk)
    back = np.linalg.solve(canonical.affine, np.c_[xyz, np.ones(len(xyz))].T)[:3].T
    index = np.round(back).astype(int)
    np.testing.assert_allclose(back, index, atol=1e-9)  # float64 solve, indices < 10: ~1e-15
    np.testing.assert_array_equal(canonical.array[tuple(index.T)], array[tuple(ijk.T)])
    # already canonical: returned as it is
    assert io.to_canonical(canonical) is canonical


def linear_function(xyz):
    return 2.0 * xyz[..., 0] - xyz[..., 1] + 0.5 * xyz[..., 2] + 3.0


def test_resample_to_grid_is_exact_for_a_linear_function_of_world_coordinates():
    # source: 1.5 mm voxels, first axis flipped, shifted origin
    shape = (20, 18, 16)
    source_affine = np.diag([-1.5, 1.5, 1.5, 1.0])
    source_affine[:3, 3] = [14.0, -12.0, -10.0]
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(float)
    source = io.Volume(linear_function(world(source_affine, ijk)).astype(np.float32), source_affine)

    # target: 1 mm voxels, axes not flipped, inside the source's field of view
    target_affine = np.eye(4)
    target_affine[:3, 3] = [-14.0, -11.0, -9.0]
    target_shape = (25, 22, 19)
    out = io.resample_to_grid(source, target_affine, target_shape, order=1)

    assert out.shape == target_shape
    np.testing.assert_array_equal(out.affine, target_affine)
    t_ijk = np.stack(np.meshgrid(*map(np.arange, target_shape), indexing="ij"), -1).astype(float)
    expected = linear_function(world(target_affine, t_ijk))
    # the target voxels lie within the source, so trilinear interpolation is exact
    src = world(np.linalg.inv(source_affine), world(target_affine, t_ijk))
    inside = np.all((src >= 0) & (src <= np.array(shape) - 1), axis=-1)
    assert inside.mean() > 0.9
    # float32 source and result of values <= 100: <= 2 * 3.8e-6
    np.testing.assert_allclose(out.array[inside], expected[inside], rtol=1e-5, atol=1e-4)
    assert np.all(out.array[~inside] == 0)


def test_resample_to_grid_nearest_keeps_labels():
    labels = np.random.default_rng(0).integers(0, 5, (6, 7, 8)).astype(np.int32)
    volume = io.Volume(labels, np.eye(4))
    out = io.resample_to_grid(volume, np.diag([0.5, 0.5, 0.5, 1.0]), (12, 14, 16), order=0)
    assert out.array.dtype == np.int32
    np.testing.assert_array_equal(out.array[::2, ::2, ::2], labels)
    with pytest.raises(ValueError, match="order=0"):
        io.resample_to_grid(volume, np.eye(4), (6, 7, 8), order=1)


def test_resample_to_spacing_keeps_the_world_and_the_linear_function():
    affine = np.diag([1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [5.0, 40.0, -3.0]
    shape = (24, 30, 18)
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(float)
    volume = io.Volume(linear_function(world(affine, ijk)).astype(np.float32), affine)

    out = io.resample_to_spacing(volume, 2.0, antialias=False)
    assert out.shape == (12, 15, 9)
    np.testing.assert_allclose(io.voxel_spacing(out.affine), [2.0, 2.0, 2.0])  # float64: ~1e-16
    np.testing.assert_array_equal(np.sign(np.diag(out.affine)[:3]), [1, -1, 1])

    def fov_centre(v):
        return world(v.affine, (np.array(v.shape) - 1) / 2.0)

    np.testing.assert_allclose(fov_centre(out), fov_centre(volume))  # float64: ~1e-15
    o_ijk = np.stack(np.meshgrid(*map(np.arange, out.shape), indexing="ij"), -1).astype(float)
    # float32 source and result of values <= 100: <= 2 * 3.8e-6
    np.testing.assert_allclose(out.array, linear_function(world(out.affine, o_ijk)), rtol=1e-5,
                               atol=1e-4)
    # antialiasing smooths only where the function is not linear: the interior stays exact (but
    # for float32 rounding of values <= 100 through the filter's taps, ~1e-5)
    smooth = io.resample_to_spacing(volume, 2.0)
    np.testing.assert_allclose(smooth.array[2:-2, 2:-2, 2:-2], out.array[2:-2, 2:-2, 2:-2],
                               rtol=1e-4, atol=1e-3)


def test_crop_or_pad_is_centred_and_undone():
    array = random_volume((7, 10, 5))
    out, crop = io.crop_or_pad(array, (5, 12, 5))
    assert out.shape == (5, 12, 5)
    assert crop.offset == (1, -1, 0)
    np.testing.assert_array_equal(out[:, 1:11], array[1:6])
    assert np.all(out[:, 0] == 0) and np.all(out[:, 11] == 0)
    restored = crop.undo(out)
    np.testing.assert_array_equal(restored[1:6], array[1:6])
    assert np.all(restored[0] == 0) and np.all(restored[6] == 0)
    # the new affine puts out[i] where array[i + offset] was
    affine = crop.affine(AFFINE)
    # float64: ~1e-15
    np.testing.assert_allclose(world(affine, np.zeros(3)), world(AFFINE, np.array(crop.offset)))


def test_crop_or_pad_keeps_channels():
    flow = np.random.default_rng(0).normal(size=(4, 4, 4, 3))
    out, crop = io.crop_or_pad(flow, (6, 2, 4))
    assert out.shape == (6, 2, 4, 3)
    np.testing.assert_array_equal(out[1:5], flow[:, 1:3])


@pytest.mark.parametrize("multiple, expected", [(8, (8, 16, 8)), ((4, 2, 1), (8, 10, 5))])
def test_pad_to_multiple(multiple, expected):
    array = random_volume((7, 10, 5))
    padded, crop = io.pad_to_multiple(array, multiple)
    assert padded.shape == expected
    np.testing.assert_array_equal(padded[crop], array)
    # float64 sums of float32 values in [0.1, 1]: exact in any order (they need < 40 bits)
    assert padded.sum(dtype=np.float64) == array.sum(dtype=np.float64)


def test_normalize_intensity_uses_percentiles_of_the_foreground():
    array = np.zeros((10, 10, 12), np.float32)
    array.flat[:1001] = np.arange(1001)  # 1000 non-zero voxels: 1 .. 1000, one zero
    out = io.normalize_intensity(array, low=10, high=90)
    lo, hi = np.percentile(np.arange(1, 1001), [10, 90])
    # a float32 subtraction and division of values <= 1: <= 2 ulps, 1.2e-7
    np.testing.assert_allclose(out.flat[1:1001], np.clip((np.arange(1, 1001) - lo) / (hi - lo),
                                                         0, 1), rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.all(out.flat[1001:] == 0)
    # low=None: only the scale changes
    np.testing.assert_allclose(io.normalize_intensity(array, low=None, high=100), array / 1000)  # exact


def test_normalize_intensity_of_constant_arrays():
    assert not io.normalize_intensity(np.zeros((3, 3, 3))).any()
    mask = np.zeros((3, 3, 3))
    mask[1, 1, 1] = 7.0
    np.testing.assert_array_equal(io.normalize_intensity(mask), mask / 7.0)


def test_resample_onto_own_grid_keeps_every_voxel_for_random_affines():
    """Rounding in inv(A) @ A must not push border voxels 'outside' (they used to become 0)."""
    from dgan.data.io import Volume, resample_to_grid

    rng = np.random.default_rng(7)
    array = rng.random((9, 8, 7)).astype(np.float32) + 1.0
    for _ in range(30):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        affine = np.eye(4)
        affine[:3, :3] = q * rng.uniform(0.7, 2.5, 3)
        affine[:3, 3] = rng.uniform(-100, 100, 3)
        out = resample_to_grid(Volume(array, affine), affine, array.shape).array
        # the voxel centres themselves, to float64 rounding of inv(A) @ A (~1e-13 voxel)
        np.testing.assert_allclose(out, array, atol=1e-4)
