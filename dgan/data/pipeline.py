"""The unpaired training pipeline: an infinite ``tf.data.Dataset`` of moving and fixed volumes.

:func:`make_dataset` gives ``{"moving": (B, X, Y, Z, 1), "fixed": (B, X, Y, Z, 1)}``. Deform-GAN
trains without corresponding pairs (Zhang et al. 2020, arXiv:2002.11430), so for every global
sample index i the moving and the fixed volume are drawn independently, and the augmentation (a
random smooth deformation and random intensities per volume) is seeded by (seed, i). Everything
is a function of (seed, i): resuming at ``start_step`` reproduces the uninterrupted order, and
``tf.distribute`` input pipelines take disjoint shares of the indices.
"""

import dataclasses
import functools

import numpy as np

from ..compat import tf
from .synth import (
    AUGMENT_STREAM,
    DEFAULT_MAX_DISPLACEMENT,
    DEFAULT_SMOOTHNESS,
    FIXED_STREAM,
    MOVING_STREAM,
    random_intensity_augmentation,
    random_smooth_flow,
    warp,
)


@functools.lru_cache(maxsize=16)
def _permutation(seed, stream, epoch, n):
    order = np.random.default_rng([seed, stream, epoch]).permutation(n)
    order.setflags(write=False)
    return order


def _pick(seed, stream, index, n):
    """The set element used at global sample ``index``: a seeded permutation per epoch."""
    epoch, position = divmod(index, n)
    return int(_permutation(seed, stream, epoch, n)[position])


def _augment(image, rng, max_displacement, smoothness):
    """A random smooth deformation, then random intensities. image: (X, Y, Z) -> (X, Y, Z)."""
    flow = random_smooth_flow(image.shape, max_displacement, smoothness, rng)
    return random_intensity_augmentation(warp(image, flow), rng)


@dataclasses.dataclass(frozen=True, eq=False)
class _UnpairedSampler:
    """Global sample index -> (moving, fixed), each (X, Y, Z, 1) float32; a pure function."""

    moving: tuple
    fixed: tuple
    seed: int
    augment: bool
    max_displacement: float
    smoothness: float

    def __call__(self, index):
        index = int(index)
        moving = self.moving[_pick(self.seed, MOVING_STREAM, index, len(self.moving))]
        fixed = self.fixed[_pick(self.seed, FIXED_STREAM, index, len(self.fixed))]
        if self.augment:
            rng = np.random.default_rng([self.seed, AUGMENT_STREAM, index])
            moving = _augment(moving, rng, self.max_displacement, self.smoothness)
            fixed = _augment(fixed, rng, self.max_displacement, self.smoothness)
        return moving[..., None], fixed[..., None]


def _as_arrays(arrays, name):
    arrays = tuple(np.asarray(a, dtype=np.float32) for a in arrays)
    if not arrays:
        raise ValueError(f"{name} is empty")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(arrays[0].shape) != 3:
        raise ValueError(f"{name} must be 3D arrays of one shape (X, Y, Z), got {sorted(shapes)}")
    return arrays


def make_dataset(moving_arrays, fixed_arrays, batch_size, seed, start_step=0, augment=True,
                 input_context=None, max_displacement=DEFAULT_MAX_DISPLACEMENT,
                 smoothness=DEFAULT_SMOOTHNESS):
    """An infinite unpaired dataset of ``{"moving": (B, X, Y, Z, 1), "fixed": (B, X, Y, Z, 1)}``.

    Global sample i (i = 0, 1, ...; step s holds samples s * batch_size ... (s + 1) *
    batch_size - 1) takes moving volume ``perm_m(i // M)[i % M]`` and fixed volume
    ``perm_f(i // N)[i % N]``, where ``perm_m(e)`` and ``perm_f(e)`` are independent seeded
    permutations of the M moving and N fixed volumes for epoch e. With ``augment``, each of the
    two gets its own random smooth deformation (:func:`~dgan.data.synth.random_smooth_flow`) and
    random intensities, drawn from ``np.random.default_rng([seed, 2, i])``.

    :param moving_arrays: M arrays of shape (X, Y, Z) (or a :class:`ScanSet`)
    :param fixed_arrays: N arrays of the same shape
    :param batch_size: the global batch size B
    :param seed: non-negative int
    :param start_step: first step to produce; a run resumed at step k sees exactly the batches
        that an uninterrupted run saw from step k on
    :param augment: random deformations and intensities (False: the volumes as they are)
    :param input_context: ``tf.distribute.InputContext`` (``distribute_datasets_from_function``):
        pipeline p of P takes global indices p, p + P, ..., batched per replica; every step's
        samples across all pipelines are exactly those of the undistributed dataset
    :param max_displacement: the augmentation's largest displacement, in voxels
    :param smoothness: the augmentation's control-point spacing, in voxels
    :return: ``tf.data.Dataset`` of dicts, float32, batch dimension fixed
    """
    moving = _as_arrays(moving_arrays, "moving_arrays")
    fixed = _as_arrays(fixed_arrays, "fixed_arrays")
    if moving[0].shape != fixed[0].shape:
        raise ValueError(f"moving {moving[0].shape} and fixed {fixed[0].shape} shapes differ")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if int(batch_size) != batch_size or batch_size < 1 or start_step < 0:
        raise ValueError(f"need batch_size >= 1 and start_step >= 0, "
                         f"got {batch_size} and {start_step}")
    batch_size, seed, start_step = int(batch_size), int(seed), int(start_step)

    pipelines, pipeline_id, per_batch = 1, 0, batch_size
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        per_batch = input_context.get_per_replica_batch_size(batch_size)
        if batch_size % pipelines:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of "
                             f"input pipelines {pipelines}")

    sampler = _UnpairedSampler(moving, fixed, seed, bool(augment), float(max_displacement),
                               float(smoothness))
    shape = moving[0].shape + (1,)

    def load(index):
        moving_image, fixed_image = tf.numpy_function(
            sampler, [index], (tf.float32, tf.float32), stateful=False
        )
        moving_image.set_shape(shape)
        fixed_image.set_shape(shape)
        return {"moving": moving_image, "fixed": fixed_image}

    first = start_step * batch_size + pipeline_id
    indices = tf.data.Dataset.range(first, np.iinfo(np.int64).max, pipelines)
    return (
        indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(per_batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
