"""Choosing a ``tf.distribute`` strategy and feeding it data.

- ``one``: the default single-device strategy.
- ``mirrored``: ``MirroredStrategy`` over every local GPU, or over every logical CPU when there
  is no GPU (tests create two logical CPUs).
- ``multiworker``: ``MultiWorkerMirroredStrategy``, configured by the standard ``TF_CONFIG``
  environment variable (or a Slurm cluster resolver, see the README).
- ``auto``: ``multiworker`` when ``TF_CONFIG`` names more than one task, else ``mirrored`` when
  there is more than one GPU, else ``one``.
"""

import json
import os

from .compat import tf
from .errors import InputError

STRATEGIES = ("auto", "one", "mirrored", "multiworker")


def _cluster_size(environ):
    raw = environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except ValueError:
        raise InputError("TF_CONFIG is not valid JSON") from None
    return sum(len(tasks) for tasks in cluster.values())


def make_strategy(name="auto", environ=None):
    """The strategy called ``name`` (one of :data:`STRATEGIES`)."""
    environ = os.environ if environ is None else environ
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if _cluster_size(environ) > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if _cluster_size(environ) < 1:
        raise InputError("--strategy multiworker needs TF_CONFIG describing the cluster")
    return tf.distribute.MultiWorkerMirroredStrategy()


def distributed_dataset(strategy, make_dataset, start_step):
    """One input pipeline per worker: ``make_dataset(input_context, start_step)`` shards the
    samples by ``input_context.input_pipeline_id`` and batches per replica."""
    return strategy.distribute_datasets_from_function(lambda context: make_dataset(context, start_step))
