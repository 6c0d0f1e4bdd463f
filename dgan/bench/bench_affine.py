"""The affine benchmark: known random affine transforms on top of the 2 mm brain benchmark.

1. **Accuracy** (``--cases``, 20): the fixed scan is a pair's T2-like image, the moving scan the
   T1 of the same anatomy moved by a random affine (rotations up to 15 degrees, translations up
   to 15 mm, scales within +-10 %, shears up to 0.05; :mod:`dgan.bench.affine_cases`). Error: RMS
   distance between the recovered and the true transform over the fixed brain. ANTs's affine
   (``type_of_transform="Affine"``, Mattes MI) runs on the same cases in the same run when
   antspyx is installed.
2. **Dice** (``--dice-pairs N``, 0 to skip): refinement alone (``dgan-register`` without
   ``--model``) on N benchmark pairs as they are (affine off) and with their moving T1 and labels
   moved by a random affine (affine on): mean Dice over the 30 aseg labels of both. The affine
   moves the moving scan's grid (its header), not its voxels, unless ``--dice-resample``.

Writes ``accuracy.csv``, ``dice.csv``, ``summary.md``, ``config.json`` and
``overlay_case0.png`` into ``--out``. Example::

    dgan-bench-affine --out runs/bench-affine --cases 20 --dice-pairs 8
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from .. import compat
from ..data.io import atomic_write
from ..errors import InputError
from ..evaluation.methods import import_ants
from ..registration.settings import AFFINE_MARGIN_MM, NO_MODEL_REFINE_STEPS
from . import brain
from .options import add_brain_file_arguments, add_verbose_argument, cpu_model

# The affine stage and its cases (TensorFlow) are imported by main, after compat.quiet():
# ``dgan-bench-affine --help`` answers without starting it.


def parser():
    p = argparse.ArgumentParser(prog="dgan-bench-affine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    add_brain_file_arguments(p)
    p.add_argument("--cases", type=int, default=20, help="accuracy cases (default 20)")
    p.add_argument("--dice-pairs", type=int, default=0, help="Dice pairs (default 0: skip)")
    p.add_argument("--refine-steps", type=int, default=NO_MODEL_REFINE_STEPS)
    p.add_argument("--margin-mm", type=float, default=AFFINE_MARGIN_MM,
                   help="MI samples the fixed foreground grown by this many mm (negative: "
                        "shrunk; default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ants", action="store_true", help="leave ANTs out")
    p.add_argument("--dice-resample", action="store_true",
                   help="Dice cases: move the content (labels resampled twice by nearest "
                        "neighbour) instead of the grid (the default: the labels are resampled "
                        "once, by the registration)")
    add_verbose_argument(p)
    return p


def write_csv(path, records):
    if not records:
        return
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def summary(accuracy, dice, load):
    lines = [f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average at the end {load}", ""]
    if accuracy:
        lines += ["| method | within 1 mm | median error (mm) | max error (mm) | s / case (mean, "
                  "after the first) | first case (s) |", "|---|---:|---:|---:|---:|---:|"]
        for name, key in (("before (headers)", "initial"), ("dgan affine", "dgan"),
                          ("ANTs Affine (Mattes MI)", "ants")):
            errors = np.array([r[f"{key}_mm"] for r in accuracy])
            if np.all(np.isnan(errors)):
                continue
            seconds = np.array([r.get(f"{key}_s", np.nan) for r in accuracy])
            later = f"{np.mean(seconds[1:]):.2f}" if len(seconds) > 1 else "-"
            lines.append(f"| {name} | {int(np.sum(errors <= 1.0))}/{len(errors)} | "
                         f"{np.median(errors):.2f} | {np.max(errors):.2f} | "
                         f"{later if key != 'initial' else '-'} | "
                         f"{seconds[0]:.2f} |" if key != "initial" else
                         f"| {name} | {int(np.sum(errors <= 1.0))}/{len(errors)} | "
                         f"{np.median(errors):.2f} | {np.max(errors):.2f} | - | - |")
        for what, key in (("wall", "dgan_s"), ("CPU (the process, all threads)", "dgan_cpu_s")):
            values = np.array([r[key] for r in accuracy])
            later = values[1:] if len(values) > 1 else values
            lines += ["", f"dgan affine {what} time per case: first {values[0]:.2f} s (tracing), "
                      f"then {later.min():.2f} to {later.max():.2f} s"]
    if dice:
        before = np.array([r["dice_unperturbed"] for r in dice])
        after = np.array([r["dice_perturbed"] for r in dice])
        lines += ["", "| refinement alone | mean Dice | s / pair |", "|---|---:|---:|",
                  f"| unperturbed pairs, affine off | {before.mean():.4f} | "
                  f"{np.mean([r['seconds_unperturbed'] for r in dice]):.0f} |",
                  f"| affinely perturbed, affine on | {after.mean():.4f} | "
                  f"{np.mean([r['seconds_perturbed'] for r in dice]):.0f} |",
                  "", f"difference (perturbed - unperturbed): {after.mean() - before.mean():+.4f} "
                  f"over {len(dice)} pairs (per pair: "
                  f"{', '.join(f'{a - b:+.3f}' for a, b in zip(after, before))})"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parser().parse_args(argv)
    compat.quiet(args.verbose)  # before the affine stage starts TensorFlow
    from ..registration import affine as daffine
    from . import affine_cases as bench

    out = Path(args.out)
    try:
        brain.check_brain_file(args.brain_npz)
        ants, reason = (None, "--no-ants") if args.no_ants else import_ants()
        if ants is None:
            print(reason)
        n_pairs = max(brain.BRAIN_PAIRS, args.dice_pairs)
        pairs = brain.load_brain_benchmark(args.brain_npz, 2.0, n_pairs=n_pairs, seed=args.seed)
        config = daffine.AffineConfig(margin_mm=args.margin_mm)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.json") as tmp, open(tmp, "w") as handle:
            json.dump({"argv": sys.argv[1:] if argv is None else list(argv), "cpu": cpu_model(),
                       "affine_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                                         vars(config).items()}}, handle, indent=2)
        accuracy = []
        if args.cases:
            cases = bench.make_cases(pairs, args.cases, 2.0, seed=args.seed)
            accuracy, matrices = bench.accuracy_records(cases, config, ants, progress=print)
            write_csv(out / "accuracy.csv", accuracy)
            bench.save_overlay_figure(out / "overlay_case0.png", cases[0], matrices[0],
                                      f"case 0: fixed T2-like, moving T1 contours; error "
                                      f"{accuracy[0]['initial_mm']:.1f} -> "
                                      f"{accuracy[0]['dgan_mm']:.2f} mm RMS")
        dice = []
        if args.dice_pairs:
            label_ids = brain.read_label_ids(args.labels)
            perturbed = bench.make_cases(pairs[:args.dice_pairs], args.dice_pairs, 2.0,
                                         seed=args.seed, moving_key="moving",
                                         resample=args.dice_resample)
            dice = bench.dice_records(pairs[:args.dice_pairs], perturbed, label_ids,
                                      args.refine_steps, progress=print)
            write_csv(out / "dice.csv", dice)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = summary(accuracy, dice, " ".join(f"{v:.1f}" for v in os.getloadavg()))
    with atomic_write(out / "summary.md") as tmp, open(tmp, "w") as handle:
        handle.write(text)
    print(text)
    return 0
