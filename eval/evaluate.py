#!/usr/bin/env python
"""Evaluate Deform-GAN against identity, VoxelMorph, the LCC ablation and ANTs SyN, same pairs.

The same as the console script ``dgan-evaluate`` (:mod:`dgan.bench.evaluate`, ``--help`` for every
option and example); kept so that ``python eval/evaluate.py`` works in a checkout.
"""

import sys

from dgan.bench.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
