#!/usr/bin/env python
"""The real-scan benchmark: real multi-contrast pairs, aligned and deformed, dgan against ANTs.

The same as the console script ``dgan-bench-real`` (:mod:`dgan.bench.bench_real`, ``--help`` for
every option); kept so that ``python eval/bench_real.py`` works in a checkout.
"""

import sys

from dgan.bench.bench_real import main

if __name__ == "__main__":
    sys.exit(main())
