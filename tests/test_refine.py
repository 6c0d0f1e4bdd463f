"""Instance refinement (dgan.registration.refine) and its use by Registrar and dgan-register."""

import dataclasses
import json
import logging

import nibabel as nib
import numpy as np
import pytest

from dgan.cli.register import main
from dgan.compat import tf
from dgan.core import losses, metrics
from dgan.core.spatial import resize_matrices, warp_corners
from dgan.core.networks import NetworkConfig, build_generator, build_registration_net
from dgan.data import io as dio
from dgan.errors import InputError
from dgan.registration import refine as dr
from dgan.registration import registrar as dregister
from dgan.registration.model_folder import (CONFIG_FILE, GENERATOR_FILE, load_model_folder,
                                            save_model_folder)
from dgan.registration.registrar import Registrar
from dgan.registration.settings import NO_MODEL_LEVELS, level_voxels
from numpy_reference import np_lcc

TINY_CONFIG = NetworkConfig(
    (16, 16, 16), t_features=((4, 8), (8, 8, 4)), g_features=((4, 4), (4, 4)), d_features=4,
    d_layers=2, g_residual=True,
)
#: Small windows for 16-32 voxel volumes.
# The paper's L_LG (lg_noise 0): these tests check the optimisation against known answers on
# noiseless textures, where an eps from the image's gradient scale only weakens the image term.
SMALL = dr.RefineConfig(steps=100, levels=(2, 1), lg_window=5, lcc_window=5, alpha=0.01,
                        learning_rate=0.1, lg_noise=0.0)


def texture(points):
    """A smooth, non-periodic-looking intensity pattern of voxel coordinates (..., 3) -> (...)."""
    a, b, c = points[..., 0], points[..., 1], points[..., 2]
    return (np.sin(2 * np.pi * a / 11) + np.sin(2 * np.pi * b / 13 + 1) + np.sin(2 * np.pi * c / 9 + 2)
            + 0.5 * np.sin(2 * np.pi * (a + b) / 15) * np.cos(2 * np.pi * c / 17)) / 4 + 0.5


def known_pair(n=32):
    """(moving, fixed, u): fixed(p) = moving(p + u(p)) exactly (analytic, no interpolation)."""
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64),) * 3, indexing="ij"), -1)
    u = np.stack([1.2 * np.sin(2 * np.pi * grid[..., 1] / n),
                  1.0 * np.cos(2 * np.pi * grid[..., 2] / n),
                  0.8 * np.sin(2 * np.pi * (grid[..., 0] + grid[..., 1]) / (2 * n))], -1)
    return texture(grid).astype("f4"), texture(grid + u).astype("f4"), u


def random_pair(shape=(20, 24, 16), seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)


# --- the building blocks ------------------------------------------------------------------------


def test_interpolation_matrix_halves_by_averaging_pairs_and_keeps_linear_functions():
    halve = dr.interpolation_matrix(8, 4)
    # weights 1/2, 1/4, 3/4 on small integers: exact
    np.testing.assert_allclose(halve @ np.arange(8.0), [0.5, 2.5, 4.5, 6.5], atol=1e-6)
    double = dr.interpolation_matrix(4, 8)
    # inside the clamped border, coordinates (i + 1/2) / 2 - 1/2 of a linear ramp
    np.testing.assert_allclose((double @ np.arange(4.0))[1:-1], (np.arange(1, 7) + 0.5) / 2 - 0.5,
                               atol=1e-6)


def test_warp_of_a_linear_volume_is_exact_and_clamps_at_the_border():
    shape = (6, 7, 5)
    grid = dr.voxel_grid(shape)
    image = (3.0 * grid[..., :1] + grid[..., 1:2] - 2.0 * grid[..., 2:])  # (X, Y, Z, 1)
    flow = tf.constant(np.full(shape + (3,), [0.25, -0.5, 0.75], np.float32))
    warped = dr.warp(image, flow, grid).numpy()[1:-1, 1:-1, 1:-1, 0]
    want = (3.0 * (grid[..., 0] + 0.25) + grid[..., 1] - 0.5 - 2.0 * (grid[..., 2] + 0.75))
    # trilinear interpolation is exact on a linear function; weights 1/4, 1/2, 3/4 and float32
    # values <= 21 (ulp 1.9e-6): a few ulps at most (measured 0)
    np.testing.assert_allclose(warped, want.numpy()[1:-1, 1:-1, 1:-1], atol=1e-5)
    far = dr.warp(image, tf.fill(shape + (3,), 100.0), grid).numpy()
    np.testing.assert_allclose(far, 3.0 * 5 + 6 - 2.0 * 4, atol=1e-5)  # the last voxel's value


