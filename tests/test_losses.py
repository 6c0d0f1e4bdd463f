"""The loss terms against an independent NumPy reference, hand-computed cases and their properties."""

import numpy as np
import pytest

from dgan.compat import keras, tf
from dgan.core import losses
from numpy_reference import np_box_sum, np_direction, np_lcc, np_lg

# --- an independent NumPy reference ---------------------------------------------------------


def batch(*volumes):
    """(X, Y, Z) arrays -> one float32 tensor (B, X, Y, Z, 1)."""
    return tf.constant(np.stack(volumes)[..., None], tf.float32)


def smooth_random(rng, shape, sigma=1.5):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.random(shape), sigma)


# --- agreement with the reference -----------------------------------------------------------


@pytest.mark.parametrize("window", [1, 3, 7])
@pytest.mark.parametrize("shape", [(17, 20, 23), (12, 12, 12)])
def test_local_gradient_matches_numpy(rng, window, shape):
    a, b, c = (rng.random(shape) for _ in range(3))
    got = losses.local_gradient_similarity(batch(a, c), batch(b, a), window).numpy()
    want = [np_lg(a, b, window), np_lg(c, a, window)]
    # float32 against float64, in any summation order: window sums of <= 7 terms in three passes
    # (<= 1.3e-6 of the sum of |terms|, which for random images is ~20x |v|) move a voxel's
    # |n . n| by <= ~5e-5; averaged over the volume ~1e-7 (measured <= 6e-8)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("window", [1, 3, 5, 9])
@pytest.mark.parametrize("shape", [(17, 20, 23), (10, 11, 9)])
def test_local_cross_correlation_matches_numpy(rng, window, shape):
    a, b = rng.random(shape), rng.random(shape)
    mixed = 0.6 * a + 0.4 * b
    got = losses.local_cross_correlation(batch(a, a), batch(b, mixed), window).numpy()
    want = [np_lcc(a, b, window), np_lcc(a, mixed, window)]
    # float32 against float64, in any summation order: window sums of <= 9 terms in three passes
    # (<= 1.6e-6 of the sums) and variances ~4x smaller than the sums move a voxel's cc in [0, 1]
    # by <= ~2e-5; averaged over the volume ~1e-7 (measured <= 8e-8)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_local_gradient_hand_computed():
    # a(i, j, k) = i on a 4^3 grid; window 1. d_x a is 1 for i = 1, 2 and 0.5 at i = 0, 3
    # (edge replication halves the border difference); d_y = d_z = 0. For b = -3a + 2 the
    # directions are (+-g / (g + eps), 0, 0) and (-+3g / (3g + eps), 0, 0).
    eps = losses.DEFAULT_LG_EPS
    a = np.broadcast_to(np.arange(4.0)[:, None, None], (4, 4, 4))
    b = -3 * a + 2
    per_g = {g: g / (g + eps) * 3 * g / (3 * g + eps) for g in (1.0, 0.5)}
    want = (per_g[1.0] + per_g[0.5]) / 2
    got = losses.local_gradient_similarity(batch(a), batch(b), window=1).numpy()
    # float32: a mean of 64 values near 1 is within 64/2 * 2^-24 = 2e-6 in any summation order;
    # eps moves the result by 2e-5, so a wrong eps still fails
    np.testing.assert_allclose(got, [want], rtol=5e-6)
    # a ramp along y is orthogonal everywhere: similarity 0
    c = np.broadcast_to(np.arange(4.0)[None, :, None], (4, 4, 4))
    assert losses.local_gradient_similarity(batch(a), batch(c), window=1).numpy()[0] == 0.0


