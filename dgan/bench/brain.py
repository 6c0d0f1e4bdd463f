"""The brain benchmark's data: cross-modal pairs with known deformations from one real T1.

``brain_t1_aseg.npz`` (a skull-stripped T1 and its FreeSurfer aseg segmentation; never
committed, passed on the command line) gives the evaluation pairs (:func:`load_brain_benchmark`,
:func:`benchmark_pairs`) and the training scans and validation pairs written as files
(:func:`write_brain_training_data`); ``--data demo`` takes the embedded demo data's pairs instead.
"""

from pathlib import Path

import numpy as np

from ..data.demo import DEMO_SHAPE, DEMO_SPACING, TISSUE_LABELS, demo_validation_pairs
from ..data.io import load_volume, normalize_intensity, resample_to_spacing, save_volume
from ..data.scans import PAIR_COLUMNS, write_pair_csv
from ..data.synth import (BENCHMARK_STREAM, T2_LIKE, brain_tissue_maps, deformed_pair,
                          render_contrast)
from ..errors import InputError
from ..evaluation.report import Benchmark

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

def check_brain_file(path):
    """``path`` when it names a file; an :class:`~dgan.errors.InputError` (one line) when it is
    None (no ``--brain-npz`` and no checkout default) or absent."""
    if path is None:
        raise InputError("no brain benchmark file: give --brain-npz (brain_t1_aseg.npz; a "
                         "checkout looks in ../shared/data beside it)")
    if not Path(path).is_file():
        raise InputError("the brain benchmark file is missing", path)
    return path


def load_brain_benchmark(path, resolution_mm=2.0, n_pairs=BRAIN_PAIRS, seed=0,
                         max_displacement_mm=BRAIN_MAX_DISPLACEMENT_MM,
                         smoothness_mm=BRAIN_SMOOTHNESS_MM):
    """Cross-modal pairs with known deformations from one real T1 and its aseg segmentation.

    ``path`` is an ``.npz`` with ``vol`` (T1, skull-stripped, 160 x 192 x 224 at 1 mm, no
    affine) and ``seg`` (FreeSurfer aseg ids). Moving = the real T1; fixed = a T2-like image
    rendered (new bias and noise per pair) from :func:`~dgan.data.synth.brain_tissue_maps`, which
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
        rng = np.random.default_rng([seed, BENCHMARK_STREAM, k])
        t2 = render_contrast(tissue, T2_LIKE, rng, blur_sigma=blur)
        pairs.append(deformed_pair(image, t2, seg.array, seg.array, rng,
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


def read_label_ids(path):
    """The label ids a benchmark scores: key ``labels`` of the ``.npz`` file ``path``; None: every
    label of :data:`ASEG_NAMES`."""
    if path is None:
        return tuple(ASEG_NAMES)
    try:
        with np.load(path) as archive:
            return tuple(int(i) for i in archive["labels"])
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"cannot read the label list ({error})", path) from None


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
        pairs = load_brain_benchmark(check_brain_file(npz_path), resolution_mm, n_pairs=n_pairs,
                                     seed=seed)
        label_ids = read_label_ids(labels_path)
        names = {i: ASEG_NAMES.get(i, str(i)) for i in label_ids}
        return Benchmark(f"brain {resolution_mm:g} mm", pairs, (float(resolution_mm),) * 3,
                         label_ids, names)
    if data == "demo":
        # training validates on demo_validation_pairs' default seed, 1234: use another one
        pairs = demo_validation_pairs(n_pairs, seed=seed, shape=shape, spacing=spacing)
        return Benchmark(f"demo {spacing:g} mm", pairs, (float(spacing),) * 3,
                         tuple(TISSUE_LABELS), dict(TISSUE_LABELS))
    raise InputError(f"unknown data {data!r}; choose brain or demo")
