"""One task of a multi-worker test cluster: runs ``train/train_dgan.py`` in this process.

Launched by ``tests/test_distribute.py`` with ``TF_CONFIG`` set, as a cluster manager would
launch the CLI; two test-only options come before ``--`` and the CLI's own arguments after it::

    python tests/distributed_worker.py [--weights OUT.npz] [--die-at-step N] -- CLI ARGS...

``--weights`` writes this worker's final weights of T, G and D (``np.savez``), so the test can
compare workers, whose own outputs go to scratch folders that are removed. ``--die-at-step``
sends this process SIGKILL right after step N and its checkpoint (a worker lost mid-run).
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
from dgan import training  # noqa: E402
from dgan.compat import keras  # noqa: E402

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
    parser.add_argument("--die-at-step", type=int)
    args = parser.parse_args(argv[:split])
    extra = []
    if args.weights:
        extra.append(SaveWeights(args.weights))
    if args.die_at_step:
        extra.append(DieAtStep(args.die_at_step))
    train = training.train

    def train_with_hooks(*a, **kw):
        return train(*a, extra_callbacks=extra, **kw)

    training.train = train_with_hooks  # the CLI calls training.train
    try:
        return load_cli().main(argv[split + 1:])
    finally:
        training.train = train  # tests also call main() in-process


if __name__ == "__main__":
    sys.exit(main())
