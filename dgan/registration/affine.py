"""Affine pre-alignment: the 12-parameter world transform that brings a moving scan onto a fixed
one.

Deform-GAN's T (Zhang et al. 2020, arXiv:2002.11430) and instance refinement learn small, smooth
deformations; scans from two sessions or scanners differ first by a head rotation, a translation
and a global scale. This module estimates that affine part, cross-modally, before them.

**The transform.** ``matrix`` (4 x 4) maps a point x of the fixed scan's world (RAS millimetres, as
the NIfTI affines of :mod:`dgan.data.io`) to the corresponding point y = matrix x of the moving
scan's world: the moving scan aligned to the fixed one is ``moving(matrix x)``, the convention of
ITK and ANTs transforms (:mod:`dgan.registration.itk` writes it for ``antsApplyTransforms``). With
the centres of mass c_F (fixed) and c_M (moving):

    y = c_M + t + M (x - c_F)

t in mm, M a 3 x 3 matrix. Optimised:

1. **Starts**: the headers' alignment (t = c_F - c_M, M = I: y = x), the centres of mass
   (t = 0, M = I), and the centres of mass rotated by +-``restart_deg`` about each axis. The
   centres of mass of two scans with different coverage (a slab, a whole head) are not the same
   point, so the headers compete with them rather than being replaced by them.
2. **Rigid** at the coarsest level: M = R(theta), three Euler angles, from every start, keeping
   the one with the best objective.
3. **Affine**, coarse to fine (8, 4, 2 mm by default): M = M_0 (I + K / r), the nine entries of
   K free (scales, shears and rotations; r = :data:`RADIUS_MM` makes one unit of K move a point
   at r mm from the centre by about 1 mm, like one unit of t), M_0 the previous level's M.

**The decision.** At the end the objective is evaluated at the headers' alignment too, on the
same samples: :attr:`AffineResult.gain` is the relative gain of the similarity, and
:meth:`AffineResult.improves` says whether it reaches :data:`MIN_GAIN`. ``--affine auto``
applies the transform only then: a stage that cannot show a clear gain leaves a pair its
headers align where it is.

Every level runs a fixed number of Adam steps (step size in mm, decaying linearly to a tenth)
inside one ``tf.function``; the parameter vector is all that changes. The same input gives the
same result (the point subset is drawn from a seeded generator; no other randomness).

**The similarity** is mutual information (Mattes et al. 2003): at every level the fixed scan is
sampled at (at most ``max_points``, a seeded subset) voxel centres of its level grid inside its
foreground shrunk by 4 mm (``margin_mm``), the moving scan is sampled trilinearly at their images y,
and the joint histogram, over the samples that land inside the moving scan (and its mask: outside
there is no data, which is not intensity 0), of the two intensities (``bins`` bins; the fixed side
binned, the moving side spread by a cubic B-spline so that it is differentiable in y) gives MI = sum
p(a, b) log p(a, b) / (p(a) p(b)). MI, rather than the paper's local-gradient similarity, and the
foreground's interior, rather than the foreground grown by a margin, were the more accurate across
modalities on the affine benchmark (docs/notes/benchmarks-history.md): the brain's outline differs
between a T1 and a T2-like image.
"""

import dataclasses
import functools
import itertools
import logging
import time

import numpy as np
from scipy import ndimage

from .. import compat
from ..compat import tf
from ..core import coverage
from ..data import io as dio
from ..errors import InputError
from .settings import AFFINE_MARGIN_MM, XLA_CHOICES, compiles_with_xla

logger = logging.getLogger(__name__)

