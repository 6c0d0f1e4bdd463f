#!/usr/bin/env python
"""The affine benchmark: known random affine transforms on top of the 2 mm brain benchmark.

The same as the console script ``dgan-bench-affine`` (:mod:`dgan.bench.bench_affine`, ``--help``
for every option and example); kept so that ``python eval/bench_affine.py`` works in a checkout.
"""

import sys

from dgan.bench.bench_affine import main

if __name__ == "__main__":
    sys.exit(main())
