"""Displacement fields and volumes between voxel grids of one world (NumPy, SciPy).

Registration works on several grids of the same world (the fixed scan's, the network's, the
moving scan's), each with its affine A (voxel -> world, mm); a field in voxels of one grid is
re-expressed on another (:func:`flow_to_grid`), and a volume is sampled once, straight from its
own grid, through a field on another (:func:`sample_through_world`).

Flow convention everywhere: displacement in voxels of the grid it lives on, 'ij' indexing,
``moved(p) = moving(p + flow(p))``.
"""

import numpy as np
from scipy import ndimage

#: Voxels per block when sampling on a full-resolution grid: bounds the temporaries (six
#: float64 coordinate arrays, 144 bytes a voxel: 36 MB a block) that would otherwise add to the
#: peak memory of a call after refinement.
BLOCK_VOXELS = 2**18
#: Sample coordinates this close to a voxel centre are snapped onto it (rounding of affines).
SNAP = 1e-6



def flow_to_grid(flow, flow_affine, target_affine, target_shape):
    """Re-express a displacement field on another voxel grid of the same world.

    ``out(p) = M_t^-1 M_s flow(q)`` with ``q = A_s^-1 A_t p`` (linear interpolation, edge values
    beyond the border), so that ``A_t (p + out(p)) = A_s (q + flow(q))``: the same world
    displacement, now in target voxels.

    :param flow: shape = (X, Y, Z, 3), in voxels of its grid (affine ``flow_affine``)
    :param flow_affine: shape = (4, 4)
    :param target_affine: shape = (4, 4)
    :param target_shape: (X', Y', Z')
    :return: shape = (X', Y', Z', 3), float32, in target voxels
    """
    flow_affine = np.asarray(flow_affine, dtype=np.float64)
    target_affine = np.asarray(target_affine, dtype=np.float64)
    matrix = np.linalg.solve(flow_affine, target_affine)  # target voxel -> flow-grid voxel
    if np.allclose(matrix, np.eye(4), rtol=0, atol=SNAP) and tuple(target_shape) == flow.shape[:3]:
        resampled = np.asarray(flow, dtype=np.float32)
    else:
        resampled = np.stack(
            [
                ndimage.affine_transform(
                    np.asarray(flow[..., d], dtype=np.float32),
                    matrix[:3, :3],
                    offset=matrix[:3, 3],
                    output_shape=tuple(int(n) for n in target_shape),
                    order=1,
                    mode="nearest",
                )
                for d in range(3)
            ],
            axis=-1,
        )  # (X', Y', Z', 3) in flow-grid voxels
    vectors = np.linalg.solve(target_affine[:3, :3], flow_affine[:3, :3])  # M_t^-1 M_s
    return resampled @ vectors.T.astype(np.float32)


def sample_through_world(volume, target_affine, flow, order=1):
    """Sample a volume at ``A_v^-1 A_t (p + flow(p))`` for every voxel p of a target grid.

    One interpolation straight from the volume's own grid; points more than half a voxel outside
    it are 0 (``mode="grid-constant"``); coordinates within 1e-6 of a voxel centre are snapped.

    :param volume: :class:`dgan.data.io.Volume`
    :param target_affine: shape = (4, 4), of the grid ``flow`` lives on
    :param flow: shape = (X, Y, Z, 3), in target voxels
    :param order: 1 (trilinear, float32 output) for images, 0 (nearest, input dtype) for labels
    :return: shape = (X, Y, Z)
    """
    matrix = np.linalg.solve(volume.affine, np.asarray(target_affine, dtype=np.float64))
    shape = flow.shape[:3]
    dtype = np.float32 if order > 0 else volume.array.dtype
    out = np.empty(shape, dtype=dtype)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")  # (Y, Z)
    rows = max(1, BLOCK_VOXELS // (shape[1] * shape[2]))
    for start in range(0, shape[0], rows):
        stop = min(shape[0], start + rows)
        i = np.arange(start, stop, dtype=np.float64)[:, None, None]
        grid = np.stack(np.broadcast_arrays(i, j[None], k[None]), axis=-1)  # (n, Y, Z, 3)
        points = grid + flow[start:stop]  # target voxels
        coords = points @ matrix[:3, :3].T + matrix[:3, 3]  # volume voxels, (n, Y, Z, 3)
        nearest = np.round(coords)
        coords = np.where(np.abs(coords - nearest) < SNAP, nearest, coords)
        out[start:stop] = ndimage.map_coordinates(
            volume.array, np.moveaxis(coords, -1, 0), output=dtype, order=order,
            mode="grid-constant", cval=0,
        )
    return out
