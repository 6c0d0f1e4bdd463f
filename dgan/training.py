"""A training run: data, model, checkpoints, resume, logs, validation, pictures, export.

One run trains every method (:data:`METHODS`): Deform-GAN (Zhang et al. 2020, arXiv:2002.11430),
T alone with L_T's terms, and VoxelMorph's VxmDense, each a Keras model with its own
``train_step`` (:mod:`dgan.model`, :mod:`dgan.baselines`), with the same data stream,
checkpoints, resume, validation through :class:`dgan.register.Registrar`, TensorBoard, divergence
guard and ``tf.distribute`` strategies. :class:`TrainConfig` holds the settings; its presets
(:meth:`TrainConfig.demo`, :meth:`TrainConfig.for_scans`) are named in ``config.json``.

A run folder holds::

    config.json          the resolved configuration (the run can be resumed from it alone)
    train.log            readable log lines
    losses.csv           every loss term at every step
    checkpoints/         the networks and their optimizers (the last ``keep_checkpoints``)
    tensorboard/         scalars (every loss term, validation Dice) and image summaries
    validation.png       a validation pair: fixed, moving, moved, translated, deformation grid
    losses.png           the loss curves
    results.json         validation Dice before (identity) and after registration, wall time
    model/               the exported registration model (see :mod:`dgan.export`)
    aligned/             with --align: the training scans aligned to the first fixed scan

The CLI ``dgan-train`` (:mod:`dgan.cli.train`, also ``python train/train_dgan.py``) is a thin
layer over :func:`train`.
"""

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import callbacks as cb
from . import data as ddata
from . import figures, metrics, prealign, synth
from .baselines import VxmTrainer
from .compat import keras, tf
from .errors import InputError, TrainingDiverged
from .export import ModelFolder, save_model_folder
from .io import atomic_write, write_json
from .matching import DEFAULT_PASSES
from .model import DeformGAN, LossWeights, RegistrationTrainer
from .networks import NetworkConfig
from .preprocessing import Preprocessing
from .refine import RefineConfig
from .schedules import SCHEDULES, learning_rate

logger = logging.getLogger(__name__)

#: The run folder's cache of affinely aligned training scans (``--align``).
ALIGNED_DIR = "aligned"

#: Keys of ``config.json`` that describe the data, the networks and the losses; a resumed run
#: must not change them (the step budget, logging and output options may change).
FROZEN_ON_RESUME = ("method", "moving", "fixed", "shape", "spacing", "batch_size", "seed",
                    "network", "loss", "align")


#: Small networks that train in minutes on two CPU cores at the demo size. T predicts its field
#: at half resolution (the demo's deformations are smooth): a T update takes 0.56 s instead of
#: 1.3 s on two cores and learns as much per step (measured). G is residual, so that it starts
#: as the identity (see :class:`~dgan.networks.NetworkConfig`); D pools its input by 2, which
#: makes its update six times cheaper.
DEMO_NETWORK = {
    "t_features": [[16, 32, 32], [32, 32, 32, 16, 16]],
    "g_features": [[8, 16, 16], [16, 16, 16, 8]],
    "g_residual": True,
    "d_features": 8,
    "d_layers": 2,
    "d_pool": 2,
    "flow_resolution": 2,
    "matching": [list(p) for p in DEFAULT_PASSES],
}

#: Loss settings for the demo's coarse grid: the paper's windows (n = 7, LCC 9) are for ~1 mm
#: voxels and would span 35-45 mm here, so they are scaled down. G's weights are the paper's
#: (mu = 1, lambda = 10); with G residual there is no need to warm up T's LCC term.
#: alpha = 0.05: on the demo pairs, undoing the true deformation raises L_LCC by about 0.11 and
#: L_LG (n = 3) by 0.04 but costs 0.09-0.13 in sum |grad phi|^2, so with alpha = 1 the identity
#: is (nearly) optimal and T learns nothing.
DEMO_LOSS = {"lg_window": 3, "lcc_window": 5, "lcc_warmup": 0, "alpha": 0.05, "mu": 1.0,
             "lam": 10.0}

