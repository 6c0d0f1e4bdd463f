"""A training run's configuration: :class:`TrainConfig`, written to the run folder's
``config.json``.

It names the method trained (:data:`METHODS`), the data, the networks, the losses and the
refinement the exported model registers with; :meth:`TrainConfig.from_preset` starts from a
named preset (:mod:`dgan.training.presets`).
"""

import dataclasses
import math
from dataclasses import dataclass, field

from ..core.networks import NetworkConfig
from ..data import demo
from ..data.preprocessing import Preprocessing
from ..errors import InputError
from ..registration.settings import RefineConfig
from .baselines import VxmTrainer
from .presets import DEFAULT_LR_G, DEMO_REFINE, PRESETS, REFINE_DEFAULTS
from .schedules import SCHEDULES
from .trainers import DeformGAN, LossWeights, RegistrationTrainer

#: Keys of ``config.json`` that describe the data, the networks and the losses; a resumed run
#: must not change them (the step budget, logging and output options may change).
FROZEN_ON_RESUME = ("method", "moving", "fixed", "shape", "spacing", "batch_size", "seed",
                    "network", "loss", "align")


#: The methods the run trains (:attr:`TrainConfig.method`): each a Keras model with its own
#: ``train_step`` (see :mod:`dgan.training.trainers`).
METHODS = {"deformgan": DeformGAN, "vxm": VxmTrainer, "lcc": RegistrationTrainer}


def network_for_method(method, network):
    """The network settings ``method`` trains with (a :class:`NetworkConfig` or a dict of its
    fields, returned in the same form): VoxelMorph's VxmDense (``vxm``) has no block-matching
    front end, so ``matching`` is left out for it."""
    if method != "vxm":
        return network
    if isinstance(network, NetworkConfig):
        return dataclasses.replace(network, matching=())
    return {k: v for k, v in network.items() if k != "matching"}


