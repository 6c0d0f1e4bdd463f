"""Evaluating registration methods on the same cross-modal pairs: accuracy, smoothness, speed.

Benchmarks Deform-GAN (Zhang et al. 2020, arXiv:2002.11430) against identity, learned
baselines (:mod:`dgan.baselines`) and ANTs SyN (Avants et al. 2008) with Mattes mutual
information (``antspyx``, an optional extra), on pairs with known labels:

- :func:`benchmark_pairs`: the cross-modal brain benchmark (:func:`dgan.data.load_brain_benchmark`,
  Dice over the 30 aseg labels of ``aseg_eval_labels.npz``) or the demo validation pairs
  (:func:`dgan.data.demo_validation_pairs`, tissue labels);
- methods share one interface, ``register(moving, fixed, moving_labels, spacing)`` ->
  :class:`MethodResult`: :class:`IdentityMethod`, :class:`ModelMethod` (any dgan model folder,
  through :class:`dgan.register.Registrar`, which resamples to the model's training spacing and
  brings the flow back to the pair's grid), :class:`AntsSyNMethod`, and the mono-modal ceiling
  :func:`ants_ceiling` (ANTs SyN-CC to the pair's same-modality fixed image ``fixed_t1``);
- :func:`score` turns a result into one record (Dice per label and mean, mean HD95 in mm,
  folding fraction, SDlogJ, seconds), :func:`evaluate` runs every method on every pair and
  writes ``results.csv``, ``summary.md`` and the figures;
- figures: per method a montage (label contours over the fixed image, moved image, deformation
  grid, Jacobian determinant), a comparison of all methods, a Dice box plot per structure;
- :func:`bench_inference` and :func:`bench_training_step`: time and peak memory
  (:func:`dgan.metrics.measure`) of registering one pair and of one training step.

Every flow is a displacement in voxels of the pair's grid, 'ij' indexing,
``moved(p) = moving(p + flow(p))``.
"""

import concurrent.futures
import csv
import dataclasses
import importlib
import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from . import data as ddata  # noqa: E402
from . import metrics, synth  # noqa: E402
from .errors import InputError  # noqa: E402
from .figures import display_slice, finish_panels, plot_grid, save_figure  # noqa: E402
from .io import Volume, atomic_write  # noqa: E402

logger = logging.getLogger(__name__)

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

#: Columns of ``results.csv`` before the per-label Dice columns ``dice_<label id>``.
CSV_COLUMNS = ("method", "pair", "dice_mean", "hd95_mean_mm", "folding_fraction", "sdlogj",
               "seconds")
#: Summary table columns: (header, record key, scale).
SUMMARY_COLUMNS = (
    ("Dice", "dice_mean", 1.0),
    ("HD95 (mm)", "hd95_mean_mm", 1.0),
    ("folding (%)", "folding_fraction", 100.0),
    ("SDlogJ", "sdlogj", 1.0),
    ("s / pair", "seconds", 1.0),
)

#: ANTs SyN settings (``ants.registration`` arguments) used unless told otherwise.
ANTS_DEFAULTS = {
    "type_of_transform": "SyNOnly",  # the pairs are affinely aligned: deformable stage only
    "syn_metric": "mattes",  # Mattes mutual information
    "syn_sampling": 32,  # histogram bins
    "reg_iterations": (40, 20, 10),  # at shrink factors 4, 2, 1
    "grad_step": 0.2,
    "flow_sigma": 3.0,  # smoothing of the update field, voxels
    "total_sigma": 0.0,  # smoothing of the total field
}
#: The ceiling's changes to :data:`ANTS_DEFAULTS`: cross-correlation over a 5^3 window
#: (radius 2 voxels), ANTs' usual mono-modal SyN metric.
ANTS_CC = {"syn_metric": "CC", "syn_sampling": 2}
#: The ceiling's name in the tables (:func:`ants_ceiling`).
CEILING_NAME = "ANTs SyN-CC (T1 fixed, ceiling)"