def test_local_cross_correlation_hand_computed():
    # volumes of shape (3, 1, 1), window 3: the window at voxel 0 holds a = (0 pad, 1, 2) and
    # b = (0 pad, 2, 3), the rest of its 27 places being zero padding.
    eps = losses.DEFAULT_LCC_EPS
    a = np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)
    b = a + 1

    def cc(wa, wb):
        wa, wb = np.array(wa), np.array(wb)
        cross = (wa * wb).sum() - wa.sum() * wb.sum() / 27
        var_a = (wa * wa).sum() - wa.sum() ** 2 / 27
        var_b = (wb * wb).sum() - wb.sum() ** 2 / 27
        return cross**2 / (var_a * var_b + eps)

    want = np.mean([cc([1, 2], [2, 3]), cc([1, 2, 3], [2, 3, 4]), cc([2, 3], [3, 4])])
    got = losses.local_cross_correlation(batch(a), batch(b), window=3).numpy()
    # float32: sums of <= 27 small integers (exact) and a few operations on them, ~1e-6 at most
    np.testing.assert_allclose(got, [want], rtol=5e-6)
    assert abs(cc([1, 2], [2, 3]) - 0.98357) < 1e-4  # the first window, by hand (5 decimals)


# --- the properties the method relies on ----------------------------------------------------


@pytest.mark.parametrize("window", [3, 7])
def test_sums_first_directions_match_away_from_the_faces(rng, window):
    """D(B(I)) = B(D(I)) where neither operator reaches a face; within window // 2 + 1 voxels of
    one they differ, unless I is zero there."""
    shape, margin = (19, 22, 24), window // 2 + 1
    touching = rng.random(shape)
    padded = np.pad(rng.random(tuple(n - 2 * margin for n in shape)), margin)  # zero at the faces
    for image, where in ((padded, (slice(None),) * 3), (touching, (slice(margin, -margin),) * 3)):
        got = losses.local_gradient_direction(batch(image), window, sums_first=True).numpy()[0]
        want, size = np_direction(image, window)
        # float32: the window sums of window^3 terms in [0, 1], three passes of <= window terms,
        # are off by <= 3 window u window^3 (u = 2^-24); v, half a difference of two, by as much.
        # A direction then moves by <= 2 |dv| / |v|: checked where |v| is above its median
        error_v = 3 * window * 2.0**-24 * window**3
        big = size[where] >= np.median(size[where])
        assert np.abs(got[where] - want[where])[big].max() <= 2 * error_v / np.median(size[where])
    edge = losses.local_gradient_direction(batch(touching), window, sums_first=True).numpy()[0]
    assert np.abs(edge[0] - np_direction(touching, window)[0][0]).max() > 0.01


@pytest.mark.parametrize("scale, shift", [(3.0, 0.5), (0.5, -2.0), (-1.0, 1.0), (-4.0, 0.0)])
def test_local_gradient_invariant_to_intensity_maps(rng, scale, shift):
    a, b = smooth_random(rng, (20, 18, 16)), smooth_random(rng, (20, 18, 16))
    base = losses.local_gradient_similarity(batch(a), batch(b)).numpy()
    mapped = losses.local_gradient_similarity(batch(a), batch(scale * b + shift)).numpy()
    # float32 rounds scale * b + shift (values <= 3, by <= 1.8e-7) where neighbours differ by
    # ~0.01 * scale: local gradients, their sums and so the directions move by up to ~1e-4
    # (measured: the similarity by <= 6e-6); a measure that is not invariant moves far more
    np.testing.assert_allclose(mapped, base, atol=1e-3)
    assert base[0] < 0.9  # two unrelated images are not similar


def test_local_gradient_is_maximal_for_identical_images(rng):
    a = smooth_random(rng, (16, 16, 16))
    same = losses.local_gradient_similarity(batch(a), batch(a)).numpy()[0]
    assert same > 0.999
    for other in (smooth_random(rng, a.shape), np.roll(a, 2, axis=0), a + 0.3 * rng.random(a.shape)):
        assert losses.local_gradient_similarity(batch(a), batch(other)).numpy()[0] < same


