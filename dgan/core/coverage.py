"""Coverage: where two scans both have data, so that the edge of a scan never pulls on phi.

A real moving scan rarely covers the fixed scan's whole field of view: a 2D multi-slice T2, PD
or FLAIR is a slab of the head, a spinal-cord scan another stretch of the cord. Resampled onto
the fixed grid, everything outside the moving scan's grid reads 0: missing data, not an image
of intensity 0. Its border is a strong edge that no anatomy explains, and every similarity
(mutual information, the local gradient L_LG of Zhang et al. 2020, L_LCC) would pull the field
to line it up with some structure of the fixed scan. This module gives every stage the region
where both scans have data:

- :func:`grid_coverage`: the fixed-grid voxels that a scan's voxel grid covers (through the two
  affines, optionally a world transform), i.e. where its resampled values are data;
- :func:`load_mask`: a user's mask (``--fixed-mask``, ``--moving-mask``), checked;
- :func:`overlap`: the fixed-grid mask of voxels covered by both (and inside both masks);
- :func:`level_weights`: that mask on a coarser grid, kept only where a similarity's windows
  lie wholly inside it, as weights of mean 1 (a weighted mean = ``mean(weights * terms)``).

Masks are boolean arrays on a grid; the convention of the rest of dgan holds (voxel indices,
'ij', affines from voxels to RAS millimetres).
"""

import numpy as np
from scipy import ndimage

from ..data import io as dio
from ..errors import InputError

#: A grid voxel counts as covered when its centre lies within this many voxels of the scan's
#: outermost voxel centres (its voxels' half width: the scan's own extent).
_HALF_VOXEL = 0.5
#: Affines that agree within this many millimetres (per entry) describe the same grid.
GRID_TOLERANCE_MM = 1e-3


def grid_coverage(volume, target_affine, target_shape, transform=None):
    """The voxels of a target grid that ``volume``'s own voxel grid covers.

    A target voxel p is covered when ``A_v^-1 T A_t p`` lies within half a voxel of the volume's
    voxel centres along every axis (``T`` the world ``transform``, fixed point -> moving point,
    the identity when None), i.e. inside the box its voxels fill.

    :param volume: :class:`dgan.data.io.Volume` (only its affine and shape are used)
    :param target_affine: shape = (4, 4)
    :param target_shape: (X, Y, Z)
    :param transform: shape = (4, 4) or None
    :return: bool, shape = target_shape
    """
    matrix = np.asarray(target_affine, np.float64)
    if transform is not None:
        matrix = np.asarray(transform, np.float64) @ matrix
    matrix = np.linalg.solve(volume.affine, matrix)  # target voxel -> volume voxel
    shape = tuple(int(n) for n in target_shape)
    upper = np.asarray(volume.shape, np.float64) - 1 + _HALF_VOXEL
    covered = np.empty(shape, bool)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    yz = np.stack([j, k], axis=-1).astype(np.float64)  # (Y, Z, 2)
    for i in range(shape[0]):
        coords = i * matrix[:3, 0] + yz @ matrix[:3, 1:3].T + matrix[:3, 3]  # (Y, Z, 3)
        covered[i] = np.all((coords >= -_HALF_VOXEL - 1e-6) & (coords <= upper + 1e-6), axis=-1)
    return covered


def load_mask(path, scan, what="mask"):
    """Read a binary mask of ``scan`` and check it: the scan's grid, only 0 and 1, not empty.

    :param path: a volume file (:func:`dgan.data.io.load_volume`)
    :param scan: :class:`dgan.data.io.Volume` the mask belongs to
    :param what: how the message names it (``"fixed mask"``)
    :return: :class:`dgan.data.io.Volume` with a bool array, on the scan's grid
    :raises InputError: one line naming the mask file: unreadable, another grid, not binary, empty
    """
    try:
        mask = dio.load_volume(path, kind="labels")
    except InputError as error:
        if "no non-zero label" in error.problem:
            raise InputError(f"the {what} is empty (no voxel is 1)", path) from None
        raise
    return check_mask(mask, scan, what)


def check_mask(mask, scan, what="mask"):
    """Check a mask of ``scan``, a :class:`dgan.data.io.Volume` or an array on the scan's grid: the
    scan's grid (shape, and affine within :data:`GRID_TOLERANCE_MM`), only 0 and 1, not empty.

    :return: :class:`dgan.data.io.Volume` with a bool array
    :raises InputError: one line naming the mask's file (when it has one)
    """
    if not isinstance(mask, dio.Volume):
        mask = dio.Volume(np.asarray(mask), scan.affine)
    path = mask.path
    if mask.shape != scan.shape:
        raise InputError(f"the {what} has shape {mask.shape}, its scan ({scan.path or 'array'}) "
                         f"{scan.shape}: it must lie on the scan's grid", path)
    if not np.allclose(mask.affine, scan.affine, rtol=0, atol=GRID_TOLERANCE_MM):
        raise InputError(f"the {what}'s affine differs from its scan's ({scan.path or 'array'}): "
                         "it must lie on the scan's grid", path)
    values = np.unique(mask.array)
    if not set(values.tolist()) <= {0, 1}:
        shown = ", ".join(f"{v:g}" for v in values[:5])
        raise InputError(f"the {what} is not binary: values {shown}{' ...' if values.size > 5 else ''}"
                         " (expected 0 and 1)", path)
    if not values.any():
        raise InputError(f"the {what} is empty (no voxel is 1)", path)
    return mask.replace(array=mask.array.astype(bool))


