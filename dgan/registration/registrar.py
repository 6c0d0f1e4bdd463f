"""Register scans with a trained Deform-GAN (Zhang et al. 2020, arXiv:2002.11430) network T.

T predicts the field in one pass: ``{"moving" F, "fixed" R}`` -> ``{"moved" F(phi), "flow" phi}``,
loaded from a dgan model folder (:mod:`dgan.registration.model_folder`). Then, unless
``refine_steps`` is 0, the field is polished on the pair by instance refinement
(:mod:`dgan.registration.refine`) with Deform-GAN's own objective, G (from the model folder) frozen.
Without a model folder the start field is the parameter-free block matching's
(:mod:`dgan.core.matching`, T's first layer), and refinement stands in for G with the two scans'
joint histogram (:mod:`dgan.registration.translation`): cross-modal, training-free. Refinement
runs on the fixed scan's own grid (arrays: their grid), intensities scaled as in training.

- :meth:`Registrar.register_arrays`: arrays of any size on one voxel grid (one pair or a batch).
  Intensities are scaled as in training (:func:`dgan.data.io.normalize_intensity`), the volumes are
  zero-padded, centred, to the network's multiple (``NetworkConfig.multiple``), T runs at that
  shape (rebuilt once per shape with the trained weights; weights do not depend on the shape)
  and the flow is cropped back.
- :meth:`Registrar.register_files` / :meth:`Registrar.register_volumes`: scans on their own grids.

  0. With the affine stage (``affine="on"``, or ``"auto"`` when the scans are misaligned by more
     than :data:`dgan.registration.settings.AUTO_THRESHOLD_MM`),
     :func:`dgan.registration.affine.estimate_affine` finds the world transform T (fixed point ->
     moving point) and the moving scan (and its labels) is from then on read through it
     (:func:`dgan.registration.affine.through`: its affine becomes ``T^-1 A_m``), so that every step
     below sees it aligned and its voxels are still interpolated once, at step 5. The flow returned
     and written is the composition, affine then T's field then refinement
     (:func:`dgan.registration.affine.compose_flow`), relative to the moving scan resampled through
     the two headers.
  1. The moving scan is resampled onto the fixed scan's grid through the two affines (world
     coordinates).
  2. Both are prepared as in training: reoriented to RAS+ and resampled to the training voxel
     size (when the model has one): the *network grid*, with affine ``A_n``.
  3. T predicts ``u_n``, a displacement in network voxels.
  4. The field is brought back onto the fixed scan's own grid (affine ``A_f``): resampled at
     each fixed voxel ``p`` (``q = A_n^-1 A_f p``) and its vectors converted to fixed voxels,
     ``u_f(p) = M_f^-1 M_n u_n(q)`` (``M`` the 3x3 part of an affine). This is exact: both
     describe the same world displacement ``d(x) = M_n u_n(A_n^-1 x)``.
  5. The moving scan (and its labels, nearest neighbour) is sampled once, straight from its own
     grid, at ``A_m^-1 A_f (p + u_f(p))``: full resolution on the fixed grid, in the moving
     scan's own intensity units; 0 outside the moving scan.

- ``dgan-register`` (:mod:`dgan.cli.register`): the command line over the same code; outputs
  carry the fixed scan's affine and header, so they overlay it in any viewer.

Flow convention everywhere: displacement in voxels of the grid it lives on, 'ij' indexing
(``flow[..., d]`` moves along voxel axis d), ``moved(p) = moving(p + flow(p))``.
"""

import dataclasses
import logging
import time

import numpy as np

from ..compat import tf
from ..core import coverage, metrics
from ..core import matching as dmatching
from ..data import io as dio
from ..data import synth
from ..data.preprocessing import padded_shape, scale_intensity
from ..errors import InputError
from . import affine as daffine
from . import scoring, translation
from .files import load_inputs, load_masks
from .geometry import flow_to_grid, sample_through_world
from .refine import MAX_LEVEL_VOXELS, MIN_LEVEL_VOXELS, refine, usable_levels
from .settings import (AFFINE_MODES, AUTO_THRESHOLD_MM, CAUTIOUS_MAX_VOXELS,
                       DEFAULT_REFINE_STEPS, START_CHOICES, RefineConfig, cautious_refinement,
                       level_voxels, matching_refinement, no_model_refinement)

logger = logging.getLogger(__name__)

#: ``--affine auto`` applies a transform only when it also raises L_LG on the overlap by this much
#: over the headers' alignment (:meth:`Registrar.judge_affine`). A scan misaligned by centimetres,
#: or by a header 9 degrees off, gains 0.1-0.2, a whole head shifted by 3-4 mm 0.04; a
#: twelve-parameter fit of soft tissue that moved between two acquisitions of an aligned pair (a
#: spinal-cord T2 against its T1w) gains 0.015-0.023, and where it lands within that range depends
#: on the optimiser's round-off (docs/notes/2026-12-07-speed.md, section 12): the margin lies
#: between the two.
AFFINE_LG_MARGIN = 0.03

#: ``--affine auto`` applies a transform only when the Dice of the two scans' foregrounds
#: (:meth:`Registrar.judge_affine`) does not fall by more than this through it. The foregrounds'
#: overlap alone does not show that the headers are right (a whole-head PD whose header was 9
#: degrees off overlapped its T1's head almost as well as the right alignment does,
#: docs/notes/2026-12-07-header-check.md), nor that they are wrong (a brain cut by the moving
#: scan's field of view overlaps as well 20 mm off as aligned), so it is a veto, not a judge.
FOREGROUND_TOLERANCE = 0.01
#: Normalised intensity above which a voxel is foreground for :meth:`Registrar.judge_affine`.
FOREGROUND_LEVEL = 0.1