def test_the_slopes_from_the_warps_corners_are_its_gradient_and_zero_where_clamped():
    """dL/dflow through the warp, by autodiff, equals inside * sum_c dL/dwarped_c * slope_c."""
    rng = np.random.default_rng(4)
    shape = (6, 7, 8)
    grid = dr.voxel_grid(shape)
    image = tf.constant(rng.random(shape + (2,)).astype("f4"))
    flow = tf.constant(rng.normal(0, 2.0, shape + (3,)).astype("f4"))  # some beyond the border
    weights = tf.constant(rng.normal(0, 1.0, shape + (2,)).astype("f4"))
    with tf.GradientTape() as tape:
        tape.watch(flow)
        loss = tf.reduce_sum(weights * dr.warp(image, flow, grid))
    want = tape.gradient(loss, flow).numpy()
    corners, position, inside = warp_corners(image, flow, grid)
    np.testing.assert_array_equal(dr.interpolate(corners, position).numpy(),
                                  dr.warp(image, flow, grid).numpy())
    got = np.stack([np.sum(weights * slope, axis=-1) for slope in
                    dr.interpolation_slopes(corners, position)], axis=-1) * inside.numpy()
    assert 0 < np.mean(inside.numpy() == 0) < 0.5
    # the same float32 products of values in [0, 1] and weights ~1, summed in another order
    np.testing.assert_allclose(got, want, atol=1e-5)


def kron_smoothness_operator(control_shape, shape):
    """NumPy G (float64, one field component) with u . G u = sum |grad up(u)|^2: the up-sampling
    and the forward differences as full matrices, the term of axis d divided by its count."""
    ups = [dr.interpolation_matrix(c, n, np.float64) for c, n in zip(control_shape, shape)]
    up = np.kron(np.kron(ups[0], ups[1]), ups[2])
    operator = np.zeros((up.shape[1],) * 2)
    for d, n in enumerate(shape):
        if n < 2:
            continue
        eyes = [np.eye(m) for m in shape]
        eyes[d] = np.diff(np.eye(n), axis=0)
        difference = np.kron(np.kron(eyes[0], eyes[1]), eyes[2]) @ up
        operator += difference.T @ difference / difference.shape[0]
    return operator


@pytest.mark.parametrize("control_shape, shape", [
    ((3, 5, 2), (6, 10, 4)),  # the 2x up-sampling of refinement's control grids
    ((3, 2, 4), (5, 7, 4)),  # sizes that are not multiples, and one axis not up-sampled
    ((2, 3, 1), (8, 6, 1)),  # 4x, and an axis of one voxel: no differences along it
])
def test_the_control_grid_smoothness_is_that_of_the_upsampled_field_and_so_is_its_gradient(
        control_shape, shape):
    u = np.random.default_rng(11).normal(0, 1, control_shape + (3,))
    operator = kron_smoothness_operator(control_shape, shape)
    flat = u.reshape(-1, 3)
    want_value = np.sum(flat * (operator @ flat))
    want_gradient = (2 * operator @ flat).reshape(u.shape)
    u32 = tf.constant(u.astype("f4"))
    bands = dr.smoothness_bands(control_shape, shape)
    with tf.GradientTape() as tape:
        tape.watch(u32)
        value = dr.control_smoothness(u32, bands)
    gradient = tape.gradient(value, u32).numpy()
    if 1 not in shape:  # the reference is dgan.core.losses.smoothness of up(u), both in float64
        ups = [dr.interpolation_matrix(c, n, np.float64) for c, n in zip(control_shape, shape)]
        upsampled = np.einsum("ax,by,cz,xyzk->abck", *ups, u, optimize=True)
        np.testing.assert_allclose(float(losses.smoothness(tf.constant(upsampled[np.newaxis]))[0]),
                                   want_value, rtol=1e-12)
    # G u in float32: the band's diagonals rounded (1 ulp), then three nested banded products of
    # 5 terms and two additions, so each entry is off by at most ~20 ulps of (|G| |u|); the
    # value sums len(u) products more: bounds of 32 and 32 + len(u) unit round-offs
    unit = 2.0**-24
    size = np.abs(operator) @ np.abs(flat)
    assert abs(float(value) - want_value) <= (32 + flat.size) * unit * np.sum(np.abs(flat) * size)
    assert np.all(np.abs(gradient - want_gradient).reshape(-1, 3) <= 2 * 32 * unit * size)
    assert np.abs(want_gradient).max() > 1e4 * 2 * 32 * unit * size.max()  # not vacuous