#: One unit of the rotation and affine parameters moves a point this far from the centre by
#: about 1 mm: all parameters then live on the scale of the translation (mm) for Adam.
RADIUS_MM = 50.0
#: The affine stage's transform replaces the headers' alignment (``--affine auto``) only when it
#: raises the similarity on the overlap by at least this fraction of its value there: on a pair
#: the headers align, the optimiser still finds a transform that fits the samples' noise
#: slightly better, and that is no reason to move the scan.
MIN_GAIN = 0.05
#: A level's grid must have at least this many voxels along every axis (at 8 mm a brain
#: spans about 20; a coarser grid holds too few voxels of the object to align).
MIN_LEVEL_VOXELS = 16
#: The fixed scan's size from which ``AffineConfig.xla`` ``"auto"`` compiles the optimiser with
#: XLA: about 50^3 voxels, below every real scan's (a 1 mm spinal-cord scan has 2.5 x 10^5) and
#: above the tests' phantoms, whose compilations would outlast their runs.
XLA_MIN_VOXELS = 2**17
#: The optimiser's inputs are padded to shapes in steps of these (voxels of a level's moving
#: scan per axis; MI samples), so that the scans of a dataset, whose grids and foregrounds differ
#: a little, meet a few compiled programs instead of one each (XLA compiles every new shape,
#: about 1 s each). Costs at most one bucket of padding: zeros, or samples that add nothing.
SHAPE_BUCKET = 16
POINT_BUCKET = 2048
#: Where padding samples lie (mm from the fixed scan's centre): outside any moving scan.
FAR_MM = 1.0e6
#: Normalised intensity above which a voxel counts as foreground (brain or head) for the
#: centre-of-mass-free measures: RMS displacement, overlap.
FOREGROUND = 0.05
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class AffineConfig:
    """Settings of :func:`estimate_affine`; the defaults were chosen on the affine benchmark
    (``dgan-bench-affine``; docs/notes/benchmarks-history.md).

    :param levels_mm: pyramid voxel sizes in mm, coarse to fine; a level finer than the fixed
        scan's own voxels runs at its voxels, a level whose grid would have fewer than
        :data:`MIN_LEVEL_VOXELS` voxels along an axis is left out
    :param rigid_steps: Adam steps of the rigid stage, per start, at the coarsest level
    :param steps: Adam steps of the affine stage at each level (one number per level)
    :param learning_rate: Adam's step at the coarsest level, mm (and mm-scaled units); each
        finer level halves it
    :param restart_deg: the rigid stage's extra starts rotate by +-this about each axis
    :param bins: histogram bins of MI
    :param max_points: MI samples at most this many fixed voxels per level (a seeded subset)
    :param margin_mm: MI samples the fixed foreground grown by this many mm (negative: shrunk,
        its interior: measured, the outline of a brain biases MI across modalities)
    :param seed: seed of the point subsets
    :param xla: ``"auto"``: compile the optimiser with XLA for fixed scans of at least
        :data:`XLA_MIN_VOXELS` voxels; ``"on"``, ``"off"``. XLA fuses each Adam step's few hundred
        small ops (the samples' gathers, the histogram, the gradient) into a few kernels: a level
        runs 3-4 times faster, after a compilation per level shape that the compile cache
        (:func:`dgan.compat.use_compile_cache`) keeps on disk for later processes
    """

    levels_mm: tuple = (8.0, 4.0, 2.0)
    rigid_steps: int = 40
    steps: tuple = (60, 60, 40)
    learning_rate: float = 1.0
    restart_deg: float = 15.0
    bins: int = 32
    max_points: int = 20_000
    margin_mm: float = AFFINE_MARGIN_MM
    seed: int = 0
    xla: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "levels_mm", tuple(float(s) for s in self.levels_mm))
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        if not self.levels_mm or any(s <= 0 for s in self.levels_mm) \
                or list(self.levels_mm) != sorted(self.levels_mm, reverse=True):
            raise InputError(f"affine levels must be decreasing voxel sizes in mm, got {self.levels_mm}")
        if len(self.steps) != len(self.levels_mm) or min(self.steps) < 0 or self.rigid_steps < 0:
            raise InputError(f"affine steps must be one whole number >= 0 per level, got {self.steps}")
        if not self.learning_rate > 0 or self.bins < 4 or self.max_points < 100:
            raise InputError("affine learning_rate must be > 0, bins >= 4, max_points >= 100")
        if self.xla not in XLA_CHOICES:
            raise InputError(f"affine xla must be one of {', '.join(XLA_CHOICES)}, got {self.xla!r}")

    def uses_xla(self, shape):
        """Whether the optimiser is compiled with XLA for a fixed scan of ``shape``."""
        return compiles_with_xla(self.xla, shape, XLA_MIN_VOXELS)


