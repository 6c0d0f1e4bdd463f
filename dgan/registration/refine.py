"""Instance refinement: polish one pair's field phi with Deform-GAN's own objective.

Deform-GAN's T (Zhang et al. 2020, arXiv:2002.11430) predicts phi in one pass. Refinement then
takes a fixed number of Adam steps on this one pair, starting from T's field (or from the
identity), with G frozen and only the field changing:

    L(phi) = w_lcc (1 - L_LCC(R, G(F)(phi))) + beta (1 - L_LG(R, F(phi))) + alpha sum |grad phi|^2

the T objective of :mod:`dgan.training.trainers` (terms from :mod:`dgan.core.losses`). By default
the smoothness term acts on the change refinement makes, phi - phi_0, rather than on phi
(``RefineConfig.smooth``): T's field keeps its detail. Two approximations make a step cheap:

- **G runs once.** G is a convolutional network, so for a smooth phi it commutes with the warp:
  G(F(phi)) ~= G(F)(phi). The caller translates the moving image once (``translated`` = G(F)) and
  every step warps it with phi together with F. Without G (``translated`` None, or w_lcc = 0) the
  L_LCC term is left out: L_LG and smoothness alone register across modalities with no training.
- **R's terms are computed once per level**: its local gradient directions n(R, p)
  (:func:`dgan.core.losses.local_gradient_direction`) and its window sums S(R), S(R^2)
  (:func:`dgan.core.losses.local_statistics`).

Coarse to fine: at level ``f`` (a power of two from ``levels``, e.g. 2 then 1) the images are
halved f times (2x box averaging per halving) and the optimised field u lives on a grid
``control`` times coarser still; it is upsampled to the level's grid by separable linear
interpolation (three small matrix products, whose gradients are the transposed products). Each
level starts from the previous level's u, upsampled; Adam's moments restart.

- Displacement (``int_steps`` = 0): phi = phi_0 + up(u), u = 0 at the start. The smoothness of
  the change, phi - phi_0 = up(u), is then a quadratic form in u, u . G u, with G banded
  (:func:`smoothness_bands`): it is computed on the control grid, exactly, for a fraction of the
  cost on the level's grid; that of phi itself (``smooth`` "flow") is c + g . u + u . G u, with
  c and g computed once per level (:func:`smoothness_offset`).
- Diffeomorphic (``int_steps`` = K > 0): u is a stationary velocity field; psi = up(exp(u)),
  exp by scaling and squaring on the control grid (u / 2^K composed with itself K times), and
  phi = phi_0 o psi, i.e. phi(p) = psi(p) + phi_0(p + psi(p)): T's moved image warped by the
  diffeomorphism psi, which does not fold.

Warping is trilinear with edge values beyond the border, as VoxelMorph's ``SpatialTransformer``,
written here as eight gathers so that its gradient with respect to the field costs no scatter.
Everything runs in float32 on fixed shapes; for a given input the result is deterministic. An
iteration is traced once per level shape in a process and compiled with XLA on levels large enough
to earn the compilation back (``RefineConfig.xla``); with XLA, in three pieces (the warped
channels and the warp's slopes, the objective and its gradient with respect to phi, the chain rule
back to the control field and Adam's update) so that XLA does not fuse the warp into the
local-gradient sums (:class:`_CompiledStep`). L_LG's directions are taken as the central
differences of the window sums (``sums_first`` of
:func:`dgan.core.losses.local_gradient_direction`): the same away from the volume's faces, for a
third of the sums.

Flow convention as everywhere in dgan: displacement in voxels of the grid it lives on, 'ij'
indexing, moved(p) = moving(p + flow(p)).
"""

import collections
import dataclasses
import functools
import logging
import time

import numpy as np

from .. import compat
from ..compat import tf
from ..core import coverage, losses
from ..core.spatial import (cell_index, cell_position, gather_corners, grid_axes,
                            grid_from_axes, interpolate, interpolation_matrix,
                            interpolation_slopes, resize, resize_flow, resize_matrices,
                            voxel_grid, warp)
