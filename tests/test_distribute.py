"""Distributed training with tf.distribute: strategy choice, MirroredStrategy in-process, and a
real two-process MultiWorkerMirroredStrategy cluster on 127.0.0.1 that loses a worker.

The cluster tests launch ``tests/distributed_worker.py`` (the training CLI plus two test hooks)
once per worker with ``TF_CONFIG``, as a cluster manager would. Each launch is bounded by a
timeout and every process is killed in a ``finally``.
"""

import json
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from dgan.training import distribute
from dgan.training import run as training
from dgan.compat import tf
from dgan.errors import InputError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import distributed_worker  # noqa: E402
from trained_alike import assert_trained_alike, excess  # noqa: E402

TINY = ["--shape", "16", "16", "16", "--spacing", "0", "--t-features", "4,8/8,8,4",
        "--g-features", "4,4/4,4", "--d-features", "4", "--int-steps", "0", "--lg-window", "3",
        "--lcc-window", "5", "--no-progress"]
#: 4 steps of global batch 2 (one sample per worker), checkpoints at step 2 and 4.
RUN = ["--batch-size", "2", "--steps", "4", "--checkpoint-every", "2", "--validate-every", "0"]
#: The runs that are compared train with SGD (``distributed_worker.py --sgd``): its update is
#: linear in the gradient, so their difference can be bounded (``tests/trained_alike.py``).
COMPARED = ["--sgd"]
LAUNCH_TIMEOUT = 240  # seconds for one launch of the whole cluster


# --- choosing a strategy (no cluster needed) -------------------------------------------------


def test_multiworker_needs_a_cluster_description():
    with pytest.raises(InputError, match="needs TF_CONFIG"):
        distribute.make_strategy("multiworker", environ={})
    with pytest.raises(InputError, match="not valid JSON"):
        distribute.make_strategy("multiworker", environ={"TF_CONFIG": "{cluster"})
    with pytest.raises(InputError, match="unknown strategy 'ring'"):
        distribute.make_strategy("ring", environ={})


def test_auto_is_one_device_without_cluster_or_gpus():
    strategy = distribute.make_strategy("auto", environ={"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})})
    assert strategy.num_replicas_in_sync == 1 and not distribute.is_multi_worker(strategy)


def _fake_strategy(cluster, task_type, task_id):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
    return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),  # MWMS: worker 0 is the chief
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "chief", 0, True),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "worker", 0, False),
])
def test_only_the_chief_writes_the_run_folder(cluster, task_type, task_id, chief):
    from tensorflow.python.distribute import multi_worker_util

    strategy = _fake_strategy(cluster, task_type, task_id)
    assert training._is_chief(strategy) is chief
    # the same answer as MultiWorkerMirroredStrategy's own (strategy.extended.should_checkpoint)
    assert multi_worker_util.is_chief(tf.train.ClusterSpec(cluster), task_type, task_id) is chief
    assert training._is_chief(types.SimpleNamespace()) is True  # one process


def test_slurm_job_step_is_described_by_tensorflows_resolver(monkeypatch):
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_STEP_NODELIST": "node[07-08]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
             "CUDA_VISIBLE_DEVICES": ""}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    resolver = distribute.slurm_cluster_resolver()
    port = distribute.SLURM_PORT_BASE + 4242
    assert resolver.cluster_spec().as_dict() == {"worker": [f"node07:{port}", f"node08:{port}"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.num_accelerators() == {"GPU": 0}
    assert distribute._slurm_step_tasks(dict(os.environ)) == 2  # so "auto" picks multiworker
    assert distribute._slurm_step_tasks({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}) == 0
    monkeypatch.delenv("SLURM_STEP_NODELIST")
    with pytest.raises(InputError, match="srun"):
        distribute.slurm_cluster_resolver()


def test_losses_after_the_resumed_checkpoint_are_dropped(tmp_path):
    log = tmp_path / "losses.csv"
    log.write_text("step,d_loss\n1,0.5\n2,0.4\n3,0.3\n")
    training._trim_loss_log(log, 2)
    assert log.read_text() == "step,d_loss\n1,0.5\n2,0.4\n"


def test_global_batch_must_split_evenly_between_replicas(tmp_path, capsys):
    cli = distributed_worker.load_cli()
    assert cli.main([*TINY, "--strategy", "mirrored", "--batch-size", "3",
                     "--out", str(tmp_path / "run")]) == 2
    assert "batch_size 3 (the global batch) must be a multiple of the number of replicas, 2" \
        in capsys.readouterr().err


def test_auto_resume_needs_a_run_folder(capsys):
    assert distributed_worker.load_cli().main([*TINY, "--auto-resume"]) == 2
    assert "--auto-resume needs --out" in capsys.readouterr().err


# --- training runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two moving and two fixed smooth 16^3 volumes (no validation pairs: no validation)."""
    import nibabel as nib
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("scans")
    for side in ("moving", "fixed"):
        (root / side).mkdir()
        for k in range(2):
            volume = gaussian_filter(rng.random((16, 16, 16)), 2).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / side / f"{k}.nii.gz"))
    return ["--moving", str(root / "moving"), "--fixed", str(root / "fixed")]