def test_smoothness_constant_and_linear_fields():
    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=float) for s in (6, 7, 8)), indexing="ij"), -1)
    constant = np.ones((6, 7, 8, 3)) * [1.0, -2.0, 0.5]
    assert losses.smoothness(tf.constant(constant[None], tf.float32)).numpy()[0] == 0.0
    a = np.array([[0.1, -0.2, 0.3], [0.0, 0.5, -0.1], [0.2, 0.2, 0.05]])
    linear = grid @ a.T  # flow_c(x) = sum_d A_cd x_d
    got = losses.smoothness(tf.constant(linear[None], tf.float32)).numpy()[0]
    # float32 rounds the field (values <= 5, to 2.4e-7: <= 3e-6 of the result) and averages
    # <= 280 squares (<= 280 * 2^-24 = 1.7e-5 in any order; measured 2e-8); averaging the 9
    # derivatives rather than summing them would be 9x off
    np.testing.assert_allclose(got, np.sum(a**2), rtol=1e-4)


def test_gan_and_l1_losses_by_hand():
    real = tf.constant([[1.0, 1.0], [0.0, 2.0]])
    fake = tf.constant([[0.0, 0.0], [1.0, -1.0]])
    # small integers and quarters: exact in float32 (the default rtol, 1e-7, is never used)
    np.testing.assert_allclose(losses.discriminator_loss(real, fake).numpy(), [0.0, 0.5 * (1.0 + 1.0)])
    np.testing.assert_allclose(losses.generator_adversarial_loss(fake).numpy(), [1.0, (0 + 4) / 2])
    a = tf.constant(np.arange(16.0).reshape(2, 2, 2, 2, 1), tf.float32)
    np.testing.assert_allclose(losses.l1(a, a + 0.25).numpy(), [0.25, 0.25])


def test_a_flat_window_has_no_correlation_and_no_round_off_gradient(rng):
    """Where F is constant (0.7) and R is not, L_LCC's cross term is round-off alone; divided by
    eps it gave the gradient noise as large as the real gradient elsewhere. Flat windows count 0."""
    window = 5
    fixed = rng.random((1, 20, 20, 20, 1)).astype(np.float32)
    moving = np.full_like(fixed, 0.7)
    moving[0, :6, :6, :6] += rng.random((6, 6, 6, 1)).astype(np.float32)  # structure in a corner
    moving_t = tf.constant(moving)
    with tf.GradientTape() as tape:
        tape.watch(moving_t)
        value = losses.local_cross_correlation(tf.constant(fixed), moving_t, window)
    gradient = tape.gradient(value, moving_t).numpy()[0, ..., 0]
    # a voxel's gradient comes from the windows centred within h = window // 2 of it; those
    # reach 2 h from it: the corner's structure, or the zero padding beyond the border
    h = window // 2
    assert np.abs(gradient[:6, :6, :6]).max() > 1e-6
    far = np.zeros(gradient.shape, bool)
    far[2 * h:-2 * h, 2 * h:-2 * h, 2 * h:-2 * h] = True
    far[:6 + 2 * h, :6 + 2 * h, :6 + 2 * h] = False
    assert far.sum() > 100
    np.testing.assert_array_equal(gradient[far], 0.0)
    # the value: as the NumPy reference (float64 sums, the same rule for flat windows). The
    # windows that are not flat have var / S(I^2) >= ~0.06, so float32's error on var and cross
    # (<= 9 n u S(I^2), dgan.core.losses.flat_tolerance) is <= 5e-5 of each, and <= 2e-4 of cc
    np.testing.assert_allclose(value.numpy(), [np_lcc(fixed[0, ..., 0], moving[0, ..., 0], window)],
                               rtol=2e-4)
    # contrast of 1 % of the intensity is not flat: it still counts (a flat count would give 0;
    # float32's error here is up to ~15 % of var per window in the worst case)
    faint = (0.7 + 0.01 * rng.random(fixed.shape)).astype(np.float32)
    got = losses.local_cross_correlation(tf.constant(fixed), tf.constant(faint), window).numpy()[0]
    want = np_lcc(fixed[0, ..., 0], faint[0, ..., 0], window)
    assert 0.5 * want < got < 1.5 * want


