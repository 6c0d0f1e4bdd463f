"""The real-scan benchmark: multi-contrast scans of real subjects, as users have them.

Everything else dgan measures itself on is one skull-stripped subject, full coverage, isotropic,
on one grid. Real inputs are whole heads, slabs, thick slices, other grids and orientations, and
most often scans of one session that their headers already align. Three kinds of case:

- **aligned**: a pair as it comes, its headers aligning it; the right answer is to leave it. The
  figure is how far the registration moved it: the mean length (mm) of the returned field over
  the fixed scan's foreground inside the moving scan's coverage (``moved_mm``).
- **deformed**: the same pair with the fixed scan warped by a known smooth field u (at most
  ``max_mm`` long, :func:`smooth_field_mm`; or, for the whole-head pair, mostly one shift of up
  to ``max_mm`` per axis, :func:`shift_field_mm`), so that the true answer is u: the end-point
  error (mm) of the returned field against u over the same region (``epe_mm``).
- **labelled**: where both scans have labels (the spinal cord), the Dice of the moving labels
  registered against the fixed labels (``dice``), on the aligned and deformed cases alike.

Variants generated from the scans: a pair aligned by construction (the moving scan itself in an
inverted contrast with a bias field and noise, on the fixed scan's grid: the one case whose true
answer is exactly known to be the identity, where scans of two acquisitions carry whatever the
subject moved between them), a slab (the moving scan cut to ``SLAB_MM`` along its slice
axis), thick slices (resampled to ``THICK_MM`` along it) and another grid (axes permuted,
coarser voxels; the headers still say where it lies).

Datasets (none ships with dgan; see docs/benchmarks.md for where each comes from and its
licence), under one data folder (``--data``), each used when its files are present:

- ``sct_testing_data``: the Spinal Cord Toolbox's test subject, T2 (moving) and T1w (fixed),
  1 mm, different fields of view and orientations, manual cord masks (MIT);
- ``chris_rorden_NC``: a whole-head proton-density scan (0.86 x 0.86 x 2.4 mm, part of the head)
  and a whole-head 0.88 mm T1 of the same session (CC BY-NC 4.0: evaluation only). Their headers
  do not align them: the PD sits 9 degrees and 8 mm off the T1 (ANTs's rigid stage and dgan's
  affine stage find the same transform, and through it the T1's tissue edges fall on the PD's;
  docs/notes/2026-12-07-header-check.md). The PD is used with its header corrected by that
  transform (:data:`PD_HEADER_CORRECTION`), so that its aligned case is aligned;
- ``ixi002_hdbet``: IXI subject 002, skull-stripped T2 (moving) and T1 (fixed) with brain masks
  (CC BY-SA 3.0).

Every method registers the same files: ``dgan-register``'s defaults (:class:`DganMethod`) with
and without a model folder, and ANTs SyN with Mattes MI with its own affine stage and from the
headers' alignment (:class:`AntsMethod`).
"""

import dataclasses
import os
import tempfile
import time

import numpy as np

from ..core import coverage, metrics
from ..data import io as dio
from ..data import synth
from ..errors import InputError

#: The transform (T1 world -> PD world, RAS mm) that aligns ``chris_PD`` with ``chris_t1``, whose
#: headers leave them 9 degrees and 8 mm apart: estimated on 2026-12-07 by dgan's affine stage
#: (``--affine on``, the T1 at 1.5 mm), the same rotation and shift as ANTs's rigid stage finds
#: (docs/notes/2026-12-07-header-check.md). The benchmark reads the PD through it
#: (:func:`dgan.registration.affine.through`): its header is corrected, its voxels untouched.
PD_HEADER_CORRECTION = np.array([[1.0048, 0.0200, 0.0068, 0.9436],
                                 [-0.0221, 0.9906, 0.1566, 1.5330],
                                 [-0.0007, -0.1514, 0.9905, 8.2210],
                                 [0.0, 0.0, 0.0, 1.0]])