def run_in_process(args, weights, hooks=()):
    """The CLI in this process, with the final weights written to ``weights``."""
    argv = ["--weights", str(weights), *COMPARED, *hooks, "--", *args]
    assert distributed_worker.main(argv) == 0
    return dict(np.load(weights))


def checkpoint_weights(path):
    """A checkpoint's variables: T, G, D and their optimizers' (step counters, momentum).

    Not the optimizers' cached learning rates: each is the schedule's value at the step counter,
    which is compared exactly, and would swamp the size of the momentum beside it.
    """
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "VARIABLE_VALUE" in name and "save_counter" not in name
            and "_current_learning_rate" not in name}


@pytest.fixture(scope="module")
def single_process(scans, tmp_path_factory):
    """The reference: one process, one device, the same global batch of 2.

    :return: its run folder and the variables before the first step (T, G and D)
    """
    root = tmp_path_factory.mktemp("single")
    run_in_process([*TINY, *scans, *RUN, "--strategy", "one", "--out", str(root / "run")],
                   root / "weights.npz", ["--initial-checkpoint", str(root / "initial")])
    return root / "run", checkpoint_weights(root / "initial")


def assert_trained_like_reference(run, reference, step):
    """The checkpoint of ``step`` in ``run`` is the reference run's, within round-off."""
    reference_run, initial = reference
    return assert_trained_alike(checkpoint_weights(run / "checkpoints" / f"ckpt-{step}"),
                                checkpoint_weights(reference_run / "checkpoints" / f"ckpt-{step}"),
                                initial, step)


