"""How a scan is prepared for the networks: one description that training and registration share.

Deform-GAN (Zhang et al. 2020, arXiv:2002.11430) trains T on volumes of one grid and intensity
range; registration must prepare new scans the same way, or T sees inputs it was never trained on.
:class:`Preprocessing` is that description. Training prepares its volumes with
:meth:`Preprocessing.prepare` (through :func:`preprocess_volume`), writes the description into the
model folder (``dgan_model.json``, :mod:`dgan.registration.model_folder`), and
:class:`dgan.registration.registrar.Registrar` reads it back and prepares scans with the same
methods:

1. :meth:`Preprocessing.network_grid`: reorient to RAS+ (:func:`dgan.data.io.to_canonical`, axis
   permutations and flips only) and resample to ``spacing``
   (:func:`dgan.data.io.resample_to_spacing`; None keeps the scan's own voxel size);
2. :meth:`Preprocessing.scale`: intensities mapped to [0, 1], the ``percentiles`` of the non-zero
   voxels going to 0 and 1 (:func:`dgan.data.io.normalize_intensity`);
3. centred crop or zero padding: to the training ``shape`` in training (:meth:`prepare`), to the
   smallest shape the network takes in registration (:func:`padded_shape`), which is the
   training shape itself for a scan on the training grid.
"""

import dataclasses
import math

from ..errors import InputError
from .io import crop_or_pad, normalize_intensity, resample_to_spacing, to_canonical

#: Intensity percentiles mapped to 0 and 1 (:func:`dgan.data.io.normalize_intensity`).
DEFAULT_PERCENTILES = (0.5, 99.5)
#: The orientation every prepared volume has.
ORIENTATION = "RAS"
#: The smallest size, in voxels per axis, that the networks accept.
MIN_SIZE = 8


def _is_sequence(value):
    return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How volumes are prepared for the networks (see the module docstring).

    :param shape: the training volumes' spatial shape (X, Y, Z)
    :param spacing: voxel size in millimetres, shape = (3,) (a number means the same on every
        axis), or None (each scan's own)
    :param percentiles: (low, high) intensity percentiles mapped to 0 and 1
    """

    shape: tuple
    spacing: tuple | None = None
    percentiles: tuple = DEFAULT_PERCENTILES

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        spacing = self.spacing
        if spacing is not None:
            values = [float(s) for s in (spacing if _is_sequence(spacing) else [spacing] * 3)]
            if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
                raise ValueError(f"spacing must be three positive millimetre sizes, got {spacing}")
            spacing = tuple(values)
        low, high = (float(p) for p in self.percentiles)
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "percentiles", (low, high))

    def to_dict(self):
        return {
            "shape": list(self.shape),
            "spacing": None if self.spacing is None else list(self.spacing),
            "percentiles": list(self.percentiles),
            "orientation": ORIENTATION,
        }

    @classmethod
    def from_dict(cls, config):
        config = dict(config)
        config.pop("orientation", None)
        return cls(**config)

    def network_grid(self, volume, order=1):
        """Steps 1: ``volume`` reoriented to RAS+ and resampled to :attr:`spacing`.

        :param volume: :class:`dgan.data.io.Volume`
        :param order: interpolation order, 1 for images, 0 for label maps
        :return: :class:`dgan.data.io.Volume` on the network grid (the same object when nothing
            changes)
        """
        volume = to_canonical(volume)
        return volume if self.spacing is None else resample_to_spacing(volume, self.spacing,
                                                                        order=order)

    def scale(self, array):
        """Step 2: intensities to [0, 1] (:func:`scale_intensity` with :attr:`percentiles`).

        :param array: any shape
        :return: float32, same shape
        """
        return scale_intensity(array, self.percentiles)

    def prepare(self, volume, order=1, normalize=True):
        """Steps 1-3 as training applies them: network grid, scaling, crop/pad to :attr:`shape`.

        :param volume: :class:`dgan.data.io.Volume`
        :param order: interpolation order, 1 for images, 0 for label maps
        :param normalize: scale intensities (False for label maps and probability maps)
        :return: :class:`dgan.data.io.Volume` of shape :attr:`shape`, with the affine of that grid
            (use it to write results that overlay the input)
        :raises InputError: smaller than :data:`MIN_SIZE` voxels on an axis on the network grid,
            or nothing but background left after cropping
        """
        volume = self.network_grid(volume, order=order)
        if min(volume.shape) < MIN_SIZE:
            at = "" if self.spacing is None else f" at {_millimetres(self.spacing)} mm"
            raise InputError(f"too small for the network: {volume.shape} voxels{at}, "
                             f"need at least {MIN_SIZE} on every axis", volume.path)
        array = self.scale(volume.array) if normalize else volume.array
        array, crop = crop_or_pad(array, self.shape)
        if normalize and not array.any():
            raise InputError(f"nothing but background is left after cropping to {self.shape}",
                             volume.path)
        return volume.replace(array=array, affine=crop.affine(volume.affine))


def scale_intensity(array, percentiles=DEFAULT_PERCENTILES):
    """:func:`dgan.data.io.normalize_intensity` with ``percentiles`` (low, high) going to 0 and
    1."""
    return normalize_intensity(array, *percentiles)


def padded_shape(shape, multiple):
    """The smallest shape >= ``shape`` that a U-Net with down-sampling ``multiple`` takes:
    multiples of ``multiple`` on every axis, and at least two of them.

    :param shape: (X, Y, Z)
    :param multiple: :attr:`dgan.core.networks.NetworkConfig.multiple`
    :return: (X', Y', Z')
    """
    m = int(multiple)
    return tuple(max(-(-int(n) // m) * m, 2 * m) for n in shape)


def _millimetres(spacing):
    values = set(spacing)
    return str(spacing[0]) if len(values) == 1 else " x ".join(str(s) for s in spacing)


def check_shape(shape):
    """``shape`` as three positive ints (X, Y, Z); ValueError otherwise."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive integers, got {shape}")
    return shape


def preprocess_volume(volume, shape, spacing=None, order=1, normalize=True):
    """Canonical orientation, optional resampling, centred crop/pad, robust scaling: training's
    preparation, :meth:`Preprocessing.prepare` (registration reads the same
    description from the model folder).

    :param volume: :class:`~dgan.data.io.Volume`
    :param shape: the network's input shape (X, Y, Z)
    :param spacing: voxel size in mm to resample to, or None to keep the volume's own
    :param order: interpolation order, 1 for images, 0 for label maps
    :param normalize: scale intensities to [0, 1] (:func:`~dgan.data.io.normalize_intensity`)
    :return: :class:`~dgan.data.io.Volume` with array shape = ``shape`` and the affine of that grid
        (use it to write results that overlay the input)
    :raises InputError: the volume is smaller than 8 voxels on an axis after resampling
    """
    return Preprocessing(check_shape(shape), spacing).prepare(volume, order=order,
                                                               normalize=normalize)


def preprocess(volume, shape, spacing=None):
    """The image array of :func:`preprocess_volume`: float32 in [0, 1], shape = ``shape``."""
    return preprocess_volume(volume, shape, spacing).array
