#!/usr/bin/env python
"""Speed and memory: register one pair, and one training step, Deform-GAN vs VoxelMorph (vs ANTs).

The same as the console script ``dgan-bench-speed`` (:mod:`dgan.bench.bench_speed`, ``--help`` for
every option and example); kept so that ``python eval/bench_speed.py`` works in a checkout.
"""

import sys

from dgan.bench.bench_speed import main

if __name__ == "__main__":
    sys.exit(main())
