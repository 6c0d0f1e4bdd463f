"""Learned baselines for Deform-GAN (Zhang et al. 2020, arXiv:2002.11430), trained like it.

Three learned methods, trained on the same data (:class:`dgan.training.TrainConfig`: the demo
data or scan folders, the same ``make_dataset`` stream of unpaired samples for the same seed),
with the same step budget and the same learning rate for the registration network, and saved
as dgan model folders (:func:`dgan.export.save_model_folder`), so that every one of them is
evaluated through the same :class:`dgan.register.Registrar` inference path:

- ``deformgan``: Deform-GAN itself, trained by :func:`dgan.training.train` (the code behind
  ``train/train_dgan.py``).
- ``vxm``: VoxelMorph's own ``vxm.networks.VxmDense`` (Balakrishnan et al. 2019) with the same
  U-Net features and integration steps as T, trained with VoxelMorph's cross-modal loss
  ``L = -MI(R, F(phi)) + lambda * Grad_l2(phi)`` (``vxm.losses.MutualInformation``, soft
  histogram MI with ``mi_bins`` bins, and ``vxm.losses.Grad('l2')``): the peer a user would pick.
  VxmDense with ``int_resolution=1`` has exactly T's layer structure (the same U-Net, a 3x3x3
  convolution to the flow, a ``SpatialTransformer``); :func:`vxm_to_registration_net` checks
  this layer by layer and copies its weights into :func:`dgan.networks.build_registration_net`.
- ``lcc``: the ablation "T without G and D": T trained with Deform-GAN's own terms, but the LCC
  taken directly between the fixed and the moved image,
  ``L = (1 - L_LCC(R, F(phi))) + beta * (1 - L_LG(R, F(phi))) + alpha * sum |grad phi|^2``.

Each run folder receives ``config.json``, ``losses.csv``, ``train.log``, ``results.json``
(validation Dice before and after, seconds) and ``model/``.
"""

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import data as ddata
from . import losses, metrics, synth
from . import training as dtraining
from .compat import keras, tf, vxm
from .errors import InputError, TrainingDiverged
from .export import Preprocessing, save_model_folder
from .io import atomic_write, save_volume
from .model import LossWeights
from .networks import build_registration_net

logger = logging.getLogger(__name__)

#: The learned methods this module trains.
METHODS = ("deformgan", "vxm", "lcc")
#: Readable names, as the evaluation tables show them.
METHOD_NAMES = {
    "deformgan": "Deform-GAN",
    "vxm": "VoxelMorph (MI)",
    "lcc": "T + LCC (no G, D)",
}

#: Seeds of the brain benchmark's training and validation pairs; the evaluation uses seed 0.
BRAIN_TRAIN_SEED = 1000
BRAIN_VAL_SEED = 2000


@dataclasses.dataclass(frozen=True)
class BaselineLoss:
    """The baselines' loss settings.

    :param vxm_lambda: lambda in ``-MI(R, F(phi)) + lambda * Grad_l2(phi)`` (VoxelMorph)
    :param mi_bins: histogram bins of VoxelMorph's soft mutual information
    :param alpha: smoothness weight of the LCC ablation (Deform-GAN's alpha)
    :param beta: local-gradient weight of the LCC ablation (Deform-GAN's beta)
    :param lg_window: local-gradient neighbourhood n
    :param lcc_window: LCC window
    """

    vxm_lambda: float = 1.0
    mi_bins: int = 16
    alpha: float = LossWeights.alpha
    beta: float = LossWeights.beta
    lg_window: int = LossWeights.lg_window
    lcc_window: int = LossWeights.lcc_window

    def to_dict(self):
        return dataclasses.asdict(self)


# --- VoxelMorph's VxmDense and T ----------------------------------------------------------------