#: Instance refinement (:mod:`dgan.refine`) of the demo model's fields, measured on the demo's
#: validation pairs from the identity (docs/notes/training-log.md): one level on the demo grid with the
#: field on a grid 4 times coarser (the demo's deformations have a 16-voxel control spacing).
#: Its windows and beta come from the training loss (:meth:`TrainConfig.refine_config`).
DEMO_REFINE = {"steps": 100, "levels": [1], "control": 4, "learning_rate": 0.25, "alpha": 0.05}

#: Refinement of a trained model leaves out L_LCC(R, G(F)(phi)) by default (w_lcc = 0): G
#: trained with lambda L1(F'(phi), R) learns to render R's anatomy whatever the alignment, and
#: the term then holds the field back. On the demo's validation pairs, refining the same trained
#: T's fields gave 0.501 with the term and 0.657 without it (docs/notes/training-log.md, entry 8).
REFINE_DEFAULTS = {"w_lcc": 0.0}

#: G's learning rate: 1e-3 on the demo, where G must learn the T1 -> T2 contrast within a few
#: hundred steps; pix2pix's 2e-4 otherwise.
DEMO_LR_G = 1e-3
DEFAULT_LR_G = 2e-4

#: The demo's step budget: a demo step takes about 1.3 s on two cores of an AMD EPYC without
#: AVX-512, so 300 steps keep the README's first command within 10 minutes of training; T's
#: accuracy there is mostly its block matching's (docs/notes/training-log.md, entries 10 and 11).
DEMO_STEPS = 300


#: The presets :meth:`TrainConfig.from_preset` knows: settings over the dataclass defaults.
#: ``demo``: the embedded demo data's coarse grid (the values above); ``scans``: your scans at
#: about 1 mm (the paper's windows and weights, pix2pix's learning rate for G).
PRESETS = {
    "demo": {"network": DEMO_NETWORK, "loss": DEMO_LOSS, "refine": DEMO_REFINE,
             "lr_g": DEMO_LR_G, "steps": DEMO_STEPS},
    "scans": {"lr_g": DEFAULT_LR_G, "network": {"matching": [list(p) for p in DEFAULT_PASSES]}},
}
#: Both presets give T its block-matching front end (:mod:`dgan.matching`; docs/notes/training-log.md,
#: entry 9): on the demo it alone scores 0.633 against 0.496 for 400 steps of the paper's T.
#: VoxelMorph's VxmDense (method ``vxm``) is VoxelMorph as its users know it, without it.

#: The methods the run trains (:attr:`TrainConfig.method`): each a Keras model with its own
#: ``train_step`` (see :mod:`dgan.model`).
METHODS = {"deformgan": DeformGAN, "vxm": VxmTrainer, "lcc": RegistrationTrainer}
#: Readable names, as the evaluation tables show them.
METHOD_NAMES = {
    "deformgan": "Deform-GAN",
    "vxm": "VoxelMorph (MI)",
    "lcc": "T + LCC (no G, D)",
}


def network_for_method(method, network):
    """The network settings ``method`` trains with: VoxelMorph's VxmDense (``vxm``) has no
    block-matching front end, so ``matching`` is left out for it."""
    if method == "vxm":
        return {k: v for k, v in network.items() if k != "matching"}
    return dict(network)


