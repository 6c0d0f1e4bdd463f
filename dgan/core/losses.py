"""Deform-GAN's loss terms (Zhang et al. 2020, arXiv:2002.11430), as pure functions and Keras
layers.

Every function takes tensors of shape (B, X, Y, Z, C) (C = 1 for images, 3 for a flow field) and
returns one value per batch element, shape (B,), in the dtype of its input. Reduction over the batch
happens in exactly one place, :class:`dgan.training.trainers.DeformGAN`, so the values stay correct
under ``tf.distribute``.

Similarities (higher is better, in [0, 1]):

- :func:`local_gradient_similarity`, the paper's L_LG. For every voxel p, each spatial derivative
  of image I (central differences, edge-replicated) is summed over an n^3 neighbourhood, giving a
  vector v(I, p) in R^3, normalised as n(I, p) = v / (|v| + eps). Then
  ``L_LG(R, F) = mean_p |n(R, p) . n(F, p)|``. The paper sums over voxels; we take the mean so
  that the weights beta and mu do not depend on the volume size. The absolute value makes it
  invariant to an intensity map a * I + b (a != 0), which is what makes it cross-modal.
- :func:`local_cross_correlation`, L_LCC: the squared local correlation coefficient over an
  n^3 window (zero-padded), averaged over voxels, as in VoxelMorph's NCC.

Losses (lower is better): ``1 - similarity`` for both, :func:`smoothness` (alpha's term),
:func:`l1` (lambda's term) and the least-squares GAN losses :func:`discriminator_loss` and
:func:`generator_adversarial_loss`. We use the least-squares objective (Mao et al. 2017), as
CycleGAN does for medical image translation, rather than the cross-entropy cGAN objective of
pix2pix: its gradients do not vanish when D wins early, which matters with batch size 1 and a
PatchGAN over 3D volumes. D is conditioned on the moved image F(phi), as in pix2pix.
"""

import numpy as np

from ..compat import keras, tf
from .settings import DEFAULT_LCC_EPS, DEFAULT_LCC_WINDOW, DEFAULT_LG_EPS, DEFAULT_LG_WINDOW


def _check_window(window):
    if int(window) != window or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive integer, got {window}")
    return int(window)


def box_sum(x, window, *more_windows, stride=1):
    """Sum of ``x`` over a ``window``^3 neighbourhood of every voxel, zero-padded at the borders;
    with ``more_windows``, that sum summed again over each of their neighbourhoods in turn
    (on static sizes in one pass: the windows' banded matrices are multiplied first, exactly,
    as they hold small integers).

    :param x: shape = (B, X, Y, Z, C)
    :param stride: the sums around every ``stride``-th voxel along each axis only, from voxel
        ``stride // 2`` (:func:`strided_centres`); on static sizes only the rows of the banded
        matrices for those voxels are multiplied
    :return: shape = (B, X, Y, Z, C), or (B, X', Y', Z', C) for the strided centres
    """
    windows = [w for w in (_check_window(w) for w in (window, *more_windows)) if w > 1]
    x = tf.convert_to_tensor(x)
    if not windows and stride == 1:
        return x
    if x.shape[1:4].is_fully_defined():
        return _banded_box_sum(x, windows, stride)
    for window in windows:
        x = _convolved_box_sum(x, window)
    start = stride // 2
    return x[:, start::stride, start::stride, start::stride] if stride > 1 else x


