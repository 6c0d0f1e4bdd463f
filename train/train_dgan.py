#!/usr/bin/env python
"""Train Deform-GAN: ``python train/train_dgan.py`` (embedded demo data) or with your scans.

The same as the console script ``dgan-train`` (:mod:`dgan.cli.train`, ``--help`` for every
option); kept so that the README's ``python train/train_dgan.py`` works in a checkout.
"""

import sys

from dgan.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