@dataclasses.dataclass(frozen=True, eq=False)
class AffineResult:
    """Result of :func:`estimate_affine`.

    :param matrix: shape = (4, 4), float64: fixed-world point (RAS mm) -> moving-world point
    :param objective: the final objective (-MI, or 1 - L_LG) at the finest level
    :param rms_mm: RMS distance over the fixed scan's foreground between where ``matrix`` and
        where the identity (the two headers) put each point: how misaligned the scans were
    :param seconds: wall time
    :param header_objective: the objective at the headers' alignment (the identity), on the
        same samples of the finest level
    :param start: which start of the rigid stage led to ``matrix`` (``"headers"``, ...)
    """

    matrix: np.ndarray
    objective: float
    rms_mm: float
    seconds: float
    header_objective: float = np.nan
    start: str = ""

    @property
    def gain(self):
        """How much better ``matrix`` aligns the scans than their headers: the relative gain
        of MI, (MI - MI_headers) / |MI_headers|, 0 when both are 0."""
        gained = self.header_objective - self.objective  # objectives: lower is better
        return float(gained / abs(self.header_objective)) if self.header_objective else 0.0

    def improves(self, min_gain=None):
        """Whether ``matrix`` is worth applying: it improves the similarity over the headers'
        alignment by at least ``min_gain`` (default :data:`MIN_GAIN`)."""
        return self.gain >= (MIN_GAIN if min_gain is None else min_gain)


# --- geometry on plain arrays ------------------------------------------------------------------


def euler_matrix(angles):
    """R = R_z(c) R_y(b) R_x(a) for angles (a, b, c) in radians, NumPy, shape (3, 3)."""
    a, b, c = (float(v) for v in angles)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def world_points(affine, voxels):
    """World coordinates of voxel indices: (N, 3) -> (N, 3)."""
    affine = np.asarray(affine, np.float64)
    return np.asarray(voxels, np.float64) @ affine[:3, :3].T + affine[:3, 3]


def apply(matrix, points):
    """y = matrix x for points (N, 3) -> (N, 3)."""
    matrix = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


def rms_displacement(matrix_a, matrix_b, points):
    """sqrt(mean_x |A x - B x|^2) over world points (N, 3): how far apart two transforms put
    them, in mm."""
    difference = apply(matrix_a, points) - apply(matrix_b, points)
    return float(np.sqrt(np.mean(np.sum(difference**2, axis=-1))))


def foreground_points(volume, max_points=None, seed=0):
    """World coordinates of the voxels whose normalised intensity exceeds :data:`FOREGROUND`,
    (N, 3); a seeded subset of at most ``max_points``."""
    mask = dio.normalize_intensity(volume.array) > FOREGROUND
    voxels = np.argwhere(mask)
    if max_points is not None and len(voxels) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(voxels), max_points, replace=False))
        voxels = voxels[keep]
    return world_points(volume.affine, voxels)


def centre_of_mass(volume):
    """The intensity-weighted centre of a volume (normalised intensities), world mm, (3,)."""
    weights = dio.normalize_intensity(volume.array)
    total = float(weights.sum(dtype=np.float64))
    if total <= 0:
        raise InputError("the image has no foreground to align", volume.path)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in volume.shape), indexing="ij",
                        sparse=True)
    voxel = np.array([float((weights * g).sum(dtype=np.float64)) for g in grids]) / total
    return world_points(volume.affine, voxel[None])[0]


def through(volume, matrix):
    """The volume seen through the transform: the same voxels with the affine matrix^-1 A, so
    that reading it at a world point x reads the original at matrix x. Resampling it onto the
    fixed grid (or warping it with a flow there) then interpolates the original voxels once."""
    affine = np.linalg.solve(np.asarray(matrix, np.float64), volume.affine)
    return volume.replace(affine=affine)


def compose_flow(flow, matrix, affine):
    """The flow on a fixed grid that the affine, then ``flow``, amount to, in fixed voxels.

    ``out(p) = A^-1 matrix A (p + flow(p)) - p``, so that the moving scan resampled onto the
    fixed grid through the two headers and warped with ``out`` is the moving scan aligned by
    ``matrix`` and warped with ``flow``.

    :param flow: shape = (X, Y, Z, 3), fixed voxels
    :param matrix: shape = (4, 4), fixed world -> moving world
    :param affine: the fixed grid's affine, (4, 4)
    :return: shape = (X, Y, Z, 3), float32
    """
    affine = np.asarray(affine, np.float64)
    voxel_map = np.linalg.solve(affine, np.asarray(matrix, np.float64) @ affine)
    out = np.empty(flow.shape, np.float32)
    shape = flow.shape[:3]
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for i in range(shape[0]):
        grid = np.stack(np.broadcast_arrays(np.float64(i), j, k), axis=-1)  # (Y, Z, 3)
        points = grid + flow[i]
        out[i] = points @ voxel_map[:3, :3].T + voxel_map[:3, 3] - grid
    return out


