#!/usr/bin/env python
"""Train Deform-GAN and its learned baselines on the same data with the same step budget.

The same as the console script ``dgan-train-baselines`` (:mod:`dgan.bench.train_baselines`,
``--help`` for every option and example); kept so that ``python eval/train_baselines.py`` works
in a checkout.
"""

import sys

from dgan.bench.train_baselines import main

if __name__ == "__main__":
    sys.exit(main())
