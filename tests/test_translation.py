"""The training-free translation h(F) = E[R | F(phi)] (dgan.registration.translation)."""

import dataclasses

import numpy as np
import pytest

from dgan.data import synth
from dgan.registration import translation

LEVELS = np.array([0.2, 0.5, 0.8], np.float32)
RENDERED = np.array([0.9, 0.1, 0.6], np.float32)  # not monotone: T1 against T2


def rendered(moving, fixed, flow=None, mask=None):
    """h(F): the table of translation.rendering applied to the moving image."""
    return translation.rendering(moving, fixed, flow, mask)(moving)


def blocks(shape=(24, 20, 16), seed=0):
    """A moving image of three intensity levels in 4-voxel blocks, and its level indices."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 3, size=tuple(-(-n // 4) for n in shape))
    index = np.kron(coarse, np.ones((4, 4, 4), int))[:shape[0], :shape[1], :shape[2]]
    return LEVELS[index], index


def test_a_function_of_intensity_is_recovered_exactly():
    moving, index = blocks()
    fixed = RENDERED[index]
    out = rendered(moving, fixed)
    # each level fills one bin: its mean is the level itself, its fixed mean the rendered value
    np.testing.assert_allclose(out, fixed, atol=1e-6)


def test_the_histogram_is_read_at_the_given_alignment():
    moving, index = blocks()
    flow = np.zeros(moving.shape + (3,), np.float32)
    flow[..., 0] = 2.0  # moved(p) = moving(p + 2 e_x): the fixed scan sees the blocks shifted
    fixed = np.interp(synth.warp(moving, flow), LEVELS, RENDERED)
    aligned = rendered(moving, fixed, flow)
    np.testing.assert_allclose(aligned, RENDERED[index], atol=1e-6)
    # read at the identity, half a block is misaligned: the levels' means mix
    misaligned = rendered(moving, fixed)
    assert np.max(np.abs(misaligned - RENDERED[index])) > 0.1


def test_a_smooth_function_is_recovered_within_its_bins():
    ramp = np.linspace(0.1, 1.0, 320, dtype=np.float32)  # 5 values a bin, 80 voxels
    moving = np.broadcast_to(ramp[:, None, None], (320, 4, 4)).copy()
    out = rendered(moving, moving**2)
    width = 0.9 / translation.DEFAULT_BINS
    error = np.abs(out - moving**2)
    # between the outermost bins' means: the chord error of x^2 between bin means <= width^2 / 4,
    # plus a bin's mean of x^2 against the square of its mean x (its variance) <= width^2 / 4
    inner = (moving > 0.1 + width) & (moving < 1.0 - width)
    assert np.max(error[inner]) <= width**2 / 2 + 1e-6
    # beyond them h is constant: off by at most the slope (2) times a bin's width
    assert np.max(error) <= 2 * width


def test_only_the_mask_is_read():
    moving, index = blocks()
    fixed = RENDERED[index]
    mask = np.zeros(moving.shape, bool)
    mask[:, :, :8] = True
    garbage = fixed.copy()
    garbage[~mask] = np.random.default_rng(1).uniform(0, 1, np.count_nonzero(~mask))
    out = rendered(moving, garbage, mask=mask)
    np.testing.assert_allclose(out, fixed, atol=1e-6)


def test_where_both_scans_are_zero_is_left_out():
    moving, index = blocks()
    fixed = RENDERED[index]
    moving[:8], fixed[:8] = 0.0, 0.0  # a skull-stripped background
    out = rendered(moving, fixed)
    np.testing.assert_allclose(out[8:], fixed[8:], atol=1e-6)


@pytest.mark.parametrize("moving", [np.full((8, 8, 8), 0.5, np.float32),
                                    np.zeros((8, 8, 8), np.float32)])
def test_no_function_to_read_gives_none(moving):
    fixed = np.random.default_rng(0).uniform(0, 1, moving.shape).astype(np.float32)
    assert translation.rendering(moving, fixed) is None


def test_too_few_voxels_per_bin_gives_none():
    moving = np.linspace(0, 1, 4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    assert translation.rendering(moving, moving) is None


# --- its use by registration -------------------------------------------------------------------


def _spied_refinement(monkeypatch):
    from dgan.registration.registrar import Registrar

    seen = []
    original = Registrar.refine_flow

    def spy(self, moving, fixed, flow, translated, mask=None, config=None, rendering=None,
            scaled=False):
        seen.append((moving, fixed, translated, config, rendering, scaled))
        return original(self, moving, fixed, flow, translated, mask, config, rendering, scaled)

    monkeypatch.setattr(Registrar, "refine_flow", spy)
    return seen


def test_refinement_after_the_matching_compares_with_the_histogram_rendering(monkeypatch):
    """Without a model, after the block matching: refinement's L_LCC term gets h read at the
    headers' alignment from the scaled scans, the smoothness term acts on phi, and the command
    says so; with w_lcc 0 no rendering is made."""
    import dataclasses

    from dgan.data.io import Volume
    from dgan.data.preprocessing import scale_intensity
    from dgan.registration.registrar import Registrar
    from dgan.registration.settings import RefineConfig
    from tests.test_affine import AFFINE, FIXED_CONTRAST, MOVING_CONTRAST, phantom_labels, \
        rendered

    labels = phantom_labels()
    fixed = Volume(rendered(labels, FIXED_CONTRAST), AFFINE)
    moving = Volume(rendered(labels, MOVING_CONTRAST), AFFINE)
    seen = _spied_refinement(monkeypatch)
    said = []
    config = RefineConfig(steps=2, levels=(1,))
    Registrar(None, refine_config=config, start="network",
              progress=said.append).register_volumes(moving, fixed)
    on_fixed, fixed_array, translated, used, rendering, scaled = seen[-1]
    # the registrar scales the two scans once, for the rendering and refinement alike
    assert scaled
    np.testing.assert_array_equal(fixed_array, scale_intensity(fixed.array))
    expected = translation.rendering(on_fixed, fixed_array)
    assert translated is None
    assert (rendering.low, rendering.high) == (expected.low, expected.high)
    np.testing.assert_array_equal(rendering.values, expected.values)
    assert used.smooth == "flow" and used.w_lcc == config.w_lcc
    assert any("rendered in the fixed contrast by their joint histogram" in line for line in said)
    Registrar(None, refine_config=dataclasses.replace(config, w_lcc=0.0),
              start="network").register_volumes(moving, fixed)
    assert seen[-1][2] is None and seen[-1][4] is None


def test_no_histogram_rendering_when_no_start_field_is_followed(monkeypatch):
    """Refinement from the identity (the cautious correction of an aligned pair) gets no h(F): on
    real pairs whose contrasts no function of intensity relates, it pulled aligned scans apart."""
    from dgan.data.io import Volume
    from dgan.registration.registrar import Registrar
    from tests.test_affine import AFFINE, FIXED_CONTRAST, MOVING_CONTRAST, phantom_labels, \
        rendered

    labels = phantom_labels()
    seen = _spied_refinement(monkeypatch)
    said = []
    Registrar(None, progress=said.append).register_volumes(
        Volume(rendered(labels, MOVING_CONTRAST), AFFINE),
        Volume(rendered(labels, FIXED_CONTRAST), AFFINE))
    assert any(line.startswith("start: identity") for line in said)
    assert seen[-1][2] is None and seen[-1][4] is None


def test_refinement_applies_the_table_to_the_warped_image_with_its_slope():
    """refine's h(F(phi)) (the table linear between its samples, constant beyond) against the
    NumPy Rendering, value and derivative."""
    from dgan.compat import tf
    from dgan.registration import refine as dr

    table = translation.Rendering(0.1, 0.9, np.array([0.3, 0.9, 0.2, 0.5, 0.5], np.float32))
    x = np.array([-0.5, 0.1, 0.15, 0.3, 0.42, 0.6, 0.9, 1.4], np.float32)
    tensors = (tf.constant(0.1), tf.constant(0.2), tf.constant(table.values))
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        out = dr._rendered(tensors, x_t)
    slope = tape.gradient(out, x_t).numpy()
    # a few float32 operations on values of order 1: within 8 unit round-offs
    np.testing.assert_allclose(out.numpy(), table(x), atol=8 * 2.0**-24)
    # inside a segment the slope is the segment's (sample spacing 0.2); beyond the ends, 0
    np.testing.assert_allclose(slope[[2, 4, 5]], [3.0, -3.5, 1.5], rtol=1e-5)
    assert slope[0] == 0.0 and slope[-1] == 0.0


def test_refinement_with_a_rendering_adds_the_lcc_term():
    from dgan.registration import refine as dr
    from dgan.registration.settings import RefineConfig

    rng = np.random.default_rng(3)
    moving = rng.uniform(0, 1, (20, 20, 20)).astype(np.float32)
    fixed = np.roll(1.0 - moving, 1, axis=0)
    table = translation.rendering(moving, fixed)
    config = RefineConfig(steps=2, levels=(1,), lcc_window=3)
    plain = dr.refine(moving, fixed, config=config)
    rendered = dr.refine(moving, fixed, config=config, rendering=table)
    assert rendered.losses[0][0] > plain.losses[0][0] + 0.5  # w_lcc (1 - L_LCC): h(F) = 1 - F
    without = dr.refine(moving, fixed, config=dataclasses.replace(config, w_lcc=0.0),
                        rendering=table)
    np.testing.assert_array_equal(without.flow, plain.flow)