from ..core.settings import DEFAULT_LG_EPS
from ..errors import InputError
from .settings import RefineConfig, level_voxels, within_budget

logger = logging.getLogger(__name__)

#: A coarse level is left out when its grid would be narrower than this along an axis
#: (:func:`usable_levels`).
MIN_LEVEL_VOXELS = 16
#: A fine level is left out when its grid would hold more than this many voxels (256^3; a 1 mm
#: whole head has about 11 million): refinement's memory and time grow with the grid (its
#: finest level holds about 150 bytes a voxel), and a scan of 0.5-0.7 mm voxels would not fit
#: a workstation's memory; its field is then refined on a grid a power of two coarser
#: (:func:`usable_levels`).
MAX_LEVEL_VOXELS = 2**24

#: Adam's moment decay rates and epsilon.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclasses.dataclass(frozen=True, eq=False)
class RefineResult:
    """Result of :func:`refine`.

    :param flow: the refined phi, shape = (X, Y, Z, 3), float32, voxels
    :param losses: L at every iteration, one list per level (coarse to fine)
    :param seconds: wall time of each level
    """

    flow: np.ndarray
    losses: list
    seconds: list


#: Half-width of the bands of :func:`smoothness_bands`: linear interpolation's U^T U is
#: tridiagonal, and (D U)^T (D U) pentadiagonal.
SMOOTHNESS_BAND = 2


def smoothness_bands(control_shape, shape):
    """The smoothness term of a field up-sampled from the control grid, as an operator on it.

    With up = U_x (x) U_y (x) U_z the separable linear up-sampling of :func:`resize` from
    ``control_shape`` to ``shape`` and D_d the forward difference along axis d,
    :func:`dgan.core.losses.smoothness` of up(u) is the quadratic form u . G u, G = sum over d of
    K_d (x) M_a (x) M_b: M = U^T U along the other two axes, K_d = (D_d U_d)^T (D_d U_d) / N_d
    along d (N_d the number of differences). Each matrix is banded (:data:`SMOOTHNESS_BAND`),
    so G u costs a few multiply-adds per control voxel (:func:`smoothness_operator`) where the
    term on the level's grid costs passes over a grid control^3 times larger, and its gradient,
    2 G u, likewise.

    :return: per axis, (M, K) as diagonals (2 b + 1, c), float32: ``[k + b, i]`` = entry
        (i, i + k), 0 beyond the ends; computed in float64
    """
    band, bands = SMOOTHNESS_BAND, []
    for c, n in zip(control_shape, shape):
        up = interpolation_matrix(c, n, np.float64)
        count = (n - 1) * np.prod(shape) / n
        difference = np.diff(up, axis=0)
        pair = []
        for matrix in (up.T @ up, difference.T @ difference / max(count, 1)):
            i, j = np.nonzero(matrix)
            assert np.all(np.abs(i - j) <= band), "interpolation's Gram matrix wider than its band"
            diagonals = np.zeros((2 * band + 1, c))
            for k in range(-band, band + 1):
                rows = np.arange(max(0, -k), min(c, c - k))
                diagonals[k + band, rows] = matrix[rows, rows + k]
            pair.append(tf.constant(diagonals.astype(np.float32)))
        bands.append(tuple(pair))
    return bands


def _banded_product(volume, diagonals, axis):
    """The banded matrix of ``diagonals`` (:func:`smoothness_bands`) times ``volume`` along
    ``axis``: shifted slices of the zero-padded volume times the diagonals."""
    band = (diagonals.shape[0] - 1) // 2
    n = volume.shape[axis]
    padding = [[0, 0]] * len(volume.shape)
    padding[axis] = [band, band]
    padded = tf.pad(volume, padding)
    broadcast = [1] * len(volume.shape)
    broadcast[axis] = n
    begin, size = [0] * len(volume.shape), list(volume.shape)
    terms = []
    for k in range(2 * band + 1):
        begin[axis] = k
        terms.append(tf.reshape(diagonals[k], broadcast) * tf.slice(padded, begin, size))
    return tf.add_n(terms)


