"""A training run: data, model, checkpoints, resume, logs, validation, pictures, export.

One run trains every method (:data:`METHODS`): Deform-GAN (Zhang et al. 2020, arXiv:2002.11430), T
alone with L_T's terms, and VoxelMorph's VxmDense, each a Keras model with its own ``train_step``
(:mod:`dgan.training.trainers`, :mod:`dgan.training.baselines`), with the same data stream,
checkpoints, resume, validation through :class:`dgan.registration.registrar.Registrar`, TensorBoard,
divergence guard and ``tf.distribute`` strategies. :class:`TrainConfig` holds the settings; its
presets (:meth:`TrainConfig.demo`, :meth:`TrainConfig.for_scans`) are named in ``config.json``.

A run folder holds::

    config.json          the resolved configuration (the run can be resumed from it alone)
    train.log            readable log lines
    losses.csv           every loss term at every step
    checkpoints/         the networks and their optimizers (the last ``keep_checkpoints``)
    tensorboard/         scalars (every loss term, validation Dice) and image summaries
    validation.png       a validation pair: fixed, moving, moved, translated, deformation grid
    losses.png           the loss curves
    results.json         validation Dice before (identity) and after registration, wall time
    model/               the exported registration model (see :mod:`dgan.registration.model_folder`)
    aligned/             with --align: the training scans aligned to the first fixed scan

The command line ``dgan-train`` (:mod:`dgan.cli.train`) is a thin layer over :func:`train`.
"""

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..compat import keras, tf
from ..data import demo, pipeline, scans
from ..data.io import atomic_write, write_json
from ..errors import InputError, TrainingDiverged
from ..evaluation import figures
from ..registration.model_folder import ModelFolder, save_model_folder
from . import callbacks as cb
from . import prealign
from .callbacks import read_loss_history
from .config import FROZEN_ON_RESUME, METHODS, TrainConfig
from .settings import METHOD_NAMES
from .schedules import learning_rate
from .validation import VALIDATION_CSV, append_validation_row, read_validation_history, score_pairs

logger = logging.getLogger(__name__)

#: The run folder's cache of affinely aligned training scans (``--align``).
ALIGNED_DIR = "aligned"

@dataclass
class RunResult:
    run_dir: Path
    step: int
    dice_identity: float
    dice_registered: float
    seconds: float
    stopped_early: bool
    dice_network: float = math.nan  # T alone; dice_registered is after refinement when it ran
    method: str = "deformgan"