@pytest.mark.parametrize("control_shape, shape", [((3, 5, 2), (6, 10, 4)), ((3, 2, 4), (5, 7, 4))])
def test_the_whole_fields_smoothness_on_the_control_grid_is_exact(control_shape, shape):
    """smooth="flow": sum |grad (phi_0 + up(u))|^2 as c + g . u + u . G u on the control grid
    (smoothness_offset), against the float64 sum over the level's grid, value and gradient."""
    rng = np.random.default_rng(12)
    u = rng.normal(0, 1, control_shape + (3,))
    base = rng.normal(0, 2, shape + (3,))
    ups = [dr.interpolation_matrix(c, n, np.float64) for c, n in zip(control_shape, shape)]
    up = np.kron(np.kron(ups[0], ups[1]), ups[2])
    laplacian = np.zeros((up.shape[0],) * 2)  # sum over d of D_d^T D_d / N_d on the level grid
    for d, n in enumerate(shape):
        eyes = [np.eye(m) for m in shape]
        eyes[d] = np.diff(np.eye(n), axis=0)
        difference = np.kron(np.kron(eyes[0], eyes[1]), eyes[2])
        laplacian += difference.T @ difference / difference.shape[0]
    phi = base.reshape(-1, 3) + up @ u.reshape(-1, 3)
    want_value = np.sum(phi * (laplacian @ phi))
    want_gradient = (2 * up.T @ laplacian @ phi).reshape(u.shape)
    u32 = tf.constant(u.astype("f4"))
    linear, constant = dr.smoothness_offset(tf.constant(base.astype("f4")),
                                            resize_matrices(control_shape, shape))
    with tf.GradientTape() as tape:
        tape.watch(u32)
        value = dr.control_smoothness(u32, dr.smoothness_bands(control_shape, shape)) \
            + tf.reduce_sum(linear * u32) + constant
    gradient = tape.gradient(value, u32).numpy()
    # float32 sums of at most n = 3 x (level voxels) terms each: off by at most (32 + n) unit
    # round-offs of the sum of the terms' magnitudes (c, |g| |u|, |u| |G| |u| as in the test above)
    unit, n = 2.0**-24, 3 * up.shape[0]
    base_flat = base.reshape(-1, 3)
    magnitude = (np.sum(base_flat * (laplacian @ base_flat))
                 + np.sum(np.abs(2 * up.T @ laplacian @ base_flat) * np.abs(u.reshape(-1, 3)))
                 + np.sum(np.abs(u.reshape(-1, 3)) * (np.abs(up.T @ laplacian @ up)
                                                      @ np.abs(u.reshape(-1, 3)))))
    assert abs(float(value) - want_value) <= (32 + n) * unit * magnitude
    scale = np.abs(2 * up.T @ laplacian) @ (np.abs(base_flat) + np.abs(up @ u.reshape(-1, 3)))
    assert np.all(np.abs(gradient - want_gradient).reshape(-1, 3) <= (32 + n) * unit * scale)
    assert np.abs(want_gradient).max() > 1e3 * (32 + n) * unit * scale.max()  # not vacuous


# --- refinement itself --------------------------------------------------------------------------


def test_refinement_lowers_the_objective_at_every_level():
    moving, fixed = random_pair()
    result = dr.refine(moving, fixed, translated=1.0 - moving,
                       config=dr.RefineConfig(steps=15, levels=(2, 1), lg_window=3, lcc_window=3))
    assert len(result.losses) == 2 and all(len(level) == 15 for level in result.losses)
    for level in result.losses:
        assert level[-1] < level[0] - 1e-3


@pytest.mark.parametrize("int_steps", [0, 7])
def test_a_known_smooth_displacement_is_recovered_within_half_a_voxel(int_steps):
    moving, fixed, u = known_pair()
    config = dr.RefineConfig(**{**SMALL.__dict__, "int_steps": int_steps})
    flow = dr.refine(moving, fixed, config=config).flow
    interior = (slice(6, -6),) * 3  # the border has no neighbours to register with
    error = np.linalg.norm(flow - u, axis=-1)[interior]
    assert error.max() < 0.5
    assert metrics.folding_fraction(flow) == 0.0


