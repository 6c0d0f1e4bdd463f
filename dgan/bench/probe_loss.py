"""``dgan-probe-loss``. Loss probe: can a loss term register the benchmark pairs at all, without
any network?

Optimises one displacement field per pair directly (:func:`dgan.registration.refine.refine` from the
identity: Adam, coarse to fine) with the chosen terms of Deform-GAN's T objective, and prints
the mean Dice before and after. If a term cannot register the pairs when optimised per pair, no
network trained on it will; if it can and a trained T does not, the gap is in the training
(docs/notes/training-log.md). Examples::

    # the paper's local-gradient term alone, cross-modal (T1 -> T2-like), 2 mm brain pairs
    dgan-probe-loss --data brain --pairs 2 --beta 1 --w-lcc 0
    # LCC against the same-modality (T1) fixed image: what a perfect G would give
    dgan-probe-loss --data brain --pairs 2 --beta 0 --w-lcc 1 --same-modality
    # the demo's validation pairs (5 mm), the demo's windows
    dgan-probe-loss --data demo --seed 1234 --pairs 4 --w-lcc 0 --lg-window 3 \
        --levels 1 --control 4 --alpha 0.05 --learning-rate 0.25 --steps 100
"""

import argparse
import sys
import time

import numpy as np

from .. import compat
from ..core import metrics
from ..data import synth
from ..errors import InputError
from ..registration.settings import RefineConfig
from .options import add_pair_arguments, add_verbose_argument, probe_pairs, show_warnings


def parser():
    p = argparse.ArgumentParser(prog="dgan-probe-loss", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p, pairs=2)
    p.add_argument("--same-modality", action="store_true",
                   help="brain: register to the fixed anatomy rendered as a T1 (fixed_t1), so "
                        "that L_LCC (which sees F(phi) itself: there is no G here) is mono-modal")
    defaults = RefineConfig()
    for name in ("steps", "control", "lg_window", "lcc_window"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("learning_rate", "alpha", "beta", "w_lcc"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--levels", type=int, nargs="+", default=list(defaults.levels))
    add_verbose_argument(p)
    return p


def main(argv=None):
    """``dgan-probe-loss``; returns the exit status (2 for bad input)."""
    args = parser().parse_args(argv)
    compat.quiet(args.verbose)  # before refinement starts TensorFlow
    from ..registration.refine import refine

    show_warnings()
    try:
        config = RefineConfig(steps=args.steps, levels=tuple(args.levels), control=args.control,
                              learning_rate=args.learning_rate, alpha=args.alpha, beta=args.beta,
                              w_lcc=args.w_lcc, lg_window=args.lg_window,
                              lcc_window=args.lcc_window)
        benchmark = probe_pairs(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.same_modality and "fixed_t1" not in benchmark.pairs[0]:
        print("error: --same-modality needs the brain pairs (fixed_t1)", file=sys.stderr)
        return 2
    print(f"{benchmark.name}, {len(benchmark.pairs)} pairs; {config}")
    before, after = [], []
    for k, pair in enumerate(benchmark.pairs):
        started = time.perf_counter()
        fixed = pair["fixed_t1"] if args.same_modality else pair["fixed"]
        translated = pair["moving"] if config.w_lcc else None  # no G: L_LCC sees F(phi) itself
        flow = refine(pair["moving"], fixed, translated=translated, config=config).flow
        warped = synth.warp(pair["moving_labels"], flow, order=0)
        before.append(metrics.mean_dice(pair["moving_labels"], pair["fixed_labels"],
                                        benchmark.label_ids))
        after.append(metrics.mean_dice(warped, pair["fixed_labels"], benchmark.label_ids))
        print(f"pair {k}: Dice {before[-1]:.4f} -> {after[-1]:.4f}, folding "
              f"{metrics.folding_fraction(flow):.5f}, {time.perf_counter() - started:.0f} s",
              flush=True)
    print(f"mean Dice {np.mean(before):.4f} -> {np.mean(after):.4f}")
    return 0

