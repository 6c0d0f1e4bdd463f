"""Registration metrics against hand-computed values and independent brute-force references."""

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from dgan.core import metrics
from dgan.errors import InputError


def cube(shape, corner, size, label=1):
    """A label map of ``shape`` holding a ``size``^3 cube of ``label`` at ``corner``."""
    labels = np.zeros(shape, dtype=np.int32)
    labels[tuple(slice(c, c + size) for c in corner)] = label
    return labels


def voxel_grid(shape):
    """Voxel coordinates, shape (*shape, len(shape)): grid[..., i] = index along axis i."""
    axes = [np.arange(size, dtype=np.float64) for size in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


# --- Dice -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0, 1, 2, 3, 4, 6])
def test_dice_of_shifted_cubes_is_the_hand_formula(shift):
    # 4^3 cubes shifted by k along y: |A| = |B| = 64, |A ∩ B| = 4 * 4 * max(4 - k, 0)
    a = cube((12, 12, 12), (2, 2, 2), 4)
    b = cube((12, 12, 12), (2, 2 + shift, 2), 4)
    expected = 2 * 16 * max(4 - shift, 0) / (64 + 64)
    assert metrics.dice(a, b) == {1: expected}
    assert metrics.mean_dice(a, b) == expected


def test_dice_identical_is_one_disjoint_is_zero_and_sizes_may_differ():
    a = cube((10, 10, 10), (0, 0, 0), 3)
    b = cube((10, 10, 10), (0, 0, 0), 2)  # inside a: |A ∩ B| = 8, |A| = 27, |B| = 8
    assert metrics.dice(a, a)[1] == 1.0
    assert metrics.dice(a, cube((10, 10, 10), (5, 5, 5), 3))[1] == 0.0
    assert metrics.dice(a, b)[1] == pytest.approx(2 * 8 / (27 + 8), abs=1e-15)  # one float64 division


def test_dice_absent_label_is_nan_and_mean_dice_ignores_it():
    a = cube((10, 10, 10), (0, 0, 0), 2, label=1) + cube((10, 10, 10), (5, 5, 5), 2, label=4)
    b = cube((10, 10, 10), (0, 0, 1), 2, label=1)  # label 4 missing: Dice 0, not NaN
    scores = metrics.dice(a, b, label_ids=[1, 4, 7])
    assert list(scores) == [1, 4, 7]
    assert scores[1] == 0.5 and scores[4] == 0.0 and math.isnan(scores[7])
    assert metrics.mean_dice(a, b, label_ids=[1, 4, 7]) == 0.25
    # default labels: the union of the non-zero labels of both maps, as Python ints
    assert list(metrics.dice(a, b)) == [1, 4]
    assert all(type(k) is int for k in metrics.dice(a, b))
    assert math.isnan(metrics.mean_dice(a, b, label_ids=[7]))
    assert metrics.dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 3))) == {}


def test_dice_rejects_label_maps_of_different_shapes():
    with pytest.raises(InputError, match=r"differ in shape: \(4, 4, 4\) and \(4, 4, 5\)"):
        metrics.dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


# --- HD95 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axis, spacing, expected",
    [
        (0, (2.0, 1.0, 1.0), 6.0),  # 3 voxels x 2 mm
        (1, (2.0, 1.0, 1.0), 3.0),  # 3 voxels x 1 mm: the anisotropy is applied per axis
        (0, (1.0, 1.0, 1.0), 3.0),
        (2, (1.0, 1.0, 0.5), 1.5),
    ],
)
def test_hd95_of_cubes_shifted_by_three_voxels(axis, spacing, expected):
    # 6^3 cubes, B = A shifted by 3 voxels. A has 6^3 - 4^3 = 152 surface voxels. Its face
    # opposite to the shift (36 voxels, 24% > 5%) is 3 voxels from B's nearest face, and no
    # surface voxel of A is farther from S_B than that; symmetrically for B. So both directed
    # 95th percentiles are exactly 3 voxels along the shift axis: 3 * spacing[axis].
    corner = [2, 2, 2]
    a = cube((14, 14, 14), corner, 6)
    corner[axis] += 3
    b = cube((14, 14, 14), corner, 6)
    assert metrics.hd95(a, b, spacing=spacing) == {1: expected}
    assert metrics.hd95(b, a, spacing=spacing) == {1: expected}


