"""What the benchmark and probe commands share: warnings on stderr, the benchmark's files, the
choice of pairs.

The brain benchmark's files are never part of the package: ``--brain-npz`` and ``--labels`` name
them, by default ``../shared/data/`` beside the checkout dgan runs from; an installed dgan has no
default, and a command that needs the file says so in one line.
"""

import logging
import platform
from pathlib import Path

from . import brain

#: The brain benchmark's files: a T1 with its aseg segmentation, and the labels it scores.
BRAIN_FILE = "brain_t1_aseg.npz"
LABELS_FILE = "aseg_eval_labels.npz"


def checkout_data(name, package=Path(__file__).resolve().parents[1]):
    """``../shared/data/<name>`` beside the checkout that dgan runs from (a path string), the
    default of ``--brain-npz`` and ``--labels``; None when dgan runs from an installed package
    (no ``setup.py`` beside ``package``, the ``dgan`` folder) or the checkout has no such folder."""
    checkout = Path(package).parent
    folder = checkout.parent / "shared" / "data"
    if not (checkout / "setup.py").is_file() or not folder.is_dir():
        return None
    return str(folder / name)


def add_brain_file_arguments(parser, labels=True):
    """``--brain-npz`` (and with ``labels``, ``--labels``), defaulting to :func:`checkout_data`."""
    parser.add_argument("--brain-npz", default=checkout_data(BRAIN_FILE), metavar="NPZ",
                        help=f"the brain benchmark's {BRAIN_FILE} (default: ../shared/data/ "
                             "beside the checkout, if there is one)")
    if labels:
        parser.add_argument("--labels", default=checkout_data(LABELS_FILE), metavar="NPZ",
                            help=f"the label ids scored, {LABELS_FILE} (key 'labels'; default: "
                                 "beside --brain-npz's default, else every label of the aseg "
                                 "list)")


def show_warnings():
    """Warnings and errors of every library on stderr, one line each (the evaluation commands;
    ``dgan-train`` keeps its own log file and progress bar)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def add_verbose_argument(parser):
    """``--verbose``: the command calls ``dgan.compat.quiet(args.verbose)`` before it starts
    TensorFlow, so that ``--help`` answers without it and its log lines stay off stderr."""
    parser.add_argument("--verbose", action="store_true",
                        help="let TensorFlow's start-up and log lines (absl, oneDNN, CUDA) and its "
                             "warnings through to stderr (hidden by default)")


def add_pair_arguments(parser, pairs):
    """The probes' choice of pairs: ``--data``, ``--pairs`` (default ``pairs``), ``--seed``,
    ``--resolution``, ``--brain-npz``, ``--labels``; read back by :func:`probe_pairs`."""
    parser.add_argument("--data", choices=("brain", "demo"), default="brain")
    parser.add_argument("--pairs", type=int, default=pairs, help=f"pairs (default {pairs})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the pairs (default 0, the benchmark's; 1234: the demo's "
                             "validation pairs)")
    parser.add_argument("--resolution", type=float, default=2.0, help="brain: voxel size in mm")
    add_brain_file_arguments(parser)


def probe_pairs(args):
    """The :class:`dgan.evaluation.report.Benchmark` that :func:`add_pair_arguments`' options
    choose."""
    return brain.benchmark_pairs(args.data, npz_path=args.brain_npz,
                                 labels_path=None if args.data == "demo" else args.labels,
                                 resolution_mm=args.resolution, n_pairs=args.pairs, seed=args.seed)


def cpu_model():
    """The processor's model name (Linux ``/proc/cpuinfo``), for every timed figure."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