# --- the pairs ---------------------------------------------------------------------------------


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
                    n_pairs=ddata.BRAIN_PAIRS, seed=0, shape=ddata.DEMO_SHAPE,
                    spacing=ddata.DEMO_SPACING):
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
        pairs = ddata.load_brain_benchmark(npz_path, resolution_mm, n_pairs=n_pairs, seed=seed)
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
        pairs = ddata.demo_validation_pairs(n_pairs, seed=seed, shape=shape, spacing=spacing)
        return Benchmark(f"demo {spacing:g} mm", pairs, (float(spacing),) * 3,
                         tuple(TISSUE_LABELS), dict(TISSUE_LABELS))
    raise InputError(f"unknown data {data!r}; choose brain or demo")


# --- the methods -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class MethodResult:
    """One registration.

    :param flow: shape = (X, Y, Z, 3), voxels of the pair's grid
    :param moved: the moving image warped, (X, Y, Z) float32
    :param labels: the moving labels warped (nearest neighbour), (X, Y, Z) int32
    :param seconds: wall time of the registration
    """

    flow: np.ndarray
    moved: np.ndarray
    labels: np.ndarray
    seconds: float


def _affine(spacing):
    return np.diag([float(s) for s in spacing] + [1.0])


class IdentityMethod:
    """No registration: the zero flow."""

    name = "identity"
    warmup = False

    def register(self, moving, fixed, moving_labels, spacing):
        started = time.perf_counter()
        flow = np.zeros(moving.shape + (3,), np.float32)
        return MethodResult(flow, np.asarray(moving, np.float32),
                            np.asarray(moving_labels, np.int32), time.perf_counter() - started)


class ModelMethod:
    """A dgan model folder through :meth:`dgan.register.Registrar.register_volumes`.

    The pair's arrays become volumes with the affine ``diag(spacing)``; the Registrar resamples
    them to the model's training voxel size, runs T, brings the flow back to the pair's grid and
    warps the moving image and labels from their own grid.

    :param name: shown in the tables
    :param folder: the model folder, or None: refinement alone from the identity
    :param refine_steps: instance refinement iterations per level after T (:mod:`dgan.refine`);
        0: T alone
    :param refine_config: :class:`dgan.refine.RefineConfig` for the other settings, or None
    """

    warmup = True  # the first call builds T for the padded shape and traces predict

    def __init__(self, name, folder, refine_steps=0, refine_config=None):
        from .register import Registrar

        self.name = name
        self.folder = None if folder is None else os.fspath(folder)
        self.registrar = Registrar(folder, refine_steps=refine_steps, refine_config=refine_config)

    def register(self, moving, fixed, moving_labels, spacing):
        affine = _affine(spacing)
        started = time.perf_counter()
        out = self.registrar.register_volumes(
            Volume(np.asarray(moving, np.float32), affine),
            Volume(np.asarray(fixed, np.float32), affine),
            Volume(np.asarray(moving_labels, np.int32), affine),
        )
        seconds = time.perf_counter() - started
        return MethodResult(out.flow, out.moved, out.labels, seconds)


def import_ants():
    """The ``ants`` module (``pip install antspyx``), or None with the reason as second value."""
    try:
        return importlib.import_module("ants"), None
    except ImportError as error:
        return None, (f"ANTs SyN skipped: antspyx is not installed ({error}); "
                      "pip install antspyx (or the 'ants' extra) to measure it")