def overlap(moving, fixed, transform=None, moving_mask=None, fixed_mask=None):
    """The fixed-grid voxels where both scans have data: inside the moving scan's grid (through
    the headers and ``transform``), and inside the masks that are given.

    :param moving: :class:`dgan.data.io.Volume`, its own grid
    :param fixed: :class:`dgan.data.io.Volume`; the result lies on its grid
    :param transform: the affine stage's world transform (fixed point -> moving point) or None
    :param moving_mask: bool :class:`dgan.data.io.Volume` on the moving grid, or None
    :param fixed_mask: bool :class:`dgan.data.io.Volume` on the fixed grid, or None
    :return: bool, shape = fixed.shape
    """
    covered = grid_coverage(moving, fixed.affine, fixed.shape, transform)
    if fixed_mask is not None:
        covered &= fixed_mask.array
    if moving_mask is not None:
        affine = moving_mask.affine if transform is None else \
            np.linalg.solve(np.asarray(transform, np.float64), moving_mask.affine)
        inside = dio.resample_to_grid(moving_mask.replace(array=moving_mask.array.astype(
            np.float32), affine=affine), fixed.affine, fixed.shape, order=1).array
        covered &= inside >= 0.5
    return covered


def on_grid(mask, affine, target_affine, target_shape):
    """A mask on another grid of the same world: linear interpolation, kept where >= 0.5.

    :param mask: bool, shape = (X, Y, Z), on the grid of ``affine``
    :return: bool, shape = target_shape
    """
    volume = dio.Volume(np.asarray(mask, np.float32), np.asarray(affine, np.float64))
    return dio.resample_to_grid(volume, target_affine, target_shape, order=1).array >= 0.5


def shrink(mask, factor, margin):
    """``mask`` on a grid ``factor`` times coarser (the voxels whose every fine voxel is inside,
    blocks of ``factor``^3 from the origin, the last one partial), eroded by ``margin`` coarse
    voxels: where a window of radius ``margin`` at that level sees only data.

    :param mask: bool, shape = (X, Y, Z)
    :param factor: a whole number >= 1
    :param margin: a whole number >= 0
    :return: bool, shape = ceil((X, Y, Z) / factor)
    """
    mask = np.asarray(mask, bool)
    if factor > 1:
        shape = tuple(-(-n // factor) for n in mask.shape)
        padded = np.ones(tuple(s * factor for s in shape), bool)  # a partial block: its voxels
        padded[tuple(slice(0, n) for n in mask.shape)] = mask
        blocks = padded.reshape(shape[0], factor, shape[1], factor, shape[2], factor)
        mask = blocks.all(axis=(1, 3, 5))
    if margin > 0:
        mask = ndimage.binary_erosion(mask, iterations=int(margin), border_value=1)
    return mask


def weights(mask):
    """A mask as weights of mean 1 (float32), so that ``mean(weights * terms)`` is the mean of
    the terms over the mask; None for a mask of every voxel (no weighting needed)."""
    mask = np.asarray(mask, bool)
    if mask.all():
        return None
    count = int(np.count_nonzero(mask))
    if count == 0:
        raise InputError("the scans' overlap leaves no voxel to compare: their data do not "
                         "meet (check the headers, the masks, or use --affine on)")
    return (mask * np.float32(mask.size / count)).astype(np.float32)


def level_weights(mask, factor, margin, stride=1):
    """Weights of mean 1 (:func:`weights`) for a similarity on a level ``factor`` times coarser
    than ``mask``'s grid whose windows reach ``margin`` voxels: :func:`shrink`, the margin
    lowered as far as needed to keep a voxel (a thin overlap at a coarse level), and with
    ``stride`` only the strided window centres (:func:`dgan.core.losses.strided_centres`).

    :return: float32, shape = (1, x, y, z) (strided), or None when every voxel counts
    """
    start = stride // 2

    def strided(level):
        return level[start::stride, start::stride, start::stride] if stride > 1 else level

    for erosion in range(int(margin), -1, -1):
        level = strided(shrink(mask, factor, erosion))
        if level.any():
            break
    else:  # no (strided) coarse voxel lies wholly inside: the partly covered ones, else all
        level = strided(~shrink(~np.asarray(mask, bool), factor, 0))
        if not level.any():
            return None
    weight = weights(level)
    return None if weight is None else weight[np.newaxis]


def mean_displacement_mm(flow, affine, mask=None):
    """Mean length in mm of a displacement field (voxels of the grid of ``affine``), over
    ``mask`` (bool, the field's grid) or every voxel: how far a registration moved the scan."""
    vectors = np.asarray(flow, np.float64) @ np.asarray(affine, np.float64)[:3, :3].T
    lengths = np.sqrt(np.sum(vectors**2, axis=-1))
    return float(lengths.mean() if mask is None else lengths[np.asarray(mask, bool)].mean())