#: Without a model, the start field is searched on the fixed scan's grid in RAS+ at voxels of at
#: least this size (mm): the matching's search reaches 17 voxels, and refinement then works on
#: the fixed scan's own grid.
MATCHING_SPACING_MM = 2.0

@dataclasses.dataclass(frozen=True, eq=False)
class ArrayRegistration:
    """Result of :meth:`Registrar.register_arrays`.

    :param moved: the moving array warped, in its own intensity units: shape = input shape, float32
    :param flow: displacement in voxels, shape = input shape + (3,), float32
    :param seconds: wall time, ``{"network": T, "refinement": refinement}``
    """

    moved: np.ndarray
    flow: np.ndarray
    seconds: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class FileRegistration:
    """Result of :meth:`Registrar.register_volumes`, everything on the fixed scan's grid.

    :param moved: the moving scan, registered, shape = (X, Y, Z) of the fixed scan, float32
    :param flow: displacement in fixed-grid voxels, shape = (X, Y, Z, 3), float32
    :param labels: the moving labels, registered (nearest neighbour), (X, Y, Z) int32, or None
    :param affine: the fixed scan's affine, shape = (4, 4)
    :param header: the fixed scan's header (None for .npz files)
    :param folding_fraction: fraction of voxels with det(I + grad flow) <= 0
    :param network_affine: affine of the grid T ran on (RAS+, training spacing)
    :param network_shape: shape of that grid, before padding (the fixed grid without a model)
    :param seconds: wall time, ``{"affine": ..., "network": T, "refinement": refinement}``
    :param transform: the affine stage's world transform, (4, 4): fixed-world point (RAS mm) ->
        moving-world point; the identity when the stage was off or ``auto`` left it out
    :param alignment: :class:`dgan.registration.affine.AffineResult` of the estimate (also when
        ``auto`` left it out), or None when the stage was off
    """

    moved: np.ndarray
    flow: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    header: object
    folding_fraction: float
    network_affine: np.ndarray
    network_shape: tuple
    seconds: dict = dataclasses.field(default_factory=dict)
    transform: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(4))
    alignment: object = None


def model_refinement(model):
    """The :class:`dgan.registration.settings.RefineConfig` a model folder was saved with
    (``refinement`` in its ``dgan_model.json``, written by training: its loss windows and weights),
    with :data:`DEFAULT_REFINE_STEPS` where it says nothing; without a model,
    :func:`dgan.registration.settings.no_model_refinement`.

    :param model: :class:`dgan.registration.model_folder.ModelFolder` or None
    """
    if model is None:
        return no_model_refinement()
    saved = dict(model.description.get("refinement") or {})
    saved.setdefault("steps", DEFAULT_REFINE_STEPS)
    try:
        return RefineConfig(**saved)
    except TypeError as error:
        raise InputError(f"unknown refinement setting in dgan_model.json ({error})",
                         model.path) from None


