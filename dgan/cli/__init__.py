"""The command lines, each a thin layer over the library with ``main(argv=None)`` returning the
exit status (0, or 2 for bad input with a one-line message), installed as console scripts:

| command | module | the scripts it replaces (kept as shims) |
|---|---|---|
| ``dgan-train`` | :mod:`dgan.cli.train` | ``train/train_dgan.py`` |
| ``dgan-train-baselines`` | :mod:`dgan.cli.train_baselines` | ``eval/train_baselines.py`` |
| ``dgan-evaluate`` | :mod:`dgan.cli.evaluate` | ``eval/evaluate.py`` |
| ``dgan-bench-speed`` | :mod:`dgan.cli.bench_speed` | ``eval/bench_speed.py`` |
| ``dgan-probe-loss`` | :mod:`dgan.cli.probe_loss` | ``eval/probe_loss.py`` |

``dgan-register`` and ``dgan-export`` live beside their library code, in :mod:`dgan.register`
and :mod:`dgan.export`.
"""

import logging


def show_warnings():
    """Warnings and errors of every library on stderr, one line each (the evaluation commands;
    ``dgan-train`` keeps its own log file and progress bar)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