class AntsSyNMethod:
    """ANTs SyN with Mattes mutual information, through ``antspyx``.

    The arrays become ANTs images with the pair's voxel size, origin 0 and identity direction;
    ``ants.registration(fixed, moving, **settings)`` runs (:data:`ANTS_DEFAULTS`), its forward
    transforms are composed into one displacement field on the fixed grid
    (``ants.apply_transforms(..., compose=...)``), in mm along the array axes, and divided by the
    spacing: ANTs' forward field maps a fixed point x to the moving point x + u(x), the
    convention of every flow here. The moving image and labels are warped with that flow by
    :func:`dgan.synth.warp`, as for the other methods.

    :param ants: the ``ants`` module (:func:`import_ants`)
    :param name: shown in the tables (default :attr:`name`)
    :param fixed_key: the pair's key of the image registered to: ``"fixed"`` (the other
        modality) or ``"fixed_t1"`` (the same modality, see :func:`ants_ceiling`)
    :param settings: changes to :data:`ANTS_DEFAULTS`
    """

    name = "ANTs SyN (MI)"
    warmup = False

    def __init__(self, ants, name=None, fixed_key="fixed", **settings):
        unknown = set(settings) - set(ANTS_DEFAULTS)
        if unknown:
            raise InputError(f"unknown ANTs settings: {', '.join(sorted(unknown))}")
        self.ants = ants
        self.name = name or type(self).name
        self.fixed_key = fixed_key
        self.settings = {**ANTS_DEFAULTS, **settings}

    def flow(self, moving, fixed, spacing):
        """ANTs SyN's displacement field, voxels, shape = moving.shape + (3,)."""
        return self.run(moving, fixed, spacing)[0]

    def run(self, moving, fixed, spacing):
        """(flow in voxels (X, Y, Z, 3), ANTs' own warped moving image (X, Y, Z))."""
        ants = self.ants
        spacing = tuple(float(s) for s in spacing)
        fixed_image = ants.from_numpy(np.asarray(fixed, np.float32), spacing=spacing)
        moving_image = ants.from_numpy(np.asarray(moving, np.float32), spacing=spacing)
        with tempfile.TemporaryDirectory(prefix="dgan-ants-") as tmp:
            prefix = os.path.join(tmp, "syn_")
            result = ants.registration(fixed_image, moving_image, outprefix=prefix,
                                       verbose=False, **self.settings)
            field_path = ants.apply_transforms(fixed_image, moving_image,
                                               result["fwdtransforms"], compose=prefix)
            field = ants.image_read(field_path).numpy()  # (X, Y, Z, 3), mm
        flow = (field / np.asarray(spacing, np.float32)).astype(np.float32)
        return flow, result["warpedmovout"].numpy()

    def register(self, moving, fixed, moving_labels, spacing):
        started = time.perf_counter()
        flow = self.flow(moving, fixed, spacing)
        moved = synth.warp(moving, flow)
        labels = synth.warp(np.asarray(moving_labels, np.int32), flow, order=0)
        return MethodResult(flow, moved, labels, time.perf_counter() - started)


def ants_ceiling(ants, **settings):
    """The mono-modal ceiling: ANTs SyN with local cross-correlation (:data:`ANTS_CC`) from the
    moving image to the fixed anatomy in the moving modality (the pair's ``"fixed_t1"``).

    Same deformations and labels as the cross-modal pairs, so a cross-modal method is judged by
    how much of the gap between identity and this ceiling it closes.

    :param settings: changes to :data:`ANTS_CC` (e.g. ``reg_iterations``)
    :return: :class:`AntsSyNMethod` named :data:`CEILING_NAME`
    """
    return AntsSyNMethod(ants, name=CEILING_NAME, fixed_key="fixed_t1", **{**ANTS_CC, **settings})


# --- scores ------------------------------------------------------------------------------------