@dataclass
class TrainConfig:
    """Everything a run needs; written to ``config.json``.

    ``moving``/``fixed`` are lists of scan specs (folders, globs, CSV files) for the two modalities,
    unpaired; both None selects the embedded demo data (MNI152 T1 -> T2-like). ``val_pairs`` is an
    optional CSV with columns moving, fixed, moving_labels, fixed_labels. ``network_spacing`` (mm,
    or None: ``spacing``) is written into the model folder as the grid
    :class:`dgan.registration.registrar.Registrar` runs T on by default; validation stays on the
    training grid. ``method`` is what is trained (:data:`METHODS`): ``deformgan``, ``lcc`` (T alone
    with L_T's terms on F(phi)) or ``vxm`` (VoxelMorph's VxmDense with -MI + lambda Grad_l2); every
    method takes its loss settings from ``loss``.

    ``network`` (:class:`~dgan.core.networks.NetworkConfig`, its ``shape`` this configuration's),
    ``loss`` (:class:`~dgan.training.trainers.LossWeights`) and ``refine``
    (:class:`~dgan.registration.settings.RefineConfig`: how validation and the exported model refine
    T's fields; ``steps`` 0: T alone) may be given as those dataclasses or as dicts of their fields
    (a preset, a ``config.json``); the configuration holds the dataclasses. A ``refine`` dict starts
    from the training loss's windows and beta and :data:`~dgan.training.presets.REFINE_DEFAULTS`.

    The fields' defaults are the settings for your scans; :meth:`from_preset` (:meth:`demo`,
    :meth:`for_scans`) starts from a named preset (:data:`~dgan.training.presets.PRESETS`) and
    records its name in ``preset``.
    """

    moving: list | None = None
    fixed: list | None = None
    val_pairs: str | None = None
    shape: tuple = demo.DEMO_SHAPE
    spacing: float | None = demo.DEMO_SPACING
    method: str = "deformgan"
    preset: str | None = None
    steps: int = 400
    batch_size: int = 1
    lr_t: float = 1e-3
    lr_g: float = DEFAULT_LR_G
    lr_d: float = 2e-4
    lr_decay: str = "linear"
    network: NetworkConfig | dict = field(default_factory=dict)
    loss: LossWeights | dict = field(default_factory=dict)
    refine: RefineConfig | dict = field(default_factory=dict)
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    validate_every: int = 50
    log_every: int = 10
    n_val: int = 4
    seed: int = 0
    strategy: str = "auto"
    align: bool = False  # align every scan affinely to the first fixed scan (training.prealign)
    network_spacing: float | None = None  # mm; T's grid in dgan-register (None: spacing)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.network = _network(self.network, self.shape)
        self.loss = _loss(self.loss)
        self.refine = _refine(self.refine, self.loss)
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
        if self.method == "vxm" and self.network.flow_resolution != 1:
            raise InputError("the vxm method needs flow_resolution 1: VoxelMorph 0.2 does not "
                             "upsample a coarse field the way T does")
        if self.network_spacing is not None and not (math.isfinite(self.network_spacing)
                                                     and self.network_spacing > 0):
            raise InputError(f"network_spacing must be a positive number of mm, "
                             f"got {self.network_spacing!r}")

    @classmethod
    def from_preset(cls, preset, **settings):
        """A configuration that starts from ``PRESETS[preset]``; ``settings`` override it (given
        as dicts, ``network``, ``loss`` and ``refine`` key by key)."""
        if preset not in PRESETS:
            raise InputError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        merged = {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[preset].items()}
        for key, value in settings.items():
            both = isinstance(merged.get(key), dict) and isinstance(value, dict)
            merged[key] = {**merged[key], **value} if both else value
        merged["network"] = network_for_method(settings.get("method", "deformgan"),
                                               merged.get("network", {}))
        return cls(**merged, preset=preset)

    @classmethod
    def demo(cls, **settings):
        """The demo preset: the embedded demo data's grid, networks, loss windows, alpha, G's
        learning rate and refinement (:mod:`dgan.training.presets`), with ``settings`` over
        them."""
        return cls.from_preset("demo", **settings)

    @classmethod
    def for_scans(cls, moving, fixed, **settings):
        """The preset for your scans (folders, globs or CSV files of each modality)."""
        return cls.from_preset("scans", moving=moving, fixed=fixed, **settings)

    @property
    def preprocessing(self):
        """How the run prepares its volumes; the model folder records it for registration."""
        return Preprocessing(self.shape, self.spacing)

    @property
    def uses_demo_data(self):
        return self.moving is None

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        out["network"] = {k: v for k, v in self.network.to_dict().items() if k != "shape"}
        out["loss"] = self.loss.to_dict()
        out["refine"] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(self.refine).items()}
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
_ABSENT_NETWORK_MEANS = {"flow_resolution": 1, "g_residual": False, "d_pool": 1, "matching": []}


def _network(network, shape):
    """``network`` (a :class:`NetworkConfig` or a dict of its fields) for ``shape``."""
    try:
        if isinstance(network, NetworkConfig):
            return dataclasses.replace(network, shape=shape)
        return NetworkConfig.from_dict({**network, "shape": shape})
    except TypeError as error:
        raise InputError(f"unknown network setting ({error})") from None
    except ValueError as error:
        raise InputError(str(error)) from None


def _loss(loss):
    """``loss`` as :class:`LossWeights` (given as one, or as a dict of its fields)."""
    if isinstance(loss, LossWeights):
        return loss
    try:
        return LossWeights.from_dict(loss)
    except TypeError as error:
        raise InputError(f"unknown loss setting ({error})") from None
    except ValueError as error:
        raise InputError(f"loss setting: {error}") from None


def _refine(refine, loss):
    """``refine`` as :class:`RefineConfig`; a dict of its fields over the windows and beta of
    ``loss`` (a :class:`LossWeights`) and :data:`~dgan.training.presets.REFINE_DEFAULTS`."""
    if isinstance(refine, RefineConfig):
        return refine
    settings = {"lg_window": loss.lg_window, "lcc_window": loss.lcc_window, "beta": loss.beta,
                **REFINE_DEFAULTS, **refine}
    try:
        return RefineConfig(**settings)
    except TypeError as error:
        raise InputError(f"unknown refinement setting ({error})") from None
