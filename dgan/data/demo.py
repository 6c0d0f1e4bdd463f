"""The embedded demo data: a real T1 and a T2-like rendering of the same brain, offline.

nilearn's bundled MNI152 2009 template gives a real T1 (moving modality) and grey/white-matter
maps from which a T2-like image (fixed modality) is rendered (:func:`demo_volumes`); training
draws randomly deformed, unpaired samples of the two (:func:`demo_dataset`) and validates on
seeded deformed pairs with tissue labels (:func:`demo_validation_pairs`).
"""

import dataclasses
import functools
import importlib.util
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .io import load_volume
from .preprocessing import check_shape, preprocess_volume
from .synth import (
    DEMO_RENDER_STREAM,
    T2_LIKE,
    VALIDATION_STREAM,
    deformed_pair,
    render_contrast,
)

#: Demo grid: 5 mm voxels; 32 x 40 x 32 covers the MNI152 brain (160 x 200 x 160 mm, the
#: brain stem cut at the bottom) and every axis is divisible by 8, as the U-Net's downsampling
#: needs. Coarse, so that a demo run trains on a CPU.
DEMO_SHAPE = (32, 40, 32)
DEMO_SPACING = 5.0
#: Demo deformations (voxels): each image of a pair is displaced by up to 20 mm over a 80 mm
#: control-point spacing, the large, smooth misalignment of scans that were not registered.
#: Same ratio as synth's defaults, so no folding.
DEMO_MAX_DISPLACEMENT = 4.0
DEMO_SMOOTHNESS = 16.0

#: The demo data's tissue labels.
TISSUE_LABELS = {1: "CSF", 2: "grey matter", 3: "white matter"}


_MNI_FILES = {
    name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")
}


@dataclasses.dataclass(frozen=True, eq=False)
class DemoVolumes:
    """The demo subject on the demo grid (arrays are read-only: they are cached).

    :param t1: shape = (X, Y, Z), float32 in [0, 1], the real MNI152 T1 (moving modality)
    :param t2: shape = (X, Y, Z), float32 in [0, 1], rendered T2-like (fixed modality)
    :param labels: shape = (X, Y, Z), int32 tissue classes 0 bg, 1 CSF, 2 GM, 3 WM
    :param affine: shape = (4, 4), the grid's voxel-to-MNI affine
    """

    t1: np.ndarray
    t2: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def _mni_template_path(name):
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the demo data needs nilearn (pip install 'nilearn>=0.10')")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / _MNI_FILES[name]
    if not path.is_file():
        raise InputError("nilearn's bundled MNI152 template is missing; reinstall nilearn", path)
    return path


def demo_volumes(shape=DEMO_SHAPE, spacing=DEMO_SPACING):
    """The demo subject, preprocessed to ``shape`` at ``spacing`` mm (cached per process).

    From nilearn's bundled MNI152 2009c template (no download): the T1 as it is; the brain mask
    is the filled non-zero region of the skull-stripped T1 together with the tissue maps;
    CSF = mask - GM - WM; the T2-like image is :func:`~dgan.data.synth.render_contrast` of the
    (background, CSF, GM, WM) probability maps with :data:`~dgan.data.synth.T2_LIKE`; the label map
    is their argmax.

    :param spacing: voxel size in mm, or None for the template's own 1 mm
    :return: :class:`DemoVolumes`
    """
    return _demo_volumes(check_shape(shape), None if spacing is None else float(spacing))


@functools.lru_cache(maxsize=4)
def _demo_volumes(shape, spacing):
    t1 = load_volume(_mni_template_path("t1"))
    gm = load_volume(_mni_template_path("gm"))
    wm = load_volume(_mni_template_path("wm"))
    grey = gm.array / np.float32(255.0)  # the uint8 maps store probabilities times 255
    white = wm.array / np.float32(255.0)
    mask = ndimage.binary_fill_holes((t1.array > 0) | (grey + white > 0.5)).astype(np.float32)
    grey, white = grey * mask, white * mask
    csf = np.clip(mask - grey - white, 0.0, 1.0)
    background = np.clip(1.0 - csf - grey - white, 0.0, 1.0)

    def fit(array, normalize):
        return preprocess_volume(t1.replace(array=array), shape, spacing, normalize=normalize)

    t1_out = fit(t1.array, normalize=True)
    # padding fills every map with 0, where the argmax is class 0, background
    maps = np.stack([fit(m, normalize=False).array for m in (background, csf, grey, white)], -1)
    labels = np.argmax(maps, axis=-1).astype(np.int32)
    rng = np.random.default_rng([0, DEMO_RENDER_STREAM])
    t2 = render_contrast(maps, T2_LIKE, rng, blur_sigma=0.5, bias_strength=0.1, noise_std=0.02)
    for array in (t1_out.array, t2, labels):
        array.setflags(write=False)
    return DemoVolumes(t1=t1_out.array, t2=t2, labels=labels, affine=t1_out.affine)


def demo_dataset(batch_size, seed, start_step=0, shape=DEMO_SHAPE, input_context=None,
                 spacing=DEMO_SPACING):
    """The demo training data: :func:`make_dataset` over the demo T1 (moving) and T2-like
    (fixed), each sample with its own random deformation (:data:`DEMO_MAX_DISPLACEMENT`,
    :data:`DEMO_SMOOTHNESS`) and intensities for either side, so that moving and fixed never
    start aligned.

    :return: ``tf.data.Dataset`` of ``{"moving", "fixed"}``, each (B, X, Y, Z, 1) float32
    """
    demo = demo_volumes(shape, spacing)
    from .pipeline import make_dataset

    return make_dataset([demo.t1], [demo.t2], batch_size, seed, start_step=start_step,
                        augment=True, input_context=input_context,
                        max_displacement=DEMO_MAX_DISPLACEMENT, smoothness=DEMO_SMOOTHNESS)


def demo_validation_pairs(n=4, seed=1234, shape=DEMO_SHAPE, spacing=DEMO_SPACING):
    """Fixed, seeded demo pairs for validation, drawn from a random stream training never uses,
    deformed like the training pairs.

    :return: list of n dicts: ``moving``, ``fixed`` (X, Y, Z) float32 in [0, 1];
        ``moving_labels``, ``fixed_labels`` (X, Y, Z) int32 tissue classes, warped with the
        same flows as the images
    """
    demo = demo_volumes(shape, spacing)
    pairs = []
    for k in range(n):
        rng = np.random.default_rng([seed, VALIDATION_STREAM, k])
        pairs.append(deformed_pair(demo.t1, demo.t2, demo.labels, demo.labels, rng,
                                   DEMO_MAX_DISPLACEMENT, DEMO_SMOOTHNESS))
    return pairs
