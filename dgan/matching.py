"""Block matching of local-gradient directions: a parameter-free first estimate of phi for T.

A U-Net trained from scratch for a few hundred steps on two CPU cores predicts a small fraction
of the deformation between two scans (docs/TRAINING.md). What it lacks is an explicit search:
which displacement d makes the moving scan's structure at p + d agree with the fixed scan's at
p. This module performs that search with the paper's modality-independent measure. For every
voxel p of a grid ``factor`` times coarser than the images and every integer displacement d with
|d_i| <= ``radius`` coarse voxels, the cost is

    C(p, d) = mean over a window^3 box around p of (n(R, q) . n(F, q + d))^2

where n(I, q) is the local gradient direction of :func:`dgan.losses.local_gradient_direction`
(averaged over each coarse voxel). The square, like the paper's |.|, makes the measure blind to
contrast inversion (T1 against T2). C is averaged over a ``smoothing``^3 neighbourhood, and
the displacement is its soft arg-max, ``phi(p) = sum_d d softmax(C(p, .) / temperature)_d``,
up-sampled to the image grid. Several passes, coarse to fine, each match the moving image
warped by the previous passes' field and compose their fields.

:class:`BlockMatching` is the Keras layer T uses (see :func:`dgan.networks.build_registration_net`):
it has no weights, and T's U-Net learns the residual that remains after it.
"""

import itertools

import numpy as np

from .compat import keras, tf, vxm
from .losses import box_sum, local_gradient_direction

#: The passes T uses by default, (factor, radius) coarse to fine: on the demo's 5 mm grid and on
#: the brain benchmark's 4 mm training grid they search up to 8 + 8 + 1 = 17 voxels in all, and
#: beat a single pass or two (docs/TRAINING.md, entry 9).
DEFAULT_PASSES = ((4, 2), (2, 2), (1, 1))
#: Window and smoothing of the cost, temperature of the soft arg-max, measured on the demo's
#: validation pairs and confirmed on the brain benchmark (docs/TRAINING.md, entry 9): a larger
#: smoothing cuts folding (0.48 % -> 0.02 % on the demo) and a sharper temperature gains Dice.
DEFAULT_LG_WINDOW = 3
DEFAULT_WINDOW = 5
DEFAULT_SMOOTHING = 7
DEFAULT_TEMPERATURE = 0.005


def displacements(radius):
    """All integer displacements with every component in [-radius, radius]: shape ((2r+1)^3, 3)."""
    r = range(-int(radius), int(radius) + 1)
    return np.array(list(itertools.product(r, r, r)), dtype=np.float32)


def _pooled_directions(image, factor, lg_window):
    directions = local_gradient_direction(image, lg_window)
    if factor == 1:
        return directions
    return tf.nn.avg_pool3d(directions, factor, factor, "VALID")


def matching_cost(fixed_direction, moving_direction, radius, window, smoothing=1):
    """C(p, d) for every displacement of :func:`displacements` (radius): the box mean of the
    squared dot product of the fixed directions at p and the moving directions at p + d
    (zero outside the volume), averaged again over ``smoothing``^3 voxels (1: not at all).

    Each displacement's dot products come from one shifted slice of the padded moving
    directions, and the two box means are one pass (:func:`dgan.losses.box_sum`): at 2 mm
    about half the time of gathering every voxel's neighbours and filtering twice.

    :param fixed_direction: n(R), shape = (B, X, Y, Z, 3)
    :param moving_direction: n(F), same shape
    :return: shape = (B, X, Y, Z, (2 radius + 1)^3), in [0, 1]
    """
    r = int(radius)
    size = [int(s) for s in fixed_direction.shape[1:4]]
    padded = tf.pad(moving_direction, [[0, 0], [r, r], [r, r], [r, r], [0, 0]])
    dots = []
    for d in displacements(r).astype(int) + r:  # the slice of padded that holds F's at p + d
        shifted = padded[:, d[0]:d[0] + size[0], d[1]:d[1] + size[1], d[2]:d[2] + size[2]]
        dots.append(tf.reduce_sum(fixed_direction * shifted, axis=-1))
    cost = tf.square(tf.stack(dots, axis=-1))
    return box_sum(cost, window, smoothing) / float(window**3 * smoothing**3)


def soft_argmax_flow(cost, radius, temperature):
    """phi(p) = sum_d d softmax(C(p, .) / temperature)_d, in the cost grid's voxels: (B, X, Y, Z, 3)."""
    weights = tf.nn.softmax(cost / temperature, axis=-1)
    return tf.tensordot(weights, tf.constant(displacements(radius)), [[4], [0]])


def block_match(moving, fixed, factor, radius, lg_window=DEFAULT_LG_WINDOW, window=DEFAULT_WINDOW,
                smoothing=DEFAULT_SMOOTHING, temperature=DEFAULT_TEMPERATURE):
    """One matching pass: moving F, fixed R (B, X, Y, Z, 1) -> phi (B, X, Y, Z, 3) in image voxels,
    with ``moved(p) = F(p + phi(p))``. X, Y, Z must be multiples of ``factor``."""
    cost = matching_cost(_pooled_directions(fixed, factor, lg_window),
                         _pooled_directions(moving, factor, lg_window), radius, window, smoothing)
    flow = soft_argmax_flow(cost, radius, temperature)
    if factor == 1:
        return flow
    return vxm.utils.rescale_dense_transform(flow, factor)  # up-sampled, displacements scaled


def warp(volume, flow):
    """moved(p) = volume(p + flow(p)), trilinear (VoxelMorph's transform): (B, X, Y, Z, C)."""
    return tf.map_fn(lambda pair: vxm.utils.transform(pair[0], pair[1], indexing="ij"),
                     (volume, flow), fn_output_signature=volume.dtype)


def compose(first, second):
    """The field of warping by ``first`` and then by ``second``: second(p) + first(p + second(p))."""
    return second + warp(first, second)


class BlockMatching(keras.layers.Layer):
    """Coarse-to-fine block matching, (moving, fixed) -> phi; no weights, no gradient.

    :param passes: ((factor, radius), ...), applied in order, each on the moving image warped
        by the previous passes
    """

    def __init__(self, passes, lg_window=DEFAULT_LG_WINDOW, window=DEFAULT_WINDOW,
                 smoothing=DEFAULT_SMOOTHING, temperature=DEFAULT_TEMPERATURE, **kwargs):
        kwargs["trainable"] = False  # no weights; also when rebuilt from its config
        super().__init__(**kwargs)
        self.passes = tuple((int(f), int(r)) for f, r in passes)
        if not self.passes:
            raise ValueError("BlockMatching needs at least one (factor, radius) pass")
        for factor, radius in self.passes:
            if factor < 1 or factor & (factor - 1) or radius < 1:
                raise ValueError(f"a matching pass needs a power-of-two factor and a radius >= 1, "
                                 f"got ({factor}, {radius})")
        self.lg_window, self.window = int(lg_window), int(window)
        self.smoothing, self.temperature = int(smoothing), float(temperature)

    def call(self, inputs):
        moving, fixed = (tf.stop_gradient(x) for x in inputs)
        flow = None
        for factor, radius in self.passes:
            source = moving if flow is None else warp(moving, flow)
            step = block_match(source, fixed, factor, radius, self.lg_window, self.window,
                               self.smoothing, self.temperature)
            flow = step if flow is None else compose(flow, step)
        return tf.stop_gradient(flow)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (3,)

    def get_config(self):
        return {**super().get_config(), "passes": [list(p) for p in self.passes],
                "lg_window": self.lg_window, "window": self.window,
                "smoothing": self.smoothing, "temperature": self.temperature}