def build_vxm_dense(network_config, name="vxm_dense"):
    """VoxelMorph's ``VxmDense`` with T's U-Net features and integration steps.

    ``int_resolution=1`` integrates at full resolution, as T does, so that both networks have the
    same layers. Inputs ``[moving, fixed]`` (B, X, Y, Z, 1); outputs ``[moved, flow]``.
    """
    if network_config.flow_resolution != 1:
        raise ValueError("the VxmDense baseline needs flow_resolution 1: VoxelMorph 0.2 does not "
                         "upsample a coarse field the way T does")
    encoder, decoder = network_config.t_features
    return vxm.networks.VxmDense(
        network_config.shape,
        nb_unet_features=[list(encoder), list(decoder)],
        int_steps=network_config.int_steps,
        int_resolution=1,
        name=name,
    )


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def _role(layer, prefix):
    """A layer's name without its network's prefix: ``<prefix>_unet_...`` -> ``unet_...``."""
    name = layer.name
    return name[len(prefix) + 1:] if name.startswith(prefix + "_") else name


def check_same_structure(vxm_model, registration_net):
    """Raise ``ValueError`` unless VxmDense and T have the same layers in the same order.

    Compared: the sequence of layer types, and for every layer with weights its role (name
    without the network prefix; VoxelMorph's ``flow`` / ``flow_int`` are T's ``velocity`` /
    ``flow`` when integrating) and its weight shapes.
    """
    vxm_types = [type(layer).__name__ for layer in vxm_model.layers]
    t_types = [type(layer).__name__ for layer in registration_net.layers]
    if vxm_types != t_types:
        raise ValueError(f"VxmDense and T differ in their layers: {vxm_types} vs {t_types}")
    renamed = {"flow": "velocity" if any(t == "VecInt" for t in t_types) else "flow"}
    for a, b in zip(_weighted_layers(vxm_model), _weighted_layers(registration_net)):
        role_a = _role(a, vxm_model.name)
        role_a = renamed.get(role_a, role_a)
        role_b = _role(b, registration_net.name)
        shapes_a = [tuple(w.shape) for w in a.weights]
        shapes_b = [tuple(w.shape) for w in b.weights]
        if role_a != role_b or shapes_a != shapes_b:
            raise ValueError(f"VxmDense layer {a.name} {shapes_a} does not match T's layer "
                             f"{b.name} {shapes_b}")


def vxm_to_registration_net(vxm_model, network_config):
    """T (:func:`dgan.networks.build_registration_net`) holding the weights of a VxmDense.

    :param vxm_model: from :func:`build_vxm_dense` with the same ``network_config``
    :return: T, ``{"moving", "fixed"}`` -> ``{"moved", "flow"}``, computing what VxmDense computes
    :raises ValueError: the two networks do not have the same layers
    """
    net = build_registration_net(network_config)
    check_same_structure(vxm_model, net)
    for a, b in zip(_weighted_layers(vxm_model), _weighted_layers(net)):
        b.set_weights(a.get_weights())
    return net


