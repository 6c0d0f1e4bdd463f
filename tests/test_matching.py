"""Block matching (dgan.core.matching): the cost against NumPy, a known translation found across a
contrast inversion, and T's first estimate inside the registration network."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from dgan.compat import tf
from dgan.core import losses, matching, networks
from dgan.core.networks import NetworkConfig, build_registration_net, training_view
from dgan.core.settings import parse_matching
from dgan.data import synth
from dgan.registration.model_folder import load_model_folder, save_model_folder
from dgan.registration.registrar import Registrar
from dgan.registration.serving import export_saved_model
from dgan.training.trainers import LossWeights, RegistrationTrainer


def numpy_cost(fixed_direction, moving_direction, radius, window):
    """C(p, d) = box mean over window^3 (zeros outside) of (n_R(p) . n_F(p + d))^2, d in
    itertools.product order."""
    size = fixed_direction.shape[:3]
    r = radius
    padded = np.pad(moving_direction, [(r, r)] * 3 + [(0, 0)])
    out = []
    for d in itertools.product(range(-r, r + 1), repeat=3):
        shifted = padded[r + d[0]:r + d[0] + size[0], r + d[1]:r + d[1] + size[1],
                         r + d[2]:r + d[2] + size[2]]
        dots = np.sum(fixed_direction * shifted, axis=-1) ** 2
        out.append(ndimage.uniform_filter(dots, window, mode="constant"))
    return np.stack(out, axis=-1)


def test_cost_matches_numpy(rng):
    fixed = rng.normal(size=(6, 7, 5, 3))
    moving = rng.normal(size=(6, 7, 5, 3))
    got = matching.matching_cost(tf.constant(fixed[None]), tf.constant(moving[None]), 2, 3)
    assert got.shape == (1, 6, 7, 5, 125)
    # float64 sums of at most 27 * 3 products of O(1) numbers: round-off ~1e-14
    np.testing.assert_allclose(got.numpy()[0], numpy_cost(fixed, moving, 2, 3), atol=1e-10)
    np.testing.assert_array_equal(matching.displacements(1)[[0, 13, 26]],
                                  [[-1, -1, -1], [0, 0, 0], [1, 1, 1]])


def test_smoothed_cost_is_the_cost_averaged_again(rng):
    fixed = rng.normal(size=(6, 7, 5, 3))
    moving = rng.normal(size=(6, 7, 5, 3))
    got = matching.matching_cost(tf.constant(fixed[None]), tf.constant(moving[None]), 1, 3, 5)
    want = ndimage.uniform_filter(numpy_cost(fixed, moving, 1, 3), (5, 5, 5, 1), mode="constant")
    # float64 throughout (sums of <= 27 * 125 products of O(1) numbers): round-off ~1e-12
    np.testing.assert_allclose(got.numpy()[0], want, atol=1e-10)


def test_soft_argmax_of_a_peaked_cost_is_its_displacement():
    cost = np.zeros((1, 2, 2, 2, 27), np.float32)
    cost[..., 5] = 1.0  # displacements(1)[5] = (-1, 0, 1)
    flow = matching.soft_argmax_flow(tf.constant(cost), 1, 0.005).numpy()
    # the other 26 weights are exp(-200) each: the flow is the displacement to float32 precision
    np.testing.assert_allclose(flow, np.broadcast_to([-1.0, 0.0, 1.0], flow.shape), atol=1e-6)


@pytest.mark.parametrize("invert", [False, True])
def test_block_matching_finds_a_translation_across_contrast(invert):
    texture = synth.smooth_noise((32, 32, 32), 4.0, np.random.default_rng(3))[..., 0]
    shift = np.array([3, 0, -2])
    # moving(p) = texture(p - shift), so moved(p) = moving(p + shift) = texture(p) = fixed(p)
    moving = np.roll(texture, shift, axis=(0, 1, 2))
    if invert:  # another "modality": the local-gradient measure ignores the sign of contrast
        moving = 1.0 - moving
    layer = networks.BlockMatching([(2, 2), (1, 1)])
    flow = layer([tf.constant(moving[None, ..., None]), tf.constant(texture[None, ..., None])])
    interior = flow.numpy()[0, 8:-8, 8:-8, 8:-8]
    np.testing.assert_allclose(np.median(interior.reshape(-1, 3), axis=0), shift, atol=0.25)
    assert np.mean(np.linalg.norm(interior - shift, axis=-1) < 0.5) > 0.9


def matching_config():
    return NetworkConfig((16, 16, 16), t_features=((4, 8), (8, 8, 4)), g_features=((4, 4), (4, 4)),
                         d_features=4, d_layers=2, matching=((2, 2), (1, 1)))


def zero_residual_t(rng):
    """(config, T with matching whose U-Net's residual is 0, moving, fixed = moving shifted by
    one voxel along x)."""
    config = matching_config()
    net = build_registration_net(config)
    residual = net.get_layer("residual_flow")
    residual.set_weights([np.zeros_like(w) for w in residual.get_weights()])
    moving = rng.random((1, 16, 16, 16, 1)).astype("float32")
    return config, net, moving, np.roll(moving, 1, axis=1)


def test_t_with_matching_starts_from_the_block_matching_field(rng):
    config, net, moving, fixed = zero_residual_t(rng)
    want = networks.BlockMatching(config.matching)([tf.constant(moving), tf.constant(fixed)])
    out = net({"moving": moving, "fixed": fixed})
    # a zero residual: phi(p) = 0 + phi_0(p + 0), interpolated at grid points exactly
    np.testing.assert_allclose(out["flow"].numpy(), want.numpy(), atol=1e-6)
    assert np.abs(want.numpy()).max() > 0.5  # the matching moved something
    # only the U-Net learns: the matching has no weights and passes no gradient
    assert net.get_layer("matching").trainable_weights == []
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(net({"moving": moving, "fixed": fixed})["flow"] ** 2)
    grads = tape.gradient(loss, net.trainable_variables)
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("smooth", ["residual", "flow"])
def test_smoothness_acts_on_the_residual_unless_told_otherwise(rng, smooth):
    """With block matching, sum |grad r|^2 of the U-Net's residual r (0 here) is the smoothness
    term by default; ``smooth="flow"`` takes the composed phi, whose roughness is phi_0's."""
    _, net, moving, fixed = zero_residual_t(rng)
    out = training_view(net)({"moving": moving, "fixed": fixed})
    np.testing.assert_array_equal(out["residual"].numpy(), 0.0)
    np.testing.assert_array_equal(out["flow"].numpy(),
                                  net({"moving": moving, "fixed": fixed})["flow"].numpy())
    trainer = RegistrationTrainer(net)
    trainer.compile(tf.keras.optimizers.Adam(1e-3), LossWeights(smooth=smooth))
    terms = trainer.registration_terms(tf.constant(moving), tf.constant(fixed), training=False)
    rough = float(losses.smoothness(out["flow"])[0])
    assert rough > 1e-3  # the matching's field is not constant
    want = 0.0 if smooth == "residual" else rough
    # the same tensor through the same ops: equal but for summation order
    assert float(terms["t_smooth"][0]) == pytest.approx(want, rel=1e-5, abs=1e-12)