@dataclass
class TrainConfig:
    """Everything a run needs; written to ``config.json``.

    ``moving``/``fixed`` are lists of scan specs (folders, globs, CSV files) for the two
    modalities, unpaired; both None selects the embedded demo data (MNI152 T1 -> T2-like).
    ``val_pairs`` is an optional CSV with columns moving, fixed, moving_labels, fixed_labels.
    ``network_spacing`` (mm, or None: ``spacing``) is written into the model folder as the grid
    :class:`dgan.register.Registrar` runs T on by default; validation stays on the training
    grid.
    ``method`` is what is trained (:data:`METHODS`): ``deformgan``, ``lcc`` (T alone with
    L_T's terms on F(phi)) or ``vxm`` (VoxelMorph's VxmDense with -MI + lambda Grad_l2); every
    method takes its loss settings from ``loss`` (:class:`dgan.model.LossWeights`).

    The fields' defaults are the settings for your scans; :meth:`demo` and :meth:`for_scans`
    (:meth:`from_preset`) start from a named preset (:data:`PRESETS`) and record its name in
    ``preset``.
    """

    moving: list | None = None
    fixed: list | None = None
    val_pairs: str | None = None
    shape: tuple = ddata.DEMO_SHAPE
    spacing: float | None = ddata.DEMO_SPACING
    method: str = "deformgan"
    preset: str | None = None
    steps: int = 400
    batch_size: int = 1
    lr_t: float = 1e-3
    lr_g: float = DEFAULT_LR_G
    lr_d: float = 2e-4
    lr_decay: str = "linear"
    network: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    refine: dict = field(default_factory=dict)
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    validate_every: int = 50
    log_every: int = 10
    n_val: int = 4
    seed: int = 0
    strategy: str = "auto"
    align: bool = False  # align every scan affinely to the first fixed scan first (dgan.prealign)
    network_spacing: float | None = None  # mm; T's grid in dgan-register (None: spacing)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if (self.moving is None) != (self.fixed is None):
            raise InputError("give both moving and fixed scans, or neither (the demo data)")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.lr_decay not in SCHEDULES:
            raise InputError(f"lr_decay must be one of {', '.join(SCHEDULES)}, "
                             f"got {self.lr_decay!r}")
        for name in ("steps", "batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.method == "vxm" and self.network_config.flow_resolution != 1:
            raise InputError("the vxm method needs flow_resolution 1: VoxelMorph 0.2 does not "
                             "upsample a coarse field the way T does")
        if self.network_spacing is not None and not (math.isfinite(self.network_spacing)
                                                     and self.network_spacing > 0):
            raise InputError(f"network_spacing must be a positive number of mm, "
                             f"got {self.network_spacing!r}")
        self.network_config  # noqa: B018  (validates the shape against the networks)
        self.loss_weights  # noqa: B018
        self.refine_config  # noqa: B018

    @classmethod
    def from_preset(cls, preset, **settings):
        """A configuration that starts from ``PRESETS[preset]``; ``settings`` override it (the
        dicts ``network``, ``loss`` and ``refine`` key by key)."""
        if preset not in PRESETS:
            raise InputError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        merged = {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[preset].items()}
        for key, value in settings.items():
            merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) else value
        merged["network"] = network_for_method(settings.get("method", "deformgan"),
                                               merged.get("network", {}))
        return cls(**merged, preset=preset)

    @classmethod
    def demo(cls, **settings):
        """The demo preset: the embedded demo data's grid, networks, loss windows, alpha, G's
        learning rate and refinement (:data:`DEMO_NETWORK`, :data:`DEMO_LOSS`,
        :data:`DEMO_REFINE`, :data:`DEMO_LR_G`), with ``settings`` over them."""
        return cls.from_preset("demo", **settings)

    @classmethod
    def for_scans(cls, moving, fixed, **settings):
        """The preset for your scans (folders, globs or CSV files of each modality)."""
        return cls.from_preset("scans", moving=moving, fixed=fixed, **settings)

    @property
    def network_config(self):
        try:
            return NetworkConfig(shape=self.shape, **self.network)
        except ValueError as error:
            raise InputError(str(error)) from None

    @property
    def loss_weights(self):
        try:
            return LossWeights(**self.loss)
        except TypeError as error:
            raise InputError(f"unknown loss setting ({error})") from None
        except ValueError as error:
            raise InputError(f"loss setting: {error}") from None

    @property
    def preprocessing(self):
        """How the run prepares its volumes; the model folder records it for registration."""
        return Preprocessing(self.shape, self.spacing)

    @property
    def refine_config(self):
        """How validation and the exported model refine T's fields: the training loss's windows
        and beta, then ``refine`` (``steps`` 0: T alone)."""
        w = self.loss_weights
        settings = {"lg_window": w.lg_window, "lcc_window": w.lcc_window, "beta": w.beta,
                    **REFINE_DEFAULTS, **self.refine}
        try:
            config = RefineConfig(**settings)
        except TypeError as error:
            raise InputError(f"unknown refinement setting ({error})") from None
        if w.translate == "fixed" and config.steps and config.w_lcc:
            raise InputError("refinement's L_LCC term needs G(F), but with translate 'fixed' G "
                             "renders R: set the refinement's w_lcc to 0")
        return config

    @property
    def uses_demo_data(self):
        return self.moving is None

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        out["network"] = {k: v for k, v in self.network_config.to_dict().items() if k != "shape"}
        out["loss"] = self.loss_weights.to_dict()
        out["refine"] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(self.refine_config).items()}
        return out

    @classmethod
    def from_dict(cls, config):
        """A configuration from ``config.json``. A setting the file lacks (it was written before
        the setting existed) takes the value the run was trained with, not today's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {**_ABSENT_MEANS, **{k: v for k, v in config.items() if k in known}}
        if "network" in config:
            fields["network"] = {**_ABSENT_NETWORK_MEANS, **config["network"]}
        if "preset" not in config and config.get("moving") is None and "refine" not in config:
            fields["refine"] = DEMO_REFINE  # before presets, the demo data implied them
        return cls(**fields)


#: What a ``config.json`` written before these settings existed was trained with.
_ABSENT_MEANS = {"lr_decay": "constant"}
_ABSENT_NETWORK_MEANS = {"flow_resolution": 1, "g_residual": False, "d_pool": 1, "matching": [],
                         "g_pointwise": False}


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
    ``align_dir`` (:func:`dgan.prealign.align_scans`)."""
    if config.uses_demo_data:
        def make(input_context, start_step):
            return ddata.demo_dataset(config.batch_size, config.seed, start_step=start_step,
                                      shape=config.shape, spacing=config.spacing,
                                      input_context=input_context)
        return make
    moving_paths, fixed_paths = ddata.find_scans(config.moving), ddata.find_scans(config.fixed)
    if config.align:
        moving_paths, fixed_paths = prealign.align_scans(moving_paths, fixed_paths, align_dir)
    moving = ddata.ScanSet(moving_paths, config.shape, config.spacing)
    fixed = ddata.ScanSet(fixed_paths, config.shape, config.spacing)
    logger.info("training data: %d moving and %d fixed scans (unpaired)", len(moving), len(fixed))

    def make(input_context, start_step):
        return ddata.make_dataset(moving, fixed, config.batch_size, config.seed,
                                  start_step=start_step, input_context=input_context)
    return make


