"""DeformGAN's alternating step: which weights each update changes, and distribution equivalence."""

import numpy as np
import pytest

from dgan.compat import keras, tf, vxm
from dgan.core import losses
from dgan.training.trainers import LOSS_NAMES, DeformGAN, LossWeights
from trained_alike import assert_trained_alike

NETWORKS = ("discriminator", "generator", "registration_net")


def make_model(config, optimizer=lambda: keras.optimizers.Adam(1e-3), seed=1):
    keras.utils.set_random_seed(seed)
    model = DeformGAN.from_config_object(config)
    model.compile(optimizer(), optimizer(), optimizer(), LossWeights(lg_window=3, lcc_window=5))
    return model


def make_batch(rng, size=2):
    shape = (size, 16, 16, 16, 1)
    return {
        "moving": tf.constant(rng.random(shape), tf.float32),
        "fixed": tf.constant(rng.random(shape), tf.float32),
    }


def snapshot(net):
    return [v.numpy().copy() for v in net.trainable_variables]


def changed(before, net):
    return any(not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables))


@pytest.mark.parametrize(
    "update, trained",
    [("train_d", "discriminator"), ("train_g", "generator"), ("train_t", "registration_net")],
)
def test_each_update_changes_only_its_network(tiny_config, rng, update, trained):
    model = make_model(tiny_config)
    data = make_batch(rng)
    nets = {name: getattr(model, name) for name in ("discriminator", "generator", "registration_net")}
    before = {name: snapshot(net) for name, net in nets.items()}
    terms = getattr(model, update)(data["moving"], data["fixed"])
    for name, net in nets.items():
        assert changed(before[name], net) == (name == trained), f"{update} and {name}"
    for value in terms.values():
        assert value.shape == (2,) and np.all(np.isfinite(value.numpy()))


def test_train_step_updates_all_three_in_order_and_reports_every_term(tiny_config, rng):
    model = make_model(tiny_config)
    calls = []
    for update in ("train_d", "train_g", "train_t"):
        original = getattr(model, update)
        setattr(model, update,
                lambda m, f, _o=original, _n=update, **kw: calls.append(_n) or _o(m, f, **kw))
    data = make_batch(rng)
    before = {n: snapshot(getattr(model, n)) for n in ("discriminator", "generator", "registration_net")}
    logs = model.train_step(data)
    assert calls == ["train_d", "train_g", "train_t"]
    assert set(logs) == set(LOSS_NAMES)
    assert all(changed(before[n], getattr(model, n)) for n in before)
    test_logs = model.test_step(data)
    assert set(test_logs) == set(LOSS_NAMES)


def test_train_step_equals_the_three_updates_each_computing_its_own_moved(tiny_config, rng):
    """train_step runs T's forward pass once, for D, G and T's own update; T is frozen while D
    and G train, so the result is that of three updates each running T itself."""
    data = make_batch(rng)
    one, three = make_model(tiny_config), make_model(tiny_config)
    one.train_step(data)
    for update in (three.train_d, three.train_g):  # each warps with the (unchanged) T itself
        moved = three.registration_net({"moving": data["moving"], "fixed": data["fixed"]},
                                       training=False)["moved"]
        update(moved, data["fixed"])
    three.train_t(data["moving"], data["fixed"])
    for name in ("discriminator", "generator", "registration_net"):
        for a, b in zip(getattr(one, name).trainable_variables,
                        getattr(three, name).trainable_variables):
            # the same eager operations on the same values: equal on any CPU
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=name)


