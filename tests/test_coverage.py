"""Coverage and masks (dgan.core.coverage), the choice of the start field
(dgan.registration.scoring), and their use by registration: an aligned pair with different coverage
stays where it is."""

import dataclasses

import numpy as np
from scipy import ndimage
import pytest

from dgan.cli.register import main
from dgan.compat import tf
from dgan.core import coverage, losses, matching
from dgan.core.spatial import grid_axes
from dgan.data import io as dio
from dgan.data.io import Volume
from dgan.errors import InputError
from dgan.registration import scoring
from dgan.registration.settings import XLA_MIN_VOXELS
from dgan.registration.registrar import Registrar
from tests.test_affine import AFFINE, FIXED_CONTRAST, MOVING_CONTRAST, SHAPE, phantom_labels, \
    rendered


def slab_of(volume, start, stop):
    """The voxels start:stop of the last axis, with the affine that keeps them in place."""
    shift = np.eye(4)
    shift[2, 3] = start
    return volume.replace(array=np.ascontiguousarray(volume.array[..., start:stop]),
                          affine=volume.affine @ shift)


@pytest.fixture(scope="module")
def pair():
    labels = phantom_labels()
    fixed = Volume(rendered(labels, FIXED_CONTRAST), AFFINE, path="fixed.nii.gz")
    moving = Volume(rendered(labels, MOVING_CONTRAST), AFFINE, path="moving.nii.gz")
    return moving, fixed


# --- coverage ------------------------------------------------------------------------------------


def test_grid_coverage_is_the_box_the_scan_fills_on_another_grid(pair):
    moving, fixed = pair
    part = slab_of(moving, 10, 22)  # voxels 10..21 of the last axis
    covered = coverage.grid_coverage(part, fixed.affine, fixed.shape)
    expected = np.zeros(SHAPE, bool)
    expected[..., 10:22] = True
    np.testing.assert_array_equal(covered, expected)
    # a world shift of 3 mm (1.5 voxels) moves the box: centres 10..21 +- 0.5 voxel shifted by 1.5
    shift = np.eye(4)
    shift[2, 3] = 3.0  # through this transform fixed point x reads moving point x + 3 mm
    moved = coverage.grid_coverage(part, fixed.affine, fixed.shape, transform=shift)
    expected = np.zeros(SHAPE, bool)
    expected[..., 8:21] = True  # p + 1.5 in [9.5, 21.5] (the border included): p = 8 .. 20
    np.testing.assert_array_equal(moved, expected)


def test_shrink_keeps_whole_blocks_and_erodes():
    mask = np.zeros((8, 8, 8), bool)
    mask[:, :, :5] = True
    np.testing.assert_array_equal(coverage.shrink(mask, 2, 0)[0, 0], [True, True, False, False])
    eroded = coverage.shrink(np.ones((6, 6, 6), bool), 1, 1)
    assert eroded.all()  # the grid's own border is not an edge of the data (border_value 1)
    mask = np.ones((6, 6, 6), bool)
    mask[..., 4:] = False
    np.testing.assert_array_equal(coverage.shrink(mask, 1, 1)[0, 0], [1, 1, 1, 0, 0, 0])


def test_weights_average_over_the_mask_and_refuse_an_empty_one():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2] = True
    weight = coverage.weights(mask)
    values = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(np.mean(weight * values), values[mask].mean(), rtol=1e-6)
    assert coverage.weights(np.ones((4, 4, 4), bool)) is None
    with pytest.raises(InputError, match="overlap leaves no voxel"):
        coverage.weights(np.zeros((4, 4, 4), bool))


