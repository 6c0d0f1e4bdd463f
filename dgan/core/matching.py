"""Block matching of local-gradient directions: a parameter-free first estimate of phi for T.

A U-Net trained from scratch for a few hundred steps on a CPU predicts a small fraction of the
deformation between two scans (docs/notes/training-log.md). What it lacks is an explicit search:
which displacement d makes the moving scan's structure at p + d agree with the fixed scan's at
p. This module performs that search with the paper's modality-independent measure. For every
voxel p of a grid ``factor`` times coarser than the images and every integer displacement d with
|d_i| <= ``radius`` coarse voxels, the cost is

    C(p, d) = mean over a window^3 box around p of (n(R, q) . n(F, q + d))^2

where n(I, q) is the local gradient direction of :func:`dgan.core.losses.local_gradient_direction`
(averaged over each coarse voxel). The square, like the paper's |.|, makes the measure blind to
contrast inversion (T1 against T2). C is averaged over a ``smoothing``^3 neighbourhood, and
the displacement is its soft arg-max, ``phi(p) = sum_d d softmax(C(p, .) / temperature)_d``,
up-sampled to the image grid. Several passes, coarse to fine, each match the moving image
warped by the previous passes' field and compose their fields.

:func:`match` is T's first layer (:class:`dgan.core.networks.BlockMatching`, no weights: T's
U-Net learns the residual that remains after it) and, without a model, the training-free start
field of registration. Warping and up-sampling are :mod:`dgan.core.spatial`'s.
"""

import itertools

import numpy as np

from ..compat import tf
from .coverage import shrink
from .losses import box_sum, local_gradient_direction
from .settings import (DEFAULT_PASSES, MATCHING_LG_WINDOW, MATCHING_SMOOTHING,
                       MATCHING_TEMPERATURE, MATCHING_WINDOW)
from .spatial import upsample_flow, warp_batch


def displacements(radius):
    """All integer displacements with every component in [-radius, radius]: shape ((2r+1)^3, 3)."""
    r = range(-int(radius), int(radius) + 1)
    return np.array(list(itertools.product(r, r, r)), dtype=np.float32)


def _pooled(directions, factor):
    """n(I) averaged over each coarse voxel of a grid ``factor`` times coarser."""
    if factor == 1:
        return directions
    return tf.nn.avg_pool3d(directions, factor, factor, "VALID")


def matching_cost(fixed_direction, moving_direction, radius, window, smoothing=1, valid=None):
    """C(p, d) for every displacement of :func:`displacements` (radius): the box mean of the
    squared dot product of the fixed directions at p and the moving directions at p + d
    (zero outside the volume), averaged again over ``smoothing``^3 voxels (1: not at all).

    Each displacement's dot products come from one shifted slice of the padded moving
    directions, and the two box means are one pass (:func:`dgan.core.losses.box_sum`): at 2 mm
    about half the time of gathering every voxel's neighbours and filtering twice. The slices are
    taken in one loop (:func:`_shifted_products`), not one op each: a traced graph of a few ops
    instead of thousands, which TensorFlow traces and optimises in a fraction of the time.

    :param fixed_direction: n(R), shape = (B, X, Y, Z, 3)
    :param moving_direction: n(F), same shape
    :param valid: where both scans have data, 1 or 0, shape = (B, X, Y, Z, 1), or None:
        everywhere. With it, the directions outside are 0 and C(p, d) is the mean over the pairs
        (q, q + d) of the box whose both ends are valid (0 where none is): a displacement
        towards the edge of a scan's coverage is neither favoured nor penalised
    :return: shape = (B, X, Y, Z, (2 radius + 1)^3), in [0, 1]
    """
    r = int(radius)
    if valid is not None:
        fixed_direction = fixed_direction * valid
        moving_direction = moving_direction * valid
    dots = _shifted_products(fixed_direction, moving_direction, r)
    cost = box_sum(tf.square(dots), window, smoothing)
    if valid is None:
        return cost / float(window**3 * smoothing**3)
    count = box_sum(_shifted_products(valid, valid, r), window, smoothing)
    return cost / tf.maximum(count, 1.0)


