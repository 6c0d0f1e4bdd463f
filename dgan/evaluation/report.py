"""Scoring registration methods on the same pairs: accuracy, smoothness, time; tables, figures.

:func:`score` turns a :class:`dgan.evaluation.methods.MethodResult` into one record (Dice per
label and mean, mean HD95 in mm, folding fraction, SDlogJ, seconds); :func:`evaluate` runs every
method on every pair of a :class:`Benchmark` and writes ``results.csv``, ``summary.md`` and the
figures (:mod:`dgan.evaluation.figures`).
"""

import csv
import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core import metrics
from ..data.io import atomic_write
from ..errors import InputError

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



# --- scores ------------------------------------------------------------------------------------


def score(result, pair, label_ids, spacing):
    """One record: ``dice_mean``, ``hd95_mean_mm``, ``folding_fraction``, ``sdlogj``,
    ``seconds``, and ``dice_<id>`` per label.

    Dice compares the warped moving labels with the fixed labels; a label absent from both is NaN
    and left out of the mean. ``hd95_mean_mm`` is the mean of :func:`dgan.core.metrics.hd95` over
    the labels present in both maps (finite distances). Folding and SDlogJ are computed on the whole
    flow (:func:`dgan.core.metrics.folding_fraction`, :func:`dgan.core.metrics.sdlogj`).
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
    from .figures import save_comparison_figure, save_dice_boxplot, save_method_figure  # matplotlib

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
