#!/usr/bin/env python
"""Matching probe: how far does T's block matching register the benchmark pairs before training?

The same as the console script ``dgan-probe-matching`` (:mod:`dgan.bench.probe_matching`,
``--help`` for every option and example); kept so that ``python eval/probe_matching.py`` works in
a checkout.
"""

import sys

from dgan.bench.probe_matching import main

if __name__ == "__main__":
    sys.exit(main())