def test_mirrored_over_two_devices_trains_exports_and_matches_one_device(
        scans, single_process, tmp_path):
    from dgan.registration.model_folder import load_model_folder

    run = tmp_path / "mirrored"
    # a folder left by a run lost before its first checkpoint: --auto-resume starts it again
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "losses.csv").write_text("step,d_loss\n1,9\n")
    weights = run_in_process([*TINY, *scans, *RUN, "--strategy", "mirrored", "--auto-resume",
                              "--out", str(run)], tmp_path / "weights.npz")
    assert "with 2 replica(s)" in (run / "train.log").read_text()
    exported = load_model_folder(run / "model").registration_net.get_weights()
    for k, value in enumerate(exported):  # the trained T, not its initial weights
        np.testing.assert_array_equal(value, weights[f"registration_net/{k}"])
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-4")
    assert [l.split(",")[0] for l in (run / "losses.csv").read_text().splitlines()[1:]] == \
        ["1", "2", "3", "4"]
    assert json.loads((run / "config.json").read_text())["strategy"] == "mirrored"
    assert_trained_like_reference(run, single_process, 4)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch_cluster(root, name, cli_args, hooks):
    """Run one process per entry of ``hooks`` (its test options) as a TF_CONFIG cluster.

    :return: (return codes, log texts); every process has ended, killed if need be
    """
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(len(hooks))]
    processes, logs = [], []
    try:
        for index, hook in enumerate(hooks):
            scratch = root / f"{name}-scratch{index}"
            scratch.mkdir()
            env = {**os.environ,
                   "TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                            "task": {"type": "worker", "index": index}}),
                   "TMPDIR": str(scratch),  # where a non-chief keeps its scratch outputs
                   "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2",
                   "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
            log = root / f"{name}-worker{index}.log"
            logs.append(log)
            with open(log, "w") as out:
                processes.append(subprocess.Popen(
                    [sys.executable, str(HERE / "distributed_worker.py"), *hook, "--", *cli_args],
                    env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root))
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    texts = [log.read_text(errors="replace") for log in logs]
    assert None not in codes, f"{name}: timed out after {LAUNCH_TIMEOUT} s\n" + texts[0][-3000:]
    return codes, texts


@pytest.fixture(scope="module")
def lost_worker_run(scans, tmp_path_factory):
    """Two workers, the same command line twice, as a cluster manager restarting a lost task:

    1. worker 1 is killed (SIGKILL) right after step 3; the checkpoint of step 2 is the last;
       worker 0 notices within seconds and exits;
    2. both start again with the same command: ``--auto-resume`` continues at step 2.
    """
    root = tmp_path_factory.mktemp("cluster")
    run = root / "run"
    cli_args = [*TINY, *scans, *RUN, "--strategy", "multiworker", "--auto-resume", "--out", str(run)]
    first = launch_cluster(root, "first", cli_args,
                           [COMPARED, [*COMPARED, "--die-at-step", "3"]])
    checkpoint_2 = checkpoint_weights(run / "checkpoints" / "ckpt-2")
    losses_before = (run / "losses.csv").read_text()
    weights = [root / f"worker{k}.npz" for k in range(2)]
    second = launch_cluster(root, "second", cli_args,
                            [["--weights", str(w), *COMPARED] for w in weights])
    return types.SimpleNamespace(root=root, run=run, first=first, second=second,
                                 checkpoint_2=checkpoint_2, losses_before=losses_before,
                                 weights=[dict(np.load(w)) for w in weights])


def test_two_workers_train_like_one_process(lost_worker_run, single_process):
    reference_run, initial = single_process
    codes, logs = lost_worker_run.second
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    # before the loss: two uninterrupted steps on two workers == two steps in one process
    expected = checkpoint_weights(reference_run / "checkpoints" / "ckpt-2")
    assert_trained_alike(lost_worker_run.checkpoint_2, expected, initial, 2)
    # the bound is far below what two more training steps change (so it detects a wrong step)
    later = checkpoint_weights(reference_run / "checkpoints" / "ckpt-4")
    floats = [name for name, value in expected.items() if value.dtype.kind == "f"]
    assert min(excess({n: later[n] for n in floats}, {n: expected[n] for n in floats}, initial,
                      2).values()) > 10
    # after the restart: both workers hold the same weights (each applies the same all-reduced
    # gradient to the same weights with the same kernels: exactly equal), and the run's last
    # checkpoint is the single process's
    worker0, worker1 = lost_worker_run.weights
    assert int(worker0["step"]) == 4
    assert worker0.keys() == worker1.keys()
    for name in worker0:
        np.testing.assert_array_equal(worker0[name], worker1[name], err_msg=name)
    assert_trained_like_reference(lost_worker_run.run, single_process, 4)


def test_a_lost_worker_is_restarted_and_the_run_resumes(lost_worker_run):
    run = lost_worker_run.run
    codes, logs = lost_worker_run.first
    assert codes[1] == -9  # killed
    assert codes[0] == 3 and "lost contact with another worker" in logs[0], logs[0][-3000:]
    codes, logs = lost_worker_run.second
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "resuming run" in (run / "train.log").read_text()
    # the chief alone wrote the run folder; the non-chief's scratch folder was removed
    assert f"{lost_worker_run.root}/second-scratch1/dgan-worker-" in logs[1]
    assert list((lost_worker_run.root / "second-scratch1").iterdir()) == []
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-4")
    assert all(np.all(np.isfinite(v)) for v in checkpoint_weights(latest).values())
    assert json.loads((run / "results.json").read_text())["step"] == 4
    assert (run / "model" / "dgan_model.json").exists()
    # steps logged after the last checkpoint were trained again, and logged once
    steps = [l.split(",")[0] for l in (run / "losses.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]
    assert lost_worker_run.losses_before.splitlines()[1:][:2] == \
        (run / "losses.csv").read_text().splitlines()[1:3]
