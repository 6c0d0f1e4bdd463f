"""Cases with a known affine misalignment, and ANTs's affine on them: the affine benchmark.

Each case starts from a pair of the cross-modal brain benchmark
(:func:`dgan.bench.brain.load_brain_benchmark`): the fixed scan is its T2-like rendering, and the
moving scan is the T1 of the *same* anatomy (``fixed_t1``, for the accuracy cases: the true
transform is then exactly the drawn affine) or the pair's own deformed T1 (``moving``, for the Dice
cases, with its labels), whose content is moved by a random affine transform:

- rotations about the brain's centre, each Euler angle uniform in +-``max_rotation_deg``;
- translations, each component uniform in +-``max_translation_mm``;
- scales, each axis uniform in [1 - ``max_scale``, 1 + ``max_scale``];
- shears, each of the three uniform in +-``max_shear``.

The moved content is written on a grid ``margin_mm`` larger on every side than the fixed grid (the
same 2 mm voxels), so that nothing of the brain leaves the field of view; its header is honest (no
hidden shift), so only the content is misaligned, as for a head that moved in the scanner. The true
transform ``truth`` maps fixed-world points to moving-world points
(:mod:`dgan.registration.affine`'s convention); an estimate is scored by its RMS distance from the
truth over the fixed scan's brain (:func:`dgan.registration.affine.rms_displacement`).

:class:`AntsAffine` runs ANTs's own affine registration (``antspyx``, ``type_of_transform=
"Affine"``, Mattes MI) on the same volumes and reads its transform back into the same convention.
"""

import dataclasses
import os
import tempfile
import time

import numpy as np
from scipy import ndimage

from ..data.io import Volume
from ..registration import affine as daffine
from ..registration import itk

#: The issue's ranges of the random affine transforms.
DEFAULT_LIMITS = {"max_rotation_deg": 15.0, "max_translation_mm": 15.0, "max_scale": 0.10,
                  "max_shear": 0.05}
#: Extra field of view of the moved scans, mm on every side.
MARGIN_MM = 24.0


@dataclasses.dataclass(frozen=True, eq=False)
class AffineCase:
    """One case: ``moving`` and ``fixed`` :class:`dgan.data.io.Volume` (world mm), the true
    transform ``truth`` (4 x 4, fixed world -> moving world), and labels when the case has them."""

    moving: Volume
    fixed: Volume
    truth: np.ndarray
    moving_labels: Volume | None = None
    fixed_labels: np.ndarray | None = None


def random_affine(rng, centre, max_rotation_deg=15.0, max_translation_mm=15.0, max_scale=0.10,
                  max_shear=0.05):
    """A random transform about ``centre`` (world mm): y = centre + t + R S H (x - centre).

    R from three Euler angles, S = diag(scales), H upper triangular with the three shears.
    :return: shape = (4, 4), float64
    """
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    translation = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    scales = rng.uniform(1 - max_scale, 1 + max_scale, 3)
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-max_shear, max_shear, 3)
    linear = daffine.euler_matrix(angles) @ np.diag(scales) @ shear
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre + translation - linear @ centre
    return out


def move_content(array, affine, truth, margin_mm=MARGIN_MM, order=1):
    """The scan whose content sits where ``truth`` says: ``out(y) = array(truth^-1 y)``.

    :param array: (X, Y, Z) on the grid ``affine``
    :param truth: fixed world -> moving world, (4, 4)
    :return: :class:`dgan.data.io.Volume` on a grid ``margin_mm`` larger on every side
    """
    spacing = np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))
    pad = np.round(margin_mm / spacing).astype(int)
    shift = np.eye(4)
    shift[:3, 3] = -pad
    grid = np.asarray(affine, np.float64) @ shift
    shape = tuple(np.asarray(array.shape) + 2 * pad)
    voxel_map = np.linalg.solve(affine, np.linalg.solve(truth, grid))  # out voxel -> array voxel
    out = ndimage.affine_transform(np.asarray(array), voxel_map[:3, :3], offset=voxel_map[:3, 3],
                                   output_shape=shape, order=order, mode="constant", cval=0)
    return Volume(out.astype(np.int32 if order == 0 else np.float32), grid)


