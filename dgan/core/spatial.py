"""Dense volumes and fields on voxel grids: trilinear warping and separable linear resizing.

One implementation for every stage that warps or resizes: refinement
(:mod:`dgan.registration.refine`), the block matching of T (:mod:`dgan.core.matching`) and the
scoring of start fields (:mod:`dgan.registration.scoring`). Convention as everywhere in dgan:
displacements in voxels of the grid they live on, 'ij' indexing, moved(p) = moving(p + flow(p)).

Warping is trilinear with edge values beyond the border, as VoxelMorph's ``SpatialTransformer``,
written as eight gathers so that its gradient with respect to the field costs no scatter. Resizing
is separable: three small matrix products per volume (their gradients are the transposed
products), with the voxel centres of two grids covering one box (:func:`interpolation_matrix`) or,
for T's matching, the corners of the two grids on each other as VoxelMorph's
``rescale_dense_transform`` places them (:func:`upsample_flow`).
"""

import itertools

import numpy as np

from ..compat import tf


def interpolation_matrix(n_in, n_out, dtype=np.float32):
    """Linear interpolation from n_in samples to n_out over the same extent, (n_out, n_in).

    Output sample i sits at input coordinate (i + 1/2) n_in / n_out - 1/2 (voxel centres of two
    grids covering one box), clamped to [0, n_in - 1]. Halving (n_out = n_in / 2) averages voxel
    pairs; a displacement in input voxels becomes one in output voxels times n_out / n_in.
    """
    return _linear_matrix(np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1),
                          n_in, dtype)


def corner_matrix(n_in, n_out, dtype=np.float32):
    """Linear interpolation from n_in samples to n_out with the first and last samples of the two
    grids on each other (output i at input coordinate i (n_in - 1) / (n_out - 1)), (n_out, n_in):
    the sample positions of VoxelMorph's ``rescale_dense_transform`` (neurite's ``resize``)."""
    return _linear_matrix(np.linspace(0.0, n_in - 1.0, n_out), n_in, dtype)


def _linear_matrix(x, n_in, dtype):
    """Rows of linear interpolation weights at the input coordinates ``x`` (in [0, n_in - 1])."""
    lower = np.minimum(np.floor(x).astype(int), max(n_in - 2, 0))
    weight = x - lower
    matrix = np.zeros((len(x), n_in), np.float64)
    matrix[np.arange(len(x)), lower] += 1 - weight
    matrix[np.arange(len(x)), np.minimum(lower + 1, n_in - 1)] += weight
    return matrix.astype(dtype)


def resize(volume, matrices):
    """Separable linear resize of (X, Y, Z, C) with per-axis matrices (X', X), (Y', Y), (Z', Z)."""
    mx, my, mz = matrices
    volume = tf.einsum("ax,xyzc->ayzc", mx, volume)
    volume = tf.einsum("by,aycz->abcz", my, tf.transpose(volume, [0, 1, 3, 2]))  # (X', Y', C, Z)
    return tf.einsum("cz,abkz->abck", mz, volume)  # (X', Y', Z', C)


def resize_matrices(shape_in, shape_out):
    return [tf.constant(interpolation_matrix(a, b)) for a, b in zip(shape_in, shape_out)]


def resize_flow(flow, shape_out):
    """A displacement field (X, Y, Z, 3) in its voxels, on a grid of ``shape_out``, in its
    voxels."""
    shape_in = tuple(flow.shape[:3])
    scale = tf.constant([b / a for a, b in zip(shape_in, shape_out)], tf.float32)
    return resize(flow, resize_matrices(shape_in, shape_out)) * scale


def voxel_grid(shape):
    """Voxel coordinates, shape + (3,), float32 (:func:`grid_from_axes` of :func:`grid_axes`)."""
    return grid_from_axes(grid_axes(shape))


def grid_axes(shape):
    """The voxel coordinates along each axis of a grid: three ranges (n,), float32."""
    return tuple(tf.range(int(n), dtype=tf.float32) for n in shape)


def grid_from_axes(axes):
    """Voxel coordinates (X, Y, Z, 3) from :func:`grid_axes`. Inside a compiled function, pass
    the axes in as inputs: the grid is then a broadcast that XLA fuses into its uses, while one
    built from constant ranges is folded into a constant of 12 bytes a voxel (TensorFlow folds
    up to 10 MiB, XLA up to 45 million elements) that the compiled program carries, loads and
    holds in memory."""
    return tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)


def warp(image, flow, grid):
    """Trilinear ``image(p + flow(p))``, edge values beyond the border ('ij', voxels).

    :param image: shape = (X, Y, Z, C)
    :param flow: shape = (X, Y, Z, 3)
    :param grid: :func:`voxel_grid` of (X, Y, Z)
    :return: shape = (X, Y, Z, C)
    """
    corners, weight, _ = warp_corners(image, flow, grid)
    return interpolate(corners, weight)


def warp_corners(image, flow, grid):
    """What the trilinear warp reads: the values at the eight corners of each voxel's cell.

    :return: (corners, weight, inside): eight arrays (X, Y, Z, C), in the order of
        ``itertools.product((0, 1), repeat=3)`` (offsets along x, y, z); the position in the
        cell (X, Y, Z, 3), in [0, 1]; 1.0 where p + flow(p) lies within the volume along each
        axis, else 0.0 (there the position is clamped, and it does not move with the flow)
    """
    lower, weight, inside = cell_position(flow, grid)
    return gather_corners(image, cell_index(lower, image.shape[:3])), weight, inside