def score(result, pair, label_ids, spacing):
    """One record: ``dice_mean``, ``hd95_mean_mm``, ``folding_fraction``, ``sdlogj``,
    ``seconds``, and ``dice_<id>`` per label.

    Dice compares the warped moving labels with the fixed labels; a label absent from both is
    NaN and left out of the mean. ``hd95_mean_mm`` is the mean of :func:`dgan.metrics.hd95` over
    the labels present in both maps (finite distances). Folding and SDlogJ are computed on the
    whole flow (:func:`dgan.metrics.folding_fraction`, :func:`dgan.metrics.sdlogj`).
    """
    per_label = metrics.dice(result.labels, pair["fixed_labels"], label_ids)
    present = [v for v in per_label.values() if not math.isnan(v)]
    distances = metrics.hd95(result.labels, pair["fixed_labels"], label_ids, spacing=spacing)
    finite = [d for d in distances.values() if math.isfinite(d)]
    record = {
        "dice_mean": float(np.mean(present)) if present else math.nan,
        "hd95_mean_mm": float(np.mean(finite)) if finite else math.nan,
        "folding_fraction": metrics.folding_fraction(result.flow),
        "sdlogj": metrics.sdlogj(result.flow),
        "seconds": float(result.seconds),
    }
    record.update({f"dice_{label}": float(value) for label, value in per_label.items()})
    return record


def write_csv(path, records, label_ids):
    """``results.csv``: one row per (method, pair), :data:`CSV_COLUMNS` then ``dice_<id>``."""
    columns = list(CSV_COLUMNS) + [f"dice_{label}" for label in label_ids]
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            for record in records:
                writer.writerow({k: _csv_value(record.get(k, "")) for k in columns})