def smoothness_operator(u, bands):
    """G u of :func:`smoothness_bands` for u on the control grid (x, y, z, C)."""
    (m_x, k_x), (m_y, k_y), (m_z, k_z) = bands
    along_z = _banded_product(u, m_z, 2)
    term_x = _banded_product(_banded_product(along_z, m_y, 1), k_x, 0)
    term_yz = _banded_product(_banded_product(along_z, k_y, 1)
                              + _banded_product(_banded_product(u, k_z, 2), m_y, 1), m_x, 0)
    return term_x + term_yz


def control_smoothness(u, bands):
    """sum |grad up(u)|^2 = u . G u (:func:`smoothness_bands`), with its gradient 2 G u."""
    @tf.custom_gradient
    def quadratic_form(u):
        g_u = smoothness_operator(u, bands)
        return tf.reduce_sum(u * g_u), lambda upstream: 2.0 * upstream * g_u

    return quadratic_form(u)


def smoothness_offset(base, upsample):
    """The smoothness of a whole displacement field phi = phi_0 + up(u), as terms on the control
    grid: sum |grad phi|^2 = c + g . u + u . G u, with G of :func:`smoothness_bands`,
    c = sum |grad phi_0|^2 and g = 2 up^T D^T D phi_0 (the term is quadratic in u, so g is its
    gradient at u = 0). Computed once per level, on its grid; each iteration then costs what the
    smoothness of phi - phi_0 costs.

    In closed form, without a tape: the gradient of sum over axes d of mean (D_d phi)^2 is
    sum over d of 2 D_d^T D_d phi / N_d (N_d: the differences along d), and up^T is the resize
    by the transposed matrices.

    :param base: phi_0 on the level's grid (x, y, z, 3)
    :param upsample: the control grid -> level grid matrices (:func:`resize_matrices`)
    :return: (g (the control grid's shape + (3,)), c (scalar)), float32 tensors
    """
    base = tf.convert_to_tensor(base, tf.float32)
    transposed = [tf.transpose(m) for m in upsample]
    linear, constant = [], []
    for component in range(base.shape[-1]):  # one at a time: a third of the temporaries
        phi = base[..., component:component + 1]
        gradient = tf.zeros_like(phi)
        for axis in range(3):
            difference = tf.experimental.numpy.diff(phi, axis=axis)
            scale = 2.0 / float(np.prod(difference.shape[:3]))
            before, after = [[0, 0]] * 4, [[0, 0]] * 4
            before[axis], after[axis] = [1, 0], [0, 1]
            # D^T applied to the differences: -d at the lower voxel of each pair, +d at the upper
            gradient += scale * (tf.pad(difference, before) - tf.pad(difference, after))
        linear.append(resize(gradient, transposed))
        constant.append(losses.smoothness(phi[tf.newaxis])[0])
    return tf.concat(linear, axis=-1), tf.add_n(constant)


def exponentiate(velocity, steps, grid):
    """exp(v) by scaling and squaring: d = v / 2^K, then K times d <- d + d(p + d(p))."""
    flow = velocity / float(2**steps)
    for _ in range(steps):
        flow = flow + warp(flow, flow, grid)
    return flow


# --- one level ---------------------------------------------------------------------------------


class _StepSettings(collections.namedtuple("_StepSettings", [
        "learning_rate", "alpha", "beta", "w_lcc", "lg_window", "lcc_window", "lcc_stride",
        "int_steps", "smooth"])):
    """What an iteration needs of :class:`RefineConfig`, as plain numbers in a namedtuple:
    ``tf.function`` keys its traces on their values, so every pair and every iteration count
    reuses one trace (and one XLA compilation) per level shape. A dataclass would be keyed on
    the object's identity: a trace per call."""

    @classmethod
    def of(cls, config):
        return cls(**{name: getattr(config, name) for name in cls._fields})