def validation_pairs(config):
    """Validation pairs with labels: the demo's seeded pairs, or those of ``config.val_pairs``
    prepared as the training volumes are (:func:`dgan.data.load_labelled_pairs`)."""
    if config.uses_demo_data:
        return ddata.demo_validation_pairs(config.n_val, shape=config.shape, spacing=config.spacing)
    if not config.val_pairs:
        return []
    return ddata.load_labelled_pairs(config.val_pairs, config.preprocessing)


# --- validation ------------------------------------------------------------------------------


@dataclass
class Scores:
    """Validation mean Dice of one check.

    :param identity: before registration
    :param network: T's field alone
    :param refined: T's field refined on each pair (:mod:`dgan.refine`), or None when not run
    :param first: the first pair's ``fixed``, ``moving``, ``moved``, ``flow`` (the registered
        one) and ``fixed_labels``, for the figure
    """

    identity: float
    network: float
    refined: float | None
    first: dict

    @property
    def registered(self):
        """The registration's result: refined when refinement ran, else T's."""
        return self.network if self.refined is None else self.refined


def score_pairs(model, pairs, refine_config=None):
    """Register each pair through :class:`dgan.register.Registrar` (the code behind
    ``dgan-register``), with T alone and, when ``refine_config.steps`` > 0, with refinement;
    Dice of the warped moving labels against the fixed labels.

    :param model: a :class:`dgan.export.ModelFolder` (in memory during training) or folder path
    :param pairs: dicts ``moving``, ``fixed`` (X, Y, Z) and their ``*_labels``
    :param refine_config: :class:`dgan.refine.RefineConfig`, or None for T alone
    :return: :class:`Scores`
    """
    from .register import Registrar

    steps = 0 if refine_config is None else refine_config.steps
    registrar = Registrar(model, refine_steps=steps, refine_config=refine_config)
    moving = np.stack([p["moving"] for p in pairs])
    fixed = np.stack([p["fixed"] for p in pairs])
    flows = registrar.predict_flow(moving, fixed)  # (B, X, Y, Z, 3)
    refined = registrar.refine_flows(moving, fixed, flows) if steps else None

    def dice(flow_batch):
        return float(np.mean([
            metrics.mean_dice(synth.warp(p["moving_labels"], flow, order=0), p["fixed_labels"])
            for p, flow in zip(pairs, flow_batch)]))

    identity = float(np.mean([metrics.mean_dice(p["moving_labels"], p["fixed_labels"])
                              for p in pairs]))
    flow = flows[0] if refined is None else refined[0]
    first = {
        "fixed": pairs[0]["fixed"], "moving": pairs[0]["moving"],
        "moved": synth.warp(pairs[0]["moving"], flow), "flow": flow,
        "fixed_labels": pairs[0]["fixed_labels"],
    }
    return Scores(identity, dice(flows), None if refined is None else dice(refined), first)


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
    return METHODS[config.method].from_config_object(config.network_config)


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
        model.compile(**make_optimizers(config), weights=config.loss_weights)
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
                           network_config=config.network_config,
                           preprocessing=config.preprocessing, description={},
                           generator=model.generator)

    def validate(step, refine=False):
        """Held-out Dice through the registration code; with ``refine``, also after refinement
        (the first and the last check: it costs seconds per pair)."""
        if not pairs:
            return
        refine_config = config.refine_config if refine and config.refine_config.steps else None
        scores = score_pairs(live_folder(), pairs, refine_config)
        dice.update(identity=scores.identity, network=scores.network, refined=scores.refined,
                    registered=scores.registered, step=step)
        refined_text = "" if scores.refined is None else f", T + refinement {scores.refined:.4f}"
        logger.info("step %d: validation mean Dice: identity %.4f, T %.4f%s", step,
                    scores.identity, scores.network, refined_text)
        first = scores.first
        source = "fixed" if config.loss_weights.translate == "fixed" else "moved"
        first["translated"] = None if model.generator is None else model.generator.predict(
            first[source][None, ..., None], verbose=0)[0, ..., 0]
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
                translated_title="G(R)" if source == "fixed" else "translated F'(phi)",
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
        save_model_folder(model.registration_model, config.network_config, config.preprocessing,
                          out_dir / "model", generator=model.generator,
                          refinement=dataclasses.asdict(config.refine_config),
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


#: Held-out Dice at every check: step, identity, network (T alone), refined (blank if not run).
VALIDATION_CSV = "validation.csv"
_VALIDATION_COLUMNS = ("step", "identity", "network", "refined")


def append_validation_row(path, step, scores):
    """Append one check's :class:`Scores` to ``validation.csv`` (header first)."""
    import csv

    new = not Path(path).exists()
    with open(path, "a", newline="") as handle:
        out = csv.writer(handle)
        if new:
            out.writerow(_VALIDATION_COLUMNS)
        refined = "" if scores.refined is None else f"{scores.refined:.6f}"
        out.writerow([step, f"{scores.identity:.6f}", f"{scores.network:.6f}", refined])


def read_validation_history(path):
    """``validation.csv`` -> {"identity"|"network"|"refined": [(step, Dice), ...]}."""
    import csv

    history = {name: [] for name in _VALIDATION_COLUMNS[1:]}
    if not Path(path).exists():
        return history
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for name in history:
                if row.get(name):
                    history[name].append((int(row["step"]), float(row[name])))
    return history


def read_loss_history(path):
    """``losses.csv`` -> {name: [(step, value), ...]} for every loss column, finite values only."""
    import csv

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
