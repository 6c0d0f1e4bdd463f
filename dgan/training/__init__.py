"""Training Deform-GAN and its learned baselines: one run for every method.

| module | one job |
|---|---|
| :mod:`~dgan.training.config` | :class:`~dgan.training.config.TrainConfig`, the run's settings |
| :mod:`~dgan.training.presets` | the settings a run starts from: ``demo``, ``scans``, ``brain`` |
| :mod:`~dgan.training.run` | :func:`~dgan.training.run.train`: data, checkpoints, resume, logs,
export |
| :mod:`~dgan.training.validation` | held-out Dice through the registration code |
| :mod:`~dgan.training.trainers` | ``DeformGAN`` (D, then G, then T) and T alone; ``LossWeights`` |
| :mod:`~dgan.training.baselines` | VoxelMorph's VxmDense, trained as a baseline |
| :mod:`~dgan.training.callbacks` | Keras callbacks of a run: divergence guard, loss log, periodic
work |
| :mod:`~dgan.training.distribute` | ``tf.distribute`` strategies and sharded input |
| :mod:`~dgan.training.prealign` | training scans aligned affinely to the first fixed scan, cached |
| :mod:`~dgan.training.schedules` | learning-rate schedules |

It imports :mod:`dgan.core`, :mod:`dgan.data`, :mod:`dgan.registration` (validation registers as
``dgan-register`` does) and :mod:`dgan.evaluation.figures`, never the commands or the benchmarks.
"""