def mutual_information(bins):
    """VoxelMorph's soft-histogram mutual information (its constructor prints; silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return vxm.losses.MutualInformation(nb_bins=int(bins))


# --- the training model -------------------------------------------------------------------------


class RegistrationTrainer(keras.Model):
    """One registration network trained alone with one loss (no G, no D).

    :param net: T (dict inputs ``moving``/``fixed``, dict outputs) or a VxmDense (list inputs
        ``[moving, fixed]``, list outputs ``[moved, flow]``)
    :param method: ``"vxm"`` or ``"lcc"`` (see the module docstring)
    :param loss: :class:`BaselineLoss`
    """

    TERMS = {"vxm": ("loss", "mi", "grad"), "lcc": ("loss", "lcc", "lg", "smooth")}

    def __init__(self, net, method, loss=None, **kwargs):
        kwargs.setdefault("name", f"{method}_trainer")
        super().__init__(**kwargs)
        if method not in self.TERMS:
            raise ValueError(f"method must be one of {sorted(self.TERMS)}, got {method!r}")
        self.net = net
        self.method = method
        self.loss_config = loss or BaselineLoss()
        self.dict_inputs = isinstance(net.input, dict)
        if method == "vxm":
            self.mi = mutual_information(self.loss_config.mi_bins)
            self.grad = vxm.losses.Grad("l2")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.TERMS[method]}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        moving, fixed = inputs["moving"], inputs["fixed"]
        if self.dict_inputs:
            out = self.net({"moving": moving, "fixed": fixed}, training=training)
            return out["moved"], out["flow"]
        moved, flow = self.net([moving, fixed], training=training)
        return moved, flow

    def terms(self, moving, fixed, training):
        """Per-example loss terms, each shape = (B,); ``"loss"`` is the total."""
        moved, flow = self({"moving": moving, "fixed": fixed}, training=training)
        w = self.loss_config
        if self.method == "vxm":
            terms = {"mi": self.mi.loss(fixed, moved), "grad": self.grad.loss(None, flow)}
            terms["loss"] = terms["mi"] + w.vxm_lambda * terms["grad"]
        else:
            terms = {
                "lcc": 1.0 - losses.local_cross_correlation(fixed, moved, w.lcc_window),
                "lg": 1.0 - losses.local_gradient_similarity(fixed, moved, w.lg_window),
                "smooth": losses.smoothness(flow),
            }
            terms["loss"] = terms["lcc"] + w.beta * terms["lg"] + w.alpha * terms["smooth"]
        return terms

    def train_step(self, data):
        with tf.GradientTape() as tape:
            terms = self.terms(data["moving"], data["fixed"], training=True)
            loss = tf.nn.compute_average_loss(terms["loss"])
        gradients = tape.gradient(loss, self.net.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.net.trainable_variables))
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}


class _ProgressLog(keras.callbacks.Callback):
    """One step per Keras epoch: a tqdm bar, ``losses.csv``, a log line every ``log_every``
    steps, and a stop at the first NaN/Inf loss."""

    def __init__(self, csv_path, names, total, log_every, progress, description):
        super().__init__()
        self.csv_path, self.names = Path(csv_path), list(names)
        self.log_every = max(1, int(log_every))
        self.bar = tqdm(total=total, disable=not progress, desc=description, unit="step",
                        dynamic_ncols=True)
        self.diverged = None
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        values = {name: float(logs[name]) for name in self.names}
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as handle:
            out = csv.writer(handle)
            if new:
                out.writerow(["step", *self.names])
            out.writerow([step, *(f"{values[n]:.6g}" for n in self.names)])
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{values['loss']:.4f}")
        if step % self.log_every == 0:
            rate = (time.perf_counter() - self.started) / step
            logger.info("step %d: %s (%.2f s/step)", step,
                        ", ".join(f"{k} {v:.4f}" for k, v in values.items()), rate)
        bad = [n for n, v in values.items() if not math.isfinite(v)]
        if bad:
            self.diverged = (step, bad[0], values[bad[0]])
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.bar.close()


# --- data ----------------------------------------------------------------------------------------


def training_arrays(config):
    """The moving and fixed arrays that :func:`dgan.training.train` trains on for ``config``.

    :param config: :class:`dgan.training.TrainConfig`
    :return: (moving arrays, fixed arrays), each a sequence of (X, Y, Z) float32
    """
    if config.uses_demo_data:
        demo = ddata.demo_volumes(config.shape, config.spacing)
        return [demo.t1], [demo.t2]
    moving = ddata.ScanSet(ddata.find_scans(config.moving), config.shape, config.spacing)
    fixed = ddata.ScanSet(ddata.find_scans(config.fixed), config.shape, config.spacing)
    return moving, fixed


def benchmark_grid_shape(npz_path, resolution_mm):
    """The brain benchmark's grid at ``resolution_mm``: round(160, 192, 224 mm / resolution)."""
    with np.load(npz_path) as archive:
        shape = archive["vol"].shape
    return tuple(max(1, int(round(n / float(resolution_mm)))) for n in shape)