def test_weighted_local_gradient_agreement_is_the_mean_over_the_mask():
    rng = np.random.default_rng(1)
    fixed = tf.constant(rng.random((1, 10, 10, 10, 1)), tf.float32)
    moving = tf.constant(rng.random((1, 10, 10, 10, 1)), tf.float32)
    direction = losses.local_gradient_direction(fixed, 3)
    mask = np.zeros((10, 10, 10), bool)
    mask[2:7, 1:9, 3:8] = True
    plain = losses.local_gradient_direction(moving, 3)
    per_voxel = np.abs(np.sum(direction.numpy() * plain.numpy(), axis=-1))[0]
    weighted = losses.local_gradient_agreement(direction, moving, 3,
                                               weight=coverage.weights(mask)[None])
    # float32 sums of 1000 terms of size <= 2.5: relative error ~1e-6
    np.testing.assert_allclose(float(weighted[0]), per_voxel[mask].mean(), rtol=1e-5)


def test_matching_cost_with_every_voxel_valid_is_the_plain_cost_inside():
    rng = np.random.default_rng(2)
    fixed = tf.constant(rng.random((1, 12, 12, 12, 3)), tf.float32)
    moving = tf.constant(rng.random((1, 12, 12, 12, 3)), tf.float32)
    plain = matching.matching_cost(fixed, moving, 1, 3, 1)
    valid = matching.matching_cost(fixed, moving, 1, 3, 1, valid=tf.ones((1, 12, 12, 12, 1)))
    # away from the faces (box radius 1 + displacement 1) every pair is valid: the same mean
    np.testing.assert_allclose(valid.numpy()[:, 2:-2, 2:-2, 2:-2], plain.numpy()[:, 2:-2, 2:-2, 2:-2],
                               rtol=1e-5)


# --- masks ---------------------------------------------------------------------------------------


def test_bad_masks_are_refused_in_one_line_naming_the_file(tmp_path, pair):
    moving, fixed = pair
    mask = np.ones(SHAPE, np.uint8)
    cases = {
        "grid.nii.gz": (mask[:-2], AFFINE, "must lie on the scan's grid"),
        "shifted.nii.gz": (mask, AFFINE + np.pad([[5.0]], ((0, 3), (3, 0))), "affine differs"),
        "binary.nii.gz": (mask * 2, AFFINE, "not binary"),
        "empty.nii.gz": (mask * 0, AFFINE, "is empty"),
    }
    for name, (array, affine, message) in cases.items():
        path = str(tmp_path / name)
        dio.save_volume(path, array, affine)
        with pytest.raises(InputError, match=message) as error:
            coverage.load_mask(path, fixed, "fixed mask")
        assert str(error.value).startswith(path) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="not binary"):
        coverage.check_mask(np.full(SHAPE, 0.5), fixed)


def test_the_overlap_honours_both_masks(pair):
    moving, fixed = pair
    moving_mask = np.zeros(SHAPE, bool)
    moving_mask[:20] = True
    fixed_mask = np.zeros(SHAPE, bool)
    fixed_mask[:, 5:] = True
    part = slab_of(moving, 4, 30)
    region = coverage.overlap(part, fixed, None, Volume(moving_mask[..., 4:30], part.affine),
                              Volume(fixed_mask, AFFINE))
    expected = np.zeros(SHAPE, bool)
    expected[:20, 5:, 4:30] = True
    np.testing.assert_array_equal(region, expected)


def test_the_command_line_refuses_a_mask_on_another_grid(tmp_path, pair, capsys):
    moving, fixed = pair
    paths = {name: str(tmp_path / f"{name}.nii.gz") for name in ("moving", "fixed", "mask")}
    dio.save_volume(paths["moving"], moving.array, AFFINE)
    dio.save_volume(paths["fixed"], fixed.array, AFFINE)
    dio.save_volume(paths["mask"], np.ones((8, 8, 8), np.uint8), AFFINE)
    status = main(["--moving", paths["moving"], "--fixed", paths["fixed"],
                   "--out-moved", str(tmp_path / "m.nii.gz"), "--out-flow", str(tmp_path / "f.nii.gz"),
                   "--fixed-mask", paths["mask"]])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {paths['mask']}: the fixed mask has shape") and err.count("\n") == 1
    assert not (tmp_path / "m.nii.gz").exists()


# --- the start field -----------------------------------------------------------------------------