def test_fit_reduces_the_registration_loss_on_a_shifted_pair(tiny_config):
    """A moving image that is the fixed one shifted: T learns to undo it (the loss falls)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    fixed = gaussian_filter(rng.random((16, 16, 16)), 2)
    fixed = (fixed - fixed.min()) / np.ptp(fixed)
    moving = np.roll(fixed, 1, axis=0)
    data = {"moving": moving[None, ..., None].astype("float32"), "fixed": fixed[None, ..., None].astype("float32")}
    model = make_model(tiny_config, lambda: keras.optimizers.Adam(3e-3))
    dataset = tf.data.Dataset.from_tensors(data).repeat()
    first = model.evaluate(tf.data.Dataset.from_tensors(data), return_dict=True, verbose=0)
    model.fit(dataset, steps_per_epoch=30, epochs=1, verbose=0)
    last = model.evaluate(tf.data.Dataset.from_tensors(data), return_dict=True, verbose=0)
    assert last["t_lg"] < first["t_lg"]
    assert last["g_l1"] < first["g_l1"]


def test_mirrored_step_equals_single_device_step(tiny_config, rng):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest sets two logical CPUs"
    data = make_batch(rng, size=4)
    sgd = lambda: keras.optimizers.SGD(0.05)  # noqa: E731  (linear in the gradient: shows scaling errors)

    single = make_model(tiny_config, sgd)
    initial = [getattr(single, name).get_weights() for name in NETWORKS]
    single.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)

    # Reduction through one device rather than collectives: another MirroredStrategy earlier in
    # the same test process (tests/test_distribute.py) would collide on collective instance keys.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        mirrored = make_model(tiny_config, sgd)
        for name, weights in zip(NETWORKS, initial):
            getattr(mirrored, name).set_weights(weights)
    mirrored.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)

    def named(weights):
        return {f"{name}/{k}": w for name, net in zip(NETWORKS, weights) for k, w in enumerate(net)}

    want = named(getattr(single, name).get_weights() for name in NETWORKS)
    got = named(getattr(mirrored, name).get_weights() for name in NETWORKS)
    start = named(initial)
    assert all(not np.array_equal(want[k], start[k]) for k in want)  # every variable trained
    assert_trained_alike(got, want, start, steps=1)  # within round-off of the update


def test_predict_runs_registration_only(tiny_config, rng):
    model = make_model(tiny_config)
    data = {k: v.numpy() for k, v in make_batch(rng).items()}
    out = model.predict(data, verbose=0)
    assert set(out) == {"moved", "flow"}
    direct = model.registration_model.predict(data, verbose=0)
    np.testing.assert_allclose(out["flow"], direct["flow"], atol=1e-6)  # the same network: equal


def test_t_lcc_term_compares_r_with_g_of_the_moved_image(tiny_config, rng):
    """The paper's L_T: L_LCC(R, G(F(phi))) and L_LG(R, F(phi)), weighted by w_lcc and beta."""
    model = make_model(tiny_config)
    weights = LossWeights(lg_window=3, lcc_window=5, beta=2.0, alpha=0.5, w_lcc=0.25)
    model.compile(keras.optimizers.Adam(), keras.optimizers.Adam(), keras.optimizers.Adam(),
                  weights)
    data = make_batch(rng, size=1)
    out = model.registration_net(data, training=False)
    flow = out["flow"] + tf.constant(rng.normal(0, 1.5, out["flow"].shape), tf.float32)
    moved = vxm.layers.SpatialTransformer(indexing="ij")([data["moving"], flow])
    model._view = lambda inputs, training: {"moved": moved, "flow": flow, "residual": flow}
    terms, _, translated = model.registration_terms(data["moving"], data["fixed"], False)
    # the same layers on the same tensors: equal but for summation order
    np.testing.assert_allclose(translated.numpy(), model.generator(moved).numpy(), rtol=1e-5,
                               atol=1e-6)
    lcc = 1.0 - losses.local_cross_correlation(data["fixed"], model.generator(moved), 5)
    lg = 1.0 - losses.local_gradient_similarity(data["fixed"], moved, 3)
    np.testing.assert_allclose(terms["t_lcc"].numpy(), lcc.numpy(), rtol=1e-5)
    np.testing.assert_allclose(terms["t_lg"].numpy(), lg.numpy(), rtol=1e-5)
    want = 0.25 * terms["t_lcc"] + 2.0 * terms["t_lg"] + 0.5 * terms["t_smooth"]
    # the same float32 products and sums as in t_loss: equal to an ulp or two (1.2e-7 each)
    np.testing.assert_allclose(terms["t_loss"].numpy(), want.numpy(), rtol=1e-6)


def test_saved_loss_settings_of_retired_experiments_read_only_at_todays_value():
    saved = {**LossWeights(alpha=0.05).to_dict(), "lcc_warmup": 0, "translate": "moved",
             "lg_reference": "fixed"}
    assert LossWeights.from_dict(saved) == LossWeights(alpha=0.05)
    with pytest.raises(ValueError, match="^translate='fixed' was an experiment that dgan no "
                                         "longer runs \\(only 'moved' is read\\)$"):
        LossWeights.from_dict({**saved, "translate": "fixed"})
    with pytest.raises(TypeError):
        LossWeights(lcc_warmup=4)
