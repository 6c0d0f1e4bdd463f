"""One task of a multi-worker test cluster: runs ``train/train_dgan.py`` in this process.

Launched by ``tests/test_distribute.py`` with ``TF_CONFIG`` set, as a cluster manager would
launch the CLI; two test-only options come before ``--`` and the CLI's own arguments after it::

    python tests/distributed_worker.py [--weights OUT.npz] [--initial-checkpoint PREFIX]
        [--die-at-step N] [--sgd] -- CLI ARGS...

``--weights`` writes this worker's final weights of T, G and D (``np.savez``), so the test can
compare workers, whose own outputs go to scratch folders that are removed.
``--initial-checkpoint`` writes T, G and D before the first step as a checkpoint (under the
names of the run's own checkpoints). ``--die-at-step`` sends this process SIGKILL right after
step N and its checkpoint (a worker lost mid-run). ``--sgd`` trains with SGD with momentum in
place of Adam, on the same learning-rate schedules (``tests/trained_alike.py`` says why).
"""

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dgan  # noqa: E402,F401
from dgan.training import run as training  # noqa: E402
from dgan.compat import keras, tf  # noqa: E402
from dgan.training.schedules import learning_rate  # noqa: E402

NETWORKS = ("discriminator", "generator", "registration_net")


class SaveWeights(keras.callbacks.Callback):
    """At the end of training, every network's weights to ``path`` as ``{net}/{k}`` arrays."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        import numpy as np

        arrays = {f"{name}/{k}": w for name in NETWORKS
                  for k, w in enumerate(getattr(self.model, name).get_weights())}
        arrays["step"] = np.asarray(int(self.model.t_optimizer.iterations.numpy()))
        np.savez(self.path, **arrays)


class SaveInitialWeights(keras.callbacks.Callback):
    """Before the first step, T, G and D to a checkpoint at ``prefix``."""

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def on_train_begin(self, logs=None):
        tf.train.Checkpoint(**{name: getattr(self.model, name) for name in NETWORKS}).write(
            self.prefix)


def sgd_optimizers(config):
    """``training.make_optimizers`` with SGD (momentum 0.9) in place of Adam."""
    def sgd(lr):
        return keras.optimizers.SGD(learning_rate(lr, config.lr_decay, config.steps), momentum=0.9)

    return {"t_optimizer": sgd(config.lr_t), "g_optimizer": sgd(config.lr_g),
            "d_optimizer": sgd(config.lr_d)}


class DieAtStep(keras.callbacks.Callback):
    """SIGKILL this process after step ``step`` (after the run's own checkpoint callback)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.step:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def load_cli():
    spec = importlib.util.spec_from_file_location("train_dgan", ROOT / "train" / "train_dgan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights")
    parser.add_argument("--initial-checkpoint")
    parser.add_argument("--die-at-step", type=int)
    parser.add_argument("--sgd", action="store_true")
    args = parser.parse_args(argv[:split])
    extra = []
    if args.weights:
        extra.append(SaveWeights(args.weights))
    if args.initial_checkpoint:
        extra.append(SaveInitialWeights(args.initial_checkpoint))
    if args.die_at_step:
        extra.append(DieAtStep(args.die_at_step))
    train = training.train

    def train_with_hooks(*a, **kw):
        return train(*a, extra_callbacks=extra, **kw)

    make_optimizers = training.make_optimizers
    training.train = train_with_hooks  # the CLI calls dgan.training.run.train
    if args.sgd:
        training.make_optimizers = sgd_optimizers  # training.train calls it
    try:
        return load_cli().main(argv[split + 1:])
    finally:
        training.train = train  # tests also call main() in-process
        training.make_optimizers = make_optimizers


if __name__ == "__main__":
    sys.exit(main())