class _Level(collections.namedtuple("_Level", [
        "moving", "fixed", "fixed_direction", "fixed_statistics", "base", "control_grid",
        "upsample", "control_scale", "smoothness_bands", "smoothness_offset", "lg_weight",
        "lcc_weight", "moving_eps", "rendering", "axes"])):
    """Everything about one level that does not change during its iterations (tensors, so that
    the compiled step is reused for every pair of the same shape).

    moving: F and G(F) as channels (x, y, z, 1 or 2); fixed: R (1, x, y, z, 1); fixed_direction:
    n(R, p) (1, x, y, z, 3); fixed_statistics: S(R), S(R^2) (1, x, y, z, 2) or None without L_LCC;
    base: phi_0 on this level (x, y, z, 3); control_grid: the control grid's voxel coordinates
    (the level grid's are built where they are used, :func:`_grid`); upsample: the
    control grid -> level grid matrices; control_scale: level voxels -> control voxels (3,);
    smoothness_bands: :func:`smoothness_bands` for a displacement field (the smoothness of
    phi - phi_0 = up(u) is the control field's), else None; smoothness_offset: with ``smooth``
    "flow", (g, c) of :func:`smoothness_offset` (the smoothness of phi = phi_0 + up(u) is
    c + g . u + u . G u), else None.
    lg_weight, lcc_weight: weights of mean 1 (1, x, y, z) of L_LG's voxels and of L_LCC's
    (strided) window centres where both scans have data (:func:`dgan.core.coverage.level_weights`),
    or None: every voxel. moving_eps: the eps of n(F(phi), p) (a scalar tensor;
    :func:`_gradient_eps`). rendering: h of a :class:`dgan.registration.translation.Rendering` as
    tensors (low, spacing of its samples, values), applied to F(phi) for L_LCC, or None. axes:
    the level grid's :func:`dgan.core.spatial.grid_axes` (:func:`_grid`).
    """


def _gradient_eps(image, config, weight):
    """The eps of n(I, p) on a level: ``lg_noise`` times the median |v(I, p)| over the overlap
    (:func:`dgan.core.losses.gradient_scale`), or the loss's own tiny eps when ``lg_noise`` is 0."""
    if config.lg_noise == 0:
        return DEFAULT_LG_EPS
    scale = losses.gradient_scale(image, config.lg_window, weight, sums_first=True)
    return max(config.lg_noise * scale, DEFAULT_LG_EPS)


def _grid(level):
    """The level's voxel coordinates (x, y, z, 3), built inside the compiled step from its axes
    (:func:`dgan.core.spatial.grid_from_axes`): with XLA they cost no memory (at 1 mm, 80 MB)."""
    return grid_from_axes(level.axes)


def _field(level, u, config):
    """phi on the level's grid from the optimised control field u."""
    if config.int_steps:
        psi = exponentiate(u * level.control_scale, config.int_steps, level.control_grid)
        psi = resize(psi / level.control_scale, level.upsample)
        return psi + warp(level.base, psi, _grid(level))
    return level.base + resize(u, level.upsample)


def _moved(level, u, config):
    """phi on the level's grid and the moving channels warped by it, F(phi) (and G(F)(phi))."""
    flow = _field(level, u, config)
    return flow, warp(level.moving, flow, _grid(level))


def _similarity(level, warped, config):
    """L's image terms beta (1 - L_LG) + w_lcc (1 - L_LCC) from the warped channels (x, y, z, C)."""
    warped = warped[tf.newaxis]  # (1, x, y, z, C)
    loss = config.beta * (1.0 - losses.local_gradient_agreement(
        level.fixed_direction, warped[..., :1], config.lg_window, eps=level.moving_eps,
        sums_first=True, weight=level.lg_weight))
    if level.fixed_statistics is not None:
        rendered = warped[..., 1:] if level.rendering is None else \
            _rendered(level.rendering, warped[..., :1])
        loss += config.w_lcc * (1.0 - losses.correlation_from_statistics(
            level.fixed_statistics, level.fixed, rendered, config.lcc_window,
            stride=config.lcc_stride, weight=level.lcc_weight))
    return loss[0]