# --- the optimisation in TensorFlow -------------------------------------------------------------


def _corners(shape, coords):
    """Where trilinear interpolation reads a volume of ``shape`` (X, Y, Z) whose outer layer of
    voxels is 0, at ``coords`` (N, 3) voxels, clipped to the grid (0 beyond one voxel outside):
    the eight corners' flat indices and weights, each (N, 8), corner (dx, dy, dz) at
    4 dx + 2 dy + dz. Shared by every volume sampled at the same points (:func:`_sample`); one
    gather of eight corners instead of eight gathers keeps the optimiser's loop a few ops long."""
    upper = tf.cast(shape - 1, coords.dtype)
    location = tf.clip_by_value(coords, tf.zeros_like(upper), upper)
    lower = tf.stop_gradient(tf.minimum(tf.floor(location), upper - 1))
    weight = location - lower  # (N, 3)
    index = tf.cast(lower, tf.int32)
    stride_x, stride_y = shape[1] * shape[2], shape[2]
    base = index[:, 0] * stride_x + index[:, 1] * stride_y + index[:, 2]
    bits = np.array([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)], np.int32)
    offsets = bits[:, 0] * stride_x + bits[:, 1] * stride_y + bits[:, 2]  # (8,)
    near = 1.0 - weight
    factors = [tf.where(tf.constant(bits[:, axis] == 1), weight[:, axis:axis + 1],
                        near[:, axis:axis + 1]) for axis in range(3)]  # each (N, 8)
    return base[:, None] + offsets[None, :], factors[0] * factors[1] * factors[2]


def _sample(volume, corners):
    """Trilinear volume(coords) from :func:`_corners` of the points: shape = (N,).

    :param volume: shape = (X, Y, Z), float32, its outer layer of voxels 0
    """
    index, weight = corners
    return tf.reduce_sum(tf.gather(tf.reshape(volume, [-1]), index) * weight, axis=-1)


def _euler(angles):
    """:func:`euler_matrix` in TensorFlow, differentiable, for S sets of angles: (S, 3) ->
    (S, 3, 3)."""
    a, b, c = tf.unstack(angles, axis=-1)
    one, zero = tf.ones_like(a), tf.zeros_like(a)

    def matrix(*entries):
        return tf.reshape(tf.stack(entries, axis=-1), (-1, 3, 3))

    rx = matrix(one, zero, zero, zero, tf.cos(a), -tf.sin(a), zero, tf.sin(a), tf.cos(a))
    ry = matrix(tf.cos(b), zero, tf.sin(b), zero, one, zero, -tf.sin(b), zero, tf.cos(b))
    rz = matrix(tf.cos(c), -tf.sin(c), zero, tf.sin(c), tf.cos(c), zero, zero, zero, one)
    return rz @ ry @ rx


def _linear(params, base, rigid):
    """(M, t) from S sets of the 12 parameters, (S, 12) -> ((S, 3, 3), (S, 3)): t = params[:3];
    rigid: M = base R(params[3:6] / r), affine: M = base (I + K / r), K = params[3:12] as 3 x 3.
    ``base``: (S, 3, 3). ``rigid`` is a boolean tensor, so that both stages share one traced
    function (the rigid stage leaves params[6:] at 0: their gradient is 0)."""
    rotation = _euler(params[:, 3:6] / RADIUS_MM)
    general = tf.eye(3) + tf.reshape(params[:, 3:12], (-1, 3, 3)) / RADIUS_MM
    return base @ tf.where(rigid, rotation, general), params[:, :3]


def _bin_position(values, bins):
    """Intensities in [0, 1] -> continuous bin positions in [2, bins - 3] (two bins of padding on
    either side, so that every cubic B-spline window of four bins lies inside the histogram)."""
    return 2.0 + np.float32(bins - 5) * tf.clip_by_value(values, 0.0, 1.0)


def _cubic_bspline(u):
    """The cubic B-spline beta_3(u), support |u| < 2, partition of unity."""
    u = tf.abs(u)
    inner = 2.0 / 3.0 - u * u + 0.5 * u * u * u
    outer = tf.pow(tf.maximum(2.0 - u, 0.0), 3) / 6.0
    return tf.where(u < 1.0, inner, outer)


