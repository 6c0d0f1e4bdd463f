"""Registration quality metrics, as VoxelMorph and Learn2Reg users report them; pure NumPy/SciPy.

Overlap and surface distance between label maps (after warping the moving labels):

- :func:`dice` and :func:`mean_dice`, the Dice coefficient per label (Dice 1945).
- :func:`hd95`, the 95th percentile symmetric Hausdorff distance between label surfaces, in mm,
  with MONAI's convention (``monai.metrics.compute_hausdorff_distance(..., percentile=95)``).

Regularity of a displacement field ``flow`` (``ddf``), in voxel units, with the VoxelMorph
convention ``phi(x) = x + flow(x)``:

- :func:`jacobian_determinant`, ``det(I + grad flow)`` per voxel;
- :func:`folding_fraction`, the fraction of voxels where ``phi`` folds (``det <= 0``);
- :func:`sdlogj`, the standard deviation of the log Jacobian determinant (Learn2Reg,
  Hering et al. 2022, "Learn2Reg: comprehensive multi-task medical image registration
  challenge, dataset and evaluation in the era of deep learning", IEEE TMI).

Reporting: :func:`measure` (median wall time and peak resident memory of a call),
:func:`summarize` (mean and std per method) and :func:`markdown_table`.

Shapes: label maps are integer arrays of any spatial shape (X, Y, Z) (2D works too); a flow is
(X, Y, Z, 3) or a batch (B, X, Y, Z, 3) (also (X, Y, 2) and (B, X, Y, 2) in 2D). Nothing here
imports TensorFlow; pass ``tensor.numpy()``.
"""

import dataclasses
import gc
import math
import numbers
import statistics
import sys
import time
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..errors import InputError

#: Learn2Reg clips the Jacobian determinant to this range before taking its log.
LOG_JACOBIAN_CLIP = (1e-9, 1e9)

#: Keys of a record passed to :func:`summarize` that are not metrics.
RECORD_KEYS = ("method", "pair")

#: Values of :attr:`Measurement.memory_source`.
MEMORY_VMHWM_RESET = "vmhwm_reset"
MEMORY_VMHWM_LIFETIME = "vmhwm_lifetime"
MEMORY_MAXRSS_LIFETIME = "ru_maxrss_lifetime"

# Linux interfaces read by measure(); module constants so that tests can point them elsewhere.
_PROC_CLEAR_REFS = "/proc/self/clear_refs"
_PROC_STATUS = "/proc/self/status"


# --- label overlap and surface distance -------------------------------------------------------


def _check_label_maps(labels_a, labels_b):
    labels_a = np.asarray(labels_a)
    labels_b = np.asarray(labels_b)
    if labels_a.shape != labels_b.shape:
        raise InputError(
            f"label maps differ in shape: {labels_a.shape} and {labels_b.shape}"
        )
    if labels_a.ndim == 0:
        raise InputError("label maps must have at least one axis, got scalars")
    return labels_a, labels_b


def _label_ids(labels_a, labels_b, label_ids):
    """The labels to evaluate: the ones given, or the union of non-zero labels, sorted."""
    if label_ids is None:
        ids = np.union1d(np.unique(labels_a), np.unique(labels_b))
        return [i.item() for i in ids if i != 0]
    return [i.item() if isinstance(i, np.generic) else i for i in label_ids]


def dice(labels_a, labels_b, label_ids=None):
    """Dice coefficient per label between two label maps.

    ``dice(l) = 2 |A_l ∩ B_l| / (|A_l| + |B_l|)`` with ``A_l = {labels_a == l}``,
    ``B_l = {labels_b == l}``; 1 for identical masks, 0 for disjoint ones. A label absent from
    both maps gives NaN (0/0): it says nothing about the registration, and :func:`mean_dice`
    skips it. A label present in only one map gives 0.

    :param labels_a: integer label map, shape (X, Y, Z) (any shape, equal to ``labels_b``'s)
    :param labels_b: integer label map, same shape
    :param label_ids: labels to evaluate; default: every non-zero label found in either map
    :return: ``{label_id: dice}``, floats in [0, 1] or NaN, in the order of ``label_ids``
    """
    labels_a, labels_b = _check_label_maps(labels_a, labels_b)
    scores = {}
    for label in _label_ids(labels_a, labels_b, label_ids):
        mask_a = labels_a == label
        mask_b = labels_b == label
        total = np.count_nonzero(mask_a) + np.count_nonzero(mask_b)
        overlap = np.count_nonzero(mask_a & mask_b)
        scores[label] = 2.0 * overlap / total if total else math.nan
    return scores


