"""Learning-rate schedules for the three optimizers.

:class:`LinearDecay` is CycleGAN's and pix2pix's schedule (Zhu et al. 2017): the learning rate
stays constant for the first part of the run, then falls linearly to zero at its last step, so
that the weights a run ends with are not those of one noisy batch-size-1 update.
"""

from ..compat import keras, tf
from .settings import SCHEDULES


class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``lr`` until step ``decay_start``, then linearly down to 0 at step ``total_steps``.

    :param lr: the initial learning rate
    :param total_steps: the run's last step
    :param decay_start: the step where the decay begins (< ``total_steps``)
    """

    def __init__(self, lr, total_steps, decay_start):
        if not 0 <= decay_start < total_steps:
            raise ValueError(f"need 0 <= decay_start < total_steps, got {decay_start}, {total_steps}")
        self.lr = float(lr)
        self.total_steps = int(total_steps)
        self.decay_start = int(decay_start)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        remaining = (self.total_steps - step) / float(self.total_steps - self.decay_start)
        return self.lr * tf.clip_by_value(remaining, 0.0, 1.0)

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps, "decay_start": self.decay_start}


def learning_rate(lr, schedule, total_steps):
    """The learning rate (a float or a schedule) an optimizer gets for a run of ``total_steps``.

    :param schedule: "constant", or "linear": constant for the first half, then linearly to 0
    """
    if schedule == "constant":
        return float(lr)
    if schedule == "linear":
        return LinearDecay(lr, total_steps, total_steps // 2)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use one of {SCHEDULES}")