def _mutual_information(fixed_bins, moving_values, bins, inside):
    """Mattes's MI: fixed intensities binned (zero order), moving intensities spread over four
    bins by a cubic B-spline (differentiable), joint histogram by one segment sum over the
    samples that land inside the moving scan (outside it there is no data, not intensity 0);
    for S transforms' samples at once, each its own histogram.

    :param fixed_bins: shape = (N,), int32, the fixed samples' bins
    :param moving_values: shape = (S, N), in [0, 1]
    :param inside: shape = (S, N), 1.0 for a sample inside the moving scan, else 0.0
    :return: MI, shape = (S,)
    """
    position = _bin_position(moving_values, bins)  # (S, N)
    first = tf.stop_gradient(tf.floor(position)) - 1.0
    offsets = tf.constant([0.0, 1.0, 2.0, 3.0])
    neighbours = first[..., None] + offsets  # (S, N, 4) bins
    weights = _cubic_bspline(position[..., None] - neighbours) * inside[..., None]  # (S, N, 4)
    count = tf.shape(moving_values)[0]
    histogram = tf.range(count)[:, None, None] * (bins * bins)  # each transform's own bins
    index = histogram + fixed_bins[None, :, None] * bins + tf.cast(neighbours, tf.int32)
    joint = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(index, [-1]),
                                         count * bins * bins)
    joint = tf.reshape(joint, (-1, bins, bins))
    joint = joint / tf.maximum(tf.reduce_sum(joint, axis=(1, 2), keepdims=True), 1e-6)
    p_fixed = tf.reduce_sum(joint, axis=2, keepdims=True)
    p_moving = tf.reduce_sum(joint, axis=1, keepdims=True)
    tiny = 1e-10
    return tf.reduce_sum(joint * (tf.math.log(joint + tiny) - tf.math.log(p_fixed + tiny)
                                  - tf.math.log(p_moving + tiny)), axis=(1, 2))


def _objective(level, params, base, rigid, bins):
    """-MI of the moving scan sampled at the fixed points, transformed by each of S transforms
    (params (S, 12), base (S, 3, 3)): shape = (S,)."""
    m, t = _linear(params, base, rigid)
    world = level["centre_moving"] + t[:, None, :] + tf.einsum("nk,sjk->snj", level["points"], m)
    inverse = level["moving_inverse"]  # world -> padded moving voxels, (4, 4)
    coords = tf.reshape(tf.matmul(world, inverse[:3, :3], transpose_b=True) + inverse[:3, 3],
                        (-1, 3))
    count = tf.shape(params)[0]
    corners = _corners(tf.shape(level["moving"]), coords)
    values = tf.reshape(_sample(level["moving"], corners), (count, -1))  # (S, N)
    # where the moving scan has data (its grid, inside its mask): 1, else 0; no gradient
    inside = tf.cast(tf.stop_gradient(_sample(level["moving_valid"], corners)) > 0.5,
                     tf.float32)
    return -_mutual_information(level["fixed_bins"], values, bins, tf.reshape(inside, (count, -1)))


def _adam(level, params, base, rigid, steps, learning_rate, bins):
    """``steps`` Adam steps on S sets of parameters at once (S, 12); returns (params, objective
    at the result (S,)). Each transform's objective depends on its own parameters alone and
    Adam's update is per parameter, so S runs together are S runs apart, in one loop. The loop
    is an explicit ``tf.while_loop``, traced without autograph: autograph's conversion of a
    Python loop cost more than the trace itself (docs/notes/2026-12-07-cautious-refinement.md)."""
    b1, b2 = ADAM_BETAS
    total = tf.cast(tf.maximum(steps, 1), tf.float32)

    def step(index, params, m, v):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = tf.reduce_sum(_objective(level, params, base, rigid, bins))
        g = tape.gradient(loss, params)
        t = tf.cast(index, tf.float32) + 1.0
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        rate = learning_rate * (1.0 - 0.9 * (t - 1.0) / total)  # linear decay to a tenth
        params = params - rate * tf.sqrt(1 - b2**t) / (1 - b1**t) * m / (tf.sqrt(v) + ADAM_EPS)
        return index + 1, params, m, v

    start = (tf.constant(0), params, tf.zeros_like(params), tf.zeros_like(params))
    _, params, _, _ = tf.while_loop(lambda index, *_: index < steps, step, start)
    return params, _objective(level, params, base, rigid, bins)