def test_without_matching_the_regularised_field_is_phi(rng):
    net = build_registration_net(NetworkConfig((16, 16, 16), t_features=((4, 8), (8, 8, 4)),
                                               g_features=((4, 4), (4, 4)), d_features=4,
                                               d_layers=2))
    moving = rng.random((1, 16, 16, 16, 1)).astype("float32")
    out = training_view(net)({"moving": moving, "fixed": moving[:, ::-1]})
    np.testing.assert_array_equal(out["residual"].numpy(), out["flow"].numpy())
    with pytest.raises(ValueError, match="smooth must be one of"):
        LossWeights(smooth="velocity")


def test_t_with_matching_saves_reloads_and_serves(tmp_path, rng):
    config = matching_config()
    net = build_registration_net(config)
    moving = rng.random((1, 16, 16, 16, 1)).astype("float32")
    fixed = np.roll(moving, -1, axis=2)
    want = net({"moving": moving, "fixed": fixed})["flow"].numpy()
    folder = tmp_path / "model"
    save_model_folder(net, config, {"shape": (16, 16, 16), "spacing": [2.0] * 3}, folder)
    loaded = load_model_folder(folder)
    assert loaded.network_config.matching == ((2, 2), (1, 1))
    got = loaded.registration_net({"moving": moving, "fixed": fixed})["flow"].numpy()
    # the same graph and weights: only summation order can differ, float32 round-off of
    # flows of a few voxels (~1e-6); a lost matching pass would differ by about a voxel
    np.testing.assert_allclose(got, want, atol=1e-4)
    served = tf.saved_model.load(export_saved_model(folder, tmp_path / "serving"))
    out = served.signatures["serving_default"](moving=tf.constant(moving), fixed=tf.constant(fixed))
    np.testing.assert_allclose(out["flow"].numpy(), want, atol=1e-4)