def test_refinement_is_deterministic_and_zero_steps_return_the_start():
    moving, fixed = random_pair(seed=1)
    start = np.random.default_rng(2).normal(0, 0.5, moving.shape + (3,)).astype("f4")
    config = dr.RefineConfig(steps=5, lg_window=3, lcc_window=3)
    first = dr.refine(moving, fixed, start, 1.0 - moving, config).flow
    second = dr.refine(moving, fixed, start, 1.0 - moving, config).flow
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - start).max() > 1e-3
    unchanged = dr.refine(moving, fixed, start, config=dr.RefineConfig(steps=0)).flow
    np.testing.assert_array_equal(unchanged, start)


def one_level(seed):
    """A one-level refinement problem with L_LG, L_LCC and smoothness, and a random control field:
    (level, u, zeros like u, the iteration's settings)."""
    moving, fixed = random_pair(shape=(16, 20, 12), seed=seed)
    config = dr.RefineConfig(steps=1, levels=(1,), lg_window=3, lcc_window=3)
    shapes = dr._level_shapes(moving.shape, config.levels, config.control)
    level = dr._prepare_level(shapes, 1, config, tf.constant(np.stack([moving, 1 - moving], -1)),
                              tf.constant(fixed[..., None]), tf.zeros(moving.shape + (3,)))
    u = tf.constant(np.random.default_rng(seed + 1).normal(0, 0.5, shapes[2] + (3,)).astype("f4"))
    return level, u, tf.zeros_like(u), dr._StepSettings.of(config)


def test_xla_and_plain_iterations_compute_the_same_objective_and_gradient():
    level, u, zeros, settings = one_level(seed=3)
    xla = dr._compiled_steps[True, True](level, u, zeros, zeros, tf.constant(0.0), settings)
    plain = dr._compiled_steps[False, False](level, u, zeros, zeros, tf.constant(0.0), settings)
    # The same float32 arithmetic in another order: a mean of 3840 terms in [0, 1] differs by at
    # most 3840 ulps relative (4.6e-4); the first moment m = (1 - beta1) g likewise, relative to
    # its largest entry
    np.testing.assert_allclose(xla[4].numpy(), plain[4].numpy(), rtol=5e-4)
    m_xla, m_plain = xla[1].numpy(), plain[1].numpy()
    assert np.abs(m_xla - m_plain).max() <= 5e-4 * np.abs(m_plain).max()


def test_the_split_iteration_takes_the_gradient_of_the_whole_objective():
    """Adam's first moment after one compiled iteration is (1 - beta1) dL/du, with dL/du taken by
    the chain rule across the iteration's pieces compiled apart (or on one tape, compiled as
    one); here against one tape over all of L(u), uncompiled."""
    level, u, zeros, settings = one_level(seed=6)
    _, m, _, _, loss = dr._compiled_steps[True, True](level, u, zeros, zeros,
                                                      tf.constant(0.0), settings)
    # one tape, compiled as one cluster (what a diffeomorphic field uses): the same iteration
    _, m_one, _, _, _ = dr._compiled_steps[True, False](level, u, zeros, zeros,
                                                        tf.constant(0.0), settings)
    with tf.GradientTape() as tape:
        tape.watch(u)
        whole = dr._objective(level, u, *dr._moved(level, u, settings), settings)
    gradient = tape.gradient(whole, u).numpy()
    assert np.abs(gradient).max() > 0
    # the same float32 operations, summed in another order: bounds as in the test above
    np.testing.assert_allclose(loss.numpy(), whole.numpy(), rtol=5e-4)
    want = (1 - dr.ADAM_BETAS[0]) * gradient
    for moment in (m, m_one):
        assert np.abs(moment.numpy() - want).max() <= 5e-4 * np.abs(want).max()


def smoothness_reference(flow):
    """NumPy sum |grad phi|^2: per axis and component, the mean squared forward difference."""
    return sum(np.mean(np.diff(flow[..., c], axis=d) ** 2) for d in range(3) for c in range(3))


