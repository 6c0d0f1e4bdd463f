"""Registration methods behind one interface, for comparing them on the same pairs.

``register(moving, fixed, moving_labels, spacing)`` -> :class:`MethodResult`:
:class:`IdentityMethod`, :class:`ModelMethod` (any dgan model folder, through
:class:`dgan.registration.registrar.Registrar`, which resamples to the model's training spacing
and brings the flow back to the pair's grid), :class:`AntsSyNMethod` (ANTs SyN, Avants et al.
2008, with Mattes mutual information; ``antspyx``, an optional extra), and the mono-modal
ceiling :func:`ants_ceiling` (ANTs SyN-CC to the pair's same-modality fixed image ``fixed_t1``).
:func:`dgan.evaluation.report.evaluate` runs them on a benchmark's pairs.

Every flow is a displacement in voxels of the pair's grid, 'ij' indexing,
``moved(p) = moving(p + flow(p))``.
"""

import dataclasses
import importlib
import os
import tempfile
import time

import numpy as np

from ..data import synth
from ..data.io import Volume
from ..errors import InputError

#: ANTs SyN settings (``ants.registration`` arguments) used unless told otherwise.
ANTS_DEFAULTS = {
    "type_of_transform": "SyNOnly",  # the pairs are affinely aligned: deformable stage only
    "syn_metric": "mattes",  # Mattes mutual information
    "syn_sampling": 32,  # histogram bins
    "reg_iterations": (40, 20, 10),  # at shrink factors 4, 2, 1
    "grad_step": 0.2,
    "flow_sigma": 3.0,  # smoothing of the update field, voxels
    "total_sigma": 0.0,  # smoothing of the total field
}
#: The ceiling's changes to :data:`ANTS_DEFAULTS`: cross-correlation over a 5^3 window
#: (radius 2 voxels), ANTs' usual mono-modal SyN metric.
ANTS_CC = {"syn_metric": "CC", "syn_sampling": 2}
#: The ceiling's name in the tables (:func:`ants_ceiling`).
CEILING_NAME = "ANTs SyN-CC (T1 fixed, ceiling)"


# --- the methods -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class MethodResult:
    """One registration.

    :param flow: shape = (X, Y, Z, 3), voxels of the pair's grid
    :param moved: the moving image warped, (X, Y, Z) float32
    :param labels: the moving labels warped (nearest neighbour), (X, Y, Z) int32
    :param seconds: wall time of the registration
    """

    flow: np.ndarray
    moved: np.ndarray
    labels: np.ndarray
    seconds: float


def _affine(spacing):
    return np.diag([float(s) for s in spacing] + [1.0])


class IdentityMethod:
    """No registration: the zero flow."""

    name = "identity"
    warmup = False

    def register(self, moving, fixed, moving_labels, spacing):
        started = time.perf_counter()
        flow = np.zeros(moving.shape + (3,), np.float32)
        return MethodResult(flow, np.asarray(moving, np.float32),
                            np.asarray(moving_labels, np.int32), time.perf_counter() - started)


class ModelMethod:
    """A dgan model folder through :meth:`dgan.registration.registrar.Registrar.register_volumes`.

    The pair's arrays become volumes with the affine ``diag(spacing)``; the Registrar resamples
    them to the model's training voxel size, runs T, brings the flow back to the pair's grid and
    warps the moving image and labels from their own grid.

    :param name: shown in the tables
    :param folder: the model folder, or None: refinement alone from the identity
    :param refine_steps: instance refinement iterations per level after T
        (:mod:`dgan.registration.refine`); 0: T alone
    :param refine_config: :class:`dgan.registration.settings.RefineConfig` for the other settings,
        or None
    :param network_spacing: the voxel size in mm T runs at, or None: the model's training
        spacing (:class:`dgan.registration.registrar.Registrar`)
    :param start: :class:`dgan.registration.registrar.Registrar`'s ``start``: ``"network"`` (the
        default here) scores T's field as trained (without a model, the block matching's);
        ``"auto"`` lets the pair choose, as ``dgan-register`` does (the real-scan benchmark measures
        that)
    """

    warmup = True  # the first call builds T for the padded shape and traces predict

    def __init__(self, name, folder, refine_steps=0, refine_config=None, network_spacing=None,
                 start="network"):
        self.name = name
        self.folder = None if folder is None else os.fspath(folder)
        from ..registration.registrar import Registrar

        self.registrar = Registrar(folder, refine_steps=refine_steps, refine_config=refine_config,
                                   network_spacing=network_spacing, start=start)

    def register(self, moving, fixed, moving_labels, spacing):
        affine = _affine(spacing)
        started = time.perf_counter()
        out = self.registrar.register_volumes(
            Volume(np.asarray(moving, np.float32), affine),
            Volume(np.asarray(fixed, np.float32), affine),
            Volume(np.asarray(moving_labels, np.int32), affine),
        )
        seconds = time.perf_counter() - started
        return MethodResult(out.flow, out.moved, out.labels, seconds)


