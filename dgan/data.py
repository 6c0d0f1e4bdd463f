"""Training and evaluation data: preprocessing, unpaired ``tf.data`` pipelines, demo and benchmark.

Implements:

- :func:`preprocess` / :func:`preprocess_volume`: canonical (RAS+) orientation, optional
  resampling to a voxel size, centred crop/pad to the network's shape, robust [0, 1] scaling;
- :func:`find_scans` (folders, glob patterns, CSV lists) and :class:`ScanSet`, which loads and
  preprocesses scans in parallel and keeps them in memory;
- :func:`make_dataset`: an infinite, *unpaired* ``tf.data.Dataset`` of
  ``{"moving": (B, X, Y, Z, 1), "fixed": (B, X, Y, Z, 1)}``. Deform-GAN trains without
  corresponding pairs (Zhang et al. 2020, arXiv:2002.11430), so for every global sample index i
  the moving and the fixed volume are drawn independently, and the augmentation (a random
  smooth deformation and random intensities per volume) is seeded by (seed, i). Everything is a
  function of (seed, i): resuming at ``start_step`` reproduces the uninterrupted order, and
  ``tf.distribute`` input pipelines take disjoint shares of the indices;
- the demo data, embedded and offline: nilearn's bundled MNI152 2009 template gives a real T1
  (moving modality) and grey/white-matter maps from which a T2-like image (fixed modality) is
  rendered (:func:`demo_volumes`, :func:`demo_dataset`, :func:`demo_validation_pairs`);
- :func:`load_brain_benchmark`: cross-modal test pairs with known deformations from one real
  T1 scan and its FreeSurfer segmentation (``brain_t1_aseg.npz``);
  :func:`write_brain_training_data` writes its training scans and validation pairs as files;
- :func:`benchmark_pairs`: the evaluation pairs (brain or demo) with the labels that score them;
- labelled pairs from a CSV (:func:`read_pair_csv`, :func:`load_labelled_pairs`).
"""

import concurrent.futures
import csv
import dataclasses
import functools
import glob
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .compat import tf
from .errors import InputError
from .io import (
    VOLUME_SUFFIXES,
    atomic_write,
    load_volume,
    normalize_intensity,
    resample_to_spacing,
    save_volume,
    volume_suffix,
)
from .preprocessing import MIN_SIZE, Preprocessing  # noqa: F401  (MIN_SIZE: part of this API)
from .synth import (
    DEFAULT_MAX_DISPLACEMENT,
    DEFAULT_SMOOTHNESS,
    T2_LIKE,
    brain_tissue_maps,
    random_intensity_augmentation,
    random_smooth_flow,
    render_contrast,
    warp,
)

logger = logging.getLogger(__name__)

#: Demo grid: 5 mm voxels; 32 x 40 x 32 covers the MNI152 brain (160 x 200 x 160 mm, the
#: brain stem cut at the bottom) and every axis is divisible by 8, as the U-Net's downsampling
#: needs. Coarse, so that a demo run trains in minutes on two CPU cores.
DEMO_SHAPE = (32, 40, 32)
DEMO_SPACING = 5.0
#: Demo deformations (voxels): each image of a pair is displaced by up to 20 mm over a 80 mm
#: control-point spacing, the large, smooth misalignment of scans that were not registered.
#: Same ratio as synth's defaults, so no folding.
DEMO_MAX_DISPLACEMENT = 4.0
DEMO_SMOOTHNESS = 16.0

#: ../shared/data beside the repository: the brain benchmark's files (``brain_t1_aseg.npz``,
#: ``aseg_eval_labels.npz``; never committed), the default of every command that reads them.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: The brain benchmark (:func:`load_brain_benchmark`): pairs per evaluation, and each side's
#: deformation, in mm.
BRAIN_PAIRS = 8
BRAIN_MAX_DISPLACEMENT_MM = 8.0
BRAIN_SMOOTHNESS_MM = 32.0

#: Seeds of the brain benchmark's training scans and validation pairs
#: (:func:`write_brain_training_data`); the evaluation pairs use seed 0.
BRAIN_TRAIN_SEED = 1000
BRAIN_VAL_SEED = 2000