def write_brain_training_data(npz_path, out_dir, resolution_mm=4.0, n_train=8, n_val=2,
                              seed=BRAIN_TRAIN_SEED, val_seed=BRAIN_VAL_SEED, eval_seed=0):
    """Write the brain benchmark's training scans and validation pairs as NIfTI files.

    Training: ``n_train`` moving T1 scans and ``n_train`` fixed T2-like scans
    (:func:`dgan.data.load_brain_benchmark` with ``seed``), used unpaired; validation:
    ``n_val`` pairs with labels (``val_seed``) and ``val_pairs.csv``. Both seeds must differ from
    ``eval_seed``, the seed of the evaluation pairs, so that no evaluated pair is trained on.

    :return: dict ``moving`` (folder), ``fixed`` (folder), ``val_pairs`` (CSV), ``shape``
    """
    if eval_seed in (seed, val_seed):
        raise InputError(f"training seed {seed} and validation seed {val_seed} must differ from "
                         f"the evaluation seed {eval_seed}")
    out_dir = Path(out_dir)
    affine = np.diag([float(resolution_mm)] * 3 + [1.0])
    train = ddata.load_brain_benchmark(npz_path, resolution_mm, n_pairs=n_train, seed=seed)
    for k, pair in enumerate(train):
        save_volume(out_dir / "moving" / f"t1_{k:03d}.nii.gz", pair["moving"], affine)
        save_volume(out_dir / "fixed" / f"t2_{k:03d}.nii.gz", pair["fixed"], affine)
    rows = []
    for k, pair in enumerate(ddata.load_brain_benchmark(npz_path, resolution_mm, n_pairs=n_val,
                                                        seed=val_seed)):
        row = {}
        for key in ("moving", "fixed", "moving_labels", "fixed_labels"):
            name = f"val/{key}_{k:03d}.nii.gz"
            save_volume(out_dir / name, pair[key], affine)
            row[key] = name
        rows.append(row)
    csv_path = out_dir / "val_pairs.csv"
    with atomic_write(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["moving", "fixed", "moving_labels", "fixed_labels"])
            writer.writeheader()
            writer.writerows(rows)
    return {"moving": str(out_dir / "moving"), "fixed": str(out_dir / "fixed"),
            "val_pairs": str(csv_path), "shape": train[0]["moving"].shape}


# --- training ------------------------------------------------------------------------------------


@dataclasses.dataclass
class BaselineResult:
    """What a baseline run reports (also written to ``results.json``)."""

    method: str
    run_dir: Path
    steps: int
    seconds: float
    dice_identity: float
    dice_registered: float


def validation_dice(registration_net, pairs):
    """(mean Dice after, mean Dice before) registration of validation ``pairs`` with T."""
    if not pairs:
        return math.nan, math.nan
    moving = np.stack([p["moving"] for p in pairs])[..., None]
    fixed = np.stack([p["fixed"] for p in pairs])[..., None]
    flows = registration_net.predict({"moving": moving, "fixed": fixed}, batch_size=1,
                                     verbose=0)["flow"]
    after = [metrics.mean_dice(synth.warp(p["moving_labels"], f, order=0), p["fixed_labels"])
             for p, f in zip(pairs, flows)]
    before = [metrics.mean_dice(p["moving_labels"], p["fixed_labels"]) for p in pairs]
    return float(np.mean(after)), float(np.mean(before))


def _write_json(path, payload):
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")