def make_cases(pairs, n, spacing, seed=0, moving_key="fixed_t1", limits=None, resample=True):
    """``n`` cases over the benchmark ``pairs`` (cycling through them), seeded.

    :param pairs: dicts of :func:`dgan.bench.brain.load_brain_benchmark`
    :param spacing: their voxel size, mm
    :param moving_key: ``"fixed_t1"`` (same anatomy: exact truth) or ``"moving"`` (the pair's
        own deformed T1, with its labels)
    :param resample: move the content onto a larger rectilinear grid (:func:`move_content`, a
        head that moved in the scanner); False: keep the voxels and move the grid instead (the
        moving affine becomes ``truth A``, an oblique acquisition), so that the moving image and
        its labels are interpolated only once, by the registration itself: Dice then measures
        the registration, not a second nearest-neighbour resampling of the labels
    :return: list of :class:`AffineCase`
    """
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    affine = np.diag([float(spacing)] * 3 + [1.0])
    cases = []
    for k in range(n):
        pair = pairs[k % len(pairs)]
        fixed = Volume(np.asarray(pair["fixed"], np.float32), affine)
        rng = np.random.default_rng([seed, 15, k])
        truth = random_affine(rng, daffine.centre_of_mass(fixed), **limits)
        if resample:
            moving = move_content(pair[moving_key], affine, truth)
        else:
            moving = Volume(np.asarray(pair[moving_key], np.float32), truth @ affine)
        labels = None
        if moving_key == "moving" and resample:
            labels = move_content(pair["moving_labels"], affine, truth, order=0)
        elif moving_key == "moving":
            labels = Volume(np.asarray(pair["moving_labels"], np.int32), truth @ affine)
        cases.append(AffineCase(moving, fixed, truth, labels,
                                pair["fixed_labels"] if moving_key == "moving" else None))
    return cases


def case_error(case, matrix, max_points=20_000):
    """RMS distance (mm) between ``matrix`` and the truth over the fixed scan's brain."""
    points = daffine.foreground_points(case.fixed, max_points=max_points)
    return daffine.rms_displacement(matrix, case.truth, points)


# --- ANTs --------------------------------------------------------------------------------------


def ants_image(ants, volume):
    """An ANTs image of a :class:`dgan.data.io.Volume` in ANTs's physical space (LPS)."""
    lps = itk.RAS_TO_LPS @ np.asarray(volume.affine, np.float64)
    spacing = np.sqrt(np.sum(lps[:3, :3] ** 2, axis=0))
    return ants.from_numpy(np.asarray(volume.array, np.float32), origin=tuple(lps[:3, 3]),
                           spacing=tuple(spacing), direction=lps[:3, :3] / spacing)


class AntsAffine:
    """ANTs's affine registration (``ants.registration(type_of_transform="Affine")``, Mattes MI
    with its defaults), read back as a fixed-world -> moving-world matrix.

    :param ants: the ``ants`` module (:func:`dgan.evaluation.methods.import_ants`)
    """

    name = "ANTs Affine (Mattes MI)"

    def __init__(self, ants):
        self.ants = ants

    def estimate(self, moving, fixed):
        """(matrix (4, 4), seconds) for :class:`dgan.data.io.Volume` moving and fixed."""
        ants = self.ants
        fixed_image, moving_image = ants_image(ants, fixed), ants_image(ants, moving)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="dgan-ants-affine-") as tmp:
            result = ants.registration(fixed_image, moving_image, type_of_transform="Affine",
                                       aff_metric="mattes", outprefix=os.path.join(tmp, "a_"),
                                       verbose=False)
            seconds = time.perf_counter() - started
            transform = ants.read_transform(result["fwdtransforms"][0])
            matrix = itk.from_itk_parameters(transform.parameters, transform.fixed_parameters)
        return matrix, seconds


# --- the two measurements ----------------------------------------------------------------------