#: Short names of the 30 aseg labels that registration papers score (FreeSurferColorLUT).
ASEG_NAMES = {
    2: "L cerebral WM", 3: "L cortex", 4: "L lat. ventricle", 7: "L cerebellum WM",
    8: "L cerebellum ctx", 10: "L thalamus", 11: "L caudate", 12: "L putamen", 13: "L pallidum",
    14: "3rd ventricle", 15: "4th ventricle", 16: "brain stem", 17: "L hippocampus",
    18: "L amygdala", 24: "CSF", 28: "L ventral DC", 31: "L choroid plexus",
    41: "R cerebral WM", 42: "R cortex", 43: "R lat. ventricle", 46: "R cerebellum WM",
    47: "R cerebellum ctx", 49: "R thalamus", 50: "R caudate", 51: "R putamen", 52: "R pallidum",
    53: "R hippocampus", 54: "R amygdala", 60: "R ventral DC", 63: "R choroid plexus",
}
#: The demo data's tissue labels.
TISSUE_LABELS = {1: "CSF", 2: "grey matter", 3: "white matter"}

# Separate random streams per purpose, so that no two purposes ever share random numbers even
# when they are given the same seed: np.random.default_rng([seed, stream, index]).
_MOVING_STREAM, _FIXED_STREAM, _AUGMENT_STREAM = 0, 1, 2
_VALIDATION_STREAM, _BENCHMARK_STREAM, _DEMO_RENDER_STREAM = 3, 4, 5

_MNI_FILES = {
    name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")
}


# --- preprocessing ---------------------------------------------------------------------------


def _check_shape(shape):
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive integers, got {shape}")
    return shape


def preprocess_volume(volume, shape, spacing=None, order=1, normalize=True):
    """Canonical orientation, optional resampling, centred crop/pad, robust scaling: training's
    preparation, :meth:`dgan.preprocessing.Preprocessing.prepare` (registration reads the same
    description from the model folder).

    :param volume: :class:`~dgan.io.Volume`
    :param shape: the network's input shape (X, Y, Z)
    :param spacing: voxel size in mm to resample to, or None to keep the volume's own
    :param order: interpolation order, 1 for images, 0 for label maps
    :param normalize: scale intensities to [0, 1] (:func:`~dgan.io.normalize_intensity`)
    :return: :class:`~dgan.io.Volume` with array shape = ``shape`` and the affine of that grid
        (use it to write results that overlay the input)
    :raises InputError: the volume is smaller than 8 voxels on an axis after resampling
    """
    return Preprocessing(_check_shape(shape), spacing).prepare(volume, order=order,
                                                               normalize=normalize)


def preprocess(volume, shape, spacing=None):
    """The image array of :func:`preprocess_volume`: float32 in [0, 1], shape = ``shape``."""
    return preprocess_volume(volume, shape, spacing).array


# --- finding and loading scans ---------------------------------------------------------------


def _is_volume_file(path):
    return path.is_file() and not path.name.startswith(".") and volume_suffix(path) is not None