@contextlib.contextmanager
def _log_file(path):
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dgan")
    previous = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def train_baseline(method, config, run_dir, loss=None, progress=True):
    """Train one learned baseline on the data of ``config`` and save its model folder.

    :param method: ``"vxm"`` or ``"lcc"`` (for ``"deformgan"`` see :func:`train_method`)
    :param config: :class:`dgan.training.TrainConfig`: data, shape, spacing, ``steps``,
        ``batch_size``, ``lr_t`` (the learning rate of the registration network), ``network``
        (T's features and integration steps), ``seed``, ``val_pairs``/``n_val``, ``log_every``
    :param run_dir: the run folder; must not hold a run already
    :param loss: :class:`BaselineLoss`
    :return: :class:`BaselineResult`
    :raises InputError: bad data or an existing run
    :raises TrainingDiverged: a loss became NaN or Inf
    """
    if method not in RegistrationTrainer.TERMS:
        raise InputError(f"unknown baseline {method!r}; choose one of "
                         f"{', '.join(RegistrationTrainer.TERMS)}")
    loss = loss or BaselineLoss()
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        raise InputError("already holds a run; choose another folder", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _log_file(run_dir / "train.log"):
        return _train_baseline(method, config, run_dir, loss, progress)


def _train_baseline(method, config, run_dir, loss, progress):
    started = time.perf_counter()
    network_config = config.network_config
    if method == "vxm" and network_config.flow_resolution != 1:
        logger.info("VxmDense predicts its field at full resolution (flow_resolution 1): "
                    "VoxelMorph 0.2 upsamples a coarse field only when integrating")
        network_config = dataclasses.replace(network_config, flow_resolution=1)
    _write_json(run_dir / "config.json", {
        "method": method, "name": METHOD_NAMES[method], "data": config.to_dict(),
        "loss": loss.to_dict(),
    })
    moving, fixed = training_arrays(config)
    pairs = dtraining.validation_pairs(config)
    logger.info("%s: %d moving and %d fixed training volumes of shape %s, %d steps",
                METHOD_NAMES[method], len(moving), len(fixed), config.shape, config.steps)
    dataset = ddata.make_dataset(moving, fixed, config.batch_size, config.seed)

    keras.utils.set_random_seed(config.seed)
    net = build_vxm_dense(network_config) if method == "vxm" else build_registration_net(
        network_config)
    trainer = RegistrationTrainer(net, method, loss)
    trainer.compile(optimizer=keras.optimizers.Adam(config.lr_t))
    log = _ProgressLog(run_dir / "losses.csv", RegistrationTrainer.TERMS[method], config.steps,
                       config.log_every, progress, METHOD_NAMES[method])
    trainer.fit(dataset, steps_per_epoch=1, epochs=config.steps, callbacks=[log], verbose=0)
    if log.diverged is not None:
        step, name, value = log.diverged
        raise TrainingDiverged(f"{method}: {name} became {value} at step {step}")

    registration_net = vxm_to_registration_net(net, network_config) if method == "vxm" else net
    after, before = validation_dice(registration_net, pairs)
    logger.info("%s: validation mean Dice %.4f (identity %.4f)", METHOD_NAMES[method], after,
                before)
    save_model_folder(registration_net, network_config,
                      Preprocessing(config.shape, config.spacing), run_dir / "model")
    seconds = time.perf_counter() - started
    result = BaselineResult(method, run_dir, config.steps, seconds, before, after)
    _write_json(run_dir / "results.json", {
        "method": method, "step": config.steps, "seconds": round(seconds, 1),
        "validation_dice_identity": None if math.isnan(before) else before,
        "validation_dice_registered": None if math.isnan(after) else after,
    })
    return result


def train_method(method, config, run_dir, loss=None, progress=True):
    """Train ``method`` (one of :data:`METHODS`) on ``config``'s data; see the module docstring.

    Deform-GAN is trained by :func:`dgan.training.train` with ``config`` as it is; the other
    methods by :func:`train_baseline`. Every run folder ends with ``model/``.

    :return: :class:`BaselineResult`
    """
    if method == "deformgan":
        result = dtraining.train(config, run_dir, progress=progress)
        return BaselineResult(method, Path(run_dir), result.step, result.seconds,
                              result.dice_identity, result.dice_registered)
    return train_baseline(method, config, run_dir, loss=loss, progress=progress)


def model_folder(run_root, method):
    """Where :func:`train_method` leaves ``method``'s model folder under ``run_root``."""
    return os.path.join(os.fspath(run_root), method, "model")