def test_hd95_is_the_max_of_the_two_directed_percentiles():
    # A = {p}, B = {p, p + 10 x}, spacing 2 mm along x: d(S_A, S_B) = [0], d(S_B, S_A) = [0, 20].
    # max of directed P95 = 0.95 * 20 = 19 mm (the percentile of the union [0, 0, 20] is 18).
    a = np.zeros((14, 3, 3), dtype=np.int32)
    a[1, 1, 1] = 1
    b = a.copy()
    b[11, 1, 1] = 1
    # float64 interpolation between 0 and 20: within ~1e-15
    assert metrics.hd95(a, b, spacing=(2, 1, 1))[1] == pytest.approx(19.0, abs=1e-12)
    assert metrics.hd95(a, b, spacing=(2, 1, 1), percentile=100)[1] == 20.0


def test_hd95_identical_is_zero_and_empty_labels_are_inf_or_nan():
    a = cube((8, 8, 8), (1, 1, 1), 4, label=2)
    assert metrics.hd95(a, a) == {2: 0.0}
    scores = metrics.hd95(a, np.zeros_like(a), label_ids=[2, 3])
    assert scores[2] == math.inf and math.isnan(scores[3])
    assert metrics.hd95(np.zeros_like(a), a)[2] == math.inf


def brute_force_hd(a, b, spacing, percentile):
    """Surface voxels by looking at the 2 * ndim face neighbours, distances by cdist."""

    def surface_points(mask):
        padded = np.pad(mask, 1)
        outside_neighbour = np.zeros_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                outside_neighbour |= ~np.roll(padded, step, axis=axis)[
                    tuple(slice(1, -1) for _ in range(mask.ndim))
                ]
        return np.argwhere(mask & outside_neighbour) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    pairwise = cdist(pa, pb)  # (|S_A|, |S_B|) in mm
    return max(
        np.percentile(pairwise.min(axis=1), percentile),
        np.percentile(pairwise.min(axis=0), percentile),
    )


@pytest.mark.parametrize("percentile", [95, 100, 50])
def test_hd95_matches_a_brute_force_reference_on_random_shapes(percentile):
    rng = np.random.default_rng(3)
    a = ndimage.gaussian_filter(rng.random((9, 8, 7)), 1.0) > 0.5  # blobs, some on the border
    b = ndimage.gaussian_filter(rng.random((9, 8, 7)), 1.0) > 0.5
    assert a.any() and b.any() and a[0].any()
    spacing = (1.5, 1.0, 0.7)
    expected = brute_force_hd(a, b, spacing, percentile)
    got = metrics.hd95(a.astype(np.uint8), b.astype(np.uint8), spacing=spacing,
                       percentile=percentile)
    assert got[1] == pytest.approx(expected, rel=1e-12)  # float64 distances: within ~1e-15


def test_hd95_works_in_2d_and_rejects_bad_spacing():
    a = np.zeros((10, 10), dtype=np.int32)
    a[2:5, 2:5] = 1
    b = np.roll(a, 2, axis=1)
    assert metrics.hd95(a, b, spacing=(1.0, 3.0)) == {1: 6.0}
    with pytest.raises(InputError, match="has 3 values for 2-D"):
        metrics.hd95(a, b)
    with pytest.raises(InputError, match="positive"):
        metrics.hd95(a, b, spacing=(1.0, 0.0))


# --- Jacobian determinant, folding, SDlogJ ----------------------------------------------------


