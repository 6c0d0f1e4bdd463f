"""Registration's settings and choices, free of TensorFlow: what ``dgan-register --help`` quotes
and checks before TensorFlow starts, and what :class:`dgan.registration.registrar.Registrar`,
refinement (:mod:`dgan.registration.refine`) and the affine stage
(:mod:`dgan.registration.affine`) read.
"""

import dataclasses

import numpy as np

from ..core import settings as loss_settings
from ..errors import InputError

#: Refinement iterations per level by default (how it was chosen:
#: docs/notes/benchmarks-history.md); a model folder's own setting comes first.
DEFAULT_REFINE_STEPS = 25

#: Without a model, refinement's iterations per level (:func:`no_model_refinement`).
NO_MODEL_REFINE_STEPS = 15
#: Without a model, refinement's levels, coarse to fine: the block matching's passes have
#: searched the coarse scales already (at 4 mm and more), so refinement starts at half
#: resolution (how both were chosen: docs/notes/2026-12-07-speed.md, section 7).
NO_MODEL_LEVELS = (2, 1)

#: :class:`~dgan.registration.registrar.Registrar`'s ``start`` choices: the field refinement
#: starts from.
START_CHOICES = ("auto", "network", "identity")

#: The affine stage's modes: ``auto`` applies it when the scans are misaligned by more than
#: :data:`AUTO_THRESHOLD_MM`, ``on`` always, ``off`` never.
AFFINE_MODES = ("auto", "on", "off")

#: The affine stage's MI samples the fixed foreground grown by this many mm (negative: shrunk:
#: its interior; the outline of a brain biases MI across modalities):
#: :class:`dgan.registration.affine.AffineConfig`'s ``margin_mm``.
AFFINE_MARGIN_MM = -4.0

#: ``--affine auto`` applies the estimated affine when it moves the fixed scan's foreground by
#: more than this RMS distance (mm) from where the two headers put it; below it the deformable
#: stage (T, refinement) takes the misalignment as it is.
AUTO_THRESHOLD_MM = 2.0

#: Refinement from the identity when ``start="auto"`` found no start field (neither the block
#: matching nor T earned one, :mod:`dgan.registration.scoring`): the pair is then either aligned
#: already by its headers or lacks the structure a search needs (thick slices, a slab, noise,
#: another body part), and refinement should correct only what is small and local. Adam's first
#: steps move every control point by about the learning rate whatever its gradient, so with the
#: default step and the coarse levels a pair's noise-level gradients carry the field millimetres
#: away (on real pairs the loss rose over a coarse level's iterations). The cautious refinement
#: runs the finest level alone (a capture range of a few voxels), with small steps, and more of
#: them to converge (:func:`cautious_refinement`; how they were chosen:
#: docs/notes/2026-12-07-cautious-refinement.md).
#: ``Registrar(cautious=False)``, and any refinement option of ``dgan-register``, keep the
#: settings as given.
CAUTIOUS_STEPS = 40
#: See :data:`CAUTIOUS_STEPS`: Adam's step size, in voxels of the control grid.
CAUTIOUS_LEARNING_RATE = 0.05
#: See :data:`CAUTIOUS_STEPS`: the smoothness weight alpha (the no-model default; a model's
#: refinement weighs its L_LCC term, which refinement from the identity does not have).
CAUTIOUS_ALPHA = 1.0


#: See :data:`CAUTIOUS_STEPS`: the cautious refinement's one level has at most this many voxels:
#: on a finer grid (a sub-millimetre whole head has about 9 million) it runs on the grid halved
#: until it fits. Its correction is small and smooth (control points two voxels of the level
#: apart), which a grid of about 1.5-2 mm resolves, and on the full grid of such a scan its 40
#: iterations took most of a call (docs/notes/2026-12-07-speed.md, section 8).
CAUTIOUS_MAX_VOXELS = 2**22