def _csv_value(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def read_csv(path):
    """Records from :func:`write_csv`: numbers as floats, ``method`` and ``pair`` as written."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        record = {"method": row["method"], "pair": int(row["pair"])}
        record.update({k: float(v) if v != "" else math.nan for k, v in row.items()
                       if k not in ("method", "pair")})
        out.append(record)
    return out


def summary_markdown(records, benchmark=None, digits=3):
    """The Markdown summary: mean ± std over pairs per method (:data:`SUMMARY_COLUMNS`), and,
    with ``benchmark``, the mean Dice per structure (one column per method)."""
    scaled = [{"method": r["method"], "pair": r["pair"],
               **{header: r[key] * scale for header, key, scale in SUMMARY_COLUMNS}}
              for r in records]
    headers = [header for header, _, _ in SUMMARY_COLUMNS]
    text = metrics.markdown_table(metrics.summarize(scaled, headers), headers, digits)
    if benchmark is None:
        return text
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = ["| structure | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for label in benchmark.label_ids:
        cells = []
        for method in methods:
            values = [r[f"dice_{label}"] for r in records
                      if r["method"] == method and not math.isnan(r.get(f"dice_{label}", math.nan))]
            cells.append(f"{np.mean(values):.{digits}f}" if values else "n/a")
        name = benchmark.label_names.get(label, str(label))
        lines.append(f"| {name} ({label}) | " + " | ".join(cells) + " |")
    return text + "\n\nMean Dice per structure:\n\n" + "\n".join(lines)


# --- figures -----------------------------------------------------------------------------------


def _contours(ax, labels, label_ids, color, axis):
    """Outline every label of ``label_ids`` in the middle slice of ``labels``."""
    section = display_slice(labels, axis)
    for label in label_ids:
        mask = section == label
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=0.5)


def _jacobian_panel(ax, det_slice):
    """The Jacobian determinant, blue < 1 < red, folding (det <= 0) in black."""
    image = ax.imshow(det_slice, cmap="RdBu_r", vmin=0.0, vmax=2.0)
    folded = np.ma.masked_where(det_slice > 0, np.ones_like(det_slice))
    ax.imshow(folded, cmap="gray", vmin=0, vmax=1)
    return image


def save_method_figure(path, pair, result, label_ids, title=None):
    """Montage for one method and pair: one row per view (axial, coronal, sagittal), columns
    fixed image with fixed (red) and warped moving (cyan) label contours, moved image with the
    fixed contours, deformation grid, Jacobian determinant."""
    det = metrics.jacobian_determinant(result.flow)
    fig, axes = plt.subplots(3, 4, figsize=(11.0, 8.4))
    for row, axis in enumerate((2, 1, 0)):
        ax = axes[row, 0]
        ax.imshow(display_slice(pair["fixed"], axis), cmap="gray", vmin=0, vmax=1)
        _contours(ax, pair["fixed_labels"], label_ids, "tab:red", axis)
        _contours(ax, result.labels, label_ids, "cyan", axis)
        ax = axes[row, 1]
        ax.imshow(display_slice(result.moved, axis), cmap="gray", vmin=0, vmax=1)
        _contours(ax, pair["fixed_labels"], label_ids, "tab:red", axis)
        plot_grid(axes[row, 2], result.flow, axis, background=result.moved)
        image = _jacobian_panel(axes[row, 3], display_slice(det, axis))
        if row == 0:
            for ax, name in zip(axes[0], ("fixed: fixed (red), warped (cyan) labels",
                                          "moved + fixed labels", "deformation grid",
                                          "Jacobian determinant")):
                ax.set_title(name, fontsize=8)
    finish_panels(fig, axes, title)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    fig.colorbar(image, cax=fig.add_axes((0.93, 0.3, 0.012, 0.4)), label="det J (black: <= 0)")
    save_figure(fig, path)


def save_comparison_figure(path, pair, results, label_ids, title=None):
    """All methods on one pair, one row each (axial middle slice): label contours over the fixed
    image, deformation grid, Jacobian determinant.

    :param results: ``{method name: MethodResult}``
    """
    rows = len(results)
    fig, axes = plt.subplots(rows, 3, figsize=(8.4, 2.8 * rows), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        ax = axes[row, 0]
        ax.imshow(display_slice(pair["fixed"], 2), cmap="gray", vmin=0, vmax=1)
        _contours(ax, pair["fixed_labels"], label_ids, "tab:red", 2)
        _contours(ax, result.labels, label_ids, "cyan", 2)
        ax.set_ylabel(name, fontsize=9)
        plot_grid(axes[row, 1], result.flow, 2, background=result.moved)
        _jacobian_panel(axes[row, 2], display_slice(metrics.jacobian_determinant(result.flow), 2))
    for ax, name in zip(axes[0], ("fixed (red) / warped (cyan) labels", "deformation grid",
                                  "Jacobian det. (0..2)")):
        ax.set_title(name, fontsize=9)
    finish_panels(fig, axes, title)
    fig.tight_layout()
    save_figure(fig, path)


def save_dice_boxplot(path, records, label_ids, label_names, title=None):
    """Dice per structure, one box per method, grouped by structure (all pairs)."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.0 + len(label_ids) * (0.15 + 0.06 * len(methods))),
                                    4.2))
    for m, method in enumerate(methods):
        data, positions = [], []
        for k, label in enumerate(label_ids):
            values = [r[f"dice_{label}"] for r in records if r["method"] == method]
            values = [v for v in values if not math.isnan(v)]
            if values:
                data.append(values)
                positions.append(k + (m - (len(methods) - 1) / 2) * width)
        if not data:
            continue
        parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                           manage_ticks=False, flierprops={"markersize": 2})
        for box in parts["boxes"]:
            box.set_facecolor(colors[m % len(colors)])
            box.set_alpha(0.7)
        ax.plot([], [], color=colors[m % len(colors)], linewidth=6, alpha=0.7, label=method)
    ax.set_xticks(range(len(label_ids)))
    ax.set_xticklabels([label_names.get(i, str(i)) for i in label_ids], rotation=60, ha="right",
                       fontsize=7)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(len(methods), 5), loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _file_name(name):
    keep = "".join(c if c.isalnum() else "_" for c in name.lower())
    return "_".join(part for part in keep.split("_") if part)


# --- the evaluation ----------------------------------------------------------------------------


@dataclasses.dataclass
class EvaluationResult:
    """Paths written by :func:`evaluate` and its records."""

    records: list
    csv_path: Path
    summary_path: Path
    figures: list