def _strides(shape):
    """The flat-index steps of one voxel along x, y, z in a volume of ``shape`` (C order)."""
    shape = [int(n) for n in shape]
    return shape[1] * shape[2], shape[2], 1


def cell_index(lower, shape):
    """The flat index (X, Y, Z), int32, of each cell's lower corner (:func:`cell_position`) in a
    volume of ``shape`` stored x, y, z (C order)."""
    index = tf.cast(lower, tf.int32)
    return sum(index[..., axis] * stride for axis, stride in enumerate(_strides(shape)))


def gather_corners(image, index):
    """The eight corners of the cells whose lower corners are ``index`` (:func:`cell_index`), in
    the order of :func:`warp_corners`: eight arrays (X, Y, Z, C)."""
    shape = tuple(int(n) for n in image.shape[:3])
    strides = _strides(shape)
    values = tf.reshape(image, [-1, image.shape[-1]])  # (XYZ, C)
    return [tf.gather(values, index + sum(c * s for c, s, n in zip(corner, strides, shape)
                                          if n > 1))
            for corner in itertools.product((0, 1), repeat=3)]


def cell_position(flow, grid):
    """Where p + flow(p) falls among the voxels (X, Y, Z) of ``grid`` (:func:`voxel_grid`):
    the cell's lower corner (clamped so that the cell lies inside), the position in it, and
    whether it lies inside the volume (the second and third are what :func:`warp_corners`
    returns beside the corners).

    :return: (lower, weight, inside), each (X, Y, Z, 3): voxel indices as floats, [0, 1], 0/1
    """
    upper = tf.constant([int(n) - 1 for n in grid.shape[:3]], flow.dtype)
    target = grid + flow
    location = tf.clip_by_value(target, tf.zeros_like(upper), upper)
    inside = tf.cast(tf.logical_and(target >= 0, target <= upper), flow.dtype)
    lower = tf.stop_gradient(tf.minimum(tf.floor(location), tf.maximum(upper - 1, 0)))
    return lower, location - lower, inside


def _lerp(a, b, w):
    return a + w * (b - a)


def _cell(corners, weight):
    """The corners by offset {(i, j, k): (X, Y, Z, C)}, and the cell's edges along z and its
    faces' lines along y interpolated at the position: {(i, j): ...} and [i] (i, j, k in 0, 1)."""
    corner = dict(zip(itertools.product((0, 1), repeat=3), corners))
    wy, wz = weight[..., 1:2], weight[..., 2:3]
    along_z = {(i, j): _lerp(corner[i, j, 0], corner[i, j, 1], wz) for i in (0, 1) for j in (0, 1)}
    along_y = [_lerp(along_z[i, 0], along_z[i, 1], wy) for i in (0, 1)]
    return corner, along_z, along_y


def interpolate(corners, weight):
    """The trilinear value from :func:`warp_corners`' corners and position, (X, Y, Z, C)."""
    _, _, along_y = _cell(corners, weight)
    return _lerp(along_y[0], along_y[1], weight[..., 0:1])


def interpolation_slopes(corners, weight):
    """d value / d position along x, y, z of the trilinear interpolation: 3 x (X, Y, Z, C)."""
    corner, along_z, along_y = _cell(corners, weight)
    wx, wy = weight[..., 0:1], weight[..., 1:2]
    rise_z = [_lerp(corner[i, 0, 1] - corner[i, 0, 0], corner[i, 1, 1] - corner[i, 1, 0], wy)
              for i in (0, 1)]
    return (along_y[1] - along_y[0],
            _lerp(along_z[0, 1] - along_z[0, 0], along_z[1, 1] - along_z[1, 0], wx),
            _lerp(rise_z[0], rise_z[1], wx))


def upsample_flow(flow, factor):
    """A batch of displacement fields (B, X, Y, Z, 3) in voxels of their grid, up-sampled
    ``factor`` times (a grid of (fX, fY, fZ)) with :func:`corner_matrix`, in the finer grid's
    voxels: T's block matching passes, as VoxelMorph's ``rescale_dense_transform``."""
    if factor == 1:
        return flow
    shape = [int(n) for n in flow.shape[1:4]]
    channels = tf.reshape(tf.transpose(flow, [1, 2, 3, 0, 4]), shape + [-1])  # (X, Y, Z, B*3)
    finer = resize(channels * float(factor),
                   [tf.constant(corner_matrix(n, n * factor)) for n in shape])
    finer = tf.reshape(finer, [n * factor for n in shape] + [-1, 3])
    return tf.transpose(finer, [3, 0, 1, 2, 4])


def warp_batch(volume, flow, axes=None):
    """:func:`warp` of a batch: volume (B, X, Y, Z, C) at p + flow(p), flow (B, X, Y, Z, 3).

    :param axes: :func:`grid_axes` of (X, Y, Z) as inputs of a compiled caller (see
        :func:`grid_from_axes`), or None: built here
    """
    grid = grid_from_axes(grid_axes(volume.shape[1:4]) if axes is None else axes)
    if volume.shape[0] is not None:  # a known batch size: one warp each, no loop op to trace
        return tf.stack([warp(v, f, grid) for v, f in zip(tf.unstack(volume), tf.unstack(flow))])
    return tf.map_fn(lambda pair: warp(pair[0], pair[1], grid), (volume, flow),
                     fn_output_signature=volume.dtype)
