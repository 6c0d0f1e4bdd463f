"""Independent NumPy references of the window sums and L_LCC (tests/test_losses.py,
tests/test_refine.py)."""

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
