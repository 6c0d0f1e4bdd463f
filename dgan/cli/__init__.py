"""The command lines, each a thin layer over the library with ``main(argv=None)`` returning the
exit status (0, or 2 for bad input with a one-line message; ``dgan-register --batch``: 1 when
a row failed), installed as console scripts:

| command | module | the scripts it replaces (kept as shims) |
|---|---|---|
| ``dgan-train`` | :mod:`dgan.cli.train` | ``train/train_dgan.py`` |
| ``dgan-train-baselines`` | :mod:`dgan.cli.train_baselines` | ``eval/train_baselines.py`` |
| ``dgan-evaluate`` | :mod:`dgan.cli.evaluate` | ``eval/evaluate.py`` |
| ``dgan-bench-speed`` | :mod:`dgan.cli.bench_speed` | ``eval/bench_speed.py`` |
| ``dgan-probe-loss`` | :mod:`dgan.cli.probe_loss` | ``eval/probe_loss.py`` |
| ``dgan-probe-matching`` | :mod:`dgan.cli.probe_matching` | ``eval/probe_matching.py`` |
| ``dgan-bench-affine`` | :mod:`dgan.cli.bench_affine` | ``eval/bench_affine.py`` |
| ``dgan-bench-real`` | :mod:`dgan.cli.bench_real` | ``eval/bench_real.py`` |
| ``dgan-register`` | :mod:`dgan.cli.register` | |
| ``dgan-export`` | :mod:`dgan.cli.export` | |

:mod:`dgan.cli.options` holds the choices and defaults ``dgan-register --help`` shows without
starting TensorFlow.
"""

import logging


def show_warnings():
    """Warnings and errors of every library on stderr, one line each (the evaluation commands;
    ``dgan-train`` keeps its own log file and progress bar)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def add_pair_arguments(parser, pairs):
    """The probes' choice of pairs: ``--data``, ``--pairs`` (default ``pairs``), ``--seed``,
    ``--resolution``, ``--brain-npz``, ``--labels``; read back by :func:`probe_pairs`."""
    from .. import data as ddata

    parser.add_argument("--data", choices=("brain", "demo"), default="brain")
    parser.add_argument("--pairs", type=int, default=pairs, help=f"pairs (default {pairs})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the pairs (default 0, the benchmark's; 1234: the demo's "
                             "validation pairs)")
    parser.add_argument("--resolution", type=float, default=2.0, help="brain: voxel size in mm")
    parser.add_argument("--brain-npz", default=str(ddata.SHARED_DATA / "brain_t1_aseg.npz"))
    parser.add_argument("--labels", default=str(ddata.SHARED_DATA / "aseg_eval_labels.npz"))


def probe_pairs(args):
    """The :class:`dgan.data.Benchmark` that :func:`add_pair_arguments`' options choose."""
    from .. import data as ddata

    return ddata.benchmark_pairs(args.data, npz_path=args.brain_npz,
                                 labels_path=None if args.data == "demo" else args.labels,
                                 resolution_mm=args.resolution, n_pairs=args.pairs, seed=args.seed)
