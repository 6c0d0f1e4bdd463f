"""Comparing registration methods on the same pairs: methods, scores, tables and figures.

| module | one job |
|---|---|
| :mod:`~dgan.evaluation.methods` | identity, dgan model folders, ANTs SyN behind one interface |
| :mod:`~dgan.evaluation.report` | scores per pair, ``results.csv``, ``summary.md``, the figures |
| :mod:`~dgan.evaluation.figures` | every PNG, on matplotlib's Agg canvas (no global backend) |

It imports :mod:`dgan.core`, :mod:`dgan.data` and :mod:`dgan.registration`, never training, the
commands or the benchmarks.
"""
