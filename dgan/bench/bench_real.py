"""The real-scan benchmark (:mod:`dgan.bench.real_scans`): real multi-contrast pairs, aligned by
their headers and deformed by known fields, registered by ``dgan-register``'s defaults (with and
without a model folder) and by ANTs SyN (with its affine stage and from the headers).

The data are not part of dgan: docs/benchmarks.md says where each dataset comes from, its
licence, and the folder layout ``--data`` expects. Writes ``cases/`` (the files every method
registers), ``results.csv``, ``summary.md``, ``config.json``, ``registration.log`` and
``errors.png`` into ``--out``. Example::

    dgan-bench-real --data ~/realscans --model runs/baselines/deformgan/model --out runs/real
"""

import argparse
import csv
import os
import sys
import textwrap

import numpy as np

from .. import compat
from ..data import io as dio
from ..errors import InputError
from ..evaluation import figures
from ..evaluation.methods import import_ants
from . import real_scans as bench
from .options import cpu_model, show_warnings


def parser():
    p = argparse.ArgumentParser(prog="dgan-bench-real", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder holding the datasets")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="a dgan model folder (e.g. from dgan-train-baselines --data "
                   "brain) or a shipped model's name (brain); without it, dgan runs without a "
                   "model only")
    p.add_argument("--no-ants", action="store_true", help="leave ANTs out")
    p.add_argument("--only", help="run only the cases whose name contains this text")
    return p


def methods(args, log):
    out = [bench.DganMethod("dgan (no model)", None, log)]
    if args.model:
        out.append(bench.DganMethod("dgan (brain model)", args.model, log))
    if not args.no_ants:
        ants, reason = import_ants()
        if ants is None:
            print(reason, file=sys.stderr)
        else:
            out += [bench.AntsMethod(ants, "ANTs SyN (affine + SyN)", "SyN"),
                    bench.AntsMethod(ants, "ANTs SyN from the headers", "SyNOnly")]
    return out


def _cell(record, key):
    value = record.get(key)
    return "" if value is None or value != value else f"{value:.3f}"


def summary_table(rows):
    """Markdown: one row per case and method."""
    lines = ["| case | method | moved (mm) | EPE (mm) | Dice | folding | s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['method']} | {_cell(row, 'moved_mm')} | "
                     f"{_cell(row, 'epe_mm')} | {_cell(row, 'dice')} | "
                     f"{_cell(row, 'folding')} | {row.get('seconds', 0):.1f} |")
    return "\n".join(lines) + "\n"


def save_figure(path, rows):
    """Each case's error (moved mm for aligned cases, EPE for deformed) by method, as bars."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    names = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = figures.new_figure(figsize=(max(8, 1.4 * len(cases)), 4.5))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        values = [next((r.get("moved_mm", r.get("epe_mm")) for r in rows
                        if r["case"] == c and r["method"] == name), np.nan) for c in cases]
        ax.bar(np.arange(len(cases)) + index * width, values, width, label=name)
    ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
    ax.set_xticklabels(["\n".join(textwrap.wrap(c, 18)) for c in cases], fontsize=7)
    ax.set_ylabel("mm (aligned: moved; deformed: end-point error)")
    ax.legend(fontsize=8)
    ax.set_title("real-scan benchmark: lower is better")
    fig.tight_layout()
    figures.save_figure(fig, path)


def main(argv=None):
    args = parser().parse_args(argv)
    compat.use_compile_cache()  # as dgan-register: each case's grids compiled once per machine
    show_warnings()
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "registration.log")
    log_file = open(log_path, "w", encoding="utf-8")

    def log(text):
        log_file.write(text + "\n")
        log_file.flush()

    try:
        cases = bench.build_cases(args.data, os.path.join(args.out, "cases"))
        if args.only:
            cases = [c for c in cases if args.only in c.name]
        chosen = methods(args, log)
        rows = []
        for case in cases:
            affine = dio.load_volume(case.fixed).affine
            rows.append({"case": case.name, "method": "before registration",
                         **bench.before(case, affine), "seconds": 0.0})
            for method in chosen:
                log(f"--- {case.name}: {method.name}")
                record = bench.score(case, method.register(case), affine)
                rows.append({"case": case.name, "method": method.name, **record})
                shown = ", ".join(f"{k} {v:.3f}" for k, v in record.items())
                print(f"{case.name} | {method.name}: {shown}", flush=True)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        log_file.close()
    keys = ["case", "method", "moved_mm", "epe_mm", "dice", "folding", "seconds"]
    with dio.atomic_write(os.path.join(args.out, "results.csv")) as tmp, \
            open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = summary_table(rows)
    cpu = cpu_model()
    with dio.atomic_write(os.path.join(args.out, "summary.md")) as tmp, \
            open(tmp, "w", encoding="utf-8") as handle:
        handle.write(table)
    dio.write_json(os.path.join(args.out, "config.json"),
                   {"data": os.path.abspath(args.data), "model": args.model, "cpu": cpu,
                    "cases": [c.name for c in cases], "methods": [m.name for m in chosen]})
    save_figure(os.path.join(args.out, "errors.png"), rows)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