def strided_centres(n, stride):
    """The voxels along an axis of n that :func:`box_sum` with ``stride`` keeps."""
    return np.arange(stride // 2, n, stride)


def _convolved_box_sum(x, window):
    """:func:`box_sum` over one window for dynamic sizes: three 1D convolutions."""
    shape = tf.shape(x)
    channels = x.shape[-1]
    # channels into the batch axis, so one single-channel kernel serves them all
    x = tf.transpose(x, [0, 4, 1, 2, 3])  # (B, C, X, Y, Z)
    x = tf.reshape(x, [-1, shape[1], shape[2], shape[3], 1])  # (B*C, X, Y, Z, 1)
    ones = tf.ones([window], dtype=x.dtype)
    for axis in range(3):  # separable: three 1D sums instead of one window^3 kernel
        kernel_shape = [1, 1, 1, 1, 1]
        kernel_shape[axis] = window
        x = tf.nn.conv3d(x, tf.reshape(ones, kernel_shape), [1] * 5, padding="SAME")
    x = tf.reshape(x, [shape[0], channels, shape[1], shape[2], shape[3]])
    return tf.transpose(x, [0, 2, 3, 4, 1])


def _band(n, windows, dtype, stride=1):
    """(n, n) matrix whose product with v sums v over each window in turn (zeros beyond the
    ends): the product of the windows' band matrices of ones (|i - j| <= window // 2); with
    ``stride``, its rows for :func:`strided_centres` only."""
    i = np.arange(n)
    band = np.eye(n, dtype=np.int64)
    for window in windows:
        band = (np.abs(i[:, None] - i[None, :]) <= window // 2).astype(np.int64) @ band
    return tf.constant(band[strided_centres(n, stride)], dtype=dtype)


def _banded_box_sum(x, windows, stride=1):
    """:func:`box_sum` for static spatial sizes as three matrix products with banded matrices;
    on CPU several times faster than the separable convolution, backward pass included."""
    x_size, y_size, z_size = x.shape[1:4]
    x = tf.transpose(x, [1, 2, 3, 0, 4])  # (X, Y, Z, B, C)
    x = tf.tensordot(_band(x_size, windows, x.dtype, stride), x, [[1], [0]])  # (X, Y, Z, B, C)
    x = tf.tensordot(x, _band(y_size, windows, x.dtype, stride), [[1], [1]])  # (X, Z, B, C, Y)
    x = tf.tensordot(x, _band(z_size, windows, x.dtype, stride), [[1], [1]])  # (X, B, C, Y, Z)
    return tf.transpose(x, [1, 0, 3, 4, 2])  # (B, X, Y, Z, C)


def spatial_gradient(image):
    """Central differences of a single-channel image along x, y, z, edge-replicated at borders.

    d_x I(p) = (I(p + e_x) - I(p - e_x)) / 2, with I extended by its edge values.

    :param image: shape = (B, X, Y, Z, 1)
    :return: shape = (B, X, Y, Z, 3)
    """
    if image.shape[-1] != 1:
        raise ValueError(f"expected a single-channel image, got {image.shape[-1]} channels")
    padded = tf.pad(image, [[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    half = tf.constant(0.5, image.dtype)
    return tf.concat(
        [
            half * (padded[:, 2:, 1:-1, 1:-1] - padded[:, :-2, 1:-1, 1:-1]),
            half * (padded[:, 1:-1, 2:, 1:-1] - padded[:, 1:-1, :-2, 1:-1]),
            half * (padded[:, 1:-1, 1:-1, 2:] - padded[:, 1:-1, 1:-1, :-2]),
        ],
        axis=-1,
    )


def window_gradient(image, window, sums_first=False):
    """v(I, p): the spatial gradient of I summed over a window^3 neighbourhood, as the window sums
    of the central differences, or with ``sums_first`` the central differences of the window sums
    (:func:`local_gradient_direction`).

    :param image: shape = (B, X, Y, Z, 1), a tensor
    :return: shape = (B, X, Y, Z, 3)
    """
    if sums_first:
        return spatial_gradient(box_sum(image, window))
    return box_sum(spatial_gradient(image), window)


def local_gradient_direction(image, window=DEFAULT_LG_WINDOW, eps=DEFAULT_LG_EPS,
                             sums_first=False):
    """n(I, p) = v / (|v| + eps), v = the spatial gradient of I summed over a window^3
    neighbourhood.

    |v| is computed as sqrt(|v|^2 + tiny) so that its gradient stays finite where v = 0
    (flat or all-zero images); tiny is the dtype's smallest normal number.

    :param image: shape = (B, X, Y, Z, 1)
    :param sums_first: v as the central differences of I's window sums, D(B(I)), instead of the
        window sums of its central differences, B(D(I)). The two operators commute away from the
        volume's faces, so v is the same there, for one window sum of one channel instead of three
        (:func:`dgan.registration.refine` uses it). Within window // 2 + 1 voxels of a face the two
        differ, unless I is zero there. Where I is flat, the differences of sums carry round-off of
        about window^3 ulp(|I|), where the derivatives-first form gives exactly 0.
    :return: shape = (B, X, Y, Z, 3)
    """
    image = tf.convert_to_tensor(image)
    v = window_gradient(image, window, sums_first)
    tiny = tf.constant(np.finfo(image.dtype.as_numpy_dtype).tiny, image.dtype)
    norm = tf.sqrt(tf.reduce_sum(tf.square(v), axis=-1, keepdims=True) + tiny)
    return v / (norm + tf.cast(eps, image.dtype))


def gradient_scale(image, window=DEFAULT_LG_WINDOW, weight=None, quantile=0.5,
                   sums_first=False):
    """A quantile of |v(I, p)| (the window-summed gradient of :func:`local_gradient_direction`)
    over the voxels where ``weight`` > 0 (all voxels when None): the scale of I's gradients, from
    which an eps proportional to it makes n(I, p) short where I varies less than its edges do
    (noise, flat tissue) and leaves it near unit length on edges (as the noise level eta of
    normalised gradient fields, Haber and Modersitzki 2006).

    :param image: shape = (B, X, Y, Z, 1)
    :param weight: shape = (B, X, Y, Z) or None
    :return: a float (0.0 for a flat image)
    """
    v = window_gradient(tf.convert_to_tensor(image), window, sums_first)
    norm = tf.norm(v, axis=-1).numpy()  # float32: a scale, not a sum, needs no more
    if weight is not None:
        norm = norm[np.asarray(weight) > 0]
    return float(np.quantile(norm, quantile)) if norm.size else 0.0


def local_gradient_similarity(fixed, moving, window=DEFAULT_LG_WINDOW, eps=DEFAULT_LG_EPS):
    """L_LG(R, F) = mean over voxels p of |n(R, p) . n(F, p)|, in [0, 1].

    :param fixed: R, shape = (B, X, Y, Z, 1)
    :param moving: F, shape = (B, X, Y, Z, 1)
    :return: shape = (B,)
    """
    return local_gradient_agreement(local_gradient_direction(fixed, window, eps), moving, window, eps)


def local_gradient_agreement(fixed_direction, moving, window=DEFAULT_LG_WINDOW, eps=DEFAULT_LG_EPS,
                             sums_first=False, weight=None):
    """L_LG(R, F) from R's precomputed directions n(R, p): mean over p of |n(R, p) . n(F, p)|.

    For a fixed image R that does not change (instance refinement), n(R, p) is computed once.

    :param fixed_direction: n(R, p) from :func:`local_gradient_direction`, shape = (B, X, Y, Z, 3)
    :param moving: F, shape = (B, X, Y, Z, 1)
    :param sums_first: n(F, p) as :func:`local_gradient_direction`'s ``sums_first``
    :param weight: per-voxel weights of mean 1, shape = (B, X, Y, Z) (e.g. where both scans have
        data, :func:`dgan.core.coverage.weights`), or None: the plain mean
    :return: shape = (B,)
    """
    direction = local_gradient_direction(moving, window, eps, sums_first)
    agreement = tf.abs(tf.reduce_sum(fixed_direction * direction, axis=-1))
    if weight is not None:
        agreement = agreement * weight
    return tf.reduce_mean(agreement, axis=[1, 2, 3])


def local_cross_correlation(fixed, moving, window=DEFAULT_LCC_WINDOW, eps=DEFAULT_LCC_EPS):
    """L_LCC(R, F) = mean over voxels of cross^2 / (var_R * var_F + eps), in [0, 1].

    With sums S over the window^3 neighbourhood (zero-padded) and N = window^3:
    cross = S(RF) - S(R) S(F) / N, var_R = S(R^2) - S(R)^2 / N (clamped at 0), likewise var_F.
    A window where var_R or var_F is within round-off of 0 (:func:`flat_tolerance`) counts 0.

    :param fixed: R, shape = (B, X, Y, Z, 1)
    :param moving: F, shape = (B, X, Y, Z, 1)
    :return: shape = (B,)
    """
    fixed = tf.convert_to_tensor(fixed)
    return correlation_from_statistics(local_statistics(fixed, window), fixed, moving, window, eps)


def local_statistics(image, window=DEFAULT_LCC_WINDOW, stride=1):
    """The window sums of R that L_LCC needs, S(R) and S(R^2) (zero-padded).

    :param image: R, shape = (B, X, Y, Z, 1)
    :param stride: around every stride-th voxel only (:func:`box_sum`)
    :return: shape = (B, X, Y, Z, 2)
    """
    image = tf.convert_to_tensor(image)
    return box_sum(tf.concat([image, image * image], axis=-1), window, stride=stride)


def correlation_from_statistics(fixed_statistics, fixed, moving, window=DEFAULT_LCC_WINDOW,
                                eps=DEFAULT_LCC_EPS, stride=1, weight=None):
    """L_LCC(R, F) with R's window sums precomputed by :func:`local_statistics`.

    :param fixed_statistics: S(R), S(R^2), shape = (B, X, Y, Z, 2), with the same ``stride``
    :param fixed: R, shape = (B, X, Y, Z, 1)
    :param moving: F, shape = (B, X, Y, Z, 1)
    :param stride: the mean over the windows around every stride-th voxel along each axis
        (:func:`box_sum`) instead of all: an estimate of L_LCC from a stride^3-th of its windows
        (every voxel still lies in about (window / stride)^3 of them), for about a third of
        the multiply-adds of the window sums with stride 2
    :param weight: weights of mean 1 of the windows' centres (with ``stride``: of the strided
        centres), shape = (B, X', Y', Z'), or None: the plain mean
    :return: shape = (B,)
    """
    window = _check_window(window)
    fixed, moving = tf.convert_to_tensor(fixed), tf.convert_to_tensor(moving)
    count = tf.constant(float(window**3), fixed.dtype)
    s_r, s_rr = tf.unstack(fixed_statistics, axis=-1)
    s_f, s_ff, s_rf = tf.unstack(
        box_sum(tf.concat([moving, moving * moving, fixed * moving], axis=-1), window,
                stride=stride), axis=-1
    )
    zero = tf.constant(0.0, fixed.dtype)
    cross = s_rf - s_r * s_f / count
    var_r = tf.maximum(s_rr - s_r * s_r / count, zero)
    var_f = tf.maximum(s_ff - s_f * s_f / count, zero)
    cc = cross * cross / (var_r * var_f + tf.constant(eps, fixed.dtype))
    # A window where either image is flat to the precision of its sums has no correlation: its
    # cross term is then round-off alone, and divided by eps its gradient would be noise.
    tolerance = tf.constant(flat_tolerance(window, fixed.dtype), fixed.dtype)
    flat = tf.logical_or(var_r <= tolerance * s_rr, var_f <= tolerance * s_ff)
    cc = tf.where(flat, zero, cc)
    if weight is not None:
        cc = cc * weight
    return tf.reduce_mean(cc, axis=[1, 2, 3])


def flat_tolerance(window, dtype):
    """The largest var / S(I^2) that :func:`correlation_from_statistics` treats as a flat window.

    var = S(I^2) - S(I)^2 / N loses its digits to cancellation when I barely varies in the
    window: S(I^2) and S(I) come from three passes of ``window`` additions each, so each carries a
    relative error of at most 3 window u (u = eps / 2 the unit round-off), and S(I)^2 / N <=
    S(I^2), so var is off by at most about 9 window u S(I^2). Twice that: 9 window eps.
    """
    return 9 * window * float(np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps)


def smoothness(flow):
    """alpha's term, sum |grad phi|^2: sum over axes d and components c of mean_p (D_d phi_c)^2.

    D_d is the forward difference along axis d over the voxels where it is defined. For a linear
    field phi(x) = A x the value is ||A||_F^2; for a constant field it is 0.

    :param flow: shape = (B, X, Y, Z, 3)
    :return: shape = (B,)
    """
    terms = [
        flow[:, 1:] - flow[:, :-1],
        flow[:, :, 1:] - flow[:, :, :-1],
        flow[:, :, :, 1:] - flow[:, :, :, :-1],
    ]
    return tf.add_n([tf.reduce_sum(tf.reduce_mean(tf.square(d), axis=[1, 2, 3]), -1) for d in terms])


def l1(a, b):
    """Mean absolute difference per example, lambda's term L1(F'(phi), R).

    :return: shape = (B,)
    """
    return tf.reduce_mean(tf.abs(a - b), axis=list(range(1, a.shape.rank)))


#: Least-squares GAN targets for D's scores.
REAL_LABEL = 1.0
FAKE_LABEL = 0.0


def discriminator_loss(real_scores, fake_scores):
    """LSGAN loss for D: 0.5 * mean (D(real) - 1)^2 + 0.5 * mean D(fake)^2 over patches.

    :param real_scores: D(F(phi), R), shape = (B, ...)
    :param fake_scores: D(F(phi), F'(phi)), shape = (B, ...)
    :return: shape = (B,)
    """
    axes = list(range(1, real_scores.shape.rank))
    half = tf.constant(0.5, real_scores.dtype)
    real = tf.reduce_mean(tf.square(real_scores - REAL_LABEL), axis=axes)
    fake = tf.reduce_mean(tf.square(fake_scores - FAKE_LABEL), axis=axes)
    return half * (real + fake)


def generator_adversarial_loss(fake_scores):
    """LSGAN loss for G: mean over patches of (D(F(phi), F'(phi)) - 1)^2.

    :return: shape = (B,)
    """
    return tf.reduce_mean(tf.square(fake_scores - REAL_LABEL), axis=list(range(1, fake_scores.shape.rank)))


class _WindowedSimilarity(keras.layers.Layer):
    """A Keras layer over a windowed similarity function: ``[R, F]`` -> shape (B,)."""

    function = None  # set by each subclass
    default_window = None
    default_eps = None

    def __init__(self, window=None, eps=None, **kwargs):
        super().__init__(**kwargs)
        self.window = _check_window(self.default_window if window is None else window)
        self.eps = float(self.default_eps if eps is None else eps)

    def build(self, input_shape):
        _check_image_pair(self, input_shape)
        super().build(input_shape)

    def call(self, inputs):
        fixed, moving = inputs
        return type(self).function(fixed, moving, self.window, self.eps)

    def get_config(self):
        return {**super().get_config(), "window": self.window, "eps": self.eps}


class LocalGradientSimilarity(_WindowedSimilarity):
    """Keras layer for :func:`local_gradient_similarity`: ``[R, F]`` -> L_LG, shape (B,)."""

    function = staticmethod(local_gradient_similarity)
    default_window = DEFAULT_LG_WINDOW
    default_eps = DEFAULT_LG_EPS


class LocalCrossCorrelation(_WindowedSimilarity):
    """Keras layer for :func:`local_cross_correlation`: ``[R, F]`` -> L_LCC, shape (B,)."""

    function = staticmethod(local_cross_correlation)
    default_window = DEFAULT_LCC_WINDOW
    default_eps = DEFAULT_LCC_EPS


def _check_image_pair(layer, input_shape):
    if len(input_shape) != 2:
        raise ValueError(f"{layer.name} takes [fixed, moving], got {len(input_shape)} inputs")
    a, b = (tf.TensorShape(s) for s in input_shape)
    if a.rank != 5 or not a.is_compatible_with(b) or a[-1] != 1:
        raise ValueError(
            f"{layer.name} takes two single-channel volumes of shape (B, X, Y, Z, 1), got {a} and {b}"
        )
