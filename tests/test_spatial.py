"""dgan.core.spatial: the one warp and the resizes, against SciPy's interpolation."""

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