def test_matching_settings_are_checked():
    assert parse_matching("4:2,2:2,1:1") == [[4, 2], [2, 2], [1, 1]]
    assert parse_matching("none") == []
    with pytest.raises(ValueError, match="matching must look like"):
        parse_matching("4-2")
    with pytest.raises(ValueError, match="matching pass"):
        NetworkConfig((16, 16, 16), t_features=((4, 8), (8, 8, 4)), matching=((8, 2),))
    with pytest.raises(ValueError, match="matching pass"):
        NetworkConfig((16, 16, 16), t_features=((4, 8), (8, 8, 4)), matching=((2, 0),))
    with pytest.raises(ValueError, match="at least one"):
        networks.BlockMatching([])


def test_the_registrar_runs_t_after_its_matching_with_the_same_numbers(tmp_path, rng):
    """The registrar computes T's block matching once, outside the network (it is also a start
    field of its own), and feeds it to T's variant with an ``initial`` input: the flow must be
    T's own, for the padded shapes too, and the same with the matching handed in."""
    config = matching_config()
    net = build_registration_net(config)
    net.set_weights([w + rng.normal(0, 0.05, w.shape).astype("float32")
                     for w in net.get_weights()])  # a residual that is not 0
    folder = tmp_path / "model"
    save_model_folder(net, config, {"shape": (16, 16, 16), "spacing": [2.0] * 3}, folder)
    registrar = Registrar(load_model_folder(folder))
    moving = rng.random((1, 14, 16, 12)).astype("float32")  # padded to 16^3 inside
    fixed = np.roll(moving, 1, axis=1)
    moving_in, window = registrar._network_input(moving)
    fixed_in, _ = registrar._network_input(fixed)
    whole_t = registrar.network_for(moving_in.shape[1:4])  # T with its matching layer
    assert "matching" in {layer.name for layer in whole_t.layers}
    whole = whole_t({"moving": moving_in, "fixed": fixed_in})["flow"].numpy()[(slice(None), *window)]
    assert np.abs(whole).max() > 0.5
    split = registrar.predict_flow(moving, fixed)
    # the same operations on the same numbers, in two graphs: float32 round-off of flows of a
    # few voxels (~1e-6 relative); a matching field lost or fed twice differs by ~a voxel
    np.testing.assert_allclose(split, whole, atol=1e-4)
    assert ("T after matching", (16, 16, 12)) in registrar._nets
    phi0 = matching.match(tf.constant(moving_in), tf.constant(fixed_in), config.matching).numpy()
    handed = registrar.predict_flow(moving, fixed, initial=phi0)
    np.testing.assert_allclose(handed, whole, atol=1e-4)
    cropped, padded = registrar.match(registrar.scaled(moving[0]), registrar.scaled(fixed[0]),
                                      padded=True)  # what the start field hands in
    np.testing.assert_allclose(padded, phi0[0], atol=1e-5)
    np.testing.assert_array_equal(cropped, padded[window])
    with pytest.raises(ValueError, match="padded input"):
        registrar.predict_flow(moving, fixed, initial=phi0[(slice(None), *window)])
