"""Matching probe: how far does T's parameter-free block matching (:mod:`dgan.core.matching`)
register the benchmark pairs on its own, before any training?

Runs :class:`dgan.core.networks.BlockMatching` on each pair (optionally on a grid ``--pool`` times
coarser, as a T trained at 4 mm sees 2 mm pairs), up-samples the field, and prints the mean Dice
before and after and the folding. This is what a T with ``matching`` predicts at step 0 (its
U-Net's residual starts at zero); docs/notes/training-log.md. Examples::

    # the demo's validation pairs (5 mm), the default passes
    dgan-probe-matching --data demo --seed 1234 --pairs 4
    # the 2 mm brain benchmark, matched on the 4 mm training grid
    dgan-probe-matching --data brain --pairs 8 --pool 2 --passes 4:2,2:2,1:1
"""

import argparse
import sys
import time

import numpy as np

from .. import compat
from ..core import metrics
from ..core import settings as core_settings
from ..core.settings import parse_matching
from ..data import synth
from ..errors import InputError
from . import brain
from .options import add_pair_arguments, add_verbose_argument, probe_pairs, show_warnings

# TensorFlow (dgan.compat.tf, vxm, dgan.core.networks) is imported by main, after
# compat.quiet(): ``dgan-probe-matching --help`` answers without starting it.


def parser():
    p = argparse.ArgumentParser(prog="dgan-probe-matching", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p, pairs=brain.BRAIN_PAIRS)
    p.add_argument("--pool", type=int, default=1, choices=(1, 2, 4),
                   help="match on a grid this many times coarser (average-pooled images)")
    p.add_argument("--passes", type=parse_matching, default=core_settings.DEFAULT_PASSES,
                   help="factor:radius,... coarse to fine (default %(default)s)")
    p.add_argument("--window", type=int, default=core_settings.MATCHING_WINDOW)
    p.add_argument("--smoothing", type=int, default=core_settings.MATCHING_SMOOTHING)
    p.add_argument("--temperature", type=float, default=core_settings.MATCHING_TEMPERATURE)
    p.add_argument("--lg-window", type=int, default=core_settings.MATCHING_LG_WINDOW)
    add_verbose_argument(p)
    return p


def matcher(args):
    """(moving, fixed) (1, X, Y, Z, 1) -> phi (1, X, Y, Z, 3) on the pairs' grid."""
    from ..compat import tf, vxm
    from ..core import networks

    layer = networks.BlockMatching(args.passes, lg_window=args.lg_window, window=args.window,
                                   smoothing=args.smoothing, temperature=args.temperature)

    @tf.function
    def match(moving, fixed):
        if args.pool == 1:
            return layer([moving, fixed])
        pooled = [tf.nn.avg_pool3d(x, args.pool, args.pool, "VALID") for x in (moving, fixed)]
        return vxm.utils.rescale_dense_transform(layer(pooled), args.pool)

    return match


def main(argv=None):
    """``dgan-probe-matching``; returns the exit status (2 for bad input)."""
    args = parser().parse_args(argv)
    compat.quiet(args.verbose)  # before TensorFlow starts
    from ..compat import tf

    show_warnings()
    try:
        benchmark = probe_pairs(args)
        match = matcher(args)
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{benchmark.name}, {len(benchmark.pairs)} pairs; passes {args.passes}, pool "
          f"{args.pool}, window {args.window}, smoothing {args.smoothing}, temperature "
          f"{args.temperature}, lg window {args.lg_window}")
    before, after, folding, seconds = [], [], [], []
    for k, pair in enumerate(benchmark.pairs):
        size = pair["fixed"].shape
        if any(s % args.pool for s in size):
            print(f"error: the pairs' grid {size} is not divisible by --pool {args.pool}",
                  file=sys.stderr)
            return 2
        started = time.perf_counter()
        flow = match(tf.constant(pair["moving"][None, ..., None]),
                     tf.constant(pair["fixed"][None, ..., None]))[0].numpy()
        seconds.append(time.perf_counter() - started)
        warped = synth.warp(pair["moving_labels"], flow, order=0)
        before.append(metrics.mean_dice(pair["moving_labels"], pair["fixed_labels"],
                                        benchmark.label_ids))
        after.append(metrics.mean_dice(warped, pair["fixed_labels"], benchmark.label_ids))
        folding.append(metrics.folding_fraction(flow))
        print(f"pair {k}: Dice {before[-1]:.4f} -> {after[-1]:.4f}, folding {folding[-1]:.5f}, "
              f"{seconds[-1]:.1f} s", flush=True)
    print(f"mean Dice {np.mean(before):.4f} -> {np.mean(after):.4f}, mean folding "
          f"{100 * np.mean(folding):.3f} %, median {np.median(seconds[1:] or seconds):.1f} s/pair "
          f"(the first pair includes tracing)")
    return 0