def test_the_smoothness_term_acts_on_the_change_to_the_start_unless_told_otherwise():
    """With u = 0, phi is the starting field phi_0: its roughness costs nothing by default
    ("residual", the change refinement makes) and alpha sum |grad phi_0|^2 with "flow"."""
    moving, fixed = random_pair(shape=(12, 16, 8), seed=7)
    start = np.random.default_rng(8).normal(0, 0.5, moving.shape + (3,)).astype("f4")
    want = {"residual": 0.0, "flow": 2.0 * smoothness_reference(start.astype(np.float64))}
    for smooth, expected in want.items():
        config = dr.RefineConfig(steps=1, levels=(1,), alpha=2.0, beta=0.0, smooth=smooth)
        shapes = dr._level_shapes(moving.shape, config.levels, config.control)
        level = dr._prepare_level(shapes, 1, config, tf.constant(moving[..., None]),
                                  tf.constant(fixed[..., None]), tf.constant(start))
        settings = dr._StepSettings.of(config)
        u = tf.zeros(shapes[2] + (3,))
        loss = dr._objective(level, u, *dr._moved(level, u, settings), settings)
        # float32 means of at most 1536 squares: even summed one by one, a relative error of at
        # most 1536 * 2^-24 = 9.2e-5 (a few ulps more for the differences and the squares)
        np.testing.assert_allclose(loss.numpy(), expected, rtol=2e-4, atol=1e-7)
    assert dr.RefineConfig().smooth == "residual"


def test_residual_smoothness_keeps_the_detail_of_the_start_where_flow_smooths_it():
    """Smoothness alone (beta = 0): "residual" has nothing to lower from phi_0, so phi_0 comes
    back unchanged; "flow" lowers phi_0's roughness."""
    moving, fixed = random_pair(shape=(12, 16, 8), seed=9)
    start = np.random.default_rng(10).normal(0, 0.5, moving.shape + (3,)).astype("f4")
    config = dr.RefineConfig(steps=10, levels=(1,), control=1, alpha=1.0, beta=0.0)
    kept = dr.refine(moving, fixed, start, config=config).flow
    np.testing.assert_array_equal(kept, start)
    smoothed = dr.refine(moving, fixed, start,
                         config=dataclasses.replace(config, smooth="flow")).flow
    assert smoothness_reference(smoothed) < 0.9 * smoothness_reference(start)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_the_lcc_term_is_the_mean_over_the_windows_around_every_strided_voxel(stride):
    """L's L_LCC term with ``lcc_stride``: 1 - L_LCC over the windows centred on voxels
    stride // 2, stride // 2 + stride, ... along each axis (the NumPy reference of
    tests/numpy_reference.py, its correlation map taken there)."""
    moving, fixed = random_pair(shape=(12, 16, 10), seed=12)
    translated = 1.0 - moving
    config = dr.RefineConfig(steps=1, levels=(1,), beta=0.0, alpha=0.0, lcc_window=3,
                             lcc_stride=stride)
    shapes = dr._level_shapes(moving.shape, config.levels, config.control)
    level = dr._prepare_level(shapes, 1, config, tf.constant(np.stack([moving, translated], -1)),
                              tf.constant(fixed[..., None]), tf.zeros(moving.shape + (3,)))
    assert level.fixed_statistics.shape[1:4] == tuple(len(range(stride // 2, n, stride))
                                                      for n in moving.shape)
    got = dr._similarity(level, tf.constant(np.stack([moving, translated], -1)),
                         dr._StepSettings.of(config))
    # float32 window sums of 27 terms in [0, 1] against float64: as in tests/test_losses.py
    np.testing.assert_allclose(got.numpy(), 1.0 - np_lcc(fixed, translated, 3, stride=stride),
                               atol=1e-4)
    assert dr.RefineConfig().lcc_stride == 2


def test_xla_compiles_large_levels_by_default_and_obeys_on_and_off():
    large, small = (40, 48, 56), (32, 40, 32)  # 107520 and 40960 voxels: 2^16 between
    assert dr.RefineConfig().uses_xla(large) and not dr.RefineConfig().uses_xla(small)
    assert dr.RefineConfig(xla="on").uses_xla(small)
    assert not dr.RefineConfig(xla="off").uses_xla(large)


def test_a_new_pair_with_equal_settings_reuses_the_traced_iteration():
    moving, fixed = random_pair(shape=(12, 12, 12), seed=5)
    step = dr._compiled_steps[False, False]

    def run(steps):  # a new RefineConfig object every call, as for every pair registered
        dr.refine(moving, fixed, config=dr.RefineConfig(steps=steps, levels=(1,), lg_window=3,
                                                        xla="off"))

    run(2)
    traces = step.tracing_count()
    run(3)  # another object, another iteration count: the same trace
    assert step.tracing_count() == traces


@pytest.mark.parametrize("changes, message", [
    ({"steps": -1}, "refinement steps must be a whole number >= 0, got -1"),
    ({"levels": (1, 2)}, "refinement levels must be decreasing powers of two"),
    ({"levels": (3,)}, "refinement levels must be decreasing powers of two"),
    ({"learning_rate": 0.0}, "refinement learning_rate must be a finite number > 0"),
    ({"alpha": float("nan")}, "refinement alpha must be a finite number >= 0"),
    ({"lg_window": 4}, "refinement lg_window must be an odd positive integer"),
    ({"lcc_stride": 0}, "refinement lcc_stride must be a whole number >= 1, got 0"),
    ({"lcc_stride": 1.5}, "refinement lcc_stride must be a whole number >= 1, got 1.5"),
    ({"xla": True}, "refinement xla must be one of auto, on, off"),
    ({"smooth": "phi"}, "refinement smooth must be one of residual, flow, got 'phi'"),
    ({"lg_noise": -1.0}, "refinement lg_noise must be a finite number >= 0"),
])
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dr.RefineConfig(**changes)


def test_an_eps_from_the_gradient_scale_keeps_an_aligned_noisy_pair_nearer_in_place():
    """An aligned pair whose two scans carry their own noise (two acquisitions): with the
    paper's eps every noise voxel's direction has unit length and refinement bends the field to
    line the noise up; with ``lg_noise`` 3 the noise's directions are short and it moves less
    (seed 3: a mean of 0.19 voxels against 0.30)."""
    n = 24
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64),) * 3, indexing="ij"), -1)
    rng = np.random.default_rng(3)
    anatomy = texture(grid)
    moving, fixed = ((anatomy + 0.15 * rng.standard_normal(anatomy.shape)).astype("f4")
                     for _ in range(2))
    moved = {}
    for noise in (0.0, 3.0):
        config = dr.RefineConfig(steps=30, levels=(2, 1), lg_window=3, alpha=0.1, lg_noise=noise)
        flow = dr.refine(moving, fixed, config=config).flow
        moved[noise] = float(np.linalg.norm(flow, axis=-1).mean())
    assert moved[3.0] < moved[0.0]