#: The optimiser's inputs: any level's shapes, so that it is traced once per process.
_SIGNATURE = [
    {"moving": tf.TensorSpec([None, None, None], tf.float32),
     "moving_valid": tf.TensorSpec([None, None, None], tf.float32),
     "moving_inverse": tf.TensorSpec([4, 4], tf.float32),
     "centre_moving": tf.TensorSpec([3], tf.float32),
     "points": tf.TensorSpec([None, 3], tf.float32),
     "fixed_bins": tf.TensorSpec([None], tf.int32)},
    tf.TensorSpec([None, 12], tf.float32), tf.TensorSpec([None, 3, 3], tf.float32),
    tf.TensorSpec([], tf.bool), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32),
]


@functools.lru_cache(maxsize=None)
def _optimiser(bins, xla):
    """The compiled :func:`_adam` for ``bins``: ``(level, params, base, rigid, steps,
    learning_rate) -> (params, objective)``, traced once for every shape; with ``xla``, compiled
    by XLA once for each shape it meets (the compile cache keeps the programs)."""
    def run(level, params, base, rigid, steps, learning_rate):
        return _adam(level, params, base, rigid, steps, learning_rate, bins)

    return tf.function(run, input_signature=_SIGNATURE, autograph=False, jit_compile=xla)


def _run(level, params, base, rigid, steps, learning_rate, config):
    """The optimiser on one transform (params (12,), base (3, 3)) or on S at once ((S, 12),
    (S, 3, 3)); returns (params, objective) of the same form (objective a float, or (S,))."""
    optimise = _optimiser(config.bins, config.xla == "on")  # "auto" resolved per scan
    single = np.ndim(params) == 1
    params, base = np.asarray(params, np.float32), np.asarray(base, np.float32)
    try:
        result, value = optimise(level, tf.constant(params[None] if single else params),
                                 tf.constant(base[None] if single else base), tf.constant(rigid),
                                 tf.constant(steps, tf.int32),
                                 tf.constant(learning_rate, tf.float32))
    except tf.errors.OpError as error:
        raise compat.compile_cache_error(error, config.xla == "on") from error
    if single:
        return result.numpy()[0], float(value[0])
    return result.numpy(), value.numpy()


# --- levels ------------------------------------------------------------------------------------


def pyramid_levels(fixed, config=None):
    """The pyramid's voxel sizes (mm) that the fixed scan allows, coarse to fine, with their
    steps: no finer than its own voxels, at least :data:`MIN_LEVEL_VOXELS` per axis; empty when
    the scan is too small for the affine stage.

    :return: list of (spacing in mm, Adam steps)
    """
    config = AffineConfig() if config is None else config
    own = float(np.min(fixed.spacing))
    extent = np.asarray(fixed.shape) * fixed.spacing  # mm
    levels = {}
    for spacing, steps in zip(config.levels_mm, config.steps):
        spacing = max(spacing, own)
        if np.all(extent / spacing >= MIN_LEVEL_VOXELS):
            levels[spacing] = levels.get(spacing, 0) + steps
    return list(levels.items())


def _level_spacings(fixed, config):
    """:func:`pyramid_levels`, refusing a scan too small for any level."""
    levels = pyramid_levels(fixed, config)
    if not levels:
        raise InputError(f"too small for the affine stage: {fixed.shape} voxels of "
                         f"{np.round(fixed.spacing, 2).tolist()} mm, need at least "
                         f"{MIN_LEVEL_VOXELS} voxels of {config.levels_mm[-1]:g} mm per axis",
                         fixed.path)
    return levels


def _at_spacing(volume, spacing):
    if np.allclose(volume.spacing, spacing, rtol=1e-3):
        return volume
    return dio.resample_to_spacing(volume, spacing)


