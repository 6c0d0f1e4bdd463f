"""dgan.core.spatial: the one warp and the resizes, against SciPy's interpolation."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from dgan.compat import tf
from dgan.core import spatial

# float32 trilinear interpolation of values in [0, 1]: a weighted mean of 8 values, weights
# summing to 1, each product and sum rounded once: error < 16 x 2^-24 x max |value| ~ 1e-6.
# Positions p + flow(p) are rounded too (|p + flow| < 64 voxels: 64 x 2^-24 ~ 4e-6 voxel), times
# the largest slope between neighbours (1): 1e-5 covers both.
TOLERANCE = 1e-5


def test_warp_is_trilinear_with_edge_values_beyond_the_border(rng):
    image = rng.random((9, 10, 11, 2)).astype(np.float32)
    flow = rng.uniform(-4, 4, (9, 10, 11, 3)).astype(np.float32)  # many samples off the grid
    moved = spatial.warp(tf.constant(image), tf.constant(flow),
                         spatial.voxel_grid(image.shape[:3])).numpy()
    points = np.indices(image.shape[:3]) + np.moveaxis(flow, -1, 0)  # (3, X, Y, Z)
    for c in range(2):
        want = ndimage.map_coordinates(image[..., c].astype(np.float64), points, order=1,
                                       mode="nearest")
        np.testing.assert_allclose(moved[..., c], want, atol=TOLERANCE)


def test_warp_batch_warps_each_pair_with_its_own_flow(rng):
    volumes = rng.random((2, 8, 8, 8, 1)).astype(np.float32)
    flows = rng.uniform(-2, 2, (2, 8, 8, 8, 3)).astype(np.float32)
    grid = spatial.voxel_grid((8, 8, 8))
    want = [spatial.warp(tf.constant(v), tf.constant(f), grid).numpy()
            for v, f in zip(volumes, flows)]
    known = spatial.warp_batch(tf.constant(volumes), tf.constant(flows)).numpy()
    unknown = tf.function(spatial.warp_batch, input_signature=[  # a batch size known at run time
        tf.TensorSpec([None, 8, 8, 8, 1]), tf.TensorSpec([None, 8, 8, 8, 3])])(volumes, flows)
    np.testing.assert_array_equal(known, np.stack(want))
    np.testing.assert_array_equal(unknown.numpy(), np.stack(want))


@pytest.mark.parametrize("factor", [2, 4])
def test_upsample_flow_samples_the_corner_aligned_grid_and_scales_displacements(rng, factor):
    flow = rng.uniform(-1, 1, (2, 3, 4, 5, 3)).astype(np.float32)
    up = spatial.upsample_flow(tf.constant(flow), factor).numpy()
    assert up.shape == (2, 3 * factor, 4 * factor, 5 * factor, 3)
    for b in range(2):
        for c in range(3):  # SciPy's zoom puts the first and last samples on each other too
            want = factor * ndimage.zoom(flow[b, ..., c].astype(np.float64), factor, order=1,
                                         grid_mode=False)
            np.testing.assert_allclose(up[b, ..., c], want, atol=factor * TOLERANCE)
    assert spatial.upsample_flow(flow, 1) is flow


def test_interpolation_matrices_are_linear_interpolation_rows():
    for matrix in (spatial.interpolation_matrix(7, 3), spatial.corner_matrix(4, 13)):
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)  # weights of a mean
        assert np.all(matrix >= 0) and np.all(np.count_nonzero(matrix, axis=1) <= 2)
    corner = spatial.corner_matrix(4, 13)  # output i at input 3 i / 12 = i / 4
    np.testing.assert_allclose(corner @ np.arange(4.0), np.arange(13) / 4, atol=1e-6)
    centre = spatial.interpolation_matrix(8, 4)  # halving averages pairs
    np.testing.assert_allclose(centre @ np.arange(8.0), [0.5, 2.5, 4.5, 6.5], atol=1e-6)


def test_the_voxel_grid_is_the_same_built_inside_a_compiled_function():
    """Refinement's levels and the scores build the grid inside XLA from its axes, passed in as
    inputs (so that it is fused, not folded into a constant): the same coordinates either way,
    and a warp through the axes equals the one that builds its own grid."""
    shape = (5, 6, 7)
    want = np.moveaxis(np.indices(shape, dtype=np.float32), 0, -1)
    axes = spatial.grid_axes(shape)
    compiled = tf.function(spatial.grid_from_axes, jit_compile=True)(axes)
    np.testing.assert_array_equal(spatial.voxel_grid(shape).numpy(), want)
    np.testing.assert_array_equal(compiled.numpy(), want)
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(1, *shape, 2)).astype(np.float32)
    flow = rng.uniform(-2, 2, (1, *shape, 3)).astype(np.float32)
    warped = tf.function(spatial.warp_batch, jit_compile=True)(volume, flow, axes)
    # XLA fuses the seven lerps (multiply-adds) where op by op rounds each: a few float32 ulps
    # of the largest value
    np.testing.assert_allclose(warped.numpy(), spatial.warp_batch(volume, flow).numpy(), rtol=0,
                               atol=8 * np.finfo(np.float32).eps * np.abs(volume).max())


def test_the_corners_gathered_from_the_cell_index_are_numpys(rng):
    """Refinement's warp in two pieces: the flat index of each cell's lower corner, then the
    eight corners gathered from it alone, as NumPy indexes them (an axis of one voxel has no
    second corner: its offset is 0)."""
    shape = (6, 5, 1)
    image = rng.normal(size=shape + (2,)).astype(np.float32)
    flow = rng.uniform(-3, 3, shape + (3,)).astype(np.float32)
    lower, _, _ = spatial.cell_position(tf.constant(flow), spatial.voxel_grid(shape))
    low = lower.numpy().astype(int)
    index = spatial.cell_index(lower, shape)
    np.testing.assert_array_equal(index.numpy(),
                                  np.ravel_multi_index(np.moveaxis(low, -1, 0), shape))
    corners = spatial.gather_corners(tf.constant(image), index)
    for corner, got in zip(itertools.product((0, 1), repeat=3), corners):
        at = np.minimum(low + corner, np.array(shape) - 1)
        np.testing.assert_array_equal(got.numpy(), image[at[..., 0], at[..., 1], at[..., 2]])


def test_cell_position_against_numpy(rng):
    """Lower corner, position in the cell and the inside flag of p + flow(p), as NumPy computes
    them: clamped into the volume, the last cell's lower corner at n - 2."""
    shape = (6, 5, 4)
    flow = rng.uniform(-3, 3, shape + (3,)).astype(np.float32)
    flow[0, 0, 0] = [5.0, 4.0, 3.0]  # exactly on the far corner: inside, in the last cell
    lower, weight, inside = (a.numpy() for a in spatial.cell_position(
        tf.constant(flow), spatial.voxel_grid(shape)))
    target = np.moveaxis(np.indices(shape, dtype=np.float32), 0, -1) + flow
    upper = np.array(shape, np.float32) - 1
    location = np.clip(target, 0, upper)
    want_lower = np.minimum(np.floor(location), upper - 1)
    np.testing.assert_array_equal(lower, want_lower)
    np.testing.assert_array_equal(weight, location - want_lower)
    np.testing.assert_array_equal(inside, ((target >= 0) & (target <= upper)).astype(np.float32))
    np.testing.assert_array_equal(weight[0, 0, 0], [1, 1, 1])
    assert 0 < inside.mean() < 1