def test_choose_needs_a_margin_over_the_identity_and_rejects_folding(pair):
    moving, fixed = pair
    m, f = dio.normalize_intensity(moving.array), dio.normalize_intensity(fixed.array)
    zero = np.zeros(SHAPE + (3,), np.float32)
    choice, flow = scoring.choose(m, f, [("identity", None), ("same", zero)])
    assert choice.name == "identity" and flow is None  # an equal score is no gain
    shifted = np.roll(m, 3, axis=0)  # the moving scan 3 voxels off: undoing it scores higher
    undo = np.zeros(SHAPE + (3,), np.float32)
    undo[..., 0] = 3.0
    choice, flow = scoring.choose(shifted, f, [("identity", None), ("undo", undo)])
    assert choice.name == "undo" and flow is undo
    assert choice.scores["undo"] >= choice.scores["identity"] + scoring.MARGIN
    folding = undo.copy()
    folding[..., 0] = -2.0 * np.arange(SHAPE[0])[:, None, None]  # d phi_x / dx = -2: det -1
    choice, _ = scoring.choose(shifted, f, [("identity", None), ("folds", folding)])
    assert choice.name == "identity" and choice.folding["folds"] > scoring.MAX_FOLDING
    # of two eligible fields, the later (T) is kept unless the earlier beats it by the margin
    choice, _ = scoring.choose(shifted, f, [("identity", None), ("matching", undo), ("T", undo)])
    assert choice.name == "T"


def test_the_score_on_a_large_grid_is_the_numpy_reference(rng):
    """From XLA_MIN_VOXELS voxels the score is one program compiled by XLA: L_LG of the
    identity, weighted, equals the NumPy reference's; a field's score equals the op-by-op one."""
    from numpy_reference import np_direction

    shape = (48, 48, 32)
    assert np.prod(shape) >= XLA_MIN_VOXELS
    moving, fixed = (ndimage.gaussian_filter(rng.random(shape), 1.5) for _ in range(2))
    weight = np.ones(shape)
    weight[:, :, 20:] = 0.0  # outside the overlap
    weight /= weight.mean()
    agreement = np.abs(np.sum(np_direction(moving, scoring.SCORE_WINDOW)[0]
                              * np_direction(fixed, scoring.SCORE_WINDOW)[0], axis=-1))
    # float32 against float64: a voxel's |n . n| within ~5e-5 (tests/test_losses.py), the
    # weighted mean of 73 728 of them far closer
    assert scoring.lg_score(moving, fixed, None, weight) == pytest.approx(
        np.mean(agreement * weight), abs=1e-5)
    flow = np.zeros(shape + (3,), np.float32)
    flow[...] = (1.5, -0.25, 0.5)
    op_by_op = float(scoring._score(*(tf.constant(np.asarray(a, np.float32)[None]) for a in
                                      (moving, fixed, flow, weight)), grid_axes(shape)))
    # the same arithmetic fused in another order: float32 round-off of a mean of terms <= 1
    assert scoring.lg_score(moving, fixed, flow, weight) == pytest.approx(op_by_op, abs=1e-5)
    assert abs(op_by_op - scoring.lg_score(moving, fixed, None, weight)) > 1e-3  # it moved


def test_t_is_not_followed_where_the_matching_it_builds_on_folds(pair):
    """T refines the matching's field: when the matching folds (inputs unlike T's training data),
    T's field is not followed even though it scores best and does not fold itself."""
    moving, fixed = pair
    m, f = dio.normalize_intensity(moving.array), dio.normalize_intensity(fixed.array)
    shifted = np.roll(m, 3, axis=0)
    undo = np.zeros(SHAPE + (3,), np.float32)
    undo[..., 0] = 3.0
    folding = undo.copy()
    folding[..., 0] = -2.0 * np.arange(SHAPE[0])[:, None, None]
    candidates = [("identity", None), ("matching", folding), ("T", undo)]
    choice, flow = scoring.choose(shifted, f, candidates, builds_on={"T": "matching"})
    assert choice.name == "identity" and flow is None
    assert choice.scores["T"] >= choice.scores["identity"] + scoring.MARGIN  # it would have won
    assert choice.builds_on == {"T": "matching"}
    assert "T " in choice.describe() and "builds on the matching, which folds" in choice.describe()
    # the same T with a matching that holds is followed
    choice, flow = scoring.choose(shifted, f, [("identity", None), ("matching", undo), ("T", undo)],
                                  builds_on={"T": "matching"})
    assert choice.name == "T" and flow is undo and choice.builds_on == {}