@pytest.mark.parametrize("value", [0.0, 1.0, 0.37])
def test_losses_finite_on_constant_images(value):
    const = tf.fill([2, 12, 12, 12, 1], value)
    with tf.GradientTape() as tape:
        tape.watch(const)
        total = tf.reduce_sum(
            losses.local_gradient_similarity(const, const)
            + losses.local_cross_correlation(const, const)
            + losses.smoothness(tf.concat([const] * 3, -1))
        )
    gradient = tape.gradient(total, const)
    assert np.isfinite(total.numpy())
    assert np.all(np.isfinite(gradient.numpy()))
    np.testing.assert_array_equal(losses.local_gradient_similarity(const, const).numpy(), [0.0, 0.0])


def test_dtype_is_kept(rng):
    a = tf.constant(rng.random((1, 8, 8, 8, 1)), tf.float64)
    for value in (
        losses.local_gradient_similarity(a, a, 3),
        losses.local_cross_correlation(a, a, 3),
        losses.smoothness(tf.concat([a] * 3, -1)),
        losses.l1(a, a),
    ):
        assert value.dtype == tf.float64


def test_numpy_arrays_are_accepted(rng):
    a, b = (rng.random((1, 9, 10, 11, 1)).astype(np.float32) for _ in range(2))
    for similarity in (losses.local_gradient_similarity, losses.local_cross_correlation):
        # the same kernels on the same float32 values: equal
        np.testing.assert_allclose(similarity(a, b, 3).numpy(),
                                   similarity(tf.constant(a), tf.constant(b), 3).numpy())