def test_bad_arrays_are_refused():
    moving, fixed = random_pair()
    with pytest.raises(InputError, match="flow has shape"):
        dr.refine(moving, fixed, np.zeros((2, 2, 2, 3)))
    with pytest.raises(InputError, match="fixed has NaN or Inf values"):
        dr.refine(moving, np.full_like(fixed, np.nan))


# --- Registrar, model folders, command line -----------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A model folder with T and G (format 2), and an old one with T alone (format 1)."""
    root = tmp_path_factory.mktemp("refine_models")
    net = build_registration_net(TINY_CONFIG)
    generator = build_generator(TINY_CONFIG)
    rng = np.random.default_rng(0)
    generator.set_weights([w + rng.normal(0, 0.05, w.shape).astype("f4")
                           for w in generator.get_weights()])
    preprocessing = {"shape": (16, 16, 16), "spacing": None}
    with_g = save_model_folder(net, TINY_CONFIG, preprocessing, root / "with_g", generator=generator)
    old = save_model_folder(net, TINY_CONFIG, preprocessing, root / "old")
    description = json.loads((root / "old" / CONFIG_FILE).read_text())
    description["format_version"] = 1  # as written before G was kept
    (root / "old" / CONFIG_FILE).write_text(json.dumps(description))
    return {"with_g": with_g, "old": old, "generator": generator}


def test_model_folder_keeps_g_beside_t(folders):
    model = load_model_folder(folders["with_g"])
    assert model.description["files"]["generator"] == GENERATOR_FILE
    for saved, original in zip(model.generator.get_weights(), folders["generator"].get_weights()):
        np.testing.assert_array_equal(saved, original)
    assert load_model_folder(folders["old"]).generator is None


def test_zero_refine_steps_give_exactly_t(folders, monkeypatch):
    def no_refinement(*args, **kwargs):
        raise AssertionError("refine() ran with refine_steps=0")

    monkeypatch.setattr(dregister, "refine", no_refinement)  # not a wall-clock check
    moving, fixed = random_pair((16, 16, 16), seed=4)
    registrar = Registrar(folders["with_g"], refine_steps=0)
    result = registrar.register_arrays(moving, fixed)
    np.testing.assert_array_equal(result.flow, registrar.predict_flow(moving[None], fixed[None])[0])