def test_an_aligned_slab_stays_where_it_is(pair):
    """A moving slab that covers a third of the fixed grid, aligned by its header: registration
    without a model (matching, refinement, the affine stage on auto) must leave it in place: the
    edge of the slab, where the resampled moving scan drops to 0, must not pull the field."""
    moving, fixed = pair
    part = slab_of(moving, 11, 22)
    registrar = Registrar(None, affine="auto")
    result = registrar.register_volumes(part, fixed)
    region = coverage.grid_coverage(part, fixed.affine, fixed.shape)
    moved = coverage.mean_displacement_mm(result.flow, fixed.affine, region)
    # 0.5 mm = a quarter of a 2 mm voxel: before the coverage masks the slab's edges pulled
    # the field by millimetres
    assert moved < 0.5
    np.testing.assert_array_equal(result.transform, np.eye(4))


def test_refinement_from_the_identity_is_cautious_unless_told():
    """start="auto" with no start field found: refinement on the finest level alone, with
    CAUTIOUS_STEPS iterations of step CAUTIOUS_LEARNING_RATE and alpha CAUTIOUS_ALPHA, the
    windows and noise scale as configured; after a found start, or with start="identity"
    (refinement alone, asked for), or cautious=False, the settings as given."""
    from dgan.cli import register as cli
    from dgan.registration.settings import (CAUTIOUS_ALPHA, CAUTIOUS_LEARNING_RATE,
                                            CAUTIOUS_STEPS, RefineConfig)

    config = RefineConfig(steps=25, alpha=4.0, levels=(4, 2, 1), lg_window=5, lg_noise=2.0)
    identity, matching = scoring.Choice("identity", {}), scoring.Choice("matching", {})
    registrar = Registrar(None, refine_config=config)
    cautious = registrar.refinement_from(identity)
    assert (cautious.alpha, cautious.steps, cautious.learning_rate, cautious.levels) == \
        (CAUTIOUS_ALPHA, CAUTIOUS_STEPS, CAUTIOUS_LEARNING_RATE, (1,))
    assert (cautious.lg_window, cautious.lg_noise) == (5, 2.0)
    assert Registrar(None, refine_config=RefineConfig(levels=(4, 2))).refinement_from(
        identity).levels == (2,)
    # after the matching: the smoothness term on phi (matching_refinement)
    assert registrar.refinement_from(matching) == \
        dataclasses.replace(registrar.refine_config, smooth="flow")
    assert Registrar(None, refine_config=config, start="identity").refinement_from(identity) \
        == registrar.refine_config
    assert Registrar(None, refine_config=config, cautious=False).refinement_from(identity) \
        == registrar.refine_config
    already = Registrar(None, refine_config=cautious)
    assert already.refinement_from(identity) == cautious
    # dgan-register: cautious by default, as told when any refinement option is given
    base = ["--moving", "m.nii.gz", "--fixed", "f.nii.gz", "--out-moved", "o.nii.gz",
            "--out-flow", "w.nii.gz"]
    for extra, want in (([], True), (["--refine-alpha", "1"], False),
                        (["--refine-steps", "25"], False), (["--refine-levels", "2", "1"], False)):
        assert cli._registrar(cli._parser().parse_args(base + extra)).cautious is want, extra