def _shifted_products(fixed, moving, radius):
    """sum over channels of fixed(p) * moving(p + d) (0 outside the volume) for every
    displacement d of :func:`displacements` (radius), in that order: (B, X, Y, Z, (2r+1)^3).

    A ``tf.while_loop`` over d, each iteration one slice of the zero-padded ``moving``."""
    fixed, moving = tf.convert_to_tensor(fixed), tf.convert_to_tensor(moving)
    r, n = int(radius), 2 * int(radius) + 1
    size = [int(s) for s in fixed.shape[1:4]]
    padded = tf.pad(moving, [[0, 0], [r, r], [r, r], [r, r], [0, 0]])

    def body(k, products):
        begin = tf.stack([0, k // (n * n), (k // n) % n, k % n, 0])  # d + r
        shifted = tf.slice(padded, begin, [-1, *size, -1])
        return k + 1, products.write(k, tf.reduce_sum(fixed * shifted, axis=-1))

    products = tf.TensorArray(fixed.dtype, size=n**3, element_shape=fixed.shape[:-1])
    _, products = tf.while_loop(lambda k, _: k < n**3, body, [tf.constant(0), products])
    return tf.transpose(products.stack(), [1, 2, 3, 4, 0])


def soft_argmax_flow(cost, radius, temperature):
    """phi(p) = sum_d d softmax(C(p, .) / temperature)_d, in the cost grid's voxels: (B, X, Y, Z,
    3)."""
    weights = tf.nn.softmax(cost / temperature, axis=-1)
    return tf.tensordot(weights, tf.constant(displacements(radius)), [[4], [0]])


def block_match(moving, fixed, factor, radius, lg_window=MATCHING_LG_WINDOW,
                window=MATCHING_WINDOW, smoothing=MATCHING_SMOOTHING,
                temperature=MATCHING_TEMPERATURE, valid=None, fixed_direction=None):
    """One matching pass: moving F, fixed R (B, X, Y, Z, 1) -> phi (B, X, Y, Z, 3) in image voxels,
    with ``moved(p) = F(p + phi(p))``. X, Y, Z must be multiples of ``factor``.

    :param valid: where both scans have data on the pass's coarse grid (B, X/f, Y/f, Z/f, 1),
        1 or 0, or None (:func:`matching_cost`)
    :param fixed_direction: n(R) on the image grid when already computed (every pass of
        :func:`match` compares with the same R), or None
    """
    if fixed_direction is None:
        fixed_direction = local_gradient_direction(fixed, lg_window)
    cost = matching_cost(_pooled(fixed_direction, factor),
                         _pooled(local_gradient_direction(moving, lg_window), factor), radius,
                         window, smoothing, valid)
    return upsample_flow(soft_argmax_flow(cost, radius, temperature), factor)


def compose(first, second):
    """The field of warping by ``first`` and then by ``second``: second(p) + first(p +
    second(p))."""
    return second + warp_batch(first, second)


def pass_validity(mask, passes=DEFAULT_PASSES, lg_window=MATCHING_LG_WINDOW):
    """Where each pass may compare directions: ``mask`` (where both scans have data, bool (X, Y, Z))
    on the pass's coarse grid, kept where the directions' windows (central differences, then the
    ``lg_window`` box) lie wholly inside it (:func:`dgan.core.coverage.shrink`).

    :return: one float32 array (1, X/f, Y/f, Z/f, 1) per pass, or None when ``mask`` is None or
        covers every voxel
    """
    if mask is None or np.all(mask):
        return None
    return [shrink(mask, factor, lg_window // 2 + 1).astype(np.float32)[None, ..., None]
            for factor, _ in passes]


def match(moving, fixed, passes=DEFAULT_PASSES, valid=None, lg_window=MATCHING_LG_WINDOW,
          window=MATCHING_WINDOW, smoothing=MATCHING_SMOOTHING, temperature=MATCHING_TEMPERATURE):
    """The coarse-to-fine matching of :class:`BlockMatching` on a pair, outside any network:
    the training-free first estimate of phi, also where the scans cover different regions.

    :param moving: F, shape = (B, X, Y, Z, 1), X, Y, Z multiples of every pass's factor
    :param fixed: R, same shape
    :param valid: :func:`pass_validity`, or None
    :return: phi, shape = (B, X, Y, Z, 3), voxels
    """
    moving, fixed = tf.convert_to_tensor(moving), tf.convert_to_tensor(fixed)
    fixed_direction = local_gradient_direction(fixed, lg_window)  # the same R in every pass
    flow = None
    for index, (factor, radius) in enumerate(passes):
        source = moving if flow is None else warp_batch(moving, flow)
        valid_pass = None if valid is None else tf.convert_to_tensor(valid[index])
        step = block_match(source, fixed, factor, radius, lg_window, window, smoothing,
                           temperature, valid_pass, fixed_direction)
        flow = step if flow is None else compose(flow, step)
    return flow
