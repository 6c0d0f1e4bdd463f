"""Synthetic deformations and MR contrasts, for augmentation and for test pairs with known truth.

Implements, in NumPy/SciPy and driven only by the ``numpy.random.Generator`` passed in:

- :func:`random_smooth_flow`: a random smooth displacement field, cubic-spline interpolated
  from Gaussian noise on a coarse control grid and scaled to a given maximum displacement;
- :func:`warp`: ``moved(x) = moving(x + flow(x))``, the convention of voxelmorph's
  ``SpatialTransformer`` ('ij' indexing, displacements in voxels, edge values beyond the border);
- :func:`random_intensity_augmentation`: random gamma, smooth multiplicative bias field and noise;
- :func:`render_contrast`: an MR-like image from tissue maps (``sum_k p_k * intensity_k``, then
  blur, bias field and noise), e.g. the T2-like contrast :data:`T2_LIKE`, in the spirit of
  SynthSeg-style generative models (Billot et al. 2023);
- :func:`aseg_to_tissue`: FreeSurfer ``aseg`` label ids to the tissue classes rendered here;
- :func:`deformed_pair`: a pair of volumes each warped by its own random smooth flow, with
  their label maps: test pairs with known truth;
- :func:`brain_tissue_maps`: tissue probability maps consistent with a skull-stripped T1: every
  voxel of the T1's brain gets a tissue, the voxels the segmentation leaves unlabelled (sulcal
  and extra-cerebral CSF, vessels, partial volume) a CSF / grey-matter mixture read from the T1.

A flow has shape (X, Y, Z, 3) and is in voxels: ``flow[..., d]`` moves along voxel axis d.
"""

import numpy as np
from scipy import ndimage

from .io import normalize_intensity

#: Tissue classes used by :func:`render_contrast` and :func:`aseg_to_tissue`.
BACKGROUND, CSF, GREY_MATTER, WHITE_MATTER = 0, 1, 2, 3
TISSUE_NAMES = ("background", "CSF", "grey matter", "white matter")
#: T2-weighted-like intensities per tissue class: CSF bright, grey matter mid, white matter dark.
T2_LIKE = (0.0, 1.0, 0.55, 0.3)

#: Defaults of :func:`random_smooth_flow`: a few voxels over a control-point spacing of 8 voxels,
#: which keeps the Jacobian determinant positive (no folding).
DEFAULT_MAX_DISPLACEMENT = 2.5
DEFAULT_SMOOTHNESS = 8.0

#: Separate random streams per purpose, so that no two purposes ever share random numbers even
#: when they are given the same seed: ``np.random.default_rng([seed, stream, index])``.
MOVING_STREAM, FIXED_STREAM, AUGMENT_STREAM = 0, 1, 2
VALIDATION_STREAM, BENCHMARK_STREAM, DEMO_RENDER_STREAM = 3, 4, 5

# FreeSurfer aseg label ids per tissue class (FreeSurferColorLUT.txt).
_ASEG_CSF = (4, 5, 14, 15, 24, 31, 43, 44, 63, 72)  # ventricles, CSF, choroid plexus
_ASEG_GREY = (
    3, 42,  # cerebral cortex
    6, 45, 8, 47,  # cerebellum exterior, cortex
    9, 48, 10, 49,  # thalamus
    11, 50, 12, 51, 13, 52,  # caudate, putamen, pallidum
    17, 53, 18, 54,  # hippocampus, amygdala
    19, 55, 20, 56,  # insula, operculum
    26, 58, 28, 60,  # accumbens, ventral DC
    30, 62,  # vessel
    80, 81, 82,  # non-WM hypointensities
)
_ASEG_WHITE = (
    2, 41,  # cerebral white matter
    7, 46,  # cerebellum white matter
    16,  # brain stem
    77, 78, 79,  # WM hypointensities
    85,  # optic chiasm
    251, 252, 253, 254, 255,  # corpus callosum
)