def affine_flow(matrix, shape=(5, 6, 7)):
    """flow(x) = (A - I) x + t, so that phi(x) = A x + t. Shape (*shape, n)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0]
    return voxel_grid(shape) @ (matrix - np.eye(n)).T + 0.3


def test_jacobian_of_zero_flow_is_one():
    det = metrics.jacobian_determinant(np.zeros((4, 5, 6, 3)))
    assert det.shape == (4, 5, 6)
    np.testing.assert_array_equal(det, 1.0)


def test_jacobian_of_an_affine_flow_is_det_a_everywhere_edges_included():
    # det [[2, 1, 0], [0.5, 1, 1], [0, 0.5, 3]] = 2 (3 - 0.5) - 1 (1.5 - 0) + 0 = 3.5
    a = [[2.0, 1.0, 0.0], [0.5, 1.0, 1.0], [0.0, 0.5, 3.0]]
    det = metrics.jacobian_determinant(affine_flow(a))
    # np.gradient is exact on linear fields, but for float64 rounding (~1e-15)
    np.testing.assert_allclose(det, 3.5, rtol=1e-12)
    assert metrics.folding_fraction(affine_flow(a)) == 0.0
    assert metrics.sdlogj(affine_flow(a)) == pytest.approx(0.0, abs=1e-12)  # the same: ~1e-15


def test_jacobian_of_a_field_longer_than_a_slab_is_the_whole_fields(rng):
    """The determinant is computed a slab of slices at a time (memory); with a neighbour slice on
    each side of a slab its central differences are those of the whole field: the same values,
    to the last digit, as np.gradient over the whole field at once."""
    size = 2 * metrics.SLAB_SLICES + 3  # three slabs, the last a short one
    flow = rng.normal(0.0, 0.7, (size, 6, 5, 3)).astype(np.float32)
    want = metrics._determinant_at_once(flow)  # the whole field in one go
    got = metrics.jacobian_determinant(flow)
    assert got.dtype == np.float32 and got.shape == flow.shape[:3]
    np.testing.assert_array_equal(got, want)
    assert 0 < metrics.folding_fraction(flow) < 1  # the field folds in places: not vacuous


def test_jacobian_in_2d():
    det = metrics.jacobian_determinant(affine_flow([[1.0, 2.0], [-1.0, 0.5]], shape=(4, 5)))
    np.testing.assert_allclose(det, 1.0 * 0.5 + 2.0, rtol=1e-12)  # float64: ~1e-15


def test_folding_field_has_negative_determinant():
    # flow_x = -2 x: phi_x = -x, a reflection: det J = -1 everywhere
    flow = np.zeros((6, 5, 4, 3))
    flow[..., 0] = -2.0 * voxel_grid((6, 5, 4))[..., 0]
    np.testing.assert_allclose(metrics.jacobian_determinant(flow), -1.0)  # small integers: exact
    assert metrics.folding_fraction(flow) == 1.0
    # log(clip(-1)) = log(1e-9) everywhere: constant, so SDlogJ = 0 (float64: ~1e-15)
    assert metrics.sdlogj(flow) == pytest.approx(0.0, abs=1e-12)
    # flow_x = -x collapses every voxel onto x = 0: det J = 0 counts as folding (exact)
    np.testing.assert_allclose(metrics.jacobian_determinant(flow / 2), 0.0, atol=1e-15)
    assert metrics.folding_fraction(flow / 2) == 1.0


def y_dependent_stretch(scale_of_y, shape=(5, 8, 4)):
    """flow_x = (s(y) - 1) x: J = [[s(y), ds/dy x, 0], [0, 1, 0], [0, 0, 1]], det J = s(y)."""
    grid = voxel_grid(shape)
    flow = np.zeros(shape + (3,))
    flow[..., 0] = (scale_of_y(grid[..., 1]) - 1.0) * grid[..., 0]
    return flow


def test_sdlogj_and_folding_of_a_two_valued_field():
    # det J = e^2 on y in {0, 1} (1/4 of the voxels) and 1 elsewhere: log det J is 2 with
    # probability p = 1/4 and 0 otherwise, std = 2 sqrt(p (1 - p)) = sqrt(3) / 2
    flow = y_dependent_stretch(lambda y: np.where(y < 2, np.e**2, 1.0))
    det = metrics.jacobian_determinant(flow)
    # float64, a few operations on values <= e^2 * 7: within ~1e-15
    np.testing.assert_allclose(det[:, :2], np.e**2, rtol=1e-12)
    np.testing.assert_allclose(det[:, 2:], 1.0, rtol=1e-12)
    assert metrics.sdlogj(flow) == pytest.approx(math.sqrt(3) / 2, rel=1e-12)
    # det J = -1 on y < 4, 1 elsewhere: half of the voxels fold
    folding = y_dependent_stretch(lambda y: np.where(y < 4, -1.0, 1.0))
    assert metrics.folding_fraction(folding) == 0.5
    # cropping 1 voxel of (5, 8, 4) keeps y in 1..6: 3 folded rows of 6
    assert metrics.folding_fraction(folding, crop=1) == 0.5
    # log(clip) is log(1e-9) on 1/2 of the voxels and 0 elsewhere: std = |log 1e-9| / 2
    assert metrics.sdlogj(folding) == pytest.approx(-math.log(1e-9) / 2, rel=1e-12)  # float64


def learn2reg_sdlogj(flow):
    """Learn2Reg's evaluation: zero-padded central differences, 2 voxels cropped, det + 3."""
    kernel = np.array([-0.5, 0.0, 0.5])
    grads = [
        [ndimage.correlate1d(flow[..., i], kernel, axis=j, mode="constant") for j in range(3)]
        for i in range(3)
    ]
    jac = np.array(grads) + np.eye(3)[:, :, None, None, None]
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    return np.log(np.clip(det + 3, 1e-9, 1e9)).std()


