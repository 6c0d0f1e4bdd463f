"""The user's command lines, each a thin layer over the library with ``main(argv=None)``
returning the exit status (0, or 2 for bad input with a one-line message; ``dgan-register
--batch``: 1 when a row failed), installed as console scripts:

| command | module | shim in a checkout |
|---|---|---|
| ``dgan-train`` | :mod:`dgan.cli.train` | ``train/train_dgan.py`` |
| ``dgan-register`` | :mod:`dgan.cli.register` | |
| ``dgan-export`` | :mod:`dgan.cli.export` | |

The benchmark and probe commands (``dgan-evaluate``, ``dgan-train-baselines``,
``dgan-bench-*``, ``dgan-probe-*``) live in :mod:`dgan.bench`, with shims ``eval/<name>.py``.
``dgan-register`` and ``dgan-export`` parse their arguments and answer ``--help`` before
TensorFlow starts (the choices and defaults they quote come from TensorFlow-free modules,
:mod:`dgan.registration.settings` and :mod:`dgan.core.settings`).
"""