#: The deformed cases' largest displacements (mm).
DEFORMATIONS_MM = (4.0, 8.0)
#: Control-point spacing of the known smooth fields (mm).
FIELD_SMOOTHNESS_MM = 100.0
#: The shifted cases' largest displacement along each axis (mm): fields that are mostly one
#: shift, as between two sessions of a head (:func:`shift_field_mm`).
SHIFTS_MM = (4.0, 8.0)
#: Control-point spacing of the shifted cases' variation (mm).
SHIFT_SMOOTHNESS_MM = 150.0
#: The slab variant keeps this many mm of the moving scan along its slice axis.
SLAB_MM = 40.0
#: The thick-slice variant's slice thickness (mm).
THICK_MM = 4.0
#: Fixed scans finer than this are resampled to it first (mm), to keep the run short.
FIXED_SPACING_MM = 1.5
#: ANTs SyN's settings (Mattes MI on both stages); ``type_of_transform`` is the method's.
ANTS_SETTINGS = {"aff_metric": "mattes", "syn_metric": "mattes", "syn_sampling": 32,
                 "reg_iterations": (40, 20, 10), "grad_step": 0.2, "flow_sigma": 3.0,
                 "total_sigma": 0.0}


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One registration problem; everything on disk so that every method reads the same files.

    :param name: shown in the tables
    :param kind: ``"aligned"`` or ``"deformed"``
    :param moving: path of the moving scan
    :param fixed: path of the fixed scan (the deformed one for a deformed case)
    :param truth: the true field on the fixed grid, voxels (X, Y, Z, 3); zeros when aligned
    :param region: where the field is scored, bool on the fixed grid
    :param moving_labels: path, or None
    :param fixed_labels: the fixed labels as an int array on the fixed grid, or None
    """

    name: str
    kind: str
    moving: str
    fixed: str
    truth: np.ndarray
    region: np.ndarray
    moving_labels: str | None = None
    fixed_labels: np.ndarray | None = None


def smooth_field_mm(shape, affine, max_mm, seed):
    """A random smooth displacement field on a grid whose longest vector is ``max_mm`` mm:
    :func:`dgan.data.synth.random_smooth_flow` drawn in mm and converted to voxels of the grid.

    :return: shape = (X, Y, Z, 3), float32, voxels
    """
    smoothness = FIELD_SMOOTHNESS_MM / float(np.mean(dio.voxel_spacing(affine)))
    field_mm = synth.random_smooth_flow(shape, max_mm, smoothness, np.random.default_rng(seed))
    return _in_voxels(field_mm, affine)


def _in_voxels(field_mm, affine):
    """A field of world (RAS) millimetre vectors as voxels of the grid of ``affine``, float32."""
    spacing = dio.voxel_spacing(affine)
    directions = np.asarray(affine, np.float64)[:3, :3] / spacing  # unit axis directions
    return (field_mm @ np.linalg.inv(directions).T / spacing).astype(np.float32)


def shift_field_mm(shape, affine, region, max_mm, seed):
    """A smooth field that is mostly one shift: smooth noise (control points
    :data:`SHIFT_SMOOTHNESS_MM` apart) with its mean over ``region`` removed, plus a shift of two
    of its standard deviations of random sign along each axis, each axis scaled so that its
    largest component over ``region`` is ``max_mm``: a displacement like a head's between two
    sessions, most of it common to every voxel.

    :param region: bool on the grid, where the field is scored
    :return: shape = (X, Y, Z, 3), float32, voxels
    """
    rng = np.random.default_rng(seed)
    smoothness = SHIFT_SMOOTHNESS_MM / float(np.mean(dio.voxel_spacing(affine)))
    noise = synth.smooth_noise(shape, smoothness, rng, channels=3).astype(np.float64)
    inside = noise[region]
    field_mm = noise - inside.mean(0) + rng.choice([-1.0, 1.0], 3) * 2.0 * inside.std(0)
    field_mm *= max_mm / np.abs(field_mm[region]).max(0)
    return _in_voxels(field_mm, affine)


def deform(volume, flow, order=1):
    """``volume`` warped by ``flow`` (voxels of its grid): volume(p + flow(p)), on its grid."""
    return volume.replace(array=synth.warp(volume.array, flow, order=order).astype(
        volume.array.dtype))


def scored_region(moving, fixed):
    """The fixed scan's foreground inside the moving scan's coverage: where fields are scored."""
    foreground = dio.normalize_intensity(fixed.array) > 0.05
    return foreground & coverage.grid_coverage(moving, fixed.affine, fixed.shape)


def slice_axis(volume):
    """The voxel axis with the largest spacing (the slice axis of a 2D acquisition; the last one
    when they tie)."""
    spacing = volume.spacing
    return int(np.flatnonzero(spacing >= spacing.max() - 1e-6)[-1])


def slab(volume, thickness_mm):
    """The middle ``thickness_mm`` of a volume along its slice axis, its affine moved along."""
    axis = slice_axis(volume)
    keep = max(2, int(round(thickness_mm / volume.spacing[axis])))
    start = max(0, (volume.shape[axis] - keep) // 2)
    index = [slice(None)] * 3
    index[axis] = slice(start, start + keep)
    shift = np.eye(4)
    shift[axis, 3] = start
    return volume.replace(array=np.ascontiguousarray(volume.array[tuple(index)]),
                          affine=volume.affine @ shift)


def thick_slices(volume, thickness_mm):
    """The volume resampled to ``thickness_mm`` along its slice axis (antialiased)."""
    spacing = volume.spacing.copy()
    spacing[slice_axis(volume)] = thickness_mm
    return dio.resample_to_spacing(volume, spacing)


def other_grid(volume, spacing_mm=1.7):
    """The same scan on another grid: voxel axes reversed in order and resampled to
    ``spacing_mm``; the affine says where every voxel lies, so the world is unchanged."""
    resampled = dio.resample_to_spacing(volume, spacing_mm)
    permutation = np.eye(4)
    permutation[:3, :3] = np.eye(3)[::-1].T  # voxel (i, j, k) -> old voxel (k, j, i)
    return resampled.replace(array=np.ascontiguousarray(resampled.array.transpose(2, 1, 0)),
                             affine=resampled.affine @ permutation)


def inverted_contrast(volume, grid, seed):
    """The same scan in an inverted, T1-like contrast on another grid, aligned by construction:
    its foreground's intensities reversed (1 - I: a T2's bright fluid turns dark, its dark white
    matter bright), a random gamma, smooth bias field and noise
    (:func:`dgan.synth.random_intensity_augmentation`), resampled onto ``grid``
    (:class:`dgan.io.Volume`, e.g. the fixed scan's). Registering ``volume`` to it, the right
    answer is exactly the identity."""
    scaled = dio.normalize_intensity(volume.array)
    inverted = np.where(scaled > 0.05, 1.0 - scaled + 0.05, 0.0).astype(np.float32)
    rendered = synth.random_intensity_augmentation(inverted, seed)
    return dio.resample_to_grid(volume.replace(array=rendered), grid.affine, grid.shape)


def _coarsened(volume, spacing_mm=FIXED_SPACING_MM):
    if float(np.min(volume.spacing)) >= spacing_mm - 1e-6:
        return volume
    return dio.resample_to_spacing(volume, np.maximum(volume.spacing, spacing_mm))


class CaseWriter:
    """Writes the cases' files into ``folder`` and builds :class:`Case` objects."""

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def save(self, name, volume):
        path = os.path.join(self.folder, name + ".nii.gz")
        dio.save_volume(path, volume.array, volume.affine)
        return path

    def cases(self, tag, moving, fixed, moving_labels=None, fixed_labels=None, seed=0,
              deformations=DEFORMATIONS_MM, shifts=()):
        """The aligned case, one deformed case per entry of ``deformations``
        (:func:`smooth_field_mm`) and one per entry of ``shifts`` (:func:`shift_field_mm`)."""
        moving_path = self.save(f"{tag}_moving", moving)
        labels_path = None if moving_labels is None else self.save(f"{tag}_moving_labels",
                                                                   moving_labels)
        region = scored_region(moving, fixed)
        out = [Case(f"{tag}, aligned", "aligned", moving_path, self.save(f"{tag}_fixed", fixed),
                    np.zeros(fixed.shape + (3,), np.float32), region, labels_path,
                    None if fixed_labels is None else fixed_labels.array)]
        fields = [(f"deformed {max_mm:g} mm", f"{max_mm:g}mm",
                   smooth_field_mm(fixed.shape, fixed.affine, max_mm, seed + index))
                  for index, max_mm in enumerate(deformations)]
        fields += [(f"shifted up to {max_mm:g} mm per axis", f"shift{max_mm:g}mm",
                    shift_field_mm(fixed.shape, fixed.affine, region, max_mm, seed + 50 + index))
                   for index, max_mm in enumerate(shifts)]
        for name, suffix, truth in fields:
            warped = deform(fixed, truth)
            warped_labels = None if fixed_labels is None else deform(fixed_labels, truth,
                                                                     order=0).array
            out.append(Case(f"{tag}, {name}", "deformed", moving_path,
                            self.save(f"{tag}_fixed_{suffix}", warped), truth, region,
                            labels_path, warped_labels))
        return out


def build_cases(data, folder, progress=print):
    """Every case whose data lie under ``data`` (module docstring), written into ``folder``.

    :raises InputError: no dataset found under ``data``
    """
    writer = CaseWriter(folder)
    cases = []
    spine = os.path.join(data, "sct_testing_data")
    if os.path.isdir(spine):
        moving = dio.load_volume(os.path.join(spine, "t2", "t2.nii.gz"))
        fixed = dio.load_volume(os.path.join(spine, "t1", "t1w.nii.gz"))
        labels = [dio.load_volume(os.path.join(spine, *p), kind="labels") for p in
                  (("t2", "t2_seg-manual.nii.gz"), ("t1", "t1w_seg-manual.nii.gz"))]
        cases += writer.cases("spine T2 -> T1w", moving, fixed, *labels, seed=10,
                              deformations=DEFORMATIONS_MM[:1])
    head = os.path.join(data, "chris_rorden_NC")
    if os.path.isdir(head):
        from ..registration.affine import through  # TensorFlow: not for --help
        moving = through(dio.load_volume(os.path.join(head, "chris_PD.nii.gz")),
                         PD_HEADER_CORRECTION)
        fixed = _coarsened(dio.load_volume(os.path.join(head, "chris_t1.nii.gz")))
        cases += writer.cases("whole-head PD slab (header corrected) -> T1", moving, fixed,
                              seed=20, shifts=SHIFTS_MM)
    brain = os.path.join(data, "ixi002_hdbet")
    if os.path.isdir(brain):
        moving = dio.load_volume(os.path.join(brain, "hd_bet_IXI002-Guys-0828-T2.nii.gz"))
        fixed = _coarsened(dio.load_volume(
            os.path.join(brain, "hd_bet_IXI002-Guys-0828-T1.nii.gz")))
        cases += writer.cases("IXI T2 -> T1 (skull-stripped)", moving, fixed, seed=30,
                              deformations=DEFORMATIONS_MM[:1])
        cases += writer.cases(f"IXI T2 {SLAB_MM:g} mm slab -> T1", slab(moving, SLAB_MM), fixed,
                              seed=31, deformations=DEFORMATIONS_MM[:1])
        cases += writer.cases("IXI T2 -> itself inverted, bias, noise, T1's grid",
                              moving, inverted_contrast(moving, fixed, seed=33), seed=33,
                              deformations=DEFORMATIONS_MM[:1])
        cases += writer.cases(f"IXI T2 {THICK_MM:g} mm slices, other grid -> T1",
                              other_grid(thick_slices(moving, THICK_MM)), fixed, seed=32,
                              deformations=())
    if not cases:
        raise InputError("no real-scan dataset found (sct_testing_data, chris_rorden_NC, "
                         "ixi002_hdbet): see docs/benchmarks.md for how to get them", data)
    progress(f"{len(cases)} cases in {folder}")
    return cases


# --- methods -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Outcome:
    """A method's answer: flow on the fixed grid (voxels), moved labels or None, seconds."""

    flow: np.ndarray
    labels: np.ndarray | None
    seconds: float


class DganMethod:
    """``dgan-register`` with its defaults (``--affine auto``, the model's refinement), in
    process: the same :class:`dgan.registration.registrar.Registrar` the command builds."""

    def __init__(self, name, model=None, log=None):
        from ..registration.model_folder import as_model_folder
        from ..registration.registrar import Registrar, model_refinement
        self.name = name
        folder = None if model is None else as_model_folder(model)
        self.registrar = Registrar(folder, refine_config=model_refinement(folder),
                                   affine="auto", progress=log)

    def register(self, case):
        from ..registration.files import load_inputs
        started = time.perf_counter()
        moving, fixed, labels = load_inputs(case.moving, case.fixed, case.moving_labels)
        out = self.registrar.register_volumes(moving, fixed, labels)
        return Outcome(out.flow, out.labels, time.perf_counter() - started)


class AntsMethod:
    """ANTs SyN with Mattes MI (:data:`ANTS_SETTINGS`) on the files themselves: ``"SyN"``
    (its own affine stage first) or ``"SyNOnly"`` (from the headers' alignment). Its composed
    forward field (LPS mm on the fixed grid) is converted to fixed voxels; labels are warped by
    :func:`dgan.registration.geometry.sample_through_world`, as dgan's."""

    def __init__(self, ants, name, transform):
        self.ants, self.name, self.transform = ants, name, transform

    def register(self, case):
        from ..registration.geometry import sample_through_world
        ants = self.ants
        started = time.perf_counter()
        fixed_image, moving_image = ants.image_read(case.fixed), ants.image_read(case.moving)
        with tempfile.TemporaryDirectory(prefix="dgan-ants-") as tmp:
            prefix = os.path.join(tmp, "reg_")
            result = ants.registration(fixed_image, moving_image, type_of_transform=self.transform,
                                       outprefix=prefix, verbose=False, **ANTS_SETTINGS)
            field_path = ants.apply_transforms(fixed_image, moving_image, result["fwdtransforms"],
                                               compose=prefix)
            field_lps = ants.image_read(field_path).numpy().astype(np.float64)  # (X, Y, Z, 3)
        seconds = time.perf_counter() - started
        fixed = dio.load_volume(case.fixed)
        world = field_lps * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
        flow = (world @ np.linalg.inv(fixed.affine[:3, :3]).T).astype(np.float32)
        labels = None
        if case.moving_labels is not None:
            labels = sample_through_world(dio.load_volume(case.moving_labels, kind="labels"),
                                          fixed.affine, flow, order=0)
        return Outcome(flow, labels, seconds)


def score(case, outcome, affine):
    """{"moved_mm" or "epe_mm": ..., "dice": ... (with labels), "seconds": ...}."""
    error = coverage.mean_displacement_mm(outcome.flow - case.truth, affine, case.region)
    record = {"moved_mm" if case.kind == "aligned" else "epe_mm": error,
              "seconds": outcome.seconds,
              "folding": metrics.folding_fraction(outcome.flow)}
    if case.fixed_labels is not None and outcome.labels is not None:
        record["dice"] = _dice(outcome.labels > 0, case.fixed_labels > 0)
    return record


def _dice(a, b):
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.sum(a & b)) / total if total else float("nan")


def before(case, affine):
    """The identity's figures: how far off the pair is before registration."""
    identity = Outcome(np.zeros_like(case.truth), None, 0.0)
    record = score(case, identity, affine)
    if case.fixed_labels is not None and case.moving_labels is not None:
        from ..registration.geometry import sample_through_world
        moved = sample_through_world(dio.load_volume(case.moving_labels, kind="labels"), affine,
                                     identity.flow, order=0)
        record["dice"] = _dice(moved > 0, case.fixed_labels > 0)
    return record