def as_generator(rng):
    """A ``numpy.random.Generator`` from a Generator or an int seed (never global state)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {rng!r}")


def smooth_noise(shape, spacing, rng, channels=1):
    """Smooth random fields: N(0, 1) control points every ``spacing`` voxels, cubic-interpolated.

    :param shape: (X, Y, Z)
    :param spacing: distance between control points in voxels (the field's length scale)
    :return: shape = (X, Y, Z, channels), float32
    """
    shape = tuple(int(n) for n in shape)
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    coarse = tuple(max(2, int(np.ceil(n / spacing)) + 1) for n in shape)
    control = as_generator(rng).standard_normal(coarse + (channels,))
    # Cubic-spline interpolation is separable: one (n, c) interpolation matrix per axis, found by
    # interpolating the identity, then three small matrix products (much faster than a 3D zoom).
    out = control
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        weights = ndimage.zoom(np.eye(c), (n / c, 1), order=3, mode="mirror", grid_mode=False)
        out = np.moveaxis(np.tensordot(weights, out, axes=([1], [axis])), 0, axis)
    out = out.astype(np.float32)
    assert out.shape == shape + (channels,), (out.shape, shape)
    return out


def random_smooth_flow(shape, max_displacement=DEFAULT_MAX_DISPLACEMENT,
                       smoothness=DEFAULT_SMOOTHNESS, rng=None):
    """A random smooth displacement field whose largest displacement is ``max_displacement``.

    :param shape: (X, Y, Z)
    :param max_displacement: the largest displacement length ``max_x |flow(x)|``, in voxels
    :param smoothness: distance between independent control points, in voxels
    :param rng: a seeded ``numpy.random.Generator`` (or an int seed)
    :return: shape = (X, Y, Z, 3), float32, in voxels
    """
    if rng is None:
        raise TypeError("random_smooth_flow needs rng, a seeded numpy.random.Generator")
    if max_displacement < 0:
        raise ValueError(f"max_displacement must be >= 0, got {max_displacement}")
    flow = smooth_noise(shape, smoothness, rng, channels=3)
    largest = float(np.sqrt(np.max(np.sum(flow.astype(np.float64) ** 2, axis=-1))))
    if largest == 0.0:
        return np.zeros_like(flow)
    return (flow * np.float32(max_displacement / largest)).astype(np.float32)


def warp(array, flow, order=1):
    """Resample ``array`` at ``x + flow(x)``: ``moved(x) = array(x + flow(x))``.

    Same convention as ``voxelmorph.layers.SpatialTransformer`` with 'ij' indexing; beyond the
    border the nearest edge value is used.

    :param array: shape = (X, Y, Z) or (X, Y, Z, C)
    :param flow: shape = (X, Y, Z, 3), in voxels
    :param order: 1 (trilinear) for images, 0 (nearest) for label maps
    :return: same shape as ``array``; float32 for order > 0, the input dtype for order 0
    """
    array = np.asarray(array)
    flow = np.asarray(flow)
    if array.ndim not in (3, 4) or flow.shape != array.shape[:3] + (3,):
        raise ValueError(f"array (X, Y, Z[, C]) and flow (X, Y, Z, 3) disagree: "
                         f"{array.shape} and {flow.shape}")
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in array.shape[:3]), indexing="ij")
    coords = np.stack([g + flow[..., d] for d, g in enumerate(grid)])  # (3, X, Y, Z)
    dtype = array.dtype if order == 0 else np.float32
    channels = array[..., None] if array.ndim == 3 else array
    moved = np.stack(
        [
            ndimage.map_coordinates(channels[..., c], coords, output=dtype, order=order,
                                    mode="nearest")
            for c in range(channels.shape[-1])
        ],
        axis=-1,
    )
    return moved[..., 0] if array.ndim == 3 else moved


def _bias_and_noise(image, rng, bias_strength, noise_std):
    """Multiply by a smooth bias field exp(b), |b| <= bias_strength, add noise in the foreground,
    and rescale to [0, 1] with :func:`~dgan.data.io.normalize_intensity` (scale only, so the darkest
    tissue stays above the zero background). Voxels below 0.1 % of the maximum (e.g. the far
    tails of a blur) are background and become 0."""
    foreground = image > 1e-3 * float(image.max())
    image = np.where(foreground, image, np.float32(0.0))
    if bias_strength > 0:
        field = smooth_noise(image.shape, max(image.shape) / 3.0, rng)[..., 0]
        field /= max(float(np.abs(field).max()), 1e-12)
        image = image * np.exp(np.float32(bias_strength) * field)
    if noise_std > 0:
        noise = rng.standard_normal(image.shape).astype(np.float32) * np.float32(noise_std)
        image = np.where(foreground, np.maximum(image + noise, 0.0), 0.0)
    return normalize_intensity(image, low=None)


def random_intensity_augmentation(image, rng, max_log_gamma=0.3, bias_strength=0.3,
                                  noise_std=0.03):
    """Random gamma, smooth multiplicative bias field and Gaussian noise, then rescaled to [0, 1].

    The zero background stays zero (noise is added only in the foreground).

    :param image: shape = (X, Y, Z), intensities >= 0 (e.g. in [0, 1])
    :param rng: a seeded ``numpy.random.Generator`` (or an int seed)
    :param max_log_gamma: gamma = exp(u), u uniform in [-max_log_gamma, max_log_gamma]
    :param bias_strength: bias field exp(b) with |b| <= bias_strength
    :param noise_std: standard deviation of the noise, relative to the image maximum
    :return: shape = (X, Y, Z), float32 in [0, 1]
    """
    rng = as_generator(rng)
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, None)
    peak = float(image.max())
    if peak > 0:
        image = image / peak
    gamma = np.exp(rng.uniform(-max_log_gamma, max_log_gamma))
    image = image ** np.float32(gamma)
    return _bias_and_noise(image, rng, bias_strength, noise_std)


def render_contrast(tissue_maps, intensities, rng, blur_sigma=1.0, bias_strength=0.2,
                    noise_std=0.02):
    """Render an MR-like image from tissue maps: ``sum_k p_k * intensities[k]``, then a Gaussian
    blur (partial volume), a smooth bias field and noise, rescaled to [0, 1].

    :param tissue_maps: probability maps of shape (X, Y, Z, K), or an integer label map of shape
        (X, Y, Z) with classes 0..K-1 (class 0 = background)
    :param intensities: K intensities, one per class, e.g. :data:`T2_LIKE`
    :param rng: a seeded ``numpy.random.Generator`` (or an int seed)
    :param blur_sigma: Gaussian blur in voxels (0 for none)
    :param bias_strength: bias field exp(b) with |b| <= bias_strength (0 for none)
    :param noise_std: noise standard deviation relative to the brightest tissue (0 for none)
    :return: shape = (X, Y, Z), float32 in [0, 1]
    """
    rng = as_generator(rng)
    tissue_maps = np.asarray(tissue_maps)
    intensities = np.asarray(intensities, dtype=np.float32)
    if tissue_maps.ndim == 3 and not np.issubdtype(tissue_maps.dtype, np.floating):
        if tissue_maps.min() < 0 or tissue_maps.max() >= len(intensities):
            raise ValueError(f"labels must lie in 0..{len(intensities) - 1}, got "
                             f"{tissue_maps.min()}..{tissue_maps.max()}")
        image = intensities[tissue_maps]
    elif tissue_maps.ndim == 4 and tissue_maps.shape[-1] == len(intensities):
        image = np.tensordot(tissue_maps.astype(np.float32), intensities, axes=([-1], [0]))
    else:
        raise ValueError(f"tissue_maps must be an integer label map (X, Y, Z) or probability maps "
                         f"(X, Y, Z, {len(intensities)}), got {tissue_maps.shape} "
                         f"{tissue_maps.dtype}")
    image = image.astype(np.float32, copy=False)
    if blur_sigma > 0:
        image = ndimage.gaussian_filter(image, blur_sigma, mode="constant")
    return _bias_and_noise(image, rng, bias_strength, noise_std)


def aseg_to_tissue(seg):
    """Map FreeSurfer ``aseg`` label ids to tissue classes.

    0 background, 1 CSF (ventricles, CSF, choroid plexus), 2 grey matter (cortex, cerebellar
    cortex, deep grey nuclei, hippocampus, amygdala, ventral DC), 3 white matter (cerebral and
    cerebellar white matter, brain stem, corpus callosum, WM hypointensities). Ids not listed
    (e.g. 0, optic nerves) map to background.

    :param seg: shape = (X, Y, Z), integer-valued label ids
    :return: shape = (X, Y, Z), int32 in 0..3
    """
    seg = np.asarray(seg)
    if np.issubdtype(seg.dtype, np.floating) and not np.all(seg == np.round(seg)):
        raise ValueError("aseg label ids must be integers")
    seg = seg.astype(np.int64)
    if seg.size and seg.min() < 0:
        raise ValueError(f"aseg label ids must be >= 0, got {seg.min()}")
    table = np.zeros(max(256, int(seg.max(initial=0)) + 1), dtype=np.int32)
    table[list(_ASEG_CSF)] = CSF
    table[list(_ASEG_GREY)] = GREY_MATTER
    table[list(_ASEG_WHITE)] = WHITE_MATTER
    return table[seg]


def brain_mask(image, seg):
    """The brain: the foreground of a skull-stripped image together with the labelled voxels,
    holes filled.

    :param image: shape = (X, Y, Z), skull-stripped (0 outside the brain)
    :param seg: shape = (X, Y, Z), label ids (0 unlabelled)
    :return: shape = (X, Y, Z), bool
    """
    image, seg = np.asarray(image), np.asarray(seg)
    if image.shape != seg.shape:
        raise ValueError(f"image {image.shape} and seg {seg.shape} shapes differ")
    return ndimage.binary_fill_holes((image > 0) | (seg > 0))


def brain_tissue_maps(seg, t1):
    """Tissue probability maps of a T1 and its aseg that agree with the T1 everywhere.

    Labelled voxels take their class (:func:`aseg_to_tissue`). Voxels inside the brain
    (:func:`brain_mask`) that the aseg leaves unlabelled, or maps to background, are sulcal and
    extra-cerebral CSF, vessels and their partial volume with the cortex: they become a mixture
    of CSF and grey matter with grey-matter fraction
    ``clip((t1 - median_T1(CSF)) / (median_T1(grey) - median_T1(CSF)), 0, 1)``, the medians taken
    over the labelled voxels of each class. Voxels outside the brain stay background, as in the
    skull-stripped T1.

    :param seg: shape = (X, Y, Z), integer-valued aseg ids
    :param t1: shape = (X, Y, Z), the skull-stripped T1 on the same grid
    :return: shape = (X, Y, Z, 4), float32 probabilities of (background, CSF, grey, white)
        matter, summing to 1 in every voxel; background is 0 in every voxel of the brain
    """
    t1 = np.asarray(t1, dtype=np.float32)
    tissue = aseg_to_tissue(seg)
    mask = brain_mask(t1, tissue)
    maps = np.eye(len(TISSUE_NAMES), dtype=np.float32)[tissue]  # (X, Y, Z, 4)
    unlabelled = mask & (tissue == BACKGROUND)
    if unlabelled.any():
        levels = [float(np.median(t1[tissue == c])) if np.any(tissue == c) else default
                  for c, default in ((CSF, 0.25), (GREY_MATTER, 0.55))]
        span = max(levels[1] - levels[0], 1e-6)
        grey = np.clip((t1[unlabelled] - levels[0]) / span, 0.0, 1.0)
        maps[unlabelled] = 0.0
        maps[unlabelled, CSF] = 1.0 - grey
        maps[unlabelled, GREY_MATTER] = grey
    return maps


def deformed_pair(moving, fixed, moving_labels, fixed_labels, rng, max_displacement,
                  smoothness, augment_moving=True, augment_fixed=True, fixed_in_moving=None):
    """Moving and fixed each warped by its own random smooth flow; labels warped with order 0.

    All arrays (X, Y, Z); returns a dict of float32 images and int32 label maps, and, when
    ``fixed_in_moving`` (the fixed anatomy in the moving modality) is given, ``"fixed_t1"``: it
    warped with the fixed image's flow, the same-modality fixed image.
    """
    moving_flow = random_smooth_flow(moving.shape, max_displacement, smoothness, rng)
    fixed_flow = random_smooth_flow(fixed.shape, max_displacement, smoothness, rng)
    moved = warp(moving, moving_flow)
    fixed_moved = warp(fixed, fixed_flow)
    pair = {
        "moving": random_intensity_augmentation(moved, rng) if augment_moving else moved,
        "fixed": random_intensity_augmentation(fixed_moved, rng) if augment_fixed else fixed_moved,
        "moving_labels": warp(moving_labels, moving_flow, order=0).astype(np.int32),
        "fixed_labels": warp(fixed_labels, fixed_flow, order=0).astype(np.int32),
    }
    if fixed_in_moving is not None:
        pair["fixed_t1"] = warp(fixed_in_moving, fixed_flow)
    return pair