def accuracy_records(cases, config=None, ants=None, progress=None):
    """Our affine (and ANTs's, when ``ants`` is given) on each case: error (mm RMS over the
    fixed brain, :func:`case_error`) and wall time.

    :return: (records, matrices): one dict per case, ``case``, ``initial_mm`` (the headers'
        alignment), ``dgan_mm``, ``dgan_s`` (wall), ``dgan_cpu_s`` (the process's CPU time,
        all threads), ``ants_mm``, ``ants_s`` (NaN without ANTs); and our estimated matrices
    """
    method = AntsAffine(ants) if ants is not None else None
    records, matrices = [], []
    for k, case in enumerate(cases):
        started, cpu = time.perf_counter(), time.process_time()
        estimate = daffine.estimate_affine(case.moving, case.fixed, config)
        record = {"case": k, "initial_mm": case_error(case, np.eye(4)),
                  "dgan_mm": case_error(case, estimate.matrix),
                  "dgan_s": time.perf_counter() - started,
                  "dgan_cpu_s": time.process_time() - cpu,
                  "ants_mm": float("nan"), "ants_s": float("nan")}
        if method is not None:
            matrix, seconds = method.estimate(case.moving, case.fixed)
            record.update(ants_mm=case_error(case, matrix), ants_s=seconds)
        records.append(record)
        matrices.append(estimate.matrix)
        if progress is not None:
            progress(f"case {k}: {record['initial_mm']:.1f} mm before; dgan {record['dgan_mm']:.2f} "
                     f"mm in {record['dgan_s']:.1f} s; ANTs {record['ants_mm']:.2f} mm in "
                     f"{record['ants_s']:.1f} s")
    return records, matrices


def dice_records(pairs, cases, label_ids, refine_steps, progress=None):
    """Refinement alone (``Registrar(None)``) on each benchmark pair as it is (affine off) and on
    its affinely perturbed case (affine on): mean Dice over ``label_ids`` of both.

    :param pairs: the benchmark pairs; ``cases[k]`` is pair k perturbed (``moving_key="moving"``)
    :return: list of dicts ``pair``, ``dice_unperturbed``, ``dice_perturbed``, ``seconds_*``,
        ``affine_s``
    """
    from ..core.metrics import mean_dice
    from ..registration.registrar import Registrar

    plain = Registrar(None, refine_steps=refine_steps, affine="off")
    aligned = Registrar(None, refine_steps=refine_steps, affine="on")
    records = []
    for k, (pair, case) in enumerate(zip(pairs, cases)):
        fixed = case.fixed
        moving = Volume(np.asarray(pair["moving"], np.float32), fixed.affine)
        labels = Volume(np.asarray(pair["moving_labels"], np.int32), fixed.affine)
        started = time.perf_counter()
        before = plain.register_volumes(moving, fixed, labels)
        middle = time.perf_counter()
        after = aligned.register_volumes(case.moving, fixed, case.moving_labels)
        record = {
            "pair": k,
            "dice_unperturbed": mean_dice(before.labels, pair["fixed_labels"], label_ids),
            "dice_perturbed": mean_dice(after.labels, pair["fixed_labels"], label_ids),
            "seconds_unperturbed": middle - started,
            "seconds_perturbed": time.perf_counter() - middle,
            "affine_s": after.seconds["affine"],
        }
        records.append(record)
        if progress is not None:
            progress(f"pair {k}: Dice unperturbed {record['dice_unperturbed']:.4f}, perturbed + "
                     f"affine {record['dice_perturbed']:.4f} ({record['seconds_unperturbed']:.0f} "
                     f"s, {record['seconds_perturbed']:.0f} s)")
    return records


def save_overlay_figure(path, case, matrix, title=None):
    """Fixed scan in grey with the moving scan's contours (T1 levels 0.1: brain outline, 0.6:
    white matter), before (the headers) and after the affine ``matrix``, three middle slices."""
    from ..evaluation.figures import display_slice, finish_panels, new_figure, save_figure
    from ..data.io import normalize_intensity, resample_to_grid

    fixed = case.fixed
    views = {
        "before (headers)": resample_to_grid(case.moving, fixed.affine, fixed.shape).array,
        "after (affine)": resample_to_grid(daffine.through(case.moving, matrix), fixed.affine,
                                           fixed.shape).array,
    }
    fig, axes = new_figure(2, 3, figsize=(9, 6.4))
    for row, (name, moved) in enumerate(views.items()):
        moved = normalize_intensity(moved)
        for axis in range(3):
            ax = axes[row, axis]
            ax.imshow(display_slice(fixed.array, axis), cmap="gray")
            ax.contour(display_slice(moved, axis), levels=[0.1, 0.6], colors=["#ff3080", "#30ff60"],
                       linewidths=0.8)
            if axis == 0:
                ax.set_ylabel(name)
    finish_panels(fig, axes, title)
    save_figure(fig, path)
