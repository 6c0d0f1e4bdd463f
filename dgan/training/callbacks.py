"""Keras callbacks for a training run; one step per Keras "epoch" (``steps_per_epoch=1``).

Keras's epoch index is therefore the step index: after epoch e, step e + 1 is complete.
"""

import csv
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from ..compat import keras, tf

logger = logging.getLogger(__name__)


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training as soon as any reported loss is NaN or Inf; remembers where."""

    def __init__(self):
        super().__init__()
        self.diverged = None  # (step, name, value) once a loss is not finite

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                self.diverged = (epoch + 1, name, float(value))
                self.model.stop_training = True
                logger.error("step %d: %s is %s; stopping", epoch + 1, name, value)
                return


class StopRequest(keras.callbacks.Callback):
    """Ends training after the current step once :attr:`requested` is set (by Ctrl-C/SIGTERM)."""

    def __init__(self):
        super().__init__()
        self.requested = threading.Event()

    def on_epoch_end(self, epoch, logs=None):
        if self.requested.is_set():
            logger.warning("step %d: stop requested; saving and ending the run", epoch + 1)
            self.model.stop_training = True


@contextmanager
def stop_on_signals(stop_request, signals=(signal.SIGINT, signal.SIGTERM)):
    """While inside, SIGINT/SIGTERM ask for a clean stop after the current step; a second
    SIGINT interrupts at once. Signal handlers are only installed from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop_request.requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop_request.requested.set()

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Periodic(keras.callbacks.Callback):
    """Calls ``action(step)`` every ``every`` steps, unless the guard saw a NaN at that step.

    Used for checkpoints (``action`` writes all three networks and optimizers) and validation.
    """

    def __init__(self, action, every, guard):
        super().__init__()
        self.action, self.every, self.guard = action, int(every), guard

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        if self.guard.diverged is None and self.every > 0 and step % self.every == 0:
            self.action(step)


class LossLog(keras.callbacks.Callback):
    """Writes every loss term at every step: TensorBoard scalars, ``losses.csv`` (appended, so a
    resumed run continues it), a log line every ``log_every`` steps, and a tqdm progress bar.

    :param names: the loss terms the model reports (its ``LOSS_NAMES``), the CSV's columns
    """

    #: Shown beside the progress bar when the model reports them.
    SHOWN = ("d_loss", "g_loss", "t_loss")

    def __init__(self, writer, csv_path, names, total_steps, start_step, log_every=10,
                 progress=True):
        super().__init__()
        self.writer, self.csv_path, self.names = writer, csv_path, tuple(names)
        self.log_every = max(1, int(log_every))
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress,
                        desc="training", unit="step", dynamic_ncols=True)
        self._started = time.perf_counter()
        self._start_step = start_step

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        values = {name: float(logs[name]) for name in self.names if name in (logs or {})}
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"loss/{name}", value)
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as handle:
            out = csv.writer(handle)
            if new:
                out.writerow(["step", *self.names])
            out.writerow([step, *(f"{values.get(n, float('nan')):.6g}" for n in self.names)])
        self.bar.update(1)
        self.bar.set_postfix({k: f"{values[k]:.3f}" for k in self.SHOWN if k in values})
        if step % self.log_every == 0:
            rate = (time.perf_counter() - self._started) / max(1, step - self._start_step)
            logger.info("step %d: %s (%.2f s/step)", step,
                        ", ".join(f"{k} {v:.4f}" for k, v in values.items()), rate)

    def on_train_end(self, logs=None):
        self.bar.close()


def read_loss_history(path):
    """``losses.csv`` -> {name: [(step, value), ...]} for every loss column, finite values only."""
    if not Path(path).exists():
        return {}
    history = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        for name in reader.fieldnames or ():
            if name != "step":
                history[name] = []
        for row in reader:
            for name, points in history.items():
                value = float(row.get(name) or "nan")
                if math.isfinite(value):
                    points.append((int(row["step"]), value))
    return history