def import_ants():
    """The ``ants`` module (``pip install antspyx``), or None with the reason as second value."""
    try:
        return importlib.import_module("ants"), None
    except ImportError as error:
        return None, (f"ANTs SyN skipped: antspyx is not installed ({error}); "
                      "pip install antspyx (or the 'ants' extra) to measure it")


class AntsSyNMethod:
    """ANTs SyN with Mattes mutual information, through ``antspyx``.

    The arrays become ANTs images with the pair's voxel size, origin 0 and identity direction;
    ``ants.registration(fixed, moving, **settings)`` runs (:data:`ANTS_DEFAULTS`), its forward
    transforms are composed into one displacement field on the fixed grid
    (``ants.apply_transforms(..., compose=...)``), in mm along the array axes, and divided by the
    spacing: ANTs' forward field maps a fixed point x to the moving point x + u(x), the
    convention of every flow here. The moving image and labels are warped with that flow by
    :func:`dgan.data.synth.warp`, as for the other methods.

    :param ants: the ``ants`` module (:func:`import_ants`)
    :param name: shown in the tables (default :attr:`name`)
    :param fixed_key: the pair's key of the image registered to: ``"fixed"`` (the other
        modality) or ``"fixed_t1"`` (the same modality, see :func:`ants_ceiling`)
    :param settings: changes to :data:`ANTS_DEFAULTS`
    """

    name = "ANTs SyN (MI)"
    warmup = False

    def __init__(self, ants, name=None, fixed_key="fixed", **settings):
        unknown = set(settings) - set(ANTS_DEFAULTS)
        if unknown:
            raise InputError(f"unknown ANTs settings: {', '.join(sorted(unknown))}")
        self.ants = ants
        self.name = name or type(self).name
        self.fixed_key = fixed_key
        self.settings = {**ANTS_DEFAULTS, **settings}

    def flow(self, moving, fixed, spacing):
        """ANTs SyN's displacement field, voxels, shape = moving.shape + (3,)."""
        return self.run(moving, fixed, spacing)[0]

    def run(self, moving, fixed, spacing):
        """(flow in voxels (X, Y, Z, 3), ANTs' own warped moving image (X, Y, Z))."""
        ants = self.ants
        spacing = tuple(float(s) for s in spacing)
        fixed_image = ants.from_numpy(np.asarray(fixed, np.float32), spacing=spacing)
        moving_image = ants.from_numpy(np.asarray(moving, np.float32), spacing=spacing)
        with tempfile.TemporaryDirectory(prefix="dgan-ants-") as tmp:
            prefix = os.path.join(tmp, "syn_")
            result = ants.registration(fixed_image, moving_image, outprefix=prefix,
                                       verbose=False, **self.settings)
            field_path = ants.apply_transforms(fixed_image, moving_image,
                                               result["fwdtransforms"], compose=prefix)
            field = ants.image_read(field_path).numpy()  # (X, Y, Z, 3), mm
        flow = (field / np.asarray(spacing, np.float32)).astype(np.float32)
        return flow, result["warpedmovout"].numpy()

    def register(self, moving, fixed, moving_labels, spacing):
        started = time.perf_counter()
        flow = self.flow(moving, fixed, spacing)
        moved = synth.warp(moving, flow)
        labels = synth.warp(np.asarray(moving_labels, np.int32), flow, order=0)
        return MethodResult(flow, moved, labels, time.perf_counter() - started)


def ants_ceiling(ants, **settings):
    """The mono-modal ceiling: ANTs SyN with local cross-correlation (:data:`ANTS_CC`) from the
    moving image to the fixed anatomy in the moving modality (the pair's ``"fixed_t1"``).

    Same deformations and labels as the cross-modal pairs, so a cross-modal method is judged by
    how much of the gap between identity and this ceiling it closes.

    :param settings: changes to :data:`ANTS_CC` (e.g. ``reg_iterations``)
    :return: :class:`AntsSyNMethod` named :data:`CEILING_NAME`
    """
    return AntsSyNMethod(ants, name=CEILING_NAME, fixed_key="fixed_t1", **{**ANTS_CC, **settings})