@pytest.mark.parametrize("windows", [(5,), (5, 7), (3, 1, 5)])
def test_chained_box_sums_match_numpy_on_static_and_dynamic_shapes(rng, windows):
    x = rng.random((1, 9, 12, 10, 2))
    want = x[0]
    for n in windows:  # summed over each window in turn, zeros beyond the borders
        want = np.stack([np_box_sum(want[..., c], n) for c in range(2)], axis=-1)
    static = losses.box_sum(tf.constant(x), *windows).numpy()[0]
    dynamic = tf.function(lambda v: losses.box_sum(v, *windows),
                          input_signature=[tf.TensorSpec([1, None, None, None, 2], tf.float64)])
    # float64 sums of <= 5^3 * 7^3 terms in [0, 1] (<= ~4e4): round-off ~1e-11
    np.testing.assert_allclose(static, want, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(dynamic(tf.constant(x)).numpy()[0], want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("windows", [(5,), (3, 1, 5)])
def test_strided_box_sums_are_the_sums_around_every_strided_voxel(rng, windows, stride):
    x = rng.random((1, 9, 12, 10, 2))
    want = x[0]
    for n in windows:
        want = np.stack([np_box_sum(want[..., c], n) for c in range(2)], axis=-1)
    start = stride // 2
    want = want[start::stride, start::stride, start::stride]
    static = losses.box_sum(tf.constant(x), *windows, stride=stride).numpy()[0]
    dynamic = tf.function(lambda v: losses.box_sum(v, *windows, stride=stride),
                          input_signature=[tf.TensorSpec([1, None, None, None, 2], tf.float64)])
    centres = tuple(len(range(start, n, stride)) for n in (9, 12, 10))
    assert static.shape == want.shape == centres + (2,)
    # float64, as in the test above
    np.testing.assert_allclose(static, want, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(dynamic(tf.constant(x)).numpy()[0], want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_local_cross_correlation_matches_numpy(rng, stride):
    a, b = rng.random((17, 20, 23)), rng.random((17, 20, 23))
    fixed, moving = batch(a), batch(0.6 * a + 0.4 * b)
    got = losses.correlation_from_statistics(losses.local_statistics(fixed, 5, stride), fixed,
                                             moving, 5, stride=stride).numpy()
    # as test_local_cross_correlation_matches_numpy, over fewer voxels (same bound per voxel)
    np.testing.assert_allclose(got, [np_lcc(a, 0.6 * a + 0.4 * b, 5, stride=stride)], atol=1e-4)
    assert abs(got[0] - np_lcc(a, 0.6 * a + 0.4 * b, 5)) > 1e-4  # another estimate than all


@pytest.mark.parametrize("window", [0, 2, -3, 4.5])
def test_bad_window_refused(window):
    with pytest.raises(ValueError, match="odd positive integer"):
        losses.local_cross_correlation(tf.zeros([1, 8, 8, 8, 1]), tf.zeros([1, 8, 8, 8, 1]), window)


@pytest.mark.parametrize("layer_class", [losses.LocalGradientSimilarity, losses.LocalCrossCorrelation])
def test_loss_layers_config_round_trip_and_values(rng, layer_class):
    layer = layer_class(window=5, eps=1e-4, name="similarity")
    clone = layer_class.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    a, b = batch(rng.random((10, 10, 10))), batch(rng.random((10, 10, 10)))
    fixed, moving = keras.Input((10, 10, 10, 1)), keras.Input((10, 10, 10, 1))
    model = keras.Model([fixed, moving], clone([fixed, moving]))
    function = {
        losses.LocalGradientSimilarity: losses.local_gradient_similarity,
        losses.LocalCrossCorrelation: losses.local_cross_correlation,
    }[layer_class]
    # the same kernels on the same values: equal
    np.testing.assert_allclose(model([a, b]).numpy(), function(a, b, 5, 1e-4).numpy(), atol=1e-6)


def test_loss_layer_refuses_wrong_inputs():
    layer = losses.LocalCrossCorrelation()
    with pytest.raises(ValueError, match="single-channel volumes"):
        layer([keras.Input((8, 8, 8, 2)), keras.Input((8, 8, 8, 2))])


# --- an eps from the image's own gradient scale (refinement's lg_noise) -------------------------


@pytest.mark.parametrize("quantile", [0.5, 0.9])
def test_gradient_scale_is_the_quantile_of_the_window_summed_gradient_over_the_weight(rng, quantile):
    image = smooth_random(rng, (14, 12, 10))
    weight = np.zeros((14, 12, 10), np.float32)
    weight[3:11, 2:9, 4:8] = 1.0
    _, norm = np_direction(image, 3)
    got = losses.gradient_scale(batch(image), 3, weight[None], quantile)
    want = np.quantile(norm[weight > 0], quantile)
    # float32 window sums of 27 central differences against float64: relative ~1e-6
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(losses.gradient_scale(batch(image), 3), np.median(norm), rtol=1e-4)


def test_gradient_scale_of_a_flat_image_is_zero():
    assert losses.gradient_scale(batch(np.full((8, 8, 8), 0.3, np.float32)), 3) == 0.0


def test_a_larger_eps_shortens_weak_gradients_more_than_strong_ones(rng):
    """n = v / (|v| + eps) with eps a tensor, as refinement passes it: the reference's values,
    and with eps = the median |v| an edge (|v| >> eps) keeps most of its length where noise
    (|v| << eps) loses most of it."""
    image = np.zeros((12, 12, 12))
    image[6:] = 1.0  # an edge across x, in noise
    image += 0.01 * rng.standard_normal(image.shape)
    eps = float(np.median(np_direction(image, 3)[1]))
    got = losses.local_gradient_direction(batch(image), 3, tf.constant(eps)).numpy()[0]
    want, norm = np_direction(image, 3, eps)
    np.testing.assert_allclose(got, want, atol=1e-5)
    length = np.linalg.norm(want, axis=-1)
    np.testing.assert_allclose(length, norm / (norm + eps), atol=1e-6)
    strong, weak = norm >= 4 * eps, norm <= eps / 4
    assert strong.any() and weak.any()
    assert length[strong].min() >= 0.8 > 0.2 >= length[weak].max()
