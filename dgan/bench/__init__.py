"""The lab: benchmarks, probes and the baselines' training, with their commands.

Nothing outside this package imports it (``tests/test_layout.py``). Their data (the brain
benchmark's ``brain_t1_aseg.npz``, real scans) is never part of the package: each command takes
its paths as arguments, defaulting to the checkout's ``../shared/data`` when there is one.

| module | one job |
|---|---|
| :mod:`~dgan.bench.brain` | the brain benchmark's pairs and training files |
| :mod:`~dgan.bench.affine_cases` | cases with a known random affine; ANTs's affine on them |
| :mod:`~dgan.bench.real_scans` | real multi-contrast pairs, aligned and deformed |
| :mod:`~dgan.bench.speed` | time and memory of registering a pair and of a training step |
| :mod:`~dgan.bench.options` | what the commands share: warnings, the choice of pairs |
| :mod:`~dgan.bench.train_baselines` | ``dgan-train-baselines`` |
| :mod:`~dgan.bench.evaluate` | ``dgan-evaluate`` |
| :mod:`~dgan.bench.bench_speed` | ``dgan-bench-speed`` |
| :mod:`~dgan.bench.bench_affine` | ``dgan-bench-affine`` |
| :mod:`~dgan.bench.bench_real` | ``dgan-bench-real`` |
| :mod:`~dgan.bench.probe_loss` | ``dgan-probe-loss`` |
| :mod:`~dgan.bench.probe_matching` | ``dgan-probe-matching`` |
"""
