"""Volumes in and out, and the geometry that relates voxels to the world.

This is the only module that imports nibabel. It implements:

- :class:`Volume` (a 3D array with its voxel-to-world affine), :func:`load_volume` for NIfTI
  (``.nii``, ``.nii.gz``), FreeSurfer ``.mgz`` and NumPy ``.npz`` files, with every bad input
  reported as one :class:`~dgan.errors.InputError` line naming the file;
- :func:`save_volume`, which writes NIfTI atomically through :func:`atomic_write`, a context
  manager that any writer (checkpoints, exports, CSV tables) can reuse;
- geometry on plain arrays and affines: :func:`to_canonical` (RAS+), :func:`voxel_spacing`,
  :func:`resample_to_spacing`, :func:`resample_to_grid`, :func:`crop_or_pad`,
  :func:`pad_to_multiple`, and the robust intensity scaling :func:`normalize_intensity`.

An affine maps voxel indices (i, j, k, 1) to world millimetres (x, y, z, 1), as in NIfTI.
"""

import contextlib
import dataclasses
import io
import json
import os
import secrets
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import InputError, one_line

#: File name endings that :func:`load_volume` reads.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".npz")
#: File name endings that :func:`save_volume` writes.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Compression endings that belong to the suffix before them (``.nii.gz``).
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
#: How :func:`save_volume` compresses a ``.nii.gz`` file: a standard gzip stream (any reader
#: opens it) whose deflate uses zlib's run-length strategy at level 1. A float32 scan or field is
#: mostly runs of background zeros and mantissa bits that no string match shortens: RLE keeps
#: the runs and skips the string search that is most of the cost of zlib's default strategy
#: (docs/notes/2026-12-08-speed.md, section 3).
GZIP_LEVEL = 1
GZIP_STRATEGY = zlib.Z_RLE


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map with its voxel-to-world affine.

    :param array: shape = (X, Y, Z); float32 for images, int32 for label maps
    :param affine: shape = (4, 4), float64, voxel indices to world millimetres
    :param path: the file it came from, or None
    :param header: the file's nibabel header, or None
    """

    array: np.ndarray
    affine: np.ndarray
    path: str | None = None
    header: object = None

    @property
    def shape(self):
        return self.array.shape

    @property
    def spacing(self):
        """Voxel size in millimetres, shape = (3,)."""
        return voxel_spacing(self.affine)

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# --- files ----------------------------------------------------------------------------------


def volume_suffix(path):
    """The file ending that decides the format: ``.nii.gz`` for ``a.nii.gz``, ``.mgz`` ..."""
    name = Path(path).name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def load_volume(path, kind="image"):
    """Read a 3D volume and check that it is usable.

    ``.npz`` files hold the array under ``vol`` (labels: ``seg`` first, then ``vol``) or as their
    only array, and optionally a 4x4 ``affine``; without one the affine is the 1 mm identity.
    A 4D array whose trailing axes are singletons is squeezed to 3D.

    :param path: a ``.nii``, ``.nii.gz``, ``.mgz`` or ``.npz`` file
    :param kind: ``"image"`` (float32, must not be empty or constant) or ``"labels"``
        (integer-valued, returned as int32, needs at least one non-zero label)
    :return: :class:`Volume` with array shape = (X, Y, Z)
    :raises InputError: missing, unreadable, not 3D, NaN/Inf voxels, empty image, non-integer labels
    """
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
    path = str(path)
    if not os.path.exists(path):
        raise InputError("file not found", path)
    if os.path.isdir(path):
        raise InputError("is a folder, expected a volume file", path)
    suffix = volume_suffix(path)
    if suffix is None:
        expected = ", ".join(VOLUME_SUFFIXES)
        raise InputError(f"unsupported file type; expected one of {expected}", path)
    try:
        if suffix == ".npz":
            array, affine, header = _read_npz(path, kind)
        else:
            image = nib.load(path)
            array = np.asarray(image.dataobj)
            affine, header = image.affine, image.header
    except InputError:
        raise
    except Exception as error:  # nibabel, gzip and zipfile raise many types for a corrupt file
        raise InputError(f"cannot read the file ({one_line(error)})", path) from error

    array = _squeeze_to_3d(np.asarray(array), path)
    affine = _check_affine(affine, path)
    if kind == "labels":
        array = _check_labels(array, path)
    else:
        array = _check_image(array, path)
    return Volume(array=array, affine=affine, path=path, header=header)


def _read_npz(path, kind):
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.files)
        preferred = ("seg", "vol") if kind == "labels" else ("vol",)
        key = next((k for k in preferred if k in keys), None)
        if key is None:
            candidates = [k for k in keys if k != "affine"]
            if len(candidates) != 1:
                raise InputError(
                    f"the .npz file holds arrays {candidates} and none is named 'vol'", path
                )
            key = candidates[0]
        array = archive[key]
        affine = archive["affine"] if "affine" in keys else np.eye(4)
    return array, affine, None


def _squeeze_to_3d(array, path):
    shape = array.shape
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {shape}", path)
    if min(array.shape) < 2:
        raise InputError(f"expected a 3D volume, got a single slice of shape {shape}", path)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"voxels have the non-numeric type {array.dtype}", path)
    return array


def _check_affine(affine, path):
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"the affine must be a finite 4x4 matrix, got shape {affine.shape}", path)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("the affine is singular (zero voxel size)", path)
    return affine


def _count_bad(array):
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _check_image(array, path):
    array = array.astype(np.float32, copy=False)  # values beyond float32's range become Inf
    bad = _count_bad(array)
    if bad:
        raise InputError(f"{bad} voxels are NaN or Inf", path)
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise InputError(f"the image is empty (every voxel is {low:g})", path)
    return array


def _check_labels(array, path):
    bad = _count_bad(array)
    if bad:
        raise InputError(f"{bad} voxels of the label map are NaN or Inf", path)
    if np.issubdtype(array.dtype, np.floating):
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            raise InputError(f"the label map has non-integer values (e.g. {example:g})", path)
    if array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max:
        raise InputError("label ids do not fit in 32 bits", path)
    array = array.astype(np.int32)
    if not array.any():
        raise InputError("the label map has no non-zero label", path)
    return array


def _compound_suffix(name):
    """``.nii.gz`` for ``a.nii.gz``, ``.csv`` for ``a.b.csv``, ``""`` for ``a``."""
    suffixes = Path(name).suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in _COMPRESSION_SUFFIXES:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def atomic_write(path):
    """Write ``path`` all at once or not at all.

    Yields a temporary path in the same folder, with the same file ending (so writers that pick
    the format from the name still work), that the caller writes to, as a file or a folder. When
    the block ends normally the temporary path replaces ``path`` (``os.replace``, atomic for
    files); when it raises, the temporary path is removed and an existing ``path`` is untouched.
    Missing parent folders are created.

    Example::

        with atomic_write("table.csv") as tmp:
            with open(tmp, "w") as f:
                f.write("a,b\\n")
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    token = secrets.token_hex(4)
    tmp = os.path.join(folder, f".{name}.{token}.tmp{_compound_suffix(name)}")
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"{tmp}: the writer did not create the temporary file")
        if os.path.isdir(tmp) and os.path.isdir(path):
            # os.replace cannot replace a non-empty folder: set the old one aside first
            old = os.path.join(folder, f".{name}.{token}.old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path, payload):
    """``payload`` as indented JSON (values JSON cannot hold as their ``str``), atomically
    (:func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=str)
            handle.write("\n")


def save_volume(path, array, affine, header=None, description=None, intent=None):
    """Write a NIfTI file (``.nii`` or ``.nii.gz``) atomically.

    The affine goes to both the sform and the qform. NIfTI-1 stores it in float32, so an affine
    whose entries are float32 numbers (voxel sizes and origins in typical files) reads back
    exactly.

    :param path: destination, ending in ``.nii`` or ``.nii.gz``
    :param array: shape = (X, Y, Z) or (X, Y, Z, C), e.g. C = 3 for a flow field
    :param affine: shape = (4, 4), voxel indices to world millimetres; pass the fixed image's
        affine so that the output overlays it in a viewer
    :param header: optional nibabel header to start from (e.g. ``Volume.header``)
    :param description: optional text for the header's ``descrip`` field (79 ASCII characters);
        when given, the header's display window (cal_min/cal_max) and aux_file are cleared too,
        since the output is not the scan the header came from
    :param intent: optional NIfTI intent, e.g. ``("vector", (), "dgan_flow_vox")``; with
        ``description`` and no intent, the intent is reset to none
    """
    path = os.fspath(path)
    if volume_suffix(path) not in NIFTI_SUFFIXES:
        raise InputError(f"can only write NIfTI; use one of {', '.join(NIFTI_SUFFIXES)}", path)
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"array must have shape (X, Y, Z) or (X, Y, Z, C), got {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got {affine!r}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize > 4:
        array = array.astype(np.int32)
    elif np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
        array = array.astype(np.float32)

    if header is not None and not isinstance(header, nib.Nifti1Header):
        header = nib.Nifti1Header.from_header(header)
    image = nib.Nifti1Image(array, affine, header=header)
    image.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    if description is not None:
        image.header["descrip"] = description.encode("ascii")[:79]
        image.header["aux_file"] = b""
        image.header["cal_min"] = image.header["cal_max"] = 0
        image.header.set_intent("none")
    if intent is not None:
        image.header.set_intent(*intent)
    sform_code = int(image.header["sform_code"]) or 1
    qform_code = int(image.header["qform_code"]) or 1
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    with atomic_write(path) as tmp:
        if tmp.endswith(".gz"):
            with open(tmp, "wb") as handle:
                stream = _GzipStream(handle)
                image.to_file_map({"image": nib.FileHolder(fileobj=stream)})
                stream.finish()
        else:
            nib.save(image, tmp)


class _GzipStream(io.RawIOBase):
    """A write-only gzip stream over an open binary file, compressed as :data:`GZIP_STRATEGY`
    says, for nibabel to write an image into (it needs ``write``, ``tell`` and a ``seek`` to
    where it already is); :meth:`finish` ends the stream. The gzip header has no name and no
    time: the same image gives the same bytes."""

    def __init__(self, handle):
        super().__init__()
        self._handle = handle
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS,
                                            zlib.DEF_MEM_LEVEL, GZIP_STRATEGY)
        self._position = 0  # uncompressed bytes written

    def write(self, data):
        size = memoryview(data).nbytes
        self._handle.write(self._compressor.compress(data))
        self._position += size
        return size

    def writable(self):
        return True

    def tell(self):
        return self._position

    def seek(self, offset, whence=os.SEEK_SET):
        if whence == os.SEEK_SET and offset == self._position:
            return offset
        raise OSError("a gzip stream being written cannot seek")  # nibabel then pads

    def finish(self):
        self._handle.write(self._compressor.flush())


# --- geometry --------------------------------------------------------------------------------


def voxel_spacing(affine):
    """Voxel size in millimetres along each voxel axis.

    :param affine: shape = (4, 4)
    :return: shape = (3,), float64
    """
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))


def to_canonical(volume):
    """Reorder and flip voxel axes so that they point as close as possible to RAS+.

    Like ``nibabel.as_closest_canonical``: only axis permutations and flips, no interpolation, so
    every voxel keeps its world position and value.

    :param volume: :class:`Volume`
    :return: :class:`Volume` (the same object when it is already canonical)
    """
    orientation = nib.orientations.io_orientation(volume.affine)
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=orientation.dtype)
    if np.array_equal(orientation, identity):
        return volume
    array = nib.orientations.apply_orientation(volume.array, orientation)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(orientation, volume.array.shape)
    return volume.replace(array=np.ascontiguousarray(array), affine=affine)


def resample_to_grid(volume, target_affine, target_shape, order=1):
    """Resample a volume onto another voxel grid through world coordinates.

    For every target voxel j, ``out[j] = volume(inv(A_volume) @ A_target @ j)``, interpolated
    with :func:`scipy.ndimage.affine_transform` (``map_coordinates`` on an affine map of
    coordinates); points more than one voxel outside the volume are 0, points within one voxel
    of its border take the border value.

    :param volume: :class:`Volume`, array shape = (X, Y, Z)
    :param target_affine: shape = (4, 4)
    :param target_shape: (X', Y', Z')
    :param order: 1 (trilinear) for images, 0 (nearest) for label maps
    :return: :class:`Volume` with array shape = target_shape (same dtype) and ``target_affine``
    """
    target_affine = np.asarray(target_affine, dtype=np.float64)
    target_shape = tuple(int(n) for n in target_shape)
    if order > 0 and not np.issubdtype(volume.array.dtype, np.floating):
        raise ValueError("interpolating an integer label map; use order=0")
    matrix = np.linalg.solve(volume.affine, target_affine)  # target voxel -> source voxel
    # One edge-replicated voxel around the source: a voxel covers +-0.5 voxel around its
    # centre, so target points a rounding error outside the first or last centre still get
    # the edge value instead of 0 (beyond that margin, points are outside: 0).
    array = ndimage.affine_transform(
        np.pad(volume.array, 1, mode="edge"),
        matrix[:3, :3],
        offset=matrix[:3, 3] + 1.0,
        output_shape=target_shape,
        order=order,
        mode="constant",
        cval=0.0,
    )
    return volume.replace(array=array, affine=target_affine)


def resample_to_spacing(volume, spacing, order=1, antialias=True):
    """Resample a volume to a new voxel size, keeping its field of view in place.

    The new grid covers the same world box (voxel edges) as the old one, with
    ``round(n * old_spacing / spacing)`` voxels per axis and the same axis directions. When
    ``antialias`` and ``order > 0``, the volume is Gaussian-smoothed first along the axes that
    are downsampled (sigma = (factor - 1) / 2 old voxels), as ``skimage.transform.rescale`` does.

    :param volume: :class:`Volume`
    :param spacing: new voxel size in millimetres, a number or three numbers
    :param order: 1 for images, 0 for label maps
    :return: :class:`Volume`
    """
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    if not np.all(spacing > 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    factor = spacing / voxel_spacing(volume.affine)  # new voxel size in old voxels
    shape = np.maximum(1, np.round(np.array(volume.array.shape) / factor)).astype(int)
    # new voxel j sits at old voxel coordinate factor * (j + 0.5) - 0.5
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factor)
    scale[:3, 3] = 0.5 * (factor - 1.0)
    source = volume
    if antialias and order > 0 and np.any(factor > 1):
        sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
        smoothed = ndimage.gaussian_filter(volume.array, sigma, mode="constant")
        source = volume.replace(array=smoothed.astype(volume.array.dtype, copy=False))
    return resample_to_grid(source, volume.affine @ scale, shape, order=order)


@dataclasses.dataclass(frozen=True)
class CropPad:
    """How :func:`crop_or_pad` changed the grid, so that the change can be undone.

    ``out[i] = original[i + offset]`` on every spatial axis (a negative offset is padding).

    :param offset: shape = (3,), int
    :param original_shape: the spatial shape before
    :param shape: the spatial shape after
    """

    offset: tuple
    original_shape: tuple
    shape: tuple

    def affine(self, affine):
        """The affine of the new grid, given the affine of the original one."""
        shift = np.eye(4)
        shift[:3, 3] = self.offset
        return np.asarray(affine, dtype=np.float64) @ shift

    def undo(self, array, fill=0):
        """Put ``array`` (spatial shape ``self.shape``) back onto the original grid.

        :param array: shape = self.shape + (C...)
        :return: shape = self.original_shape + (C...); voxels that were cropped are ``fill``
        """
        inverse = tuple(-o for o in self.offset)
        return _shift_window(array, self.original_shape, inverse, fill)


def _shift_window(array, shape, offset, fill):
    """out[i] = array[i + offset] for i in the new spatial shape, ``fill`` where out of range."""
    array = np.asarray(array)
    spatial = len(shape)
    out = np.full(tuple(shape) + array.shape[spatial:], fill, dtype=array.dtype)
    source, target = [], []
    for n_in, n_out, o in zip(array.shape[:spatial], shape, offset):
        start, stop = max(0, o), min(n_in, n_out + o)
        source.append(slice(start, max(start, stop)))
        target.append(slice(start - o, max(start, stop) - o))
    out[tuple(target)] = array[tuple(source)]
    return out


def crop_or_pad(array, shape, fill=0):
    """Centre-crop or zero-pad the spatial axes of an array to ``shape``.

    When the difference is odd, the extra voxel is cropped from / padded at the end.

    :param array: shape = (X, Y, Z) or (X, Y, Z, C)
    :param shape: the new spatial shape (X', Y', Z')
    :return: (array of shape (X', Y', Z') [+ (C,)], :class:`CropPad`)
    """
    shape = tuple(int(n) for n in shape)
    old = tuple(np.shape(array)[: len(shape)])
    offset = tuple((n_in - n_out) // 2 if n_in >= n_out else -((n_out - n_in) // 2)
                   for n_in, n_out in zip(old, shape))
    out = _shift_window(array, shape, offset, fill)
    return out, CropPad(offset=offset, original_shape=old, shape=shape)


def pad_to_multiple(array, multiple, fill=0):
    """Zero-pad the three spatial axes, centred, to multiples of ``multiple``.

    :param array: shape = (X, Y, Z) or (X, Y, Z, C)
    :param multiple: an int, or one per spatial axis (e.g. 2 ** levels of a U-Net)
    :return: (padded, crop_slices) with ``padded[crop_slices]`` equal to ``array``
    """
    array = np.asarray(array)
    multiple = np.broadcast_to(np.asarray(multiple, dtype=int), (3,))
    if np.any(multiple < 1):
        raise ValueError(f"multiple must be positive, got {multiple}")
    old = np.array(array.shape[:3])
    new = -(-old // multiple) * multiple
    padded, crop = crop_or_pad(array, new, fill=fill)
    slices = tuple(slice(-o, -o + n) for o, n in zip(crop.offset, old))
    return padded, slices


def normalize_intensity(array, low=0.5, high=99.5):
    """Scale intensities to [0, 1] robustly: the ``low`` and ``high`` percentiles go to 0 and 1.

    Percentiles are taken over the non-zero voxels when there are any (skull-stripped images
    have a zero background), and the result is clipped to [0, 1]. With ``low=None`` only the
    scale changes (0 stays 0), which keeps the contrast of the darkest tissue of a synthetic image.
    A constant array gives zeros.

    :param array: any shape
    :param low: percentile mapped to 0, or None for 0 itself
    :param high: percentile mapped to 1
    :return: float32, same shape
    """
    array = np.asarray(array, dtype=np.float32)
    values = array[array != 0]
    if values.size == 0:
        return np.zeros_like(array)
    hi = float(np.percentile(values, high))
    lo = 0.0 if low is None else float(np.percentile(values, low))
    if hi <= lo:  # too few distinct values for the percentiles: use the full range
        lo = 0.0 if low is None else float(values.min())
        hi = float(values.max())
        if hi <= lo:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            if hi <= lo:
                return np.zeros_like(array)
    out = (array - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