def _rendered(rendering, image):
    """h(image) for the table ``rendering`` = (low, spacing, values): linear between its samples,
    constant beyond them; differentiable in ``image`` (h's slope)."""
    low, spacing, values = rendering
    last = tf.cast(tf.shape(values)[0] - 1, tf.float32)
    position = tf.clip_by_value((image - low) / spacing, 0.0, last)
    index = tf.minimum(tf.floor(position), last - 1.0)
    below = tf.gather(values, tf.cast(index, tf.int32))
    above = tf.gather(values, tf.cast(index, tf.int32) + 1)
    return below + (position - index) * (above - below)


def _regularity(level, u, flow, config):
    """L's term alpha sum |grad phi|^2 (or of phi - phi_0): from u on the control grid where the
    level has :func:`smoothness_bands` (plus :func:`smoothness_offset`'s terms for phi), else
    from phi on the level's grid."""
    if level.smoothness_bands is not None:
        value = control_smoothness(u, level.smoothness_bands)
        if level.smoothness_offset is not None:
            linear, constant = level.smoothness_offset
            value += tf.reduce_sum(linear * u) + constant
        return config.alpha * value
    smoothed = flow - level.base if config.smooth == "residual" else flow
    return config.alpha * losses.smoothness(smoothed[tf.newaxis])[0]


def _objective(level, u, flow, warped, config):
    """L of the module docstring from u, phi and the warped channels (x, y, z, C)."""
    return _similarity(level, warped, config) + _regularity(level, u, flow, config)


def _adam(u, m, v, t, g, config):
    """One Adam step on u with gradient g."""
    b1, b2 = ADAM_BETAS
    t = t + 1.0
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = config.learning_rate * tf.sqrt(1 - b2**t) / (1 - b1**t)
    return u - step * m / (tf.sqrt(v) + ADAM_EPS), m, v, t


def _whole_step(level, u, m, v, t, config):
    """One iteration, L(u) on one tape: (u, m, v, t) after it, and L before it."""
    with tf.GradientTape() as tape:
        tape.watch(u)
        loss = _objective(level, u, *_moved(level, u, config), config)
    return (*_adam(u, m, v, t, tape.gradient(loss, u), config), loss)


# The same iteration in four pieces, compiled apart (:class:`_CompiledStep`).

def _locate(level, u, config):
    """phi on the level's grid and where each voxel's p + phi(p) falls: the flat index of its
    cell's lower corner (:func:`dgan.core.spatial.cell_index`), from which the next piece gathers
    the corners. Compiled together with the gathers, XLA recomputes the cell from phi and the
    grid inside each of the eight (eight reads of 24 bytes a voxel instead of one of 4)."""
    flow = _field(level, u, config)
    lower, _, _ = cell_position(flow, _grid(level))
    return flow, cell_index(lower, level.moving.shape[:3])


def _warp_apart(level, flow, index):
    """The moving channels warped by phi (x, y, z, C) and the warp's slopes d warped / d phi
    (x, y, z, 3, C), 0 where p + phi(p) is clamped at the border, from the cells' ``index``
    (:func:`_locate`): all the next piece needs of the eight corners (one gather per channel:
    XLA gathers one channel faster than two), in half their memory. The cell weights and
    inside flags are recomputed from phi here rather than handed over: a few operations a voxel
    against 24 bytes a voxel held between the pieces."""
    _, weight, inside = cell_position(flow, _grid(level))
    warped, slopes = [], []
    for c in range(level.moving.shape[-1]):
        corners = gather_corners(level.moving[..., c:c + 1], index)
        warped.append(interpolate(corners, weight))
        slopes.append(tf.concat([slope * inside[..., d:d + 1] for d, slope in
                                 enumerate(interpolation_slopes(corners, weight))], axis=-1))
    return tf.concat(warped, axis=-1), tf.stack(slopes, axis=-1)


