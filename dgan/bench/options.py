"""What the benchmark and probe commands share: warnings on stderr, the choice of pairs."""

import logging

from . import brain


def show_warnings():
    """Warnings and errors of every library on stderr, one line each (the evaluation commands;
    ``dgan-train`` keeps its own log file and progress bar)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def add_pair_arguments(parser, pairs):
    """The probes' choice of pairs: ``--data``, ``--pairs`` (default ``pairs``), ``--seed``,
    ``--resolution``, ``--brain-npz``, ``--labels``; read back by :func:`probe_pairs`."""
    parser.add_argument("--data", choices=("brain", "demo"), default="brain")
    parser.add_argument("--pairs", type=int, default=pairs, help=f"pairs (default {pairs})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the pairs (default 0, the benchmark's; 1234: the demo's "
                             "validation pairs)")
    parser.add_argument("--resolution", type=float, default=2.0, help="brain: voxel size in mm")
    parser.add_argument("--brain-npz", default=str(brain.SHARED_DATA / "brain_t1_aseg.npz"))
    parser.add_argument("--labels", default=str(brain.SHARED_DATA / "aseg_eval_labels.npz"))


def probe_pairs(args):
    """The :class:`dgan.evaluation.report.Benchmark` that :func:`add_pair_arguments`' options choose."""
    return brain.benchmark_pairs(args.data, npz_path=args.brain_npz,
                                 labels_path=None if args.data == "demo" else args.labels,
                                 resolution_mm=args.resolution, n_pairs=args.pairs, seed=args.seed)
