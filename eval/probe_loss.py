#!/usr/bin/env python
"""Loss probe: can a loss term register the benchmark pairs at all, without any network?

The same as the console script ``dgan-probe-loss`` (:mod:`dgan.bench.probe_loss`, ``--help`` for
every option and example); kept so that ``python eval/probe_loss.py`` works in a checkout.
"""

import sys

from dgan.bench.probe_loss import main

if __name__ == "__main__":
    sys.exit(main())