def _prepare_level(moving, fixed, spacing, centre_fixed, centre_moving, config, moving_mask=None,
                   fixed_mask=None):
    """Tensors of one level; moving and fixed are normalised :class:`dgan.data.io.Volume`, the masks
    bool :class:`dgan.data.io.Volume` on their grids or None."""
    fixed_l = _at_spacing(fixed, spacing)
    moving_l = _at_spacing(moving, spacing)
    padded = _bucketed(moving_l.array)  # the zero border that _sample reads outside
    valid = np.ones(moving_l.shape, np.float32)
    if moving_mask is not None:
        valid = coverage.on_grid(moving_mask.array, moving_mask.affine, moving_l.affine,
                                 moving_l.shape).astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    inverse = np.linalg.inv(moving_l.affine @ shift)  # world -> padded voxels
    level = {
        "moving": tf.constant(padded, tf.float32),
        "moving_valid": tf.constant(_bucketed(valid), tf.float32),
        "moving_inverse": tf.constant(inverse, tf.float32),
        "centre_moving": tf.constant(centre_moving, tf.float32),
    }
    region = _sampled_region(fixed_l, config.margin_mm)
    if fixed_mask is not None:
        region &= coverage.on_grid(fixed_mask.array, fixed_mask.affine, fixed_l.affine,
                                   fixed_l.shape)
    voxels = np.argwhere(region)
    if len(voxels) > config.max_points:
        rng = np.random.default_rng([config.seed, int(spacing * 1000)])
        voxels = voxels[np.sort(rng.choice(len(voxels), config.max_points, replace=False))]
    values = fixed_l.array[tuple(voxels.T)]
    points = world_points(fixed_l.affine, voxels) - centre_fixed
    # padded to a bucket with points far outside the moving scan: they land where it has no
    # data (inside = 0), so they add nothing to the histogram
    count = min(_round_up(len(points), POINT_BUCKET), config.max_points)  # >= len(points)
    values = np.pad(values, (0, count - len(points)))
    points = np.pad(points, ((0, count - len(points)), (0, 0)), constant_values=FAR_MM)
    level["fixed_bins"] = tf.cast(tf.round(_bin_position(values, config.bins)), tf.int32)
    level["points"] = tf.constant(points, tf.float32)
    return level


