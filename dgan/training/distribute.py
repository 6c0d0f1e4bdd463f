"""Choosing a ``tf.distribute`` strategy and feeding it data (see docs/distributed.md).

- ``one``: the default single-device strategy.
- ``mirrored``: ``MirroredStrategy`` over every local GPU, or over every logical CPU when there
  is no GPU (tests create two logical CPUs).
- ``multiworker``: ``MultiWorkerMirroredStrategy``, configured by the standard ``TF_CONFIG``
  environment variable or, inside a Slurm job step without ``TF_CONFIG``, by TensorFlow's
  ``SlurmClusterResolver``.
- ``auto``: ``multiworker`` when ``TF_CONFIG`` names more than one task, or when a Slurm job
  step runs more than one task; else ``mirrored`` when there is more than one GPU; else ``one``.

Every replica computes its per-example losses on its share of the global batch and
``tf.nn.compute_average_loss`` divides by the global batch size (:mod:`dgan.training.trainers`), so
the all-reduced gradient is the gradient of the mean over the global batch, as on one device.
"""

import json
import os
import shutil
import subprocess

from ..compat import tf
from ..errors import InputError
from .settings import STRATEGIES


#: Slurm tasks listen on ``SLURM_PORT_BASE + SLURM_JOB_ID % SLURM_PORT_SPREAD`` (and the next
#: ports for further tasks on the same node), so two jobs sharing a node do not collide.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPREAD = 20000


def _cluster_size(environ):
    raw = environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError):
        raise InputError("TF_CONFIG is not valid JSON describing a cluster") from None
    return sum(len(tasks) for tasks in cluster.values())


def _slurm_step_tasks(environ):
    """The number of tasks of the Slurm job step (``srun``) this process belongs to; 0 outside
    one (a batch script itself is not a multi-task step, whatever its ``--ntasks``)."""
    if not environ.get("SLURM_JOB_ID"):
        return 0
    try:
        return int(environ.get("SLURM_STEP_NUM_TASKS", "0"))
    except ValueError:
        return 0


def _visible_gpus(environ):
    """GPUs on this node, found without initialising CUDA (which must wait for the resolver to
    set ``CUDA_VISIBLE_DEVICES``): ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def slurm_cluster_resolver(environ=None):
    """TensorFlow's ``SlurmClusterResolver`` for the current job step (one worker per task).

    With GPUs, each node's GPUs are split evenly between its tasks (the resolver sets
    ``CUDA_VISIBLE_DEVICES``). Without GPUs (the resolver itself assumes some), the same
    cluster is described with no accelerators.

    :raises InputError: not inside a Slurm job step started by ``srun``
    """
    environ = os.environ if environ is None else environ
    port = SLURM_PORT_BASE + int(environ.get("SLURM_JOB_ID", "0") or 0) % SLURM_PORT_SPREAD
    gpus = _visible_gpus(environ)
    resolvers = tf.distribute.cluster_resolver
    try:
        if gpus:
            return resolvers.SlurmClusterResolver(port_base=port, gpus_per_node=gpus)
        # one placeholder "GPU" per task keeps the resolver's allocation arithmetic valid
        slurm = resolvers.SlurmClusterResolver(port_base=port, gpus_per_node=1 << 16,
                                               gpus_per_task=1, auto_set_gpu=False)
        spec = slurm.cluster_spec()
    except (RuntimeError, ValueError, KeyError) as error:
        raise InputError(f"cannot describe the Slurm cluster: {error}; "
                         "start one task per worker with srun") from None
    return resolvers.SimpleClusterResolver(spec, task_type=slurm.task_type,
                                           task_id=slurm.task_id, rpc_layer="grpc",
                                           num_accelerators={"GPU": 0})


def make_strategy(name="auto", environ=None):
    """The strategy called ``name`` (one of :data:`STRATEGIES`).

    :param environ: the environment to read ``TF_CONFIG`` and ``SLURM_*`` from (default
        ``os.environ``; TensorFlow's resolvers read ``os.environ`` themselves)
    :raises InputError: an unknown name, or ``multiworker`` with neither ``TF_CONFIG`` nor Slurm
    """
    environ = os.environ if environ is None else environ
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if _cluster_size(environ) > 1 or (not environ.get("TF_CONFIG")
                                          and _slurm_step_tasks(environ) > 1):
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
    if _cluster_size(environ) >= 1:
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    if environ.get("SLURM_JOB_ID"):
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=slurm_cluster_resolver(environ))
    raise InputError("the multiworker strategy needs TF_CONFIG describing the cluster, "
                     "or a Slurm job step (srun)")


def is_multi_worker(strategy):
    """True when ``strategy`` spans more than one process (task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    spec = resolver.cluster_spec().as_dict()
    return sum(len(tasks) for tasks in spec.values()) > 1


def gather_from_workers(strategy, value):
    """``value`` (an int) of every replica in the cluster, as a list, via one collective.

    Every worker must call it at the same point, as with any collective.
    """
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([int(value)], tf.int64))
    return [int(v) for v in strategy.gather(per_replica, axis=0).numpy()]


def distributed_dataset(strategy, make_dataset, start_step):
    """One input pipeline per worker: ``make_dataset(input_context, start_step)`` shards the
    samples by ``input_context.input_pipeline_id`` and batches per replica, so that each step's
    global batch holds the same samples as the undistributed dataset's."""
    return strategy.distribute_datasets_from_function(lambda context: make_dataset(context, start_step))