def _read_csv(path):
    """Paths in the first column; a first row whose first cell is not a volume file is a header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row and row[0].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the CSV file ({error})", path) from error
    if rows and volume_suffix(rows[0][0].strip()) is None:
        rows = rows[1:]
    return [str(path.parent / Path(row[0].strip()).expanduser()) for row in rows]


def _find_one(spec):
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return [str(p) for p in sorted(path.iterdir()) if _is_volume_file(p)]
    if path.suffix.lower() == ".csv" and path.is_file():
        return _read_csv(path)
    if any(c in text for c in "*?["):
        return [p for p in sorted(glob.glob(os.path.expanduser(text))) if _is_volume_file(Path(p))]
    return [str(path)] if path.is_file() else []


def find_scans(spec):
    """The scan files a user means.

    :param spec: a folder (every ``.nii``, ``.nii.gz``, ``.mgz``, ``.npz`` file in it, sorted),
        a glob pattern, a CSV file (first column: paths, header row optional, relative paths are
        relative to the CSV's folder), a single file, or a list of these
    :return: list of paths (str), in order
    :raises InputError: "no files matched", naming the spec that matched nothing
    """
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise InputError("no files matched (empty list)")
    paths = []
    for item in specs:
        found = _find_one(item)
        if not found:
            raise InputError(
                f"no files matched (expected a folder, glob, CSV or file of type "
                f"{', '.join(VOLUME_SUFFIXES)})",
                item,
            )
        paths.extend(found)
    return paths


def _load_preprocessed(path, shape, spacing, kind):
    volume = load_volume(path, kind=kind)
    if kind == "labels":
        return preprocess_volume(volume, shape, spacing, order=0, normalize=False)
    return preprocess_volume(volume, shape, spacing)


class ScanSet:
    """Scans loaded, checked and preprocessed in parallel threads, then kept in memory.

    Behaves as a read-only sequence of arrays, so it can be passed to :func:`make_dataset`.

    :param paths: files (see :func:`find_scans`)
    :param shape: the network's input shape (X, Y, Z)
    :param spacing: voxel size in mm to resample to, or None
    :param kind: ``"image"`` (float32 in [0, 1]) or ``"labels"`` (int32, nearest neighbour)
    :param workers: threads; default min(8, CPU count)
    :raises InputError: for the first file (in the given order) that cannot be used
    """

    def __init__(self, paths, shape, spacing=None, kind="image", workers=None):
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise ValueError("ScanSet needs at least one path")
        self.shape = _check_shape(shape)
        self.spacing = spacing
        workers = workers or min(8, os.cpu_count() or 1)
        load = functools.partial(_load_preprocessed, shape=self.shape, spacing=spacing, kind=kind)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            self.volumes = tuple(pool.map(load, self.paths))
        for volume in self.volumes:
            volume.array.setflags(write=False)
        logger.info("loaded %d scans of shape %s", len(self.volumes), self.shape)

    @property
    def arrays(self):
        """The preprocessed arrays, each of shape (X, Y, Z)."""
        return [volume.array for volume in self.volumes]

    @property
    def affines(self):
        """The affine of each preprocessed grid, shape = (4, 4) each."""
        return [volume.affine for volume in self.volumes]

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, index):
        return self.volumes[index].array

    def __iter__(self):
        return iter(self.arrays)


# --- labelled pairs (validation) -------------------------------------------------------------

#: The columns of a CSV of labelled pairs (validation pairs; relative paths are relative to the
#: CSV's folder).
PAIR_COLUMNS = ("moving", "fixed", "moving_labels", "fixed_labels")


def read_pair_csv(path):
    """Rows of a CSV of labelled pairs (:data:`PAIR_COLUMNS`), paths made absolute.

    :return: list of dicts, one per pair
    :raises InputError: no such file, or a header without the columns
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or any(c not in rows[0] for c in PAIR_COLUMNS):
        raise InputError(f"needs a header with the columns {', '.join(PAIR_COLUMNS)}", path)
    return [{c: str((path.parent / row[c]).resolve()) for c in PAIR_COLUMNS} for row in rows]


def write_pair_csv(path, rows):
    """Write rows (dicts of :data:`PAIR_COLUMNS`, paths relative to the CSV's folder) atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, PAIR_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def load_labelled_pairs(csv_path, preprocessing):
    """The pairs of a CSV (:func:`read_pair_csv`), each file prepared by ``preprocessing``
    (:class:`~dgan.preprocessing.Preprocessing`; label maps nearest neighbour, not scaled).

    :return: list of dicts ``moving``, ``fixed`` (X, Y, Z) float32 in [0, 1],
        ``moving_labels``, ``fixed_labels`` (X, Y, Z)
    :raises InputError: an unusable file, or a label map whose shape differs from its image's
    """
    pairs = []
    for row in read_pair_csv(csv_path):
        pair = {}
        for key in PAIR_COLUMNS:
            labels = key.endswith("_labels")
            volume = load_volume(row[key], kind="labels" if labels else "image")
            if labels:
                image = row[key[:-len("_labels")]]
                reference = load_volume(image)
                if volume.array.shape != reference.array.shape:
                    raise InputError(
                        f"label map of shape {volume.array.shape} does not match its image "
                        f"{image} of shape {reference.array.shape}", row[key])
            pair[key] = preprocessing.prepare(volume, order=0 if labels else 1,
                                              normalize=not labels).array
        pairs.append(pair)
    return pairs


# --- the unpaired training pipeline ----------------------------------------------------------


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
        moving = self.moving[_pick(self.seed, _MOVING_STREAM, index, len(self.moving))]
        fixed = self.fixed[_pick(self.seed, _FIXED_STREAM, index, len(self.fixed))]
        if self.augment:
            rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, index])
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
    two gets its own random smooth deformation (:func:`~dgan.synth.random_smooth_flow`) and
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


# --- deformed pairs with known truth ---------------------------------------------------------


def _deformed_pair(moving, fixed, moving_labels, fixed_labels, rng, max_displacement,
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


# --- the embedded demo data ------------------------------------------------------------------


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
    CSF = mask - GM - WM; the T2-like image is :func:`~dgan.synth.render_contrast` of the
    (background, CSF, GM, WM) probability maps with :data:`~dgan.synth.T2_LIKE`; the label map
    is their argmax.

    :param spacing: voxel size in mm, or None for the template's own 1 mm
    :return: :class:`DemoVolumes`
    """
    return _demo_volumes(_check_shape(shape), None if spacing is None else float(spacing))


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
    rng = np.random.default_rng([0, _DEMO_RENDER_STREAM])
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
        rng = np.random.default_rng([seed, _VALIDATION_STREAM, k])
        pairs.append(_deformed_pair(demo.t1, demo.t2, demo.labels, demo.labels, rng,
                                    DEMO_MAX_DISPLACEMENT, DEMO_SMOOTHNESS))
    return pairs


# --- the real-data benchmark -----------------------------------------------------------------


def load_brain_benchmark(path, resolution_mm=2.0, n_pairs=BRAIN_PAIRS, seed=0,
                         max_displacement_mm=BRAIN_MAX_DISPLACEMENT_MM,
                         smoothness_mm=BRAIN_SMOOTHNESS_MM):
    """Cross-modal pairs with known deformations from one real T1 and its aseg segmentation.

    ``path`` is an ``.npz`` with ``vol`` (T1, skull-stripped, 160 x 192 x 224 at 1 mm, no
    affine) and ``seg`` (FreeSurfer aseg ids). Moving = the real T1; fixed = a T2-like image
    rendered (new bias and noise per pair) from :func:`~dgan.synth.brain_tissue_maps`, which
    gives every voxel of the T1's brain a tissue, the unlabelled sulcal CSF included, and leaves
    the outside of the brain 0 as in the T1. Moving and fixed each get their own random smooth
    deformation; the segmentation is warped with them (order 0), and the T1 with the fixed
    image's deformation gives ``fixed_t1``, the same-modality fixed image (the mono-modal
    ceiling registers the moving image to it).

    :param resolution_mm: 2 (80 x 96 x 112) or 1 (160 x 192 x 224)
    :param n_pairs: number of pairs (default :data:`BRAIN_PAIRS`)
    :param max_displacement_mm: the largest displacement of each deformation
    :param smoothness_mm: the deformations' control-point spacing
    :return: list of n_pairs dicts: ``moving``, ``fixed``, ``fixed_t1`` (X, Y, Z) float32 in
        [0, 1]; ``moving_labels``, ``fixed_labels`` (X, Y, Z) int32 aseg ids
    :raises InputError: the file is absent or unusable
    """
    t1 = load_volume(path, kind="image")
    seg = load_volume(path, kind="labels")
    if t1.shape != seg.shape:
        raise InputError(f"vol {t1.shape} and seg {seg.shape} shapes differ", path)
    if not np.allclose(t1.spacing, resolution_mm):
        t1 = resample_to_spacing(t1, resolution_mm)
        seg = resample_to_spacing(seg, resolution_mm, order=0)
    image = normalize_intensity(t1.array)
    tissue = brain_tissue_maps(seg.array, image)
    blur = 1.0 / resolution_mm  # 1 mm of partial-volume blur
    pairs = []
    for k in range(n_pairs):
        rng = np.random.default_rng([seed, _BENCHMARK_STREAM, k])
        t2 = render_contrast(tissue, T2_LIKE, rng, blur_sigma=blur)
        pairs.append(_deformed_pair(image, t2, seg.array, seg.array, rng,
                                    max_displacement_mm / resolution_mm,
                                    smoothness_mm / resolution_mm,
                                    augment_moving=False, augment_fixed=False,
                                    fixed_in_moving=image))
    return pairs


def write_brain_training_data(npz_path, out_dir, resolution_mm=4.0, n_train=8, n_val=2,
                              seed=BRAIN_TRAIN_SEED, val_seed=BRAIN_VAL_SEED, eval_seed=0):
    """Write the brain benchmark's training scans and validation pairs as NIfTI files.

    Training: ``n_train`` moving T1 scans and ``n_train`` fixed T2-like scans
    (:func:`load_brain_benchmark` with ``seed``), used unpaired; validation: ``n_val`` pairs
    with labels (``val_seed``) and ``val_pairs.csv`` (:func:`write_pair_csv`). Both seeds must
    differ from ``eval_seed``, the seed of the evaluation pairs, so that no evaluated pair is
    trained on.

    :return: dict ``moving`` (folder), ``fixed`` (folder), ``val_pairs`` (CSV), ``shape``
    """
    if eval_seed in (seed, val_seed):
        raise InputError(f"training seed {seed} and validation seed {val_seed} must differ from "
                         f"the evaluation seed {eval_seed}")
    out_dir = Path(out_dir)
    affine = np.diag([float(resolution_mm)] * 3 + [1.0])
    train = load_brain_benchmark(npz_path, resolution_mm, n_pairs=n_train, seed=seed)
    for k, pair in enumerate(train):
        save_volume(out_dir / "moving" / f"t1_{k:03d}.nii.gz", pair["moving"], affine)
        save_volume(out_dir / "fixed" / f"t2_{k:03d}.nii.gz", pair["fixed"], affine)
    rows = []
    for k, pair in enumerate(load_brain_benchmark(npz_path, resolution_mm, n_pairs=n_val,
                                                  seed=val_seed)):
        row = {}
        for key in PAIR_COLUMNS:
            name = f"val/{key}_{k:03d}.nii.gz"
            save_volume(out_dir / name, pair[key], affine)
            row[key] = name
        rows.append(row)
    csv_path = out_dir / "val_pairs.csv"
    write_pair_csv(csv_path, rows)
    return {"moving": str(out_dir / "moving"), "fixed": str(out_dir / "fixed"),
            "val_pairs": str(csv_path), "shape": train[0]["moving"].shape}


# --- evaluation benchmarks ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Benchmark:
    """Pairs to register, with what scores them.

    :param name: e.g. ``"brain 2 mm"``
    :param pairs: dicts ``moving``, ``fixed`` (X, Y, Z) float32 in [0, 1]; ``moving_labels``,
        ``fixed_labels`` (X, Y, Z) int32; brain pairs also ``fixed_t1``, the fixed anatomy in
        the moving modality (X, Y, Z) float32
    :param spacing: voxel size in mm of every pair, shape = (3,)
    :param label_ids: labels scored with Dice and HD95
    :param label_names: ``{label id: name}``
    """

    name: str
    pairs: list
    spacing: tuple
    label_ids: tuple
    label_names: dict


def benchmark_pairs(data="brain", npz_path=None, labels_path=None, resolution_mm=2.0,
                    n_pairs=BRAIN_PAIRS, seed=0, shape=DEMO_SHAPE,
                    spacing=DEMO_SPACING):
    """The evaluation pairs.

    :param data: ``"brain"`` (the real T1 + aseg benchmark) or ``"demo"`` (embedded MNI152)
    :param npz_path: ``brain_t1_aseg.npz`` (brain)
    :param labels_path: ``aseg_eval_labels.npz`` with key ``labels`` (brain); None: every
        label of :data:`ASEG_NAMES`
    :param resolution_mm: 2 (80 x 96 x 112) or 1 (160 x 192 x 224) (brain)
    :param n_pairs: number of pairs
    :param seed: seed of the pairs; training must use other seeds
    :param shape: the demo grid (demo)
    :param spacing: the demo voxel size in mm (demo)
    :return: :class:`Benchmark`
    """
    if data == "brain":
        if npz_path is None or not Path(npz_path).is_file():
            raise InputError("the brain benchmark file is missing", npz_path)
        pairs = load_brain_benchmark(npz_path, resolution_mm, n_pairs=n_pairs, seed=seed)
        if labels_path is None:
            label_ids = tuple(ASEG_NAMES)
        else:
            try:
                with np.load(labels_path) as archive:
                    label_ids = tuple(int(i) for i in archive["labels"])
            except (OSError, KeyError, ValueError) as error:
                raise InputError(f"cannot read the label list ({error})", labels_path) from None
        names = {i: ASEG_NAMES.get(i, str(i)) for i in label_ids}
        return Benchmark(f"brain {resolution_mm:g} mm", pairs, (float(resolution_mm),) * 3,
                         label_ids, names)
    if data == "demo":
        # training validates on demo_validation_pairs' default seed, 1234: use another one
        pairs = demo_validation_pairs(n_pairs, seed=seed, shape=shape, spacing=spacing)
        return Benchmark(f"demo {spacing:g} mm", pairs, (float(spacing),) * 3,
                         tuple(TISSUE_LABELS), dict(TISSUE_LABELS))
    raise InputError(f"unknown data {data!r}; choose brain or demo")