def test_sdlogj_reproduces_learn2reg_with_crop_2_and_offset_3():
    rng = np.random.default_rng(0)
    flow = ndimage.gaussian_filter(rng.normal(0, 3, (10, 9, 8, 3)), (1, 1, 1, 0))
    assert metrics.folding_fraction(flow) > 0  # the clip matters
    expected = learn2reg_sdlogj(flow)
    # float64, other formulas for the determinant (np.linalg.det): ~1e-14
    assert metrics.sdlogj(flow, crop=2, offset=3) == pytest.approx(expected, rel=1e-10)
    assert metrics.sdlogj(flow) != pytest.approx(expected, rel=1e-3)


def test_batches_give_one_value_per_element_and_float32_is_kept():
    a = [[2.0, 1.0, 0.0], [0.5, 1.0, 1.0], [0.0, 0.5, 3.0]]
    batch = np.stack([np.zeros((5, 6, 7, 3)), affine_flow(a)]).astype(np.float32)
    det = metrics.jacobian_determinant(batch)
    assert det.shape == (2, 5, 6, 7) and det.dtype == np.float32
    np.testing.assert_allclose(det[0], 1.0)  # a zero field: exact
    # float32 field values <= 15 (to 5e-7): derivatives within 5e-7 and a determinant within
    # ~8e-6 of 3.5, i.e. 2.3e-6 (measured 2e-7)
    np.testing.assert_allclose(det[1], 3.5, rtol=1e-5)
    assert metrics.folding_fraction(-3 * batch).shape == (2,)
    # log det J within ~2e-6 of a constant: its std is far below 1e-5 (measured 7e-8)
    np.testing.assert_allclose(metrics.sdlogj(batch), [0.0, 0.0], atol=1e-5)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((4, 4, 4), "must be"),  # no component axis
        ((4, 4, 4, 4), "must be"),  # 4 components
        ((2, 2, 4, 4, 4, 3), "spatial axes"),  # too many axes
        ((4, 1, 4, 3), "at least 2 voxels"),
    ],
)
def test_flow_shapes_are_checked(shape, message):
    with pytest.raises(InputError, match=message):
        metrics.jacobian_determinant(np.zeros(shape))


def test_crop_that_leaves_nothing_is_rejected():
    with pytest.raises(InputError, match="crop=2 leaves no voxel"):
        metrics.sdlogj(np.zeros((4, 6, 6, 3)), crop=2)


# --- measure ----------------------------------------------------------------------------------


def allocate_400mb():
    block = np.ones(50_000_000)  # 400 MB of float64, written, so resident
    return float(block[-1])


def test_measure_returns_the_result_time_and_peak_memory():
    calls = []

    def add(x, y=0):
        calls.append(x)
        return x + y

    result, cost = metrics.measure(add, 2, y=3, repeats=3, warmup=2)
    assert result == 5 and len(calls) == 5
    assert cost.repeats == 3 and cost.warmup == 2 and len(cost.times) == 3
    assert cost.seconds > 0 and cost.seconds == sorted(cost.times)[1]
    assert cost.peak_mib > 0

    _, small = metrics.measure(np.zeros, 10)
    _, big = metrics.measure(allocate_400mb)
    assert big.peak_mib > small.peak_mib
    if big.memory_source == metrics.MEMORY_VMHWM_RESET:
        # the high-water mark was reset: it covers the call only
        assert small.peak_mib - small.baseline_mib < 50
        assert big.peak_mib - big.baseline_mib > 350  # 400 MB = 381 MiB


def test_measure_falls_back_when_proc_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics, "_PROC_CLEAR_REFS", str(tmp_path / "absent" / "clear_refs"))
    _, cost = metrics.measure(sum, [1, 2])
    assert cost.memory_source == metrics.MEMORY_VMHWM_LIFETIME
    monkeypatch.setattr(metrics, "_PROC_STATUS", str(tmp_path / "absent" / "status"))
    _, cost = metrics.measure(sum, [1, 2])
    assert cost.memory_source == metrics.MEMORY_MAXRSS_LIFETIME and cost.baseline_mib is None
    assert cost.peak_mib > 10  # a Python process with NumPy loaded


