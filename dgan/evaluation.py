"""Evaluating registration methods on the same cross-modal pairs: accuracy and smoothness.

Benchmarks Deform-GAN (Zhang et al. 2020, arXiv:2002.11430) against identity, learned
baselines (:mod:`dgan.baselines`, trained by :func:`dgan.training.train`) and ANTs SyN (Avants
et al. 2008) with Mattes mutual information (``antspyx``, an optional extra), on the pairs of a
:class:`dgan.data.Benchmark` (:func:`dgan.data.benchmark_pairs`):

- methods share one interface, ``register(moving, fixed, moving_labels, spacing)`` ->
  :class:`MethodResult`: :class:`IdentityMethod`, :class:`ModelMethod` (any dgan model folder,
  through :class:`dgan.register.Registrar`, which resamples to the model's training spacing and
  brings the flow back to the pair's grid), :class:`AntsSyNMethod`, and the mono-modal ceiling
  :func:`ants_ceiling` (ANTs SyN-CC to the pair's same-modality fixed image ``fixed_t1``);
- :func:`score` turns a result into one record (Dice per label and mean, mean HD95 in mm,
  folding fraction, SDlogJ, seconds), :func:`evaluate` runs every method on every pair and
  writes ``results.csv``, ``summary.md`` and the figures (:mod:`dgan.figures`).

Speed and memory are measured by :mod:`dgan.speed`. Every flow is a displacement in voxels of
the pair's grid, 'ij' indexing, ``moved(p) = moving(p + flow(p))``.
"""

import csv
import dataclasses
import importlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import metrics, synth
from .errors import InputError
from .figures import save_comparison_figure, save_dice_boxplot, save_method_figure
from .io import Volume, atomic_write
from .register import Registrar

logger = logging.getLogger(__name__)

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
    :param network_spacing: the voxel size in mm T runs at, or None: the model's training
        spacing (:class:`dgan.register.Registrar`)
    :param start: :class:`dgan.register.Registrar`'s ``start``: ``"network"`` (the default here)
        scores T's field as trained (without a model, the block matching's); ``"auto"`` lets the
        pair choose, as ``dgan-register`` does (the real-scan benchmark measures that)
    """

    warmup = True  # the first call builds T for the padded shape and traces predict

    def __init__(self, name, folder, refine_steps=0, refine_config=None, network_spacing=None,
                 start="network"):
        self.name = name
        self.folder = None if folder is None else os.fspath(folder)
        self.registrar = Registrar(folder, refine_steps=refine_steps, refine_config=refine_config,
                                   network_spacing=network_spacing, start=start)

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
