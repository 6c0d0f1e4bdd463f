"""Independent NumPy references of the window sums, L_LG and L_LCC (tests/test_losses.py,
tests/test_refine.py, tests/test_coverage.py)."""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dgan.core import losses
from dgan.compat import tf


def np_box_sum(x, n):
    """Sum over an n^3 window around every voxel, zero-padded. x: (X, Y, Z)."""
    r = n // 2
    return sliding_window_view(np.pad(x, r), (n, n, n)).sum(axis=(-3, -2, -1))


def np_lcc(a, b, n, eps=losses.DEFAULT_LCC_EPS, stride=1):
    """L_LCC: the mean of the correlation map, over every stride-th voxel from stride // 2."""
    count = n**3
    s_a, s_b = np_box_sum(a, n), np_box_sum(b, n)
    s_aa, s_bb, s_ab = np_box_sum(a * a, n), np_box_sum(b * b, n), np_box_sum(a * b, n)
    cross = s_ab - s_a * s_b / count
    var_a = np.maximum(s_aa - s_a**2 / count, 0)
    var_b = np.maximum(s_bb - s_b**2 / count, 0)
    # windows flat to float32 precision count 0
    tolerance = losses.flat_tolerance(n, tf.float32)
    flat = (var_a <= tolerance * s_aa) | (var_b <= tolerance * s_bb)
    start = stride // 2
    return np.mean(np.where(flat, 0.0, cross**2 / (var_a * var_b + eps))
                   [start::stride, start::stride, start::stride])


def np_gradient(x):
    """Central differences with edge replication. x: (X, Y, Z) -> (X, Y, Z, 3)."""
    p = np.pad(x, 1, mode="edge")
    c = p[1:-1, 1:-1, 1:-1]
    assert c.shape == x.shape
    return np.stack(
        [
            (p[2:, 1:-1, 1:-1] - p[:-2, 1:-1, 1:-1]) / 2,
            (p[1:-1, 2:, 1:-1] - p[1:-1, :-2, 1:-1]) / 2,
            (p[1:-1, 1:-1, 2:] - p[1:-1, 1:-1, :-2]) / 2,
        ],
        axis=-1,
    )


def np_direction(x, n, eps=losses.DEFAULT_LG_EPS):
    """n(I, p) and |v| of the reference: window sums of the central differences."""
    g = np_gradient(x)
    v = np.stack([np_box_sum(g[..., d], n) for d in range(3)], axis=-1)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / (norm + eps), norm[..., 0]


def np_lg(a, b, n, eps=losses.DEFAULT_LG_EPS):
    return np.mean(np.abs(np.sum(np_direction(a, n, eps)[0] * np_direction(b, n, eps)[0], axis=-1)))