def _round_up(value, step):
    return -(-int(value) // step) * step


def _bucketed(array):
    """``array`` with a zero border of one voxel (what :func:`_sample` reads outside the scan),
    padded with zeros at the far end of each axis to a multiple of :data:`SHAPE_BUCKET` voxels:
    the indices of its voxels are unchanged, and scans of nearby grids give the optimiser inputs
    of one shape, which XLA compiles once (the compile cache keeps one program per shape)."""
    shape = np.asarray(array.shape) + 2
    return np.pad(array, [(1, _round_up(n, SHAPE_BUCKET) - n + 1) for n in shape])


def _sampled_region(volume, margin_mm):
    """Where MI samples the fixed scan: its foreground grown by ``margin_mm`` (the brain, its
    outline and some background around it); the whole grid when the foreground is empty."""
    mask = volume.array > FOREGROUND
    if not mask.any():
        return np.ones(volume.shape, bool)
    radius = int(np.ceil(abs(margin_mm) / float(np.min(volume.spacing))))
    if radius > 0 and margin_mm > 0:
        mask = ndimage.binary_dilation(mask, iterations=radius)
    elif radius > 0:
        eroded = ndimage.binary_erosion(mask, iterations=radius)
        mask = eroded if eroded.any() else mask
    return mask


def _normalised(volume):
    return volume.replace(array=dio.normalize_intensity(volume.array))


def _matrix(m, t, centre_fixed, centre_moving):
    """4 x 4 world matrix of y = c_M + t + M (x - c_F)."""
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = centre_moving + t - m @ centre_fixed
    return out


def estimate_affine(moving, fixed, config=None, progress=None, moving_mask=None, fixed_mask=None):
    """Estimate the affine transform that aligns ``moving`` to ``fixed`` (module docstring).

    :param moving: :class:`dgan.data.io.Volume`, any grid and orientation
    :param fixed: :class:`dgan.data.io.Volume`
    :param config: :class:`AffineConfig` (defaults when None)
    :param progress: called with one line of text at the end, or None
    :param moving_mask: bool :class:`dgan.data.io.Volume` on the moving grid: MI counts only the
        samples that land inside it (and always only those inside the moving scan), or None
    :param fixed_mask: bool :class:`dgan.data.io.Volume` on the fixed grid: MI samples only inside
        it, or None
    :return: :class:`AffineResult`; ``matrix`` maps fixed-world points to moving-world points
    :raises InputError: a scan too small for the pyramid, no foreground, or no overlap at the end
    """
    config = AffineConfig() if config is None else config
    config = dataclasses.replace(config, xla="on" if config.uses_xla(fixed.shape) else "off")
    started = time.perf_counter()
    moving_n, fixed_n = _normalised(moving), _normalised(fixed)
    centre_fixed, centre_moving = centre_of_mass(fixed_n), centre_of_mass(moving_n)
    # the parameters of y = c_M + t + M (x - c_F) that the headers' alignment (y = x) has
    header = np.concatenate([centre_fixed - centre_moving, np.zeros(9)]).astype(np.float32)
    levels = _level_spacings(fixed, config)
    base = np.eye(3, dtype=np.float32)
    params = np.zeros(12, np.float32)
    objective, start = np.nan, None
    for index, (spacing, steps) in enumerate(levels):
        level = _prepare_level(moving_n, fixed_n, spacing, centre_fixed, centre_moving, config,
                               moving_mask, fixed_mask)
        rate = config.learning_rate * spacing / levels[0][0]
        if index == 0:
            base, params, start = _best_rigid_start(level, config, rate, header)
        params, objective = _run(level, params, base, False, steps, rate, config)
        m, t = _linear(tf.constant(params[None]), tf.constant(base[None]), False)
        base = m.numpy()[0]
        params = np.concatenate([t.numpy()[0], np.zeros(9, np.float32)])
    header_objective = _run(level, header, np.eye(3, dtype=np.float32), False, 0, rate, config)[1]
    matrix = _matrix(base.astype(np.float64), params[:3].astype(np.float64), centre_fixed,
                     centre_moving)
    points = foreground_points(fixed, max_points=20_000, seed=config.seed)
    check_overlap(moving, fixed, matrix, points)
    result = AffineResult(matrix=matrix, objective=objective,
                          rms_mm=rms_displacement(matrix, np.eye(4), points),
                          seconds=time.perf_counter() - started,
                          header_objective=header_objective, start=start)
    if progress is not None:
        progress(f"affine: {len(levels)} levels "
                 f"({', '.join(f'{s:g} mm' for s, _ in levels)}), best start {start}, "
                 f"mi {-objective:.4f} against {-header_objective:.4f} at the headers' alignment "
                 f"(gain {100 * result.gain:+.1f}%), {result.rms_mm:.1f} mm RMS from it, "
                 f"{result.seconds:.1f} s")
    return result


def _best_rigid_start(level, config, rate, header):
    """The rigid stage from several starts: the headers' alignment (parameters ``header``), the
    centres of mass, and the centres of mass with the restart rotations. Returns (M, affine
    parameters (t, 0), the name of the start) of the start with the best objective."""
    angle = np.deg2rad(config.restart_deg) * RADIUS_MM  # in parameter units
    starts = [("headers", header), ("centres of mass", np.zeros(12))]
    for axis, sign in itertools.product(range(3), (1.0, -1.0)):
        rotation = np.zeros(12)
        rotation[3 + axis] = sign * angle
        starts.append((f"centres of mass, {sign * config.restart_deg:+g} deg about axis {axis}",
                       rotation))
    eye = np.eye(3, dtype=np.float32)
    # every start optimised in one run (each on its own: _adam)
    results, values = _run(level, np.stack([start for _, start in starts]).astype(np.float32),
                           np.stack([eye] * len(starts)), True, config.rigid_steps, rate, config)
    best = int(np.argmin(values))  # the first of equal values, as one start after another
    m, t = _linear(tf.constant(results[best:best + 1]), tf.constant(eye[None]), True)
    return m.numpy()[0], np.concatenate([t.numpy()[0], np.zeros(9, np.float32)]), starts[best][0]


def check_overlap(moving, fixed, matrix, points=None):
    """Refuse a pair whose foregrounds do not meet: no fixed foreground point lands, through
    ``matrix``, on the moving scan's foreground.

    :param points: the fixed foreground's world points (N, 3), or None to compute them
    :raises InputError: naming both files
    """
    if points is None:
        points = foreground_points(fixed, max_points=20_000)
    coords = apply(np.linalg.solve(moving.affine, np.asarray(matrix, np.float64)), points)
    inside = np.all((coords > -0.5) & (coords < np.asarray(moving.shape) - 0.5), axis=1)
    hit = 0
    if inside.any():
        mask = dio.normalize_intensity(moving.array) > FOREGROUND
        nearest = np.round(coords[inside]).astype(int)
        hit = int(np.count_nonzero(mask[tuple(nearest.T)]))
    if hit == 0:
        raise InputError(
            f"the moving scan ({moving.path or 'array'}) and the fixed scan "
            f"({fixed.path or 'array'}) do not overlap at all: no foreground voxel of one falls "
            "on the other's; check their headers, or align them first (--affine on)")