def _objective_gradients(level, flow, warped, slopes, config):
    """L's terms on the level's grid and their gradient dL/dphi: the image terms' by the chain
    rule through the warp, their gradient with respect to the warped channels times the
    interpolation's slopes, plus the smoothness term's own when it is not the control field's."""
    with tf.GradientTape() as tape:
        tape.watch([flow, warped])
        loss = _similarity(level, warped, config)
        if level.smoothness_bands is None:
            loss += _regularity(level, None, flow, config)
    g_flow, g_warped = tape.gradient(loss, [flow, warped])
    g_position = tf.reduce_sum(g_warped[..., tf.newaxis, :] * slopes, axis=-1)
    return loss, (g_position if g_flow is None else g_flow + g_position)


def _adam_update(level, u, m, v, t, g_flow, config):
    """dL/du from dL/dphi by the chain rule through :func:`_field` (recomputed), plus the
    gradient of the smoothness term when it is the control field's; then Adam. Also returns that
    term (0 when it is the level grid's, and counted by :func:`_objective_gradients`)."""
    with tf.GradientTape() as tape:
        tape.watch(u)
        flow = _field(level, u, config)
        smooth = _regularity(level, u, None, config) if level.smoothness_bands is not None \
            else tf.constant(0.0)
    g = tape.gradient([flow, smooth], u, output_gradients=[g_flow, tf.ones_like(smooth)])
    return (*_adam(u, m, v, t, g, config), smooth)


class _CompiledStep:
    """One Adam iteration, called as ``step(level, u, m, v, t, settings)`` -> (u, m, v, t, L).

    ``split`` (with XLA, for displacement fields): in four pieces compiled apart: phi and its
    cells from u (:func:`_locate`), the warped channels and the warp's slopes from them
    (:func:`_warp_apart`), L and dL/dphi (:func:`_objective_gradients`), dL/du, with the
    smoothness term on the control grid, and the update (:func:`_adam_update`). Compiled as
    one cluster, XLA fuses the warp's gathers into the local-gradient sums and their backward
    pass and recomputes them there; apart, each corner is gathered once per iteration, and the
    warp's gradient is the interpolation's slopes, from the same corners, faster than gathering
    the warp again to differentiate it (docs/notes/benchmarks-history.md); handing over the
    warped values and slopes rather than the corners halves what is held between the pieces,
    and the cells' index rather than phi alone spares each gather recomputing the cell
    (docs/notes/2026-12-08-speed.md). Otherwise :func:`_whole_step`: without XLA nothing is
    fused, and a diffeomorphic field's integration would be recomputed by a later piece."""

    def __init__(self, jit_compile, split):
        compile_ = functools.partial(tf.function, jit_compile=jit_compile, autograph=False)
        if split:
            self.pieces = [compile_(_locate), compile_(_warp_apart),
                           compile_(_objective_gradients), compile_(_adam_update)]
            self.step = tf.function(self._pieces_step, autograph=False)
        else:
            self.pieces = []
            self.step = compile_(_whole_step)

    def _pieces_step(self, level, u, m, v, t, config):
        locate, warp_, gradients, update = self.pieces
        flow, index = locate(level, u, config)
        warped, slopes = warp_(level, flow, index)
        loss, g_flow = gradients(level, flow, warped, slopes, config)
        u, m, v, t, smooth = update(level, u, m, v, t, g_flow, config)
        return u, m, v, t, loss + smooth

    def __call__(self, level, u, m, v, t, config):
        return self.step(level, u, m, v, t, config)

    def tracing_count(self):
        return sum(f.experimental_get_tracing_count() for f in [*self.pieces, self.step])


def _compiled_step(config, shape):
    """The :class:`_CompiledStep` for a level of images of ``shape`` under ``config``."""
    xla = config.uses_xla(shape)
    return _compiled_steps[xla, xla and config.int_steps == 0]


_compiled_steps = {(False, False): _CompiledStep(jit_compile=False, split=False),
                   (True, False): _CompiledStep(jit_compile=True, split=False),
                   (True, True): _CompiledStep(jit_compile=True, split=True)}