def evaluate(methods, benchmark, out_dir, figure_pairs=1, progress=True):
    """Register every pair of ``benchmark`` with every method; score, tabulate, draw.

    A method with ``warmup = True`` first registers the first pair once untimed (building the
    network for the shape, tracing), so that ``seconds`` is the steady-state time per pair. A
    method with ``fixed_key`` registers to that image of each pair instead of ``"fixed"`` (the
    ceiling, :func:`ants_ceiling`, to ``"fixed_t1"``); it is scored against the same labels.

    Writes into ``out_dir``: ``results.csv`` (:func:`write_csv`), ``summary.md``
    (:func:`summary_markdown`), ``figures/<method>_pair<k>.png`` for the first ``figure_pairs``
    pairs, ``figures/comparison_pair0.png`` and ``figures/dice_boxplot.png``.

    :param methods: objects with ``name``, ``warmup``, optionally ``fixed_key``, and
        ``register(moving, fixed, moving_labels, spacing)`` -> :class:`MethodResult`
    :param benchmark: :class:`Benchmark`
    :return: :class:`EvaluationResult`
    :raises InputError: a method needs an image the pairs do not have
    """
    for method in methods:
        fixed_key = getattr(method, "fixed_key", "fixed")
        if any(fixed_key not in pair for pair in benchmark.pairs):
            raise InputError(f"{method.name} registers to {fixed_key!r}, which the pairs of "
                             f"{benchmark.name} do not have")
    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    records, written = [], []
    first_results = {}
    bar = tqdm(total=len(methods) * len(benchmark.pairs), disable=not progress,
               desc="evaluating", unit="pair", dynamic_ncols=True)
    try:
        for method in methods:
            bar.set_description(method.name)
            fixed_key = getattr(method, "fixed_key", "fixed")
            if getattr(method, "warmup", False) and benchmark.pairs:
                pair = benchmark.pairs[0]
                method.register(pair["moving"], pair[fixed_key], pair["moving_labels"],
                                benchmark.spacing)
            for k, pair in enumerate(benchmark.pairs):
                result = method.register(pair["moving"], pair[fixed_key], pair["moving_labels"],
                                         benchmark.spacing)
                record = {"method": method.name, "pair": k,
                          **score(result, pair, benchmark.label_ids, benchmark.spacing)}
                records.append(record)
                logger.info("%s pair %d: Dice %.4f, HD95 %.2f mm, folding %.5f, SDlogJ %.4f, "
                            "%.2f s", method.name, k, record["dice_mean"],
                            record["hd95_mean_mm"], record["folding_fraction"],
                            record["sdlogj"], record["seconds"])
                if k == 0:
                    first_results[method.name] = result
                if k < figure_pairs:
                    path = figure_dir / f"{_file_name(method.name)}_pair{k}.png"
                    save_method_figure(path, pair, result, benchmark.label_ids, title=(
                        f"{method.name}, {benchmark.name} pair {k}: Dice "
                        f"{record['dice_mean']:.3f}, folding "
                        f"{100 * record['folding_fraction']:.3f}%"))
                    written.append(path)
                bar.update(1)
    finally:
        bar.close()
    csv_path = out_dir / "results.csv"
    write_csv(csv_path, records, benchmark.label_ids)
    summary_path = out_dir / "summary.md"
    with atomic_write(summary_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(f"{benchmark.name}, {len(benchmark.pairs)} pairs, mean ± std over "
                         "pairs\n\n" + summary_markdown(records, benchmark) + "\n")
    if figure_pairs > 0 and first_results:
        path = figure_dir / "comparison_pair0.png"
        save_comparison_figure(path, benchmark.pairs[0], first_results, benchmark.label_ids,
                               title=f"{benchmark.name}, pair 0")
        written.append(path)
    if records:
        path = figure_dir / "dice_boxplot.png"
        save_dice_boxplot(path, records, benchmark.label_ids, benchmark.label_names,
                          title=f"Dice per structure, {benchmark.name}, "
                                f"{len(benchmark.pairs)} pairs")
        written.append(path)
    return EvaluationResult(records, csv_path, summary_path, written)


def write_json(path, payload):
    """``payload`` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=str)
            handle.write("\n")


# --- speed and memory --------------------------------------------------------------------------


def measurement_record(measurement):
    """A :class:`dgan.metrics.Measurement` as a JSON-ready dict; ``added_mib`` = peak - baseline,
    what the method's warm-up (building, tracing) and timed calls added to the process."""
    added = (None if measurement.baseline_mib is None
             else measurement.peak_mib - measurement.baseline_mib)
    return {"seconds": measurement.seconds, "times": list(measurement.times),
            "peak_mib": measurement.peak_mib, "added_mib": added,
            "memory_source": measurement.memory_source}


def in_fresh_process(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a new Python process (``spawn``), its result returned.

    A benchmark measures each method in its own process: memory that one method's run freed
    stays with the process (allocator caches) and would be reused by the next, which would
    then seem to need nothing. ``fn`` and its arguments must be picklable (module-level).
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _run(isolate, fn, *args, **kwargs):
    return in_fresh_process(fn, *args, **kwargs) if isolate else fn(*args, **kwargs)


def _lazy(build):
    """A callable that builds ``build()`` (a function of no arguments) on its first call, inside
    :func:`dgan.metrics.measure`'s memory window, then calls it: ``lazy()`` -> ``build()()``."""
    built = []

    def call():
        if not built:
            built.append(build())
        return built[0]()

    return call


def _inference_forward(kind, network_config, moving, fixed):
    """One registration network's forward pass on (1, X, Y, Z, 1) inputs, as a function of no
    arguments returning the flow (NumPy); ``kind`` ``"dgan"`` (T) or ``"vxm"`` (VxmDense)."""
    from .baselines import build_vxm_dense
    from .compat import tf
    from .networks import build_registration_net

    moving_in = tf.constant(np.asarray(moving, np.float32)[None, ..., None])
    fixed_in = tf.constant(np.asarray(fixed, np.float32)[None, ..., None])
    if kind == "dgan":
        net = build_registration_net(network_config)
        forward = tf.function(lambda m, f: net({"moving": m, "fixed": f}, training=False)["flow"])
    else:
        net = build_vxm_dense(network_config)
        forward = tf.function(lambda m, f: net([m, f], training=False)[1])
    return lambda: forward(moving_in, fixed_in).numpy()


def _bench_network(kind, network_config, moving, fixed, repeats, warmup):
    """:func:`measurement_record` of one network's inference, built in the memory window."""
    _, measurement = metrics.measure(
        _lazy(lambda: _inference_forward(kind, network_config, moving, fixed)),
        repeats=repeats, warmup=max(1, warmup))
    return measurement_record(measurement)


def _bench_ants(moving, fixed, spacing, settings, repeats):
    """:func:`measurement_record` of whole ANTs SyN registrations (no warm-up)."""
    ants, reason = import_ants()
    if ants is None:
        raise InputError(reason)
    method = AntsSyNMethod(ants, **settings)
    _, measurement = metrics.measure(method.flow, moving, fixed, spacing, repeats=repeats,
                                     warmup=0)
    return measurement_record(measurement)


def bench_inference(network_config, moving, fixed, spacing=(1.0, 1.0, 1.0), repeats=3, warmup=1,
                    ants=None, ants_settings=None, ants_repeats=1, isolate=True):
    """Median time and peak memory of registering one pair (network forward pass only).

    Deform-GAN's T (:func:`dgan.networks.build_registration_net`) and VoxelMorph's VxmDense
    (:func:`dgan.baselines.build_vxm_dense`, the same U-Net) run on ``(1, X, Y, Z, 1)`` inputs
    through a ``tf.function`` (traced in the warm-up); ANTs SyN (when ``ants`` is given) runs
    :meth:`AntsSyNMethod.flow` on the same arrays. Each network is built in the first warm-up
    call, inside the memory window (:func:`dgan.metrics.measure`), so ``added_mib`` counts its
    weights, graph and activations; times are the timed calls only.

    :param network_config: :class:`dgan.networks.NetworkConfig` with ``shape`` = moving.shape
    :param spacing: the arrays' voxel size in mm (for ANTs)
    :param ants: the ``ants`` module, or None to leave ANTs out
    :param ants_settings: changes to :data:`ANTS_DEFAULTS`
    :param ants_repeats: timed ANTs registrations (no warm-up: nothing to trace)
    :param isolate: measure each method in a fresh process (:func:`in_fresh_process`); False
        runs them one after the other in this process, where a later method reuses memory an
        earlier one freed
    :return: ``{method name: {"seconds", "times", "peak_mib", "added_mib", "memory_source"}}``
    """
    out = {}
    for name, kind in (("Deform-GAN T", "dgan"), ("VoxelMorph VxmDense", "vxm")):
        out[name] = _run(isolate, _bench_network, kind, network_config, moving, fixed, repeats,
                         warmup)
    if ants is not None:
        out[AntsSyNMethod.name] = _run(isolate, _bench_ants, moving, fixed, spacing,
                                       dict(ants_settings or {}), ants_repeats)
    return out


def _training_step(kind, network_config, moving, fixed, loss):
    """One training step (batch size 1) as a function of no arguments returning its loss;
    ``kind`` ``"dgan"`` (Deform-GAN's D, G, T) or ``"vxm"`` (VxmDense with ``loss``)."""
    from .baselines import RegistrationTrainer, build_vxm_dense
    from .compat import keras, tf
    from .model import DeformGAN

    batch = {"moving": tf.constant(np.asarray(moving, np.float32)[None, ..., None]),
             "fixed": tf.constant(np.asarray(fixed, np.float32)[None, ..., None])}
    if kind == "dgan":
        model = DeformGAN.from_config_object(network_config)
        model.compile(t_optimizer=keras.optimizers.Adam(1e-4),
                      g_optimizer=keras.optimizers.Adam(1e-4),
                      d_optimizer=keras.optimizers.Adam(1e-4))
        step = tf.function(model.train_step)
        return lambda: float(step(batch)["t_loss"])
    trainer = RegistrationTrainer(build_vxm_dense(network_config), "vxm", loss)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    step = tf.function(trainer.train_step)
    return lambda: float(step(batch)["loss"])


def _bench_training(kind, network_config, moving, fixed, repeats, warmup, loss):
    """:func:`measurement_record` of one training step, model built in the memory window."""
    _, measurement = metrics.measure(
        _lazy(lambda: _training_step(kind, network_config, moving, fixed, loss)),
        repeats=repeats, warmup=max(1, warmup))
    return measurement_record(measurement)


def bench_training_step(network_config, moving, fixed, repeats=3, warmup=1, loss=None,
                        isolate=True):
    """Median time and peak memory of one training step at ``network_config.shape``.

    Deform-GAN: :meth:`dgan.model.DeformGAN.train_step` (D, then G, then T, three Adam updates);
    VoxelMorph: one step of :class:`dgan.baselines.RegistrationTrainer` on VxmDense with
    ``-MI + lambda * Grad_l2`` (one Adam update). Both in a ``tf.function``, batch size 1, the
    model built in the first warm-up call, inside the memory window; each in a fresh process
    unless ``isolate`` is False (see :func:`bench_inference`).

    :return: ``{"Deform-GAN (D+G+T)": {...}, "VoxelMorph VxmDense (MI)": {...}}``
    """
    return {name: _run(isolate, _bench_training, kind, network_config, moving, fixed, repeats,
                       warmup, loss)
            for name, kind in (("Deform-GAN (D+G+T)", "dgan"), ("VoxelMorph VxmDense (MI)", "vxm"))}