def new_run_dir(root="runs"):
    """``runs/<timestamp>/``, made unique with a suffix when needed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    k = 1
    while path.exists():
        path = Path(root) / f"{stamp}-{k}"
        k += 1
    return path


# --- data ------------------------------------------------------------------------------------


def _dataset_fn(config, align_dir=None):
    """A function ``(input_context or None, start_step) -> tf.data.Dataset`` for the run.

    With ``config.align``, the scans are first aligned to the first fixed scan and cached in
    ``align_dir`` (:func:`dgan.training.prealign.align_scans`)."""
    if config.uses_demo_data:
        def make(input_context, start_step):
            return demo.demo_dataset(config.batch_size, config.seed, start_step=start_step,
                                     shape=config.shape, spacing=config.spacing,
                                     input_context=input_context)
        return make
    moving_paths, fixed_paths = scans.find_scans(config.moving), scans.find_scans(config.fixed)
    if config.align:
        moving_paths, fixed_paths = prealign.align_scans(moving_paths, fixed_paths, align_dir)
    moving = scans.ScanSet(moving_paths, config.shape, config.spacing)
    fixed = scans.ScanSet(fixed_paths, config.shape, config.spacing)
    logger.info("training data: %d moving and %d fixed scans (unpaired)", len(moving), len(fixed))

    def make(input_context, start_step):
        return pipeline.make_dataset(moving, fixed, config.batch_size, config.seed,
                                     start_step=start_step, input_context=input_context)
    return make


def validation_pairs(config):
    """Validation pairs with labels: the demo's seeded pairs, or those of ``config.val_pairs``
    prepared as the training volumes are (:func:`dgan.data.scans.load_labelled_pairs`)."""
    if config.uses_demo_data:
        return demo.demo_validation_pairs(config.n_val, shape=config.shape, spacing=config.spacing)
    if not config.val_pairs:
        return []
    return scans.load_labelled_pairs(config.val_pairs, config.preprocessing)


# --- the run ---------------------------------------------------------------------------------


def make_optimizers(config):
    """One optimizer per network of ``config.method`` (its ``NETWORKS``): Adam for T; Adam with
    beta_1 = 0.5 for G and D (pix2pix); each with ``config.lr_decay``.

    :return: e.g. ``{"t_optimizer", "g_optimizer", "d_optimizer"}`` for Deform-GAN
    """
    def adam(lr, **kwargs):
        return keras.optimizers.Adam(learning_rate(lr, config.lr_decay, config.steps), **kwargs)

    made = {"t": lambda: adam(config.lr_t), "g": lambda: adam(config.lr_g, beta_1=0.5),
            "d": lambda: adam(config.lr_d, beta_1=0.5)}
    return {f"{name}_optimizer": made[name]() for name in METHODS[config.method].NETWORKS}


def build_model(config):
    """The untrained model of ``config.method`` (see :data:`METHODS`)."""
    return METHODS[config.method].from_config_object(config.network)


def _strategy(name):
    from .distribute import make_strategy

    return make_strategy(name)


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    spec = resolver.cluster_spec()
    if not spec.as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in spec.jobs


def has_checkpoint(run_dir):
    """True when ``run_dir`` holds a checkpoint to resume from."""
    return tf.train.latest_checkpoint(str(Path(run_dir) / "checkpoints")) is not None


def resolve_config(config, run_dir, resume, restart=False):
    """The configuration to run with.

    :param config: a :class:`TrainConfig` for a new run; for a resumed run, a dict of the
        settings to change (the step budget, logging, checkpointing), or None
    :param restart: a new run may reuse a run folder that holds no checkpoint yet
    """
    path = Path(run_dir) / "config.json"
    if not resume:
        if path.exists() and not (restart and not has_checkpoint(run_dir)):
            raise InputError("already holds a run; resume it to continue", run_dir)
        return config
    if not path.exists():
        raise InputError("is not a dgan run folder (no config.json)", run_dir)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"unreadable run configuration: {error}", path) from None
    merged = TrainConfig.from_dict(saved).to_dict()
    for key, value in (config or {}).items():
        value = json.loads(json.dumps(value))  # tuples as lists, as saved
        saved_value = merged[key]
        if isinstance(value, dict):
            value = {**saved_value, **value}
        if key in FROZEN_ON_RESUME and value != saved_value:
            raise InputError(f"cannot change {key} when resuming (saved: {saved_value})", run_dir)
        merged[key] = value
    return TrainConfig.from_dict(merged)


def _add_log_file(path):
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("dgan")
    root.addHandler(handler)
    previous_level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler, previous_level


def train(config, run_dir, resume=False, progress=True, extra_callbacks=(), restart=False):
    """Train Deform-GAN; see the module docstring for what the run folder receives.

    Under a multi-worker strategy every worker calls this with the same arguments; only the
    chief writes to ``run_dir``, which every worker must be able to read to resume.

    :param config: :class:`TrainConfig`; with ``resume``, a dict of settings to change or None
    :param run_dir: the run folder (created if needed)
    :param resume: continue the run in ``run_dir`` at its last checkpoint, with the same
        optimizer state and data order
    :param restart: for a new run, accept a ``run_dir`` that holds a run without any checkpoint
        (a run lost before its first checkpoint) and start it again
    :return: :class:`RunResult`
    :raises InputError: bad data, configuration or checkpoint
    :raises TrainingDiverged: a loss became NaN or Inf (the last good checkpoint is kept)
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    config = resolve_config(config, run_dir, resume, restart)
    strategy = _strategy(config.strategy)
    chief = _is_chief(strategy)
    # non-chief workers write to a scratch folder that is removed at the end
    out_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix="dgan-worker-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    handler, previous_level = _add_log_file(out_dir / "train.log")
    try:
        return _train(config, run_dir, out_dir, resume, strategy, chief, progress,
                      extra_callbacks, started)
    finally:
        logging.getLogger("dgan").removeHandler(handler)
        logging.getLogger("dgan").setLevel(previous_level)
        handler.close()
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def _train(config, run_dir, out_dir, resume, strategy, chief, progress, extra_callbacks, started):
    logger.info("%s run in %s: %s with %d replica(s)", "resuming" if resume else "starting",
                run_dir, METHOD_NAMES[config.method], strategy.num_replicas_in_sync)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise InputError(f"batch_size {config.batch_size} (the global batch) must be a multiple "
                         f"of the number of replicas, {strategy.num_replicas_in_sync}")
    if chief:
        write_json(out_dir / "config.json", config.to_dict())
        if not resume:
            for log in ("losses.csv", VALIDATION_CSV):  # left by a restarted run
                (out_dir / log).unlink(missing_ok=True)
    make_dataset = _dataset_fn(config, out_dir / ALIGNED_DIR)
    pairs = validation_pairs(config)

    keras.utils.set_random_seed(config.seed)  # reproducible initial weights
    with strategy.scope():
        model = build_model(config)
        model.compile(**make_optimizers(config), weights=config.loss)
        checkpoint = tf.train.Checkpoint(**model.checkpoint_items())
    manager = tf.train.CheckpointManager(checkpoint, str(out_dir / "checkpoints"),
                                         max_to_keep=config.keep_checkpoints)
    if resume:
        restore_latest(checkpoint, run_dir / "checkpoints")
    start_step = int(model.t_optimizer.iterations.numpy())
    _check_workers_agree(strategy, start_step)
    if chief and resume:
        for log in ("losses.csv", VALIDATION_CSV):  # steps after the checkpoint are redone
            _trim_loss_log(out_dir / log, start_step)
    if start_step >= config.steps:
        logger.info("the run is already at step %d of %d", start_step, config.steps)

    def save(step):
        path = manager.save(checkpoint_number=step)
        logger.info("step %d: checkpoint %s", step, path)

    writer = tf.summary.create_file_writer(str(out_dir / "tensorboard"))
    dice = {}

    def live_folder():
        """The live networks as a model folder: each check sees the current weights."""
        return ModelFolder(path=str(out_dir / "model"), registration_net=model.registration_model,
                           network_config=config.network,
                           preprocessing=config.preprocessing, description={},
                           generator=model.generator)

    def validate(step, refine=False):
        """Held-out Dice through the registration code; with ``refine``, also after refinement
        (the first and the last check: it costs seconds per pair)."""
        if not pairs:
            return
        refine_config = config.refine if refine and config.refine.steps else None
        scores = score_pairs(live_folder(), pairs, refine_config)
        dice.update(identity=scores.identity, network=scores.network, refined=scores.refined,
                    registered=scores.registered, step=step)
        refined_text = "" if scores.refined is None else f", T + refinement {scores.refined:.4f}"
        logger.info("step %d: validation mean Dice: identity %.4f, T %.4f%s", step,
                    scores.identity, scores.network, refined_text)
        first = scores.first
        first["translated"] = None if model.generator is None else model.generator.predict(
            first["moved"][None, ..., None], verbose=0)[0, ..., 0]
        with writer.as_default(step=step):
            tf.summary.scalar("validation/dice", scores.network)
            tf.summary.scalar("validation/dice_identity", scores.identity)
            if scores.refined is not None:
                tf.summary.scalar("validation/dice_refined", scores.refined)
            for name in ("fixed", "moving", "moved", "translated"):
                volume = first[name]
                if volume is None:
                    continue
                image = volume[:, :, volume.shape[2] // 2].T[::-1]
                tf.summary.image(f"validation/{name}", image[None, ..., None], step=step)
        if chief:
            append_validation_row(out_dir / VALIDATION_CSV, step, scores)
            figures.save_validation_curve(out_dir / "validation_curve.png",
                                          read_validation_history(out_dir / VALIDATION_CSV))
            what = "T" if scores.refined is None else "T + refinement"
            figures.save_pair_figure(
                out_dir / "validation.png", first["fixed"], first["moving"], first["moved"],
                first["flow"], first["translated"], fixed_labels=first["fixed_labels"],
                title=f"step {step}: mean Dice {scores.registered:.3f} with {what} "
                      f"(T alone {scores.network:.3f}, identity {scores.identity:.3f})")

    guard = cb.DivergenceGuard()
    stop = cb.StopRequest()
    callbacks = [
        guard,
        stop,
        cb.LossLog(writer, out_dir / "losses.csv", model.LOSS_NAMES, config.steps, start_step,
                   config.log_every, progress),
        cb.Periodic(save, config.checkpoint_every, guard),
        # the last step is checked once, after training, with refinement
        cb.Periodic(lambda step: step < config.steps and validate(step), config.validate_every,
                    guard),
        *extra_callbacks,
    ]
    if strategy.num_replicas_in_sync > 1 or not chief:
        from .distribute import distributed_dataset

        dataset = distributed_dataset(strategy, make_dataset, start_step)
    else:
        dataset = make_dataset(None, start_step)
    if start_step == 0:
        validate(0, refine=True)
    with cb.stop_on_signals(stop):
        if start_step < config.steps:
            model.fit(dataset, steps_per_epoch=1, epochs=config.steps, initial_epoch=start_step,
                      callbacks=callbacks, verbose=0)
    step = int(model.t_optimizer.iterations.numpy())
    if guard.diverged is not None:
        at, name, value = guard.diverged
        kept = manager.latest_checkpoint or "none"
        raise TrainingDiverged(
            f"{name} became {value} at step {at}; training stopped. Last good checkpoint kept: {kept}")
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
        save(step)
    if dice.get("step") != step or dice.get("refined") is None:  # the last check refines too
        validate(step, refine=True)
    seconds = time.perf_counter() - started
    if chief:
        figures.save_curves(out_dir / "losses.png", read_loss_history(out_dir / "losses.csv"))
        save_model_folder(model.registration_model, config.network, config.preprocessing,
                          out_dir / "model", generator=model.generator,
                          refinement=dataclasses.asdict(config.refine),
                          network_spacing=config.network_spacing)
        write_json(out_dir / "results.json", {
            "method": config.method,
            "step": step,
            "validation_dice_identity": dice.get("identity"),
            "validation_dice_network": dice.get("network"),
            "validation_dice_refined": dice.get("refined"),
            "validation_dice_registered": dice.get("registered"),
            "seconds": round(seconds, 1),
            "stopped_early": step < config.steps,
        })
    logger.info("finished at step %d in %.0f s", step, seconds)
    return RunResult(run_dir, step, dice.get("identity", math.nan),
                     dice.get("registered", math.nan), seconds, step < config.steps,
                     dice.get("network", math.nan), config.method)


def _check_workers_agree(strategy, start_step):
    """Every worker of a multi-worker run must start at the same step (a collective)."""
    from .distribute import gather_from_workers, is_multi_worker

    if not is_multi_worker(strategy):
        return
    steps = gather_from_workers(strategy, start_step)
    if len(set(steps)) > 1:
        raise InputError(f"the workers would start at different steps {steps}: every worker "
                         "must read the same run folder (shared storage) to resume")


def _trim_loss_log(path, step):
    """Drop the rows after ``step`` from ``losses.csv`` (logged after the last checkpoint)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
    if len(kept) < len(lines):
        with atomic_write(path) as tmp:
            Path(tmp).write_text("".join(kept))


def restore_latest(checkpoint, directory):
    """Restore the newest checkpoint in ``directory``; a missing or corrupt one is an InputError."""
    latest = tf.train.latest_checkpoint(str(directory))
    if latest is None:
        raise InputError("no checkpoint to resume from", directory)
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError) as error:
        problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"corrupt or incompatible checkpoint: {problem}", latest) from None
    return latest