def level_voxels(shape, factor):
    """The number of voxels of ``shape`` down-sampled by ``factor`` (ceil halving)."""
    return int(np.prod([-(-int(n) // factor) for n in shape], dtype=np.int64))


def within_budget(shape, factor, budget):
    """``factor``, doubled while the grid of ``shape`` down-sampled by it holds more than
    ``budget`` voxels (:func:`level_voxels`)."""
    while level_voxels(shape, factor) > budget:
        factor *= 2
    return factor


def cautious_level(config, shape=None):
    """The down-sampling factor of the cautious refinement's level: ``config``'s finest, doubled
    while its grid (of ``shape``, the fixed grid; None: not known) has more than
    :data:`CAUTIOUS_MAX_VOXELS` voxels."""
    level = config.levels[-1]
    return level if shape is None else within_budget(shape, level, CAUTIOUS_MAX_VOXELS)


def cautious_refinement(config, shape=None):
    """``config`` made cautious (:data:`CAUTIOUS_STEPS`): one level, its finest
    (:func:`cautious_level`: coarser on a grid of ``shape`` with more than
    :data:`CAUTIOUS_MAX_VOXELS` voxels), :data:`CAUTIOUS_STEPS` iterations of step
    :data:`CAUTIOUS_LEARNING_RATE`, alpha :data:`CAUTIOUS_ALPHA`; its windows, noise scale and
    field kind as they are."""
    return dataclasses.replace(config, levels=(cautious_level(config, shape),),
                               steps=CAUTIOUS_STEPS, learning_rate=CAUTIOUS_LEARNING_RATE,
                               alpha=CAUTIOUS_ALPHA)


def no_model_refinement():
    """The refinement settings without a model: :class:`RefineConfig`'s defaults on
    :data:`NO_MODEL_LEVELS`, :data:`NO_MODEL_REFINE_STEPS` iterations each."""
    return RefineConfig(steps=NO_MODEL_REFINE_STEPS, levels=NO_MODEL_LEVELS)


def matching_refinement(config):
    """``config`` for refinement from the block matching's field (no T): the smoothness term on
    phi itself (``smooth="flow"``) rather than on the change refinement makes. T's field carries
    learned detail that refinement should keep; the matching's is a soft arg-max per coarse voxel,
    whose roughness is noise for the smoothness term to remove (how it was chosen:
    docs/notes/2026-12-07-histogram-translation.md)."""
    return dataclasses.replace(config, smooth="flow")


#: ``RefineConfig.xla`` values, and the level size from which ``"auto"`` compiles with XLA.
XLA_CHOICES = ("auto", "on", "off")
XLA_MIN_VOXELS = 2**16


def compiles_with_xla(xla, shape, min_voxels):
    """Whether a setting ``xla`` (:data:`XLA_CHOICES`) compiles a program for arrays of ``shape``:
    "on" always, "off" never, "auto" from ``min_voxels`` voxels (refinement's levels, the affine
    stage's optimiser)."""
    return xla == "on" or (xla == "auto" and int(np.prod(shape)) >= min_voxels)

@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`dgan.registration.refine.refine`; the weights are the paper's symbols.

    The defaults register the 2 mm brain benchmark's pairs from the identity with L_LG and
    smoothness alone, and refine a trained T's field (how they were chosen:
    docs/notes/benchmarks-history.md). ``lg_window`` n counts voxels of each level, so the
    coarse levels still see wide neighbourhoods.

    :param steps: Adam iterations per level (0: no refinement)
    :param levels: image down-sampling factor of each level, coarse to fine, powers of two
        (``(2, 1)`` at 2 mm: 4 mm, then 2 mm)
    :param control: the optimised field lives on a grid this many times coarser than the
        level's images (a power of two)
    :param learning_rate: Adam's step size, in voxels of the level's grid
    :param alpha: weight of sum |grad phi|^2 (:func:`dgan.core.losses.smoothness`)
    :param beta: weight of 1 - L_LG(R, F(phi))
    :param w_lcc: weight of 1 - L_LCC(R, G(F)(phi)); ignored without a translated image
    :param lg_window: n, the local-gradient neighbourhood
    :param lg_noise: the eps of n(I, p) = v / (|v| + eps) as this fraction of the median |v| of
        I over the overlap, for R and F each (:func:`dgan.core.losses.gradient_scale`): above 0,
        voxels whose gradient is small against the image's own (noise, flat tissue) weigh less
        than edges, so that the field is not bent to line up noise (two scans of one subject
        carry their own noise). The median is over the whole overlap: on a skull-stripped scan
        whose zero background fills most of it the median is 0 and the paper's eps remains.
        Default 3; 0: the paper's tiny eps everywhere (docs/notes/2026-12-06-real-scans.md)
    :param lcc_window: the local cross-correlation window
    :param lcc_stride: L_LCC as the mean over the windows around every ``lcc_stride``-th voxel
        along each axis (``stride`` of :func:`dgan.core.losses.correlation_from_statistics`); 1: all
        of them. With 2 (and window 9) a voxel still lies in about (9 / 2)^3 = 91 windows, for
        about a third of the window sums
    :param int_steps: 0: displacement field; K > 0: diffeomorphic, a stationary velocity field
        integrated by K scaling-and-squaring steps
    :param smooth: the field alpha's term acts on (:data:`dgan.core.settings.SMOOTHED_FIELDS`):
        ``"residual"``, the change refinement makes, phi - phi_0, so that the detail of the starting
        field phi_0 (T's) is kept rather than smoothed away (as
        :class:`dgan.training.trainers.LossWeights`' ``smooth`` does for T's residual); or
        ``"flow"``, phi itself (the paper's term). From the identity both are phi
    :param xla: ``"auto"``: compile the iterations of levels of at least
        :data:`XLA_MIN_VOXELS` voxels with XLA (``jit_compile``), the others as a plain
        ``tf.function``; ``"on"``: every level; ``"off"``: none. XLA fuses the many small
        element-wise operations of an iteration (a level of 40 x 48 x 56 runs 2-3 times faster),
        but compiling costs seconds per level shape, once per machine with the compile cache
        (:func:`dgan.compat.use_compile_cache`), else once per process, which levels smaller
        than about 40^3 do not earn back
    """

    steps: int = 25
    levels: tuple = (4, 2, 1)
    control: int = 2
    learning_rate: float = 0.25
    alpha: float = 1.0
    beta: float = 1.0
    w_lcc: float = 1.0
    lg_window: int = 3
    lg_noise: float = 3.0
    lcc_window: int = loss_settings.DEFAULT_LCC_WINDOW
    lcc_stride: int = 2
    int_steps: int = 0
    smooth: str = "residual"
    xla: str = "auto"

    def __post_init__(self):
        def power_of_two(value):
            return isinstance(value, (int, np.integer)) and value >= 1 and not value & (value - 1)

        levels = tuple(self.levels)
        object.__setattr__(self, "levels", levels)
        for name, least in (("steps", 0), ("lcc_stride", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < least:
                raise InputError(f"refinement {name} must be a whole number >= {least}, "
                                 f"got {value!r}")
        if not levels or not all(power_of_two(f) for f in levels) \
                or list(levels) != sorted(set(levels), reverse=True):
            raise InputError(
                f"refinement levels must be decreasing powers of two, e.g. 2 1, got {levels}")
        if not power_of_two(self.control):
            raise InputError(f"refinement control must be a power of two, got {self.control!r}")
        for name in ("learning_rate", "alpha", "beta", "w_lcc", "lg_noise"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0 or (name == "learning_rate" and value == 0):
                raise InputError(f"refinement {name} must be a finite number "
                                 f"{'> 0' if name == 'learning_rate' else '>= 0'}, got {value!r}")
        for name in ("lg_window", "lcc_window"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1 or value % 2 == 0:
                raise InputError(f"refinement {name} must be an odd positive integer, got {value!r}")
        if not isinstance(self.int_steps, (int, np.integer)) or not 0 <= self.int_steps <= 16:
            raise InputError(f"refinement int_steps must be 0..16, got {self.int_steps!r}")
        for name, choices in (("smooth", loss_settings.SMOOTHED_FIELDS), ("xla", XLA_CHOICES)):
            value = getattr(self, name)
            if value not in choices:
                raise InputError(f"refinement {name} must be one of {', '.join(choices)}, "
                                 f"got {value!r}")

    def uses_xla(self, shape):
        """Whether a level of images of ``shape`` compiles its iterations with XLA."""
        return compiles_with_xla(self.xla, shape, XLA_MIN_VOXELS)