def test_the_cautious_level_is_the_finest_whose_grid_fits_the_voxel_budget():
    """CAUTIOUS_MAX_VOXELS bounds the cautious refinement's one level: the finest level, halved
    (ceil) until its grid holds at most that many voxels; the registrar passes the fixed grid."""
    from dgan.registration.settings import CAUTIOUS_MAX_VOXELS, RefineConfig, cautious_level

    assert CAUTIOUS_MAX_VOXELS == 2**22
    config = RefineConfig(levels=(2, 1))
    assert cautious_level(config) == 1  # no shape: the finest
    assert cautious_level(config, (256, 128, 128)) == 1  # exactly 2**22 voxels
    assert cautious_level(config, (257, 128, 128)) == 2  # one more plane: 129 x 64 x 64 at 1/2
    assert cautious_level(config, (188, 256, 190)) == 2  # a 0.88 mm whole head, 9.1 million
    assert cautious_level(config, (512, 512, 512)) == 4
    assert cautious_level(RefineConfig(levels=(4, 2)), (100, 100, 100)) == 2  # its own finest
    identity = scoring.Choice("identity", {})
    registrar = Registrar(None, refine_config=config)
    assert registrar.refinement_from(identity, (257, 128, 128)).levels == (2,)
    assert registrar.refinement_from(identity, (64, 64, 64)).levels == (1,)


def test_without_a_model_refinement_starts_at_half_resolution_with_fewer_iterations():
    """No model: refinement on NO_MODEL_LEVELS with NO_MODEL_REFINE_STEPS each (the block
    matching searched the coarse scales), the rest RefineConfig's defaults; a model folder's own
    settings, and a refinement option of dgan-register, come first."""
    from dgan.cli import register as cli
    from dgan.registration.registrar import model_refinement
    from dgan.registration.settings import (NO_MODEL_LEVELS, NO_MODEL_REFINE_STEPS,
                                            RefineConfig)

    assert NO_MODEL_LEVELS == (2, 1) and NO_MODEL_REFINE_STEPS == 15
    want = dataclasses.replace(RefineConfig(), levels=NO_MODEL_LEVELS,
                               steps=NO_MODEL_REFINE_STEPS)
    assert model_refinement(None) == want and Registrar(None).refine_config == want
    base = ["--moving", "m.nii.gz", "--fixed", "f.nii.gz", "--out-moved", "o.nii.gz",
            "--out-flow", "w.nii.gz"]
    assert cli._registrar(cli._parser().parse_args(base)).refine_config == want
    told = cli._registrar(cli._parser().parse_args(
        base + ["--refine-steps", "25", "--refine-levels", "4", "2", "1"])).refine_config
    assert (told.steps, told.levels) == (25, (4, 2, 1))


def test_an_aligned_pair_is_refined_cautiously(pair, monkeypatch):
    """End to end: on a pair its headers align (the moving scan in another contrast), no start
    field is found and refinement runs with the cautious settings, and says so."""
    from dgan.registration.settings import CAUTIOUS_LEARNING_RATE, CAUTIOUS_STEPS

    moving, fixed = pair
    seen = []
    original = Registrar.refine_flow

    def spy(self, moving, fixed, flow, translated, mask=None, config=None, rendering=None,
            scaled=False):
        seen.append(config)
        return original(self, moving, fixed, flow, translated, mask, config, rendering, scaled)

    monkeypatch.setattr(Registrar, "refine_flow", spy)
    said = []
    result = Registrar(None, affine="off", progress=said.append).register_volumes(moving, fixed)
    assert any(line.startswith("start: identity") for line in said)
    assert (seen[0].steps, seen[0].learning_rate) == (CAUTIOUS_STEPS, CAUTIOUS_LEARNING_RATE)
    assert len(seen[0].levels) == 1
    assert any("cautious from the identity" in line for line in said)
    assert np.abs(result.flow).max() < 0.5  # voxels: left where it is


def test_refinement_must_gain_from_the_identity_and_not_lose_after_a_found_field():
    """The L_LG check after refinement: from the identity it must gain MARGIN (an aligned pair's
    refinement fits noise); after the matching's or T's field it must only not lose."""
    from dgan.registration.registrar import refinement_margin

    assert refinement_margin(scoring.Choice("identity", {})) == scoring.MARGIN > 0
    assert refinement_margin(scoring.Choice("matching", {})) == 0.0
    assert refinement_margin(scoring.Choice("T", {})) == 0.0