_field_function = tf.function(_field, autograph=False)


def _level_shapes(shape, levels, control):
    """{factor: shape} of the image pyramid (repeated ceil halving) and of the control grids."""
    shapes, current, factor = {}, tuple(shape), 1
    while factor <= max(levels) * control:
        shapes[factor] = current
        current = tuple(max(1, -(-n // 2)) for n in current)
        factor *= 2
    return shapes


def _pyramid(volume, shapes, factor):
    """(X, Y, Z, C) halved down to ``shapes[factor]``."""
    f = 1
    while f < factor:
        volume = resize(volume, resize_matrices(shapes[f], shapes[2 * f]))
        f *= 2
    return volume


def _prepare_level(shapes, factor, config, moving, fixed, base, mask=None, rendering=None):
    shape, control_shape = shapes[factor], shapes[factor * config.control]
    lg_weight = lcc_weight = None
    two_channels = moving.shape[-1] == 2 or rendering is not None  # L_LCC's term
    if mask is not None:  # a window reaches its radius, and sums_first's difference one more
        lg_weight = coverage.level_weights(mask, factor, config.lg_window // 2 + 2)
        if two_channels:
            lcc_weight = coverage.level_weights(mask, factor, config.lcc_window // 2 + 1,
                                                config.lcc_stride)
    fixed_l = _pyramid(fixed, shapes, factor)[tf.newaxis]  # (1, x, y, z, 1)
    moving_l = _pyramid(moving, shapes, factor)
    base_l = resize_flow(base, shape) if factor > 1 else base
    lg_weight = None if lg_weight is None else tf.constant(lg_weight)
    upsample = resize_matrices(control_shape, shape)
    return _Level(
        moving=moving_l,
        fixed=fixed_l,
        fixed_direction=losses.local_gradient_direction(
            fixed_l, config.lg_window, _gradient_eps(fixed_l, config, lg_weight),
            sums_first=True),
        fixed_statistics=losses.local_statistics(fixed_l, config.lcc_window, config.lcc_stride)
        if two_channels else None,
        base=base_l,
        control_grid=voxel_grid(control_shape),
        upsample=upsample,
        control_scale=tf.constant([c / n for c, n in zip(control_shape, shape)], tf.float32),
        smoothness_bands=smoothness_bands(control_shape, shape) if config.int_steps == 0 else None,
        smoothness_offset=smoothness_offset(base_l, upsample)
        if config.int_steps == 0 and config.smooth == "flow" else None,
        lg_weight=lg_weight,
        lcc_weight=None if lcc_weight is None else tf.constant(lcc_weight),
        moving_eps=tf.constant(_gradient_eps(moving_l[tf.newaxis, ..., :1], config, lg_weight),
                               tf.float32),
        rendering=rendering,
        axes=grid_axes(shape),
    )


# --- the whole refinement ----------------------------------------------------------------------


def refine(moving, fixed, flow=None, translated=None, config=None, progress=None, mask=None,
           rendering=None):
    """Refine phi on one pair by minimising L (module docstring), coarse to fine.

    :param moving: F, intensities scaled as in training, shape = (X, Y, Z)
    :param fixed: R, same shape and scaling
    :param flow: phi_0, shape = (X, Y, Z, 3), voxels; None: the identity (zero field)
    :param translated: G(F), the moving image rendered in the fixed modality, shape (X, Y, Z);
        None: no L_LCC term (L_LG and smoothness alone)
    :param config: :class:`RefineConfig` (default settings when None)
    :param progress: called after each level as ``progress(text)``, or None
    :param mask: where both scans have data, bool, shape = (X, Y, Z)
        (:func:`dgan.core.coverage.overlap`), or None: everywhere. The image terms are then the
        means over the voxels whose windows lie inside it at each level: the edge of a scan's
        coverage does not pull on phi
    :param rendering: without ``translated``, a :class:`dgan.registration.translation.Rendering`
        h: L_LCC then compares R with h(F(phi)), h applied to the warped moving image inside the
        objective (one warped channel); None: no such term
    :return: :class:`RefineResult`
    :raises InputError: arrays of different shapes or with NaN/Inf; a mask of another shape, or
        empty
    """
    config = RefineConfig() if config is None else config
    shape = tuple(np.shape(fixed))
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            raise InputError(f"mask has shape {mask.shape}, expected {shape}")
        coverage.weights(mask)  # refuses an empty one
        mask = None if mask.all() else mask
    moving = _checked(moving, shape, "moving")
    fixed = _checked(fixed, shape, "fixed")
    base = np.zeros(shape + (3,), np.float32) if flow is None else \
        _checked(flow, shape + (3,), "flow")
    use_lcc = translated is not None and config.w_lcc > 0
    channels = [moving, _checked(translated, shape, "translated")] if use_lcc else [moving]
    table = None
    if rendering is not None and translated is None and config.w_lcc > 0:
        samples = len(rendering.values)
        table = (tf.constant(rendering.low, tf.float32),
                 tf.constant((rendering.high - rendering.low) / (samples - 1), tf.float32),
                 tf.constant(np.asarray(rendering.values, np.float32)))
    if config.steps == 0:
        return RefineResult(flow=base.copy(), losses=[], seconds=[])
    shapes = _level_shapes(shape, config.levels, config.control)
    moving_t = tf.constant(np.stack(channels, axis=-1))
    fixed_t = tf.constant(fixed[..., np.newaxis])
    base_t = tf.constant(base)
    u, previous = None, None
    history, seconds = [], []
    step_config = _StepSettings.of(config)
    for factor in config.levels:
        started = time.perf_counter()
        level = _prepare_level(shapes, factor, config, moving_t, fixed_t, base_t, mask, table)
        control_shape = shapes[factor * config.control]
        if u is None:
            u = tf.zeros(control_shape + (3,), tf.float32)
        else:  # the previous level's control field, in this level's voxels
            u = resize_flow(u, control_shape) if previous != control_shape else u
        m, v, t = tf.zeros_like(u), tf.zeros_like(u), tf.constant(0.0)
        step = _compiled_step(config, shapes[factor])
        values = []
        for _ in range(config.steps):
            try:
                u, m, v, t, loss = step(level, u, m, v, t, step_config)
            except tf.errors.OpError as error:
                raise compat.compile_cache_error(error, config.uses_xla(shapes[factor])) from error
            values.append(float(loss))
        previous = control_shape
        seconds.append(time.perf_counter() - started)
        history.append(values)
        if progress is not None:
            progress(f"refinement level 1/{factor} {shapes[factor]}: {config.steps} steps, "
                     f"loss {values[0]:.4f} -> {values[-1]:.4f}, {seconds[-1]:.1f} s")
    field = _field_function(level, u, step_config)
    if config.levels[-1] > 1:
        field = resize_flow(field, shape)
    return RefineResult(flow=np.asarray(field, np.float32), losses=history, seconds=seconds)


def usable_levels(shape, levels):
    """The levels (down-sampling factors, coarse to fine) of ``shape`` whose grid holds at most
    :data:`MAX_LEVEL_VOXELS` voxels (when none does, the coarsest doubled until it does) and keeps
    at least :data:`MIN_LEVEL_VOXELS` voxels along every axis (the finest of those left always): a
    level a few voxels across holds too little of the anatomy to align and misleads the finer
    ones."""
    fitting = [f for f in levels if level_voxels(shape, f) <= MAX_LEVEL_VOXELS] or \
        [within_budget(shape, levels[0], MAX_LEVEL_VOXELS)]
    kept = [f for f in fitting if min(-(-n // f) for n in shape) >= MIN_LEVEL_VOXELS]
    return kept or [fitting[-1]]


def _checked(array, shape, name):
    array = np.asarray(array, dtype=np.float32)
    if array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} has NaN or Inf values")
    return array