def mean_dice(labels_a, labels_b, label_ids=None):
    """Mean of :func:`dice` over labels, ignoring NaN (labels absent from both maps).

    :return: float; NaN when no label is present in either map
    """
    values = [v for v in dice(labels_a, labels_b, label_ids).values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _check_spacing(spacing, ndim):
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise InputError(f"spacing {spacing} has {len(spacing)} values for {ndim}-D label maps")
    if not all(s > 0 and math.isfinite(s) for s in spacing):
        raise InputError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def _surface(mask):
    """Boundary voxels of a boolean mask: in the mask with a face neighbour outside it."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)  # face neighbours only
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_percentile(mask_a, mask_b, spacing, percentile):
    """max(P(d(S_A, S_B)), P(d(S_B, S_A))) for two non-empty boolean masks, in mm."""
    # Crop to the bounding box of A ∪ B, padded by one background voxel. Exact: every surface
    # voxel and every nearest surface voxel lies in that box, the EDT is exact Euclidean, and
    # the zero padding makes voxels on the volume's border surface voxels, as border_value=0
    # does on the whole volume.
    coords = np.nonzero(mask_a | mask_b)
    box = tuple(slice(c.min(), c.max() + 1) for c in coords)
    surface_a = _surface(np.pad(mask_a[box], 1))
    surface_b = _surface(np.pad(mask_b[box], 1))
    # distance (mm) from every voxel to the nearest surface voxel of the other mask
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    a_to_b = to_b[surface_a]  # (|S_A|,)
    b_to_a = to_a[surface_b]  # (|S_B|,)
    return float(max(np.percentile(a_to_b, percentile), np.percentile(b_to_a, percentile)))


def hd95(labels_a, labels_b, label_ids=None, spacing=(1.0, 1.0, 1.0), percentile=95.0):
    """95th percentile symmetric Hausdorff distance per label, in mm.

    For each label, S_A and S_B are the surface voxels of the masks ``labels == label``: the
    voxels of the mask with at least one of their 2 * ndim face neighbours outside the mask
    (voxels on the border of the volume count as surface). The directed distances

        d(S_A, S_B) = { min_{b in S_B} ||(a - b) * spacing||  :  a in S_A }

    are computed with ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``, and

        HD95 = max( P95 d(S_A, S_B),  P95 d(S_B, S_A) )

    with ``np.percentile``'s linear interpolation: the maximum of the two directed 95th
    percentiles, as MONAI's ``compute_hausdorff_distance(..., percentile=95)``. (DeepMind's
    ``surface-distance`` takes the same maximum, but weights surface points by surfel area.)
    ``percentile=100`` gives the classic Hausdorff distance.

    A label empty in exactly one map gives ``inf`` (no surface to reach); empty in both, NaN.

    :param labels_a: integer label map, shape (X, Y, Z) (any shape, equal to ``labels_b``'s)
    :param labels_b: integer label map, same shape
    :param label_ids: labels to evaluate; default: every non-zero label found in either map
    :param spacing: voxel size in mm along each axis, one value per axis of the label maps
    :param percentile: in [0, 100]
    :return: ``{label_id: distance in mm}`` (float, inf or NaN), in the order of ``label_ids``
    """
    labels_a, labels_b = _check_label_maps(labels_a, labels_b)
    spacing = _check_spacing(spacing, labels_a.ndim)
    if not 0 <= percentile <= 100:
        raise InputError(f"percentile must be in [0, 100], got {percentile}")
    distances = {}
    for label in _label_ids(labels_a, labels_b, label_ids):
        mask_a = labels_a == label
        mask_b = labels_b == label
        present_a, present_b = mask_a.any(), mask_b.any()
        if not (present_a or present_b):
            distances[label] = math.nan
        elif not (present_a and present_b):
            distances[label] = math.inf
        else:
            distances[label] = _surface_percentile(mask_a, mask_b, spacing, percentile)
    return distances


# --- regularity of a displacement field -------------------------------------------------------


def _check_flow(flow):
    """flow -> (batch (B, *spatial, n) as floats, whether the input was batched)."""
    flow = np.asarray(flow)
    if flow.ndim < 3 or flow.shape[-1] not in (2, 3):
        raise InputError(
            "flow must be (X, Y, Z, 3) or (B, X, Y, Z, 3) (2D: (X, Y, 2) or (B, X, Y, 2)), "
            f"got shape {flow.shape}"
        )
    n = flow.shape[-1]
    if flow.ndim == n + 1:
        batched = False
        flow = flow[np.newaxis]
    elif flow.ndim == n + 2:
        batched = True
    else:
        raise InputError(
            f"flow of shape {flow.shape} has {n} components, so it needs {n} spatial axes: "
            f"(*spatial, {n}) or (B, *spatial, {n})"
        )
    if min(flow.shape[1:-1]) < 2:
        raise InputError(f"flow needs at least 2 voxels along every spatial axis, got {flow.shape}")
    if not np.issubdtype(flow.dtype, np.floating):
        flow = flow.astype(np.float64)
    return flow, batched


#: :func:`jacobian_determinant` works through a field this many slices (along its first axis) at a
#: time: the nine derivative arrays of a whole 1 mm brain's field took about 0.5 GB at once.
SLAB_SLICES = 16


def _determinant(flow):
    """det(I + grad flow) for one field (*spatial, n) -> (*spatial,), in flow's dtype; in slabs of
    :data:`SLAB_SLICES` slices, each with a neighbouring slice on either side for its central
    differences, so the values are those of the whole field at once, digit for digit."""
    size = flow.shape[0]
    if size <= SLAB_SLICES:
        return _determinant_at_once(flow)
    out = np.empty(flow.shape[:-1], flow.dtype)
    for start in range(0, size, SLAB_SLICES):
        stop = min(size, start + SLAB_SLICES)
        low, high = max(0, start - 1), min(size, stop + 1)
        out[start:stop] = _determinant_at_once(flow[low:high])[start - low:stop - low]
    return out


def _determinant_at_once(flow):
    n = flow.shape[-1]
    axes = tuple(range(n))
    # jac[i][j] = d phi_i / d x_j = delta_ij + d flow_i / d x_j; np.gradient: central
    # differences inside, one-sided first-order differences on the border voxels
    jac = [list(np.gradient(flow[..., i], axis=axes)) for i in range(n)]
    for i in range(n):
        jac[i][i] = jac[i][i] + 1
    if n == 2:
        return jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    return (
        jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
        - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
        + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
    )


def jacobian_determinant(flow):
    """Jacobian determinant of ``phi(x) = x + flow(x)`` at every voxel.

    ``det J(x) = det(I + grad flow(x))`` with ``J_ij = d phi_i / d x_j``, the derivatives taken
    by ``np.gradient``: central differences ``(f(x+1) - f(x-1)) / 2`` inside the volume and
    one-sided differences on its border voxels, so the result is exact everywhere, edges
    included, for an affine field ``flow(x) = (A - I) x + t`` (``det J = det A``). ``det J > 1``
    is local expansion, ``< 1`` contraction, ``<= 0`` folding.

    :param flow: displacement in voxels, shape (X, Y, Z, 3) or (B, X, Y, Z, 3); component i
        displaces along array axis i. 2D: (X, Y, 2) or (B, X, Y, 2).
    :return: shape (X, Y, Z) or (B, X, Y, Z), in flow's floating dtype (float64 for integers)
    """
    batch, batched = _check_flow(flow)
    det = np.stack([_determinant(f) for f in batch])  # (B, *spatial)
    return det if batched else det[0]


def _cropped_determinants(flow, crop):
    """(B, *spatial) determinants without ``crop`` voxels on each side, and whether batched."""
    batch, batched = _check_flow(flow)
    crop = int(crop)
    spatial = batch.shape[1:-1]
    if crop < 0 or 2 * crop >= min(spatial):
        raise InputError(f"crop={crop} leaves no voxel of a flow with spatial shape {spatial}")
    interior = (slice(None),) + tuple(slice(crop, size - crop) for size in spatial)
    det = np.stack([_determinant(f) for f in batch])[interior]  # (B, *cropped)
    return det, batched


def folding_fraction(flow, crop=0):
    """Fraction of voxels where ``phi`` folds: ``mean(det J <= 0)``.

    :param flow: shape (X, Y, Z, 3) or (B, X, Y, Z, 3), as in :func:`jacobian_determinant`
    :param crop: voxels left out on every side of every spatial axis (Learn2Reg uses 2)
    :return: float in [0, 1], or shape (B,) for a batch
    """
    det, batched = _cropped_determinants(flow, crop)
    fraction = np.mean(det <= 0, axis=tuple(range(1, det.ndim)))  # (B,)
    return fraction if batched else float(fraction[0])


def sdlogj(flow, crop=0, offset=0.0):
    """Standard deviation of the log Jacobian determinant (SDlogJ), over voxels.

    ``SDlogJ = std_x log(clip(det J(x) + offset, 1e-9, 1e9))`` (population std, ddof = 0). The
    clip is Learn2Reg's: folded voxels (det <= 0) count as log(1e-9) instead of making the
    result NaN. 0 for any affine field; lower is smoother.

    Learn2Reg's evaluation script computes its gradients with zero padding, so it drops 2
    voxels on every side (``crop=2``), and adds 3 to the determinant before clipping
    (``offset=3``). ``sdlogj(flow, crop=2, offset=3)`` reproduces its numbers; the defaults
    (whole volume, no offset) give the textbook SDlogJ, valid up to the border because
    :func:`jacobian_determinant` uses one-sided differences there.

    :param flow: shape (X, Y, Z, 3) or (B, X, Y, Z, 3), as in :func:`jacobian_determinant`
    :param crop: voxels left out on every side of every spatial axis
    :param offset: added to the determinant before clipping
    :return: float, or shape (B,) for a batch
    """
    det, batched = _cropped_determinants(flow, crop)
    log_det = np.log(np.clip(det.astype(np.float64) + offset, *LOG_JACOBIAN_CLIP))
    spread = np.std(log_det, axis=tuple(range(1, log_det.ndim)))  # (B,)
    return spread if batched else float(spread[0])


# --- time and memory --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Cost of the timed calls of :func:`measure`.

    :ivar seconds: median wall time of one call (``time.perf_counter``)
    :ivar times: wall time of every timed call, in order
    :ivar peak_mib: peak resident memory of the whole process, MiB (2^20 bytes); see
        ``memory_source`` for the window it covers
    :ivar baseline_mib: resident memory just before the warm-up calls, MiB (None where
        /proc/self/status is unavailable); ``peak_mib - baseline_mib`` is what the calls added
    :ivar memory_source: how ``peak_mib`` was read:
        ``"vmhwm_reset"``: VmHWM of /proc/self/status after resetting it by writing "5" to
        /proc/self/clear_refs, so the peak of the warm-up and timed calls only;
        ``"vmhwm_lifetime"``: VmHWM without reset (not permitted): the peak since the process
        started, an upper bound;
        ``"ru_maxrss_lifetime"``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (no /proc):
        the peak since the process started, an upper bound
    :ivar repeats: number of timed calls
    :ivar warmup: number of untimed calls before them
    """

    seconds: float
    times: tuple
    peak_mib: float
    baseline_mib: float | None
    memory_source: str
    repeats: int
    warmup: int


def _status_mib(field):
    """A ``kB`` field of /proc/self/status in MiB, or None if unavailable."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak():
    """Reset the process's VmHWM to its current RSS; True where permitted."""
    try:
        with open(_PROC_CLEAR_REFS, "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib():
    import resource  # POSIX only; imported where needed

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes / KiB


def measure(fn, *args, repeats=1, warmup=0, **kwargs):
    """Call ``fn(*args, **kwargs)`` ``warmup`` times untimed, then ``repeats`` times timed.

    Only the last result is kept: earlier ones are released before the next call, so they do
    not add to the peak memory. Memory is the resident set of the whole process (threads and
    native libraries included); see :class:`Measurement` for how the peak is read. The memory
    window opens *before* the warm-up calls: the high-water mark is reset and the baseline read
    there. Frameworks keep what a first call allocates (TensorFlow's allocator, traced graphs,
    a network built lazily on the first call), so a window opened after the warm-up would see
    nothing added (1-2 MiB for every network, as the old benchmark's ``added`` column did).

    :param fn: the callable to measure; ``repeats``, ``warmup`` are not passed to it
    :return: ``(result of the last call, Measurement)``; ``Measurement.seconds`` times the timed
        calls only, ``peak_mib`` and ``baseline_mib`` cover the warm-up and the timed calls
    """
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise InputError(f"warmup must be at least 0, got {warmup}")
    gc.collect()
    reset = _reset_peak()
    baseline = _status_mib("VmRSS")
    result = None
    for _ in range(warmup):
        result = None
        result = fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        result = None
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    peak = _status_mib("VmHWM")
    if peak is not None:
        source = MEMORY_VMHWM_RESET if reset else MEMORY_VMHWM_LIFETIME
    else:
        peak, source = _maxrss_mib(), MEMORY_MAXRSS_LIFETIME
    measurement = Measurement(
        seconds=statistics.median(times),
        times=tuple(times),
        peak_mib=peak,
        baseline_mib=baseline,
        memory_source=source,
        repeats=repeats,
        warmup=warmup,
    )
    return result, measurement


# --- tables -----------------------------------------------------------------------------------


class MetricSummary(NamedTuple):
    """Mean and standard deviation of one metric over the pairs of one method.

    ``n`` counts the values used: NaN values (e.g. Dice of a label absent from both images)
    are left out; ``inf`` values (e.g. HD95 of a structure missing from one image) are kept
    and make the mean ``inf`` and the std NaN.
    """

    mean: float
    std: float
    n: int


def _is_number(value):
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def summarize(records, metrics=None, ddof=0):
    """Mean and standard deviation of each metric per method.

    :param records: iterable of dicts ``{"method": str, "pair": ..., metric: number, ...}``,
        one per (method, image pair)
    :param metrics: metric names to summarise; default: every key other than "method" and
        "pair", in order of first appearance. A record without a metric does not count for it.
    :param ddof: delta degrees of freedom of the std (0: population std, as ``np.std``)
    :return: ``{method: {metric: MetricSummary(mean, std, n)}}``, methods in order of first
        appearance; mean and std are NaN where a method has no value for a metric
    """
    records = list(records)
    if metrics is None:
        names = {}
        for record in records:
            names.update((key, None) for key in record if key not in RECORD_KEYS)
        metrics = list(names)
    values = {}  # method -> metric -> [float]
    for index, record in enumerate(records):
        if "method" not in record:
            raise InputError(f"record {index} has no 'method': {record!r}")
        per_metric = values.setdefault(record["method"], {m: [] for m in metrics})
        for metric in metrics:
            if metric not in record:
                continue
            value = record[metric]
            if not _is_number(value):
                raise InputError(f"record {index}: metric {metric!r} is not a number: {value!r}")
            if not math.isnan(value):
                per_metric[metric].append(float(value))
    summary = {}
    for method, per_metric in values.items():
        summary[method] = {}
        for metric, vals in per_metric.items():
            n = len(vals)
            if n == 0:
                summary[method][metric] = MetricSummary(math.nan, math.nan, 0)
                continue
            mean = float(np.mean(vals))
            if n <= ddof or not math.isfinite(mean):
                std = math.nan  # undefined, or inf - inf
            else:
                std = float(np.std(vals, ddof=ddof))
            summary[method][metric] = MetricSummary(mean, std, n)
    return summary


def _cell(stat, digits):
    if stat is None or stat.n == 0:
        return "n/a"
    if not math.isfinite(stat.mean):
        return f"{stat.mean}"  # "inf"
    if math.isnan(stat.std):
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def markdown_table(summary, metrics, digits=3):
    """A Markdown table, one row per method, one column per metric, cells "mean ± std".

    Cells are "n/a" where a method has no value, the mean alone where the std is undefined
    (one value with ``ddof=1``), "inf" where a value was infinite.

    :param summary: output of :func:`summarize`
    :param metrics: metric names, in column order (also the column headers)
    :param digits: digits after the decimal point
    :return: the table as a string, lines separated by "\\n", no trailing newline
    """
    metrics = list(metrics)
    lines = [
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for method, per_metric in summary.items():
        cells = [_cell(per_metric.get(metric), digits) for metric in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