class Registrar:
    """Registers scans with the T of a dgan model folder, then refines the field on the pair.

    :param model: a model folder path, a :class:`dgan.registration.model_folder.ModelFolder`, or
        None: refinement alone from the identity (local gradient + smoothness; ``refine_steps`` must
        be > 0, unless ``affine="on"``: the affine stage alone)
    :param refine_steps: refinement iterations per level; 0: T's field as it is; None: those
        of ``refine_config`` (by default the model folder's own, :func:`model_refinement`)
    :param refine_config: :class:`dgan.registration.settings.RefineConfig` for everything else (its
        ``steps`` is replaced by ``refine_steps``); None: the settings the model folder was saved
        with (e.g. the windows it was trained with), else the defaults
    :param progress: called with one line of text per refinement level, or None
    :param affine: the affine stage of :meth:`register_volumes` (:data:`AFFINE_MODES`): ``"off"``
        (the default here; ``dgan-register``'s default is ``"auto"``), ``"on"``, or ``"auto"``:
        applied when it moves the fixed foreground by more than
        :data:`dgan.registration.settings.AUTO_THRESHOLD_MM` RMS (skipped for scans too small for
        its pyramid: fewer than 16 voxels of 2 mm along an axis). Arrays (:meth:`register_arrays`)
        have no world coordinates and are never aligned affinely.
    :param affine_config: :class:`dgan.registration.affine.AffineConfig`, or None for the defaults
    :param network_spacing: the voxel size in mm (a number, or three) of the grid T runs on;
        None: the model folder's ``registration.network_spacing`` if it has one (training's
        ``TrainConfig.network_spacing``), else the training spacing. T is convolutional and its
        block matching searches in voxels of whatever grid it is given, so a T trained at 4 mm
        can run on a finer grid, where it registers more accurately, in more time
    :param start: the field refinement starts from (:meth:`start_field`): ``"auto"``, the best
        of the identity, the block matching's and T's by L_LG on the overlap; ``"network"``,
        T's (without a model, the matching's) as it is, and refinement kept whatever it gains;
        ``"identity"``: refinement from the zero field, kept whatever it gains
    :param cautious: refinement's settings follow the start field (:meth:`refinement_from`):
        after the block matching's field the smoothness term acts on phi
        (:func:`dgan.registration.settings.matching_refinement`); with ``start="auto"``,
        refinement from the identity (no start field found) runs cautiously, the finest level
        alone in small steps (:func:`dgan.registration.settings.cautious_refinement`); False:
        ``refine_config`` as it is. Either way, after the matching (no G to follow) refinement's
        L_LCC term compares with the moving scan rendered by the joint histogram
        (:meth:`translate_by_histogram`) unless ``w_lcc`` is 0
    :raises InputError: not a dgan model folder; bad refinement settings; a bad network spacing
    """

    def __init__(self, model, refine_steps=None, refine_config=None, progress=None,
                 affine="off", affine_config=None, network_spacing=None, start="auto",
                 cautious=True):
        self.model = None if model is None else _model_folders().as_model_folder(model)
        self._preprocessing = None if self.model is None else self.model.preprocessing
        from_folder = network_spacing is None and self.model is not None
        if from_folder:
            network_spacing = (self.model.description.get("registration") or {}).get(
                "network_spacing")
        if network_spacing is not None:
            if self.model is None:
                raise InputError("a network spacing needs a model folder (T runs on that grid)")
            try:
                self._preprocessing = dataclasses.replace(self._preprocessing,
                                                          spacing=network_spacing)
            except (TypeError, ValueError):
                raise InputError(f"the network spacing must be one or three positive "
                                 f"millimetre sizes, got {network_spacing!r}",
                                 self.model.path if from_folder else None) from None
        base = model_refinement(self.model) if refine_config is None else refine_config
        if refine_steps is None:
            refine_steps = base.steps
        self.refine_config = dataclasses.replace(base, steps=refine_steps)  # checks the value
        if affine not in AFFINE_MODES:
            raise InputError(f"affine must be one of {', '.join(AFFINE_MODES)}, got {affine!r}")
        self.affine = affine
        self.affine_config = daffine.AffineConfig() if affine_config is None else affine_config
        if self.model is None and self.refine_config.steps == 0 and affine != "on":
            raise InputError("without a model folder, refinement steps must be > 0 "
                             "(or the affine stage on: affine alone)")
        if start not in START_CHOICES:
            raise InputError(f"start must be one of {', '.join(START_CHOICES)}, got {start!r}")
        self.start = start
        self.cautious = bool(cautious)
        self.progress = progress
        self._nets = {}  # (kind, spatial shape) -> T or G built for it
        self._said_no_generator = False

    @property
    def network_config(self):
        return None if self.model is None else self.model.network_config

    @property
    def preprocessing(self):
        """:class:`dgan.registration.model_folder.Preprocessing` of the model, its spacing the
        network spacing (the constructor's, else the model folder's, else the training spacing), or
        None without a model."""
        return self._preprocessing

    def network_for(self, shape, kind="T"):
        """T (or G, ``kind="G"``; None without one) for volumes of spatial ``shape`` (a valid
        padded shape), built once and cached."""
        key = (kind, tuple(int(s) for s in shape))
        if key not in self._nets:
            folders = _model_folders()
            if kind == "G":
                self._nets[key] = folders.generator_for_shape(self.model, key[1])
            else:  # "T", or "T after matching": T taking its matching's field as an input
                self._nets[key] = folders.registration_net_for_shape(
                    self.model, key[1], matching_input=kind != "T")
        return self._nets[key]

    @property
    def matching_passes(self):
        """The block matching's passes: T's own (its first layer) with a model whose T has
        block matching, else :data:`dgan.core.settings.DEFAULT_PASSES`."""
        if self.model is not None and self.network_config.matching:
            return self.network_config.matching
        return dmatching.DEFAULT_PASSES

    def padded_shape(self, shape):
        """The smallest shape >= ``shape`` that T takes: multiples of ``multiple``, >= 2 of them
        (:func:`dgan.data.preprocessing.padded_shape`)."""
        return padded_shape(shape, self.network_config.multiple)

    def predict_flow(self, moving, fixed, scaled=False, initial=None):
        """T's flow for arrays on one grid: normalise, pad, predict, crop.

        T's block matching (its first layer, when it has one) runs outside the network, through
        the registrar's traced matching function, and the rest of T takes its field as an input:
        the same arithmetic, without tracing the matching's many operations into each network.

        :param moving: shape = (B, X, Y, Z), finite
        :param fixed: shape = (B, X, Y, Z)
        :param scaled: the arrays are already scaled (:meth:`scaled`)
        :param initial: T's matching field phi_0 for these arrays on T's padded grid
            (:meth:`padded_shape`), shape = (B, X', Y', Z', 3), voxels, computed already
            (:meth:`match` with ``padded=True``), or None: computed here, as inside T
        :return: flow in voxels, shape = (B, X, Y, Z, 3), float32
        """
        if self.model is None:
            return np.zeros(moving.shape + (3,), np.float32)
        moving_in, window = self._network_input(moving, scaled)
        fixed_in, _ = self._network_input(fixed, scaled)
        shape = moving_in.shape[1:4]
        if not self.network_config.matching:
            net = self.network_for(shape)
            feeds = [{"moving": m[np.newaxis], "fixed": f[np.newaxis]}
                     for m, f in zip(moving_in, fixed_in)]
        else:
            net = self.network_for(shape, kind="T after matching")
            if initial is None:
                initial = [_match_function(tf.constant(m[np.newaxis]), tf.constant(f[np.newaxis]),
                                           self.matching_passes)[0]
                           for m, f in zip(moving_in, fixed_in)]
            elif np.shape(initial)[1:4] != tuple(shape):
                raise ValueError(f"initial has the spatial shape {np.shape(initial)[1:4]}, "
                                 f"T's padded input {tuple(shape)}")
            feeds = [{"moving": m[np.newaxis], "fixed": f[np.newaxis],
                      "initial": np.asarray(phi0, np.float32)[np.newaxis]}
                     for m, f, phi0 in zip(moving_in, fixed_in, initial)]
        flow = np.concatenate([_run_network(net, feed)["flow"] for feed in feeds])
        return np.asarray(flow[(slice(None), *window)], dtype=np.float32)

    def _network_input(self, batch, scaled=False):
        """(B, X, Y, Z) -> ((B, X', Y', Z', 1) scaled and padded, the window that undoes it)."""
        target = self.padded_shape(batch.shape[1:])
        padded = [dio.crop_or_pad(v if scaled else self.scaled(v), target) for v in batch]
        window = tuple(slice(-o, -o + n) for o, n in zip(padded[0][1].offset, batch.shape[1:]))
        return np.stack([array for array, _ in padded])[..., np.newaxis], window

    def scaled(self, volume):
        """Intensities scaled as in training (:meth:`dgan.data.preprocessing.Preprocessing.scale`;
        the default percentiles without a model)."""
        return scale_intensity(volume) if self.model is None else self.preprocessing.scale(volume)

    def translate(self, moving):
        """G(F): the moving arrays rendered in the fixed modality by the model's G, on their grid.

        :param moving: shape = (B, X, Y, Z)
        :return: shape = (B, X, Y, Z), float32, or None (no model, no G, or w_lcc = 0)
        """
        if self.model is None or self.refine_config.w_lcc == 0:
            return None
        if not self.model.has_generator:
            if not self._said_no_generator:
                logger.warning("%s has no generator G (written before G was kept): refinement "
                               "uses the local-gradient term alone", self.model.path)
                self._said_no_generator = True
            return None
        moving_in, window = self._network_input(moving)
        generator = self.network_for(moving_in.shape[1:4], kind="G")
        out = np.concatenate([_run_network(generator, m[np.newaxis]) for m in moving_in])
        return np.asarray(out[(slice(None), *window, 0)], dtype=np.float32)

    def translate_by_histogram(self, moving, fixed, mask=None, config=None, scaled=False):
        """h = E[R | F], the function of intensity that renders the moving scan in the fixed
        contrast, read from the two scans' joint histogram on the overlap
        (:func:`dgan.registration.translation.rendering`): refinement's L_LCC term compares with
        h(F(phi)) where no G renders F, after the block matching (after T, T's G renders it).

        :param moving: shape = (X, Y, Z), on the fixed grid, in its own units (scaled here)
        :param fixed: shape = (X, Y, Z)
        :param mask: where both scans have data, bool (X, Y, Z), or None
        :param config: the refinement's settings (None: :attr:`refine_config`): none when its
            ``w_lcc`` is 0
        :param scaled: the arrays are already scaled (:meth:`scaled`)
        :return: :class:`dgan.registration.translation.Rendering` from scaled intensities to the
            fixed scan's scaled units, or None
        """
        config = self.refine_config if config is None else config
        if config.w_lcc == 0:
            return None
        if not scaled:
            moving, fixed = self.scaled(moving), self.scaled(fixed)
        rendered = translation.rendering(moving, fixed, mask=mask)
        if rendered is not None:
            self._say("refinement: L_LCC against the moving scan rendered in the fixed contrast "
                      "by their joint histogram (E[fixed | moving] on the overlap)")
        return rendered

    def refine_flow(self, moving, fixed, flow, translated, mask=None, config=None,
                    rendering=None, scaled=False):
        """Refine ``flow`` on one pair of arrays on one grid
        (:func:`dgan.registration.refine.refine`).

        :param moving: shape = (X, Y, Z), in its own units (scaled here)
        :param fixed: shape = (X, Y, Z)
        :param flow: T's field, shape = (X, Y, Z, 3), voxels
        :param translated: G(F) on this grid (already scaled), or None
        :param mask: where both scans have data, bool (X, Y, Z), or None: everywhere
        :param config: the refinement's settings, or None: :attr:`refine_config`
        :param rendering: without ``translated``, h of :meth:`translate_by_histogram`, or None
        :param scaled: ``moving`` and ``fixed`` are already scaled (:meth:`scaled`)
        :return: the refined flow, shape = (X, Y, Z, 3), float32; levels too coarse or too
            large for these arrays (:func:`dgan.registration.refine.usable_levels`) are left
            out, and said so
        """
        config = self.refine_config if config is None else config
        if config.steps == 0:
            return flow
        levels = usable_levels(moving.shape, config.levels)
        for factor in config.levels:
            if factor not in levels:
                reason = f"more than {MAX_LEVEL_VOXELS:,} voxels" if level_voxels(
                    moving.shape, factor) > MAX_LEVEL_VOXELS else \
                    f"narrower than {MIN_LEVEL_VOXELS} voxels"
                self._say(f"refinement level 1/{factor}: left out (its grid would be {reason})")
        for factor in levels:
            if factor not in config.levels:
                self._say(f"refinement level 1/{factor}: instead (the finest level within "
                          f"{MAX_LEVEL_VOXELS:,} voxels)")
        config = dataclasses.replace(config, levels=tuple(levels))
        if not scaled:
            moving, fixed = self.scaled(moving), self.scaled(fixed)
        return refine(moving, fixed, flow, translated, config, self.progress, mask=mask,
                      rendering=rendering).flow

    def refine_flows(self, moving, fixed, flows):
        """Refine T's fields of a batch of pairs on one grid, each with G(F) when the model has G.

        :param moving: shape = (B, X, Y, Z), in its own units
        :param fixed: shape = (B, X, Y, Z)
        :param flows: T's fields, shape = (B, X, Y, Z, 3), voxels
        :return: the refined fields, shape = (B, X, Y, Z, 3); ``flows`` itself with 0 steps
        """
        if self.refine_config.steps == 0:
            return flows
        translated = self.translate(moving)
        return np.stack([
            self.refine_flow(m, f, phi, None if translated is None else translated[b])
            for b, (m, f, phi) in enumerate(zip(moving, fixed, flows))
        ])

    def register_arrays(self, moving, fixed):
        """Register arrays that share one voxel grid, of any size.

        The arrays are taken as they are (orientation, voxel size); only the intensity scaling
        and padding of training are applied. For scans with affines use :meth:`register_files`.

        :param moving: shape = (X, Y, Z), or a batch (B, X, Y, Z)
        :param fixed: same shape
        :return: :class:`ArrayRegistration`: ``moved`` (shape of ``moving``, float32, the moving
            intensities warped with edge values beyond the border, as voxelmorph's
            SpatialTransformer) and ``flow`` (shape + (3,), voxels)
        :raises InputError: wrong dimensions, different shapes, NaN or Inf values
        """
        moving = _check_array(moving, "moving")
        fixed = _check_array(fixed, "fixed")
        if moving.shape != fixed.shape:
            raise InputError(f"moving and fixed differ in shape: {moving.shape} and {fixed.shape}")
        single = moving.ndim == 3
        moving_batch = moving[np.newaxis] if single else moving  # (B, X, Y, Z)
        fixed_batch = fixed[np.newaxis] if single else fixed
        started = time.perf_counter()
        flow = self.predict_flow(moving_batch, fixed_batch)  # (B, X, Y, Z, 3)
        network = time.perf_counter()
        flow = self.refine_flows(moving_batch, fixed_batch, flow)
        seconds = {"network": network - started, "refinement": time.perf_counter() - network}
        moved = np.stack([synth.warp(m, f) for m, f in zip(moving_batch, flow)])
        if single:
            return ArrayRegistration(moved=moved[0], flow=flow[0], seconds=seconds)
        return ArrayRegistration(moved=moved, flow=flow, seconds=seconds)

    def network_grid(self, volume):
        """``volume`` on the network grid as in training: RAS+, resampled to the training voxel
        size (:meth:`dgan.data.preprocessing.Preprocessing.network_grid`).

        :param volume: :class:`dgan.data.io.Volume`
        :return: :class:`dgan.data.io.Volume` on the network grid
        """
        return volume if self.model is None else self.preprocessing.network_grid(volume)

    def prepare(self, volume):
        """``volume`` as T sees it in :meth:`register_volumes`: on the network grid
        (:meth:`network_grid`), scaled (:meth:`scaled`), zero-padded, centred, to
        :meth:`padded_shape`. For a scan that lies on the training grid this is the array
        training prepares (:func:`dgan.data.preprocessing.preprocess_volume`).

        :param volume: :class:`dgan.data.io.Volume`
        :return: shape = (X', Y', Z'), float32
        """
        grid = self.network_grid(volume)
        return self._network_input(grid.array[np.newaxis])[0][0, ..., 0]

    def estimate_affine(self, moving, fixed, moving_mask=None, fixed_mask=None):
        """The affine stage's estimate for two scans
        (:func:`dgan.registration.affine.estimate_affine`), comparing them only inside the masks
        (bool :class:`dgan.data.io.Volume` or None).

        :return: :class:`dgan.registration.affine.AffineResult`; ``matrix`` maps fixed-world points
            (RAS mm) to moving-world points
        """
        return daffine.estimate_affine(moving, fixed, self.affine_config, self.progress,
                                       moving_mask, fixed_mask)

    def _affine_stage(self, moving, fixed, moving_mask=None, fixed_mask=None):
        """(alignment or None, the transform to apply or None) under ``self.affine``. ``auto``
        estimates the transform and applies it only when it moves the fixed foreground by more than
        :data:`dgan.registration.settings.AUTO_THRESHOLD_MM` RMS, raises MI over the headers'
        alignment by :data:`dgan.registration.affine.MIN_GAIN`
        (:meth:`dgan.registration.affine.AffineResult.improves`), and beats them on L_LG by
        :data:`AFFINE_LG_MARGIN` without losing more than :data:`FOREGROUND_TOLERANCE` of the
        foregrounds' Dice."""
        if self.affine == "off":
            return None, None
        if self.affine == "auto" and not daffine.pyramid_levels(fixed, self.affine_config):
            self._say("affine: skipped (auto: the fixed scan is too small for its pyramid)")
            return None, None
        alignment = self.estimate_affine(moving, fixed, moving_mask, fixed_mask)
        if self.affine == "on":
            return alignment, alignment.matrix
        if alignment.rms_mm <= AUTO_THRESHOLD_MM:
            self._say(f"affine: kept the headers' alignment (auto: the estimate moves "
                      f"{alignment.rms_mm:.1f} mm RMS <= {AUTO_THRESHOLD_MM:g} mm)")
            return alignment, None
        if not alignment.improves():
            self._say(f"affine: kept the headers' alignment (auto: the estimate gains "
                      f"{100 * alignment.gain:+.1f}% MI < {100 * daffine.MIN_GAIN:g}% over it)")
            return alignment, None
        judged = self.judge_affine(moving, fixed, alignment.matrix, moving_mask, fixed_mask)
        (header_lg, header_fg), (affine_lg, affine_fg) = judged
        if affine_lg < header_lg + AFFINE_LG_MARGIN or affine_fg < header_fg - FOREGROUND_TOLERANCE:
            self._say(f"affine: kept the headers' alignment (auto: MI gains "
                      f"{100 * alignment.gain:+.1f}%, but on the overlap L_LG {header_lg:.4f} "
                      f"-> {affine_lg:.4f} (needs +{AFFINE_LG_MARGIN:g}) and the foregrounds' "
                      f"Dice {header_fg:.3f} -> {affine_fg:.3f} (may lose at most "
                      f"{FOREGROUND_TOLERANCE:g}))")
            return alignment, None
        self._say(f"affine: applied (auto: {alignment.rms_mm:.1f} mm RMS from the headers' "
                  f"alignment, MI {100 * alignment.gain:+.1f}%, on the overlap L_LG "
                  f"{header_lg:.4f} -> {affine_lg:.4f}, foregrounds' Dice {header_fg:.3f} -> "
                  f"{affine_fg:.3f})")
        return alignment, alignment.matrix

    def judge_affine(self, moving, fixed, matrix, moving_mask=None, fixed_mask=None):
        """Two modality-robust judges of the affine stage beside its MI, on the matching grid over
        the voxels that both the headers and ``matrix`` place inside the moving scan (and the
        masks): L_LG (:func:`dgan.registration.scoring.lg_score`), and the Dice of the two scans'
        foregrounds (normalised intensity above :data:`FOREGROUND_LEVEL`: head or brain against
        background, whatever the contrast).

        :param matrix: the transform judged, or None: the headers' alignment alone, over the
            voxels it places inside the moving scan
        :return: ((L_LG, Dice) at the headers' alignment, (L_LG, Dice) through ``matrix``), or
            the first pair alone when ``matrix`` is None
        """
        fixed_n = self.matching_grid(fixed)
        views, masks = [moving], [moving_mask]
        if matrix is not None:
            views.append(daffine.through(moving, matrix))
            masks.append(None if moving_mask is None else daffine.through(moving_mask, matrix))
        fixed_mask_n = None if fixed_mask is None else fixed_mask.replace(
            array=coverage.on_grid(fixed_mask.array, fixed.affine, fixed_n.affine, fixed_n.shape),
            affine=fixed_n.affine)
        region = np.ones(fixed_n.shape, bool)
        for view, mask in zip(views, masks):
            region &= coverage.overlap(view, fixed_n, None, mask, fixed_mask_n)
        if not region.any():
            return ((0.0, 0.0),) * len(views)
        weight = scoring.score_weight(region)
        fixed_scaled = self.scaled(fixed_n.array)
        fixed_fg = dio.normalize_intensity(fixed_n.array)[region] > FOREGROUND_LEVEL
        scores = []
        for view in views:
            on_grid = dio.resample_to_grid(view, fixed_n.affine, fixed_n.shape).array
            moving_fg = dio.normalize_intensity(on_grid)[region] > FOREGROUND_LEVEL
            total = int(fixed_fg.sum()) + int(moving_fg.sum())
            dice = 2.0 * int(np.sum(fixed_fg & moving_fg)) / total if total else 0.0
            scores.append((scoring.lg_score(self.scaled(on_grid), fixed_scaled, None, weight),
                           dice))
        return tuple(scores)

    def _say(self, text):
        if self.progress is not None:
            self.progress(text)

    def start_field(self, moving, fixed, mask=None):
        """The field refinement starts from, on the matching grid (:meth:`matching_grid`): the
        identity, the block matching's (:func:`dgan.core.matching.match`) or, with a model, T's,
        whichever :func:`dgan.registration.scoring.choose` picks by L_LG on the overlap (T only
        where the matching it builds on does not fold).

        :param moving: F on the matching grid, shape = (X, Y, Z), its own units
        :param fixed: R, same shape
        :param mask: where both have data, bool (X, Y, Z), or None: everywhere
        :return: (flow (X, Y, Z, 3) in voxels, float32, :class:`dgan.registration.scoring.Choice`)
        """
        moving, fixed = self.scaled(moving), self.scaled(fixed)
        if mask is not None:  # outside the overlap both read 0: a shared edge, no pull
            moving, fixed = moving * mask, fixed * mask
        if self.start == "identity":  # refinement alone from phi = 0 (the paper's ablation)
            return np.zeros(moving.shape + (3,), np.float32), scoring.Choice("identity", {})
        # T's first layer, when T has one: computed once, on T's padded grid
        matched, padded = self.match(moving, fixed, mask, padded=True)
        if self.model is not None:
            network = ("T", self.predict_flow(
                moving[np.newaxis], fixed[np.newaxis], scaled=True,
                initial=padded[np.newaxis] if self.network_config.matching else None)[0])
        if self.start == "network":  # T's field (without a model, the matching's) as it is
            name, flow = network if self.model is not None else ("matching", matched)
            return flow, scoring.Choice(name=name, scores={})
        candidates = [("identity", None), ("matching", matched)]
        if self.model is not None:
            candidates.append(network)
        choice, flow = scoring.choose(moving, fixed, candidates, scoring.score_weight(mask),
                                      builds_on={"T": "matching"})
        self._say(choice.describe())
        return (np.zeros(moving.shape + (3,), np.float32) if flow is None else flow), choice

    def match(self, moving, fixed, mask=None, padded=False):
        """The block matching's field (:func:`dgan.core.matching.match`, :attr:`matching_passes`)
        for scaled arrays on one grid, padded (to T's input shape, :meth:`padded_shape`, when T
        has block matching; else to the passes' multiple) and cropped back; with ``mask``
        (bool), only directions inside it are compared.

        :param padded: also return the field on the padded grid (T's ``initial`` input)
        :return: shape = (X, Y, Z, 3), voxels, float32; with ``padded``, (that, the padded field)
        """
        passes = self.matching_passes
        if self.model is not None and self.network_config.matching:
            target = self.padded_shape(moving.shape)
        else:
            target = padded_shape(moving.shape, max(factor for factor, _ in passes))
        moving_p, crop = dio.crop_or_pad(moving, target)
        fixed_p, _ = dio.crop_or_pad(fixed, target)
        valid = None
        if mask is not None:
            valid = dmatching.pass_validity(dio.crop_or_pad(mask, target, fill=False)[0], passes)
        flow = _match_function(tf.constant(moving_p[None, ..., None]),
                               tf.constant(fixed_p[None, ..., None]), passes, valid=valid)[0]
        flow = np.asarray(flow, np.float32)
        cropped = np.asarray(crop.undo(flow), np.float32)
        return (cropped, flow) if padded else cropped

    def refinement_from(self, choice, shape=None):
        """The refinement settings after the start field ``choice``
        (:class:`dgan.registration.scoring.Choice`), when the registrar is ``cautious``
        (adapting them to the start): after the block matching's field,
        :func:`dgan.registration.settings.matching_refinement` (smoothness on phi); made cautious
        (:func:`dgan.registration.settings.cautious_refinement`: one level, the finest a grid of
        ``shape`` (the fixed scan's; None: not known) allows, small steps) when
        ``start="auto"`` settled on the identity; else :attr:`refine_config`."""
        config = self.refine_config
        if self.cautious and choice.name == "matching":
            return matching_refinement(config)
        if not (self.cautious and self.start == "auto" and choice.name == "identity"):
            return config
        cautious = cautious_refinement(config, shape)
        if cautious != config:
            level = cautious.levels[0]
            where = "on the finest level alone" if level == config.levels[-1] else \
                f"on one level, 1/{level} (the finest level within {CAUTIOUS_MAX_VOXELS:,} voxels)"
            self._say(f"refinement: cautious from the identity ({cautious.steps} iterations of "
                      f"step {cautious.learning_rate:g} {where}, alpha {cautious.alpha:g}): no "
                      "start field was found, so the pair is aligned already or lacks the "
                      "structure a search needs; only a small local correction is trusted")
        return cautious

    def keep_if_better(self, moving, fixed, start, refined, grid, mask=None, *, margin):
        """Refinement's field, or the field it started from when it does not raise L_LG on the
        overlap (:func:`dgan.registration.scoring.lg_score`, on the matching grid ``grid``) by
        ``margin``: on a pair that is already aligned, refinement fits the two contrasts'
        differences and moves voxels for no gain.

        :param moving: the moving scan on the matching grid, (X', Y', Z'), its own units
        :param fixed: the fixed :class:`dgan.data.io.Volume` (its grid: the fields')
        :param start: the start field on the fixed grid, voxels (X, Y, Z, 3)
        :param refined: refinement's field on the fixed grid
        :param grid: the matching grid's :class:`dgan.data.io.Volume` of the fixed scan
        :param mask: the overlap on that grid, bool, or None
        :param margin: the gain refinement must make (:func:`refinement_margin`)
        """
        weight = scoring.score_weight(mask)
        moving_n = self.scaled(moving)
        fixed_n = self.scaled(grid.array)
        scores = [scoring.lg_score(moving_n, fixed_n, flow_to_grid(
            field, fixed.affine, grid.affine, grid.shape), weight) for field in (start, refined)]
        kept = scores[1] >= scores[0] + margin
        rule = f"it must gain {margin:g}" if margin > 0 else "it must not lose any"
        self._say(f"refinement: {'kept' if kept else 'left out'} (L_LG on the overlap "
                  f"{scores[0]:.4f} -> {scores[1]:.4f}; {rule})")
        return refined if kept else start

    def matching_grid(self, volume):
        """The grid the start field is found on: with a model, T's network grid
        (:meth:`network_grid`); without, the scan in RAS+ at voxels of at least
        :data:`MATCHING_SPACING_MM` (its own where coarser)."""
        if self.model is not None:
            return self.network_grid(volume)
        volume = dio.to_canonical(volume)
        spacing = np.maximum(volume.spacing, MATCHING_SPACING_MM)
        if np.allclose(spacing, volume.spacing, rtol=1e-3):
            return volume
        return dio.resample_to_spacing(volume, spacing)

    def register_volumes(self, moving, fixed, moving_labels=None, moving_mask=None,
                         fixed_mask=None):
        """Register a moving scan to a fixed scan on their own grids (see the module docstring).

        :param moving: :class:`dgan.data.io.Volume`, any grid
        :param fixed: :class:`dgan.data.io.Volume`; all outputs are on its grid
        :param moving_labels: :class:`dgan.data.io.Volume` of labels (its own affine), or None
        :param moving_mask: where the moving scan is to be compared: a bool
            :class:`dgan.data.io.Volume` on its grid (:func:`dgan.core.coverage.load_mask`), or
            None: its whole grid
        :param fixed_mask: likewise for the fixed scan
        :return: :class:`FileRegistration`
        :raises InputError: the moving scan does not overlap the fixed scan's grid at all; a mask
            off its scan's grid, not binary or empty
        """
        started = time.perf_counter()
        if moving_mask is not None:
            moving_mask = coverage.check_mask(moving_mask, moving, "moving mask")
        if fixed_mask is not None:
            fixed_mask = coverage.check_mask(fixed_mask, fixed, "fixed mask")
        alignment, transform = self._affine_stage(moving, fixed, moving_mask, fixed_mask)
        if transform is not None:  # read through T from now on: still one interpolation
            moving = daffine.through(moving, transform)
            if moving_labels is not None:
                moving_labels = daffine.through(moving_labels, transform)
            if moving_mask is not None:
                moving_mask = daffine.through(moving_mask, transform)
        aligned = time.perf_counter()
        on_fixed = dio.resample_to_grid(moving, fixed.affine, fixed.shape, order=1)
        mask = coverage.overlap(moving, fixed, None, moving_mask, fixed_mask)
        if not on_fixed.array.any() or not mask.any():
            raise InputError(
                f"the moving scan ({moving.path or 'array'}) does not overlap the fixed scan "
                f"({fixed.path or 'array'}) at all: its headers put it outside the fixed "
                "scan's field of view (or outside the masks); check the headers, or use the "
                "affine stage (--affine on)")
        mask = None if mask.all() else mask
        fixed_n = self.matching_grid(fixed)
        moving_n = self.matching_grid(on_fixed)  # same grid: a function of affine and shape
        mask_n = None if mask is None else coverage.on_grid(mask, fixed.affine, fixed_n.affine,
                                                            fixed_n.shape)
        flow_n, choice = self.start_field(moving_n.array, fixed_n.array, mask_n)
        flow = flow_to_grid(flow_n, fixed_n.affine, fixed.affine, fixed.shape)
        network = time.perf_counter()
        if self.refine_config.steps:
            config = self.refinement_from(choice, fixed.shape)
            translated = None
            if choice.name == "T":  # a T that lost to the matching: its G is no guide either
                translated = self.translate(moving_n.array[np.newaxis])
            if translated is not None:  # G(F) from the network grid onto the fixed grid
                translated = dio.resample_to_grid(
                    dio.Volume(translated[0], fixed_n.affine), fixed.affine, fixed.shape, order=1
                ).array
            moving_s, fixed_s = self.scaled(on_fixed.array), self.scaled(fixed.array)
            rendering = None
            if translated is None and choice.name == "matching":
                rendering = self.translate_by_histogram(moving_s, fixed_s, mask, config,
                                                        scaled=True)
            refined = self.refine_flow(moving_s, fixed_s, flow, translated, mask, config,
                                       rendering, scaled=True)
            flow = refined if self.start != "auto" else \
                self.keep_if_better(moving_n.array, fixed, flow, refined, fixed_n, mask_n,
                                    margin=refinement_margin(choice))
        seconds = {"affine": aligned - started, "network": network - aligned,
                   "refinement": time.perf_counter() - network}
        moved = sample_through_world(moving, fixed.affine, flow, order=1)
        labels = None
        if moving_labels is not None:
            labels = sample_through_world(moving_labels, fixed.affine, flow, order=0)
        if transform is not None:  # the written flow: affine, then T's field and refinement
            flow = daffine.compose_flow(flow, transform, fixed.affine)
        return FileRegistration(
            moved=moved,
            flow=flow,
            labels=labels,
            affine=fixed.affine,
            header=fixed.header,
            folding_fraction=metrics.folding_fraction(flow),
            network_affine=fixed_n.affine,
            network_shape=fixed_n.shape,
            seconds=seconds,
            transform=np.eye(4) if transform is None else transform,
            alignment=alignment,
        )

    def register_files(self, moving_path, fixed_path, moving_labels=None, moving_mask=None,
                       fixed_mask=None):
        """Register two scan files (NIfTI, MGZ or .npz); see :meth:`register_volumes`.

        :param moving_path: the moving scan
        :param fixed_path: the fixed scan; the outputs are on its grid
        :param moving_labels: a label map of the moving scan (its own grid), or None
        :param moving_mask: a binary mask file on the moving scan's grid, or None
        :param fixed_mask: a binary mask file on the fixed scan's grid, or None
        :return: :class:`FileRegistration`
        :raises InputError: a missing, unreadable, non-3D, NaN or empty file; a bad mask
        """
        moving, fixed, labels = load_inputs(moving_path, fixed_path, moving_labels)
        moving_mask, fixed_mask = load_masks(moving, fixed, moving_mask, fixed_mask)
        return self.register_volumes(moving, fixed, labels, moving_mask, fixed_mask)