def test_refinement_with_g_uses_its_translation_and_changes_the_field(folders):
    moving, fixed = random_pair((16, 16, 16), seed=5)
    lines = []
    config = dr.RefineConfig(levels=(2, 1), lg_window=3, lcc_window=3)
    registrar = Registrar(folders["with_g"], refine_steps=4, refine_config=config,
                          progress=lines.append)
    translated = registrar.translate(moving[None])
    assert translated.shape == (1, 16, 16, 16) and np.ptp(translated) > 0
    refined = registrar.register_arrays(moving, fixed).flow
    plain = Registrar(folders["with_g"], refine_steps=0).register_arrays(moving, fixed).flow
    assert np.abs(refined - plain).max() > 1e-3
    assert len(lines) == 2 and lines[0].startswith("refinement level 1/2")


def test_an_old_model_folder_without_g_still_registers_and_says_so_once(folders, caplog):
    moving, fixed = random_pair((16, 16, 16), seed=6)
    registrar = Registrar(folders["old"], refine_steps=3,
                          refine_config=dr.RefineConfig(lg_window=3))
    with caplog.at_level(logging.WARNING, logger="dgan.registration.registrar"):
        for _ in range(2):
            result = registrar.register_arrays(moving, fixed)
    assert result.flow.shape == (16, 16, 16, 3) and np.all(np.isfinite(result.flow))
    said = [r.getMessage() for r in caplog.records if "no generator" in r.getMessage()]
    assert len(said) == 1 and "local-gradient term alone" in said[0]


def _write_pair(folder):
    moving, fixed, _ = known_pair(24)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {"moving": str(folder / "moving.nii.gz"), "fixed": str(folder / "fixed.nii.gz")}
    dio.save_volume(paths["moving"], moving, affine)
    dio.save_volume(paths["fixed"], 1.0 - fixed, affine)  # another "modality"
    return paths


