"""The method: Deform-GAN's loss terms, networks and block matching, and the metrics that judge
a registration (Zhang et al. 2020, arXiv:2002.11430).

| module | one job |
|---|---|
| :mod:`~dgan.core.losses` | local gradient L_LG, LCC, smoothness, adversarial, L1: per example |
| :mod:`~dgan.core.matching` | T's block matching of local-gradient directions, coarse to fine |
| :mod:`~dgan.core.networks` | builders of T (VoxelMorph U-Net + SpatialTransformer), G and D |
| :mod:`~dgan.core.coverage` | where both scans have data; masks |
| :mod:`~dgan.core.metrics` | Dice, HD95, Jacobian determinant, folding, SDlogJ; time and memory |
| :mod:`~dgan.core.settings` | the terms' windows and what smoothness acts on, free of TensorFlow |

It imports :mod:`dgan.data` at most, never training, registration, evaluation, the commands or
the benchmarks (``tests/test_layout.py``).
"""