def refinement_margin(choice):
    """The L_LG gain refinement must make to be kept (:meth:`Registrar.keep_if_better`) after the
    start field ``choice``: from the identity :data:`dgan.registration.scoring.MARGIN` (the pair
    may be aligned already, and refinement then fits the two contrasts' differences); after a
    found field (the matching's or T's, which gained that margin over the identity: the pair is
    misaligned and has structure) none, it must only not lose: refinement there also weighs
    L_LCC and smoothness, which trade a little L_LG for a smoother, better field
    (docs/notes/2026-12-07-histogram-translation.md)."""
    return scoring.MARGIN if choice.name == "identity" else 0.0


def _model_folders():
    """:mod:`dgan.registration.model_folder`, imported when a model is used: it needs Keras,
    neurite and voxelmorph, seconds of start-up that registering without a model does without."""
    from . import model_folder
    return model_folder


def _run_network(net, inputs):
    """A Keras network's outputs for one batch of NumPy inputs (a dict of them, or one array), as
    NumPy: the network called op by op, in inference mode. Keras's ``predict_on_batch`` first
    traces a predict function, seconds that a registration call, which runs each network once
    or a few times, never earns back; each op of these networks is a whole-volume convolution,
    so calling them one by one costs little (docs/notes/2026-12-07-speed.md, section 7)."""
    if isinstance(inputs, dict):
        inputs = {name: tf.constant(value) for name, value in inputs.items()}
    else:
        inputs = tf.constant(inputs)
    return tf.nest.map_structure(np.asarray, net(inputs, training=False))


#: :func:`dgan.core.matching.match` traced as one graph (once per grid shape in a process): run
#: op by op it costs more time than tracing it.
_match_function = tf.function(dmatching.match, autograph=False)


def _check_array(array, name):
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise InputError(
            f"expected a 3D array (X, Y, Z) or a batch (B, X, Y, Z), got shape {array.shape}", name
        )
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"values have the non-numeric type {array.dtype}", name)
    array = array.astype(np.float32, copy=False)
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise InputError(f"{bad} voxels are NaN or Inf", name)
    return array