def test_cli_without_a_model_refines_from_the_identity(tmp_path, capsys):
    paths = _write_pair(tmp_path)
    status = main(["--moving", paths["moving"], "--fixed", paths["fixed"],
                   "--out-moved", str(tmp_path / "moved.nii.gz"),
                   "--out-flow", str(tmp_path / "flow.nii.gz"), "--refine-steps", "5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.count("refinement level") == len(NO_MODEL_LEVELS)  # one line per level
    assert "refinement" in out.splitlines()[-1] and "network" in out.splitlines()[-1]
    flow = nib.load(str(tmp_path / "flow.nii.gz")).get_fdata()
    assert flow.shape == (24, 24, 24, 3) and np.abs(flow).max() > 0.01


def refinements_run_by_the_cli(monkeypatch, tmp_path, argv):
    """dgan-register's exit status on ``_write_pair``'s scans with ``argv`` (one refinement level,
    one step), and (config, whether G(F) was given) for each call to refine()."""
    used = []

    def recording_refine(moving, fixed, flow, translated, config, progress, mask=None,
                         rendering=None):
        used.append((config, translated is not None))
        return dr.refine(moving, fixed, flow, translated, config, progress, mask=mask,
                         rendering=rendering)

    monkeypatch.setattr(dregister, "refine", recording_refine)
    paths = _write_pair(tmp_path)
    status = main(["--moving", paths["moving"], "--fixed", paths["fixed"],
                   "--out-moved", str(tmp_path / "moved.nii.gz"),
                   "--out-flow", str(tmp_path / "flow.nii.gz"), "--refine-steps", "1",
                   "--refine-levels", "1"] + argv)
    return status, used


@pytest.mark.parametrize("extra, smooth", [([], "residual"), (["--refine-smooth", "flow"], "flow")])
def test_cli_passes_what_the_smoothness_acts_on_to_refinement(tmp_path, monkeypatch, extra, smooth):
    status, used = refinements_run_by_the_cli(monkeypatch, tmp_path, extra)
    assert status == 0 and [config.smooth for config, _ in used] == [smooth]


@pytest.mark.parametrize("extra, weight, alpha, stride", [
    ([], None, None, None), (["--refine-lcc", "0"], 0.0, None, None),
    (["--refine-lcc", "0.5", "--refine-alpha", "4", "--refine-lcc-stride", "1"], 0.5, 4.0, 1)])
def test_cli_sets_the_weights_of_refinements_lcc_term_and_smoothness(folders, tmp_path,
                                                                     monkeypatch, extra, weight,
                                                                     alpha, stride):
    status, used = refinements_run_by_the_cli(
        monkeypatch, tmp_path,
        ["--model", str(folders["with_g"]), "--affine", "off", "--start", "network"] + extra)
    default = dregister.model_refinement(load_model_folder(folders["with_g"]))
    weight = default.w_lcc if weight is None else weight
    alpha = default.alpha if alpha is None else alpha
    stride = default.lcc_stride if stride is None else stride
    # G renders the moving scan only when its term counts
    assert status == 0
    assert [(c.w_lcc, given, c.alpha, c.lcc_stride) for c, given in used] == [
        (weight, weight > 0, alpha, stride)]


@pytest.mark.parametrize("extra, message", [
    (["--refine-steps", "-1"], "argument --refine-steps: expected a whole number >= 0, got -1"),
    (["--refine-steps", "x"], "argument --refine-steps: expected a whole number >= 0, got 'x'"),
    (["--refine-levels", "3"], "error: refinement levels must be decreasing powers of two"),
    (["--unknown-option"], "unrecognized arguments: --unknown-option"),
    (["--refine-smooth", "phi"], "argument --refine-smooth: invalid choice: 'phi'"),
    (["--refine-lcc", "-1"], "error: refinement w_lcc must be a finite number >= 0, got -1.0"),
    (["--refine-lcc", "nan"], "error: refinement w_lcc must be a finite number >= 0, got nan"),
    (["--refine-alpha", "-2"], "error: refinement alpha must be a finite number >= 0, got -2.0"),
    (["--refine-lcc-stride", "0"],
     "error: refinement lcc_stride must be a whole number >= 1, got 0"),
    (["--refine-lcc-stride", "1.5"], "argument --refine-lcc-stride: invalid int value: '1.5'"),
    (["--refine-steps", "0"], "error: without a model folder, refinement steps must be > 0"),
])
def test_bad_command_lines_are_refused_in_one_line(tmp_path, capsys, extra, message):
    paths = _write_pair(tmp_path)
    argv = ["--moving", paths["moving"], "--fixed", paths["fixed"],
            "--out-moved", str(tmp_path / "m.nii.gz"), "--out-flow", str(tmp_path / "f.nii.gz")]
    try:
        status = main(argv + extra)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_usable_levels_leave_out_grids_too_narrow_or_too_large(monkeypatch):
    """A level narrower than MIN_LEVEL_VOXELS along an axis is left out (the finest kept); one
    of more than MAX_LEVEL_VOXELS voxels too, and when none fits, the coarsest is doubled until
    it does; the registrar says which and why."""
    assert dr.MAX_LEVEL_VOXELS == 2**24 and dr.MIN_LEVEL_VOXELS == 16
    assert level_voxels((5, 6, 7), 2) == 3 * 3 * 4
    assert dr.usable_levels((64, 64, 64), (4, 2, 1)) == [4, 2, 1]
    assert dr.usable_levels((40, 64, 64), (4, 2, 1)) == [2, 1]  # 40 / 4 = 10 voxels across
    assert dr.usable_levels((8, 64, 64), (4, 2, 1)) == [1]  # none wide enough: the finest
    assert dr.usable_levels((256, 256, 256), (2, 1)) == [2, 1]  # exactly 2**24
    assert dr.usable_levels((257, 256, 256), (4, 2, 1)) == [4, 2]
    assert dr.usable_levels((1024, 1024, 1024), (2, 1)) == [4]  # 2**30 voxels: 1/2 holds 2**27
    monkeypatch.setattr(dr, "MAX_LEVEL_VOXELS", 20**3)
    monkeypatch.setattr(dregister, "MAX_LEVEL_VOXELS", 20**3)
    said, seen = [], []
    monkeypatch.setattr(dregister, "refine", lambda moving, fixed, flow, translated, config,
                        progress, mask=None, rendering=None: seen.append(config.levels)
                        or dr.RefineResult(flow=flow, losses=[], seconds=[]))
    registrar = Registrar(None, refine_config=dr.RefineConfig(steps=1, levels=(2, 1)),
                          progress=said.append)
    volume = np.zeros((40, 40, 40), np.float32)
    registrar.refine_flow(volume, volume, np.zeros((40, 40, 40, 3), np.float32), None)
    assert seen == [(2,)]
    assert said == ["refinement level 1/1: left out (its grid would be more than 8,000 voxels)"]
    said.clear(), seen.clear()
    registrar.refine_flow(volume, volume, np.zeros((40, 40, 40, 3), np.float32), None,
                          config=dr.RefineConfig(steps=1, levels=(1,)))
    assert seen == [(2,)]
    assert said == ["refinement level 1/1: left out (its grid would be more than 8,000 voxels)",
                    "refinement level 1/2: instead (the finest level within 8,000 voxels)"]