def test_measure_rejects_zero_repeats():
    with pytest.raises(InputError, match="repeats must be at least 1"):
        metrics.measure(sum, [1], repeats=0)


# --- summarize, markdown_table ----------------------------------------------------------------

RECORDS = [
    {"method": "dgan", "pair": "p1", "dice": 0.8, "hd95": 2.0},
    {"method": "ants", "pair": "p1", "dice": 0.5, "hd95": math.inf},
    {"method": "dgan", "pair": "p2", "dice": 0.6, "hd95": 4.0},
    {"method": "dgan", "pair": "p3", "dice": math.nan, "hd95": 6.0},
    {"method": "affine", "pair": "p1", "dice": 0.25},
]


def test_summarize_gives_mean_and_std_per_method():
    summary = metrics.summarize(RECORDS)
    assert list(summary) == ["dgan", "ants", "affine"]
    dgan = summary["dgan"]
    # dice: NaN left out, mean(0.8, 0.6) = 0.7, population std 0.1 (float64 of a few numbers:
    # approx's rel 1e-6 is ample)
    assert dgan["dice"].mean == pytest.approx(0.7) and dgan["dice"].std == pytest.approx(0.1)
    assert dgan["dice"].n == 2
    # hd95: mean(2, 4, 6) = 4, std = sqrt(8 / 3)
    assert dgan["hd95"] == pytest.approx((4.0, math.sqrt(8 / 3), 3))
    assert summary["ants"]["hd95"].mean == math.inf
    assert summary["affine"]["hd95"].n == 0 and math.isnan(summary["affine"]["hd95"].mean)
    # sample std and an explicit metric list
    sample = metrics.summarize(RECORDS, metrics=["hd95"], ddof=1)
    assert list(sample["dgan"]) == ["hd95"] and sample["dgan"]["hd95"].std == pytest.approx(2.0)


def test_summarize_rejects_non_numeric_metrics_and_missing_methods():
    with pytest.raises(InputError, match="record 0: metric 'dice' is not a number: 'high'"):
        metrics.summarize([{"method": "m", "pair": "p", "dice": "high"}])
    with pytest.raises(InputError, match="record 0 has no 'method'"):
        metrics.summarize([{"pair": "p", "dice": 1.0}])


def test_markdown_table_renders_mean_plus_minus_std():
    table = metrics.markdown_table(metrics.summarize(RECORDS), ["dice", "hd95"], digits=2)
    assert table == "\n".join(
        [
            "| method | dice | hd95 |",
            "|---|---:|---:|",
            "| dgan | 0.70 ± 0.10 | 4.00 ± 1.63 |",
            "| ants | 0.50 ± 0.00 | inf |",
            "| affine | 0.25 ± 0.00 | n/a |",
        ]
    )
    one_value = metrics.summarize(RECORDS[1:2], ddof=1)
    assert metrics.markdown_table(one_value, ["dice"]).splitlines()[-1] == "| ants | 0.500 |"


def test_measure_resets_the_peak_between_measurements():
    _, big = metrics.measure(allocate_400mb)
    _, small = metrics.measure(np.zeros, 10)
    if small.memory_source != metrics.MEMORY_VMHWM_RESET:
        pytest.skip("this system does not let a process reset its VmHWM")
    assert big.peak_mib - big.baseline_mib > 350  # 400 MB = 381 MiB
    assert small.peak_mib - small.baseline_mib < 50  # not the 400 MB of the measurement before
    assert small.peak_mib < big.peak_mib - 300


def test_measure_counts_what_the_warm_up_keeps():
    """A network built (or memory cached) by the first call stays resident: the memory window
    opens before the warm-up, so it is counted, where the time covers the timed calls only."""
    kept = []

    def build_once_then_run():
        if not kept:
            kept.append(np.ones(50_000_000))  # 400 MB, written, kept like a model's weights
        return float(kept[0][-1])

    _, cost = metrics.measure(build_once_then_run, repeats=2, warmup=1)
    if cost.memory_source != metrics.MEMORY_VMHWM_RESET:
        pytest.skip("this system does not let a process reset its VmHWM")
    assert cost.peak_mib - cost.baseline_mib > 350
    assert len(cost.times) == 2
