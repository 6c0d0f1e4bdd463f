"""T, G and D: shapes, the warp's exactness, save/reload and the shape checks."""

import numpy as np
import pytest

from dgan.compat import keras, tf
from dgan.core.networks import (NetworkConfig, build_discriminator, build_generator,
                                build_registration_net, custom_objects)
from dgan.core.settings import features_text, parse_features


def warp_with(net, moving, flow):
    """Run only T's SpatialTransformer: moved = moving(p + flow(p))."""
    transformer = net.get_layer("moved")
    return transformer([moving[None, ..., None].astype("float32"), flow[None].astype("float32")]).numpy()[0, ..., 0]


def test_shapes(tiny_config, rng):
    t, g, d = (build(tiny_config) for build in (build_registration_net, build_generator, build_discriminator))
    x = rng.random((2, 16, 16, 16, 1)).astype("float32")
    out = t({"moving": x, "fixed": x})
    assert out["moved"].shape == (2, 16, 16, 16, 1)
    assert out["flow"].shape == (2, 16, 16, 16, 3)
    assert g(x).shape == (2, 16, 16, 16, 1)
    assert 0.0 <= g(x).numpy().min() and g(x).numpy().max() <= 1.0
    assert d([x, x]).shape == (2, 4, 4, 4, 1)


def test_zero_field_is_identity_and_integer_shift_is_exact(tiny_config):
    net = build_registration_net(tiny_config)
    grid = np.meshgrid(*(np.arange(16.0),) * 3, indexing="ij")
    linear = 3 * grid[0] + grid[1] - 0.5 * grid[2]
    # float32 values <= 60 (ulp 3.8e-6) at integer positions: exact
    np.testing.assert_allclose(warp_with(net, linear, np.zeros((16, 16, 16, 3))), linear, atol=1e-5)
    shift = np.zeros((16, 16, 16, 3))
    shift[..., 0], shift[..., 2] = 2.0, -1.0  # moved(p) = moving(p + (2, 0, -1))
    moved = warp_with(net, linear, shift)
    want = 3 * (grid[0] + 2) + grid[1] - 0.5 * (grid[2] - 1)
    np.testing.assert_allclose(moved[:-2, :, 1:], want[:-2, :, 1:], atol=1e-4)  # as above
    # a fractional shift interpolates a linear volume exactly too (weights 1/4 and 3/4 are exact;
    # the float32 products and sums of values <= 60 are within a few ulps, ~1e-5)
    shift[..., 0], shift[..., 2] = 0.25, 0.0
    np.testing.assert_allclose(warp_with(net, linear, shift)[:-1], (linear + 0.75)[:-1], atol=1e-4)


def test_diffeomorphic_option_integrates_the_field(tiny_config):
    config = NetworkConfig(**{**tiny_config.__dict__, "int_steps": 4})
    net = build_registration_net(config)
    assert net.get_layer("flow").__class__.__name__ == "VecInt"
    assert net.get_layer("velocity") is not None
    x = np.zeros((1, 16, 16, 16, 1), "float32")
    assert net({"moving": x, "fixed": x})["flow"].shape == (1, 16, 16, 16, 3)


@pytest.mark.parametrize("int_steps", [0, 3])
def test_half_resolution_field_is_upsampled_with_its_displacements_scaled(tiny_config, int_steps):
    """flow_resolution 2: the field is predicted on an 8^3 grid; a constant coarse field c
    (in coarse voxels) is a constant 2c in full-resolution voxels (integrated: still 2c)."""
    config = NetworkConfig(**{**tiny_config.__dict__, "flow_resolution": 2,
                              "int_steps": int_steps})
    net = build_registration_net(config)
    field = "velocity" if int_steps else "flow"
    coarse = net.get_layer(f"{field}_coarse")
    assert coarse.output.shape[1:] == (8, 8, 8, 3)
    kernel, bias = coarse.get_weights()
    c = np.array([0.5, -0.25, 0.0], "float32")
    coarse.set_weights([np.zeros_like(kernel), c])
    x = np.random.default_rng(0).random((1, 16, 16, 16, 1)).astype("float32")
    flow = net({"moving": x, "fixed": x})["flow"].numpy()
    assert flow.shape == (1, 16, 16, 16, 3)
    # up-sampling a constant: float32 weights summing to 1, a few ulps of values <= 1
    np.testing.assert_allclose(flow, np.broadcast_to(2 * c, flow.shape), atol=1e-5)
    # the last up-sampling is skipped
    def upsamplings(model):
        return sum(type(layer).__name__ == "UpSampling3D" for layer in model.layers)

    full = build_registration_net(NetworkConfig(**{**config.__dict__, "flow_resolution": 1}))
    assert upsamplings(net) == upsamplings(full) - 1


def test_flow_resolution_must_be_a_power_of_two_within_t(tiny_config):
    for bad in (0, 3, 8):  # tiny T down-samples twice: 1, 2 or 4
        with pytest.raises(ValueError, match="flow_resolution"):
            NetworkConfig(**{**tiny_config.__dict__, "flow_resolution": bad})
    assert NetworkConfig(**{**tiny_config.__dict__, "flow_resolution": 4}).flow_resolution == 4


@pytest.mark.parametrize("flow_resolution", [1, 2])
def test_registration_net_saves_and_reloads(tiny_config, rng, tmp_path, flow_resolution):
    config = NetworkConfig(**{**tiny_config.__dict__, "flow_resolution": flow_resolution})
    net = build_registration_net(config)
    x = {k: rng.random((1, 16, 16, 16, 1)).astype("float32") for k in ("moving", "fixed")}
    layer = net.get_layer("flow_coarse" if flow_resolution > 1 else "flow")
    layer.set_weights([w + 0.01 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    path = tmp_path / "t.keras"
    net.save(path)
    again = keras.models.load_model(path, custom_objects=custom_objects())
    for key in ("moved", "flow"):
        # the same weights and kernels: equal
        np.testing.assert_allclose(again(x)[key].numpy(), net(x)[key].numpy(), atol=1e-6)


def test_config_round_trip_and_refusals():
    config = NetworkConfig((32, 32, 48), t_features=((8, 8), (8, 8, 8)), d_layers=2)
    assert NetworkConfig.from_dict(config.to_dict()) == config
    assert config.multiple == 2 ** len(config.g_features[0])
    with pytest.raises(ValueError, match="divisible by 16"):
        NetworkConfig((30, 32, 32))
    with pytest.raises(ValueError, match="three spatial sizes"):
        NetworkConfig((32, 32))
    with pytest.raises(ValueError, match="too small"):
        NetworkConfig((16, 16, 16))


def test_residual_generator_starts_as_the_identity_and_learns_a_correction(tiny_config, rng):
    config = NetworkConfig(**{**tiny_config.__dict__, "g_residual": True})
    g = build_generator(config)
    x = rng.random((2, 16, 16, 16, 1)).astype("float32")
    np.testing.assert_array_equal(g(x).numpy(), x)  # F'(phi) = F(phi) + 0 at initialisation
    # one gradient step towards 1 - x moves the output away from x: the correction is trainable
    residual = g.get_layer("translation_residual")
    before = [w.copy() for w in residual.get_weights()]
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.abs(g(x) - (1.0 - x)))
    optimizer.apply_gradients(zip(tape.gradient(loss, g.trainable_variables), g.trainable_variables))
    assert not np.allclose(residual.get_weights()[0], before[0])
    assert np.abs(g(x).numpy() - x).max() > 1e-3


def test_saved_network_settings_of_retired_experiments_read_only_at_todays_value(tiny_config):
    saved = {**tiny_config.to_dict(), "g_pointwise": False}  # a model folder written before
    assert NetworkConfig.from_dict(saved) == tiny_config
    with pytest.raises(ValueError, match="^g_pointwise=True was an experiment that dgan no "
                                         "longer runs"):
        NetworkConfig.from_dict({**saved, "g_pointwise": True})


def test_features_read_back_from_their_command_line_form():
    features = ((16, 32, 32), (32, 32, 32, 16, 16))
    assert features_text(features) == "16,32,32/32,32,32,16,16"
    assert parse_features(features_text(features)) == [[16, 32, 32], [32, 32, 32, 16, 16]]


def test_pooled_discriminator_scores_a_coarser_grid(tiny_config, rng):
    x = rng.random((1, 16, 16, 16, 1)).astype("float32")
    plain = build_discriminator(tiny_config)
    pooled = build_discriminator(NetworkConfig(**{**tiny_config.__dict__, "d_pool": 2}))
    assert plain([x, x]).shape == (1, 4, 4, 4, 1)  # two strides
    assert pooled([x, x]).shape == (1, 2, 2, 2, 1)  # pooling, then two strides
    assert pooled.get_layer("discriminator_pool").pool_size == (2, 2, 2)
    # the pooling counts as a down-sampling in the shapes the networks accept
    assert NetworkConfig(**{**tiny_config.__dict__, "d_pool": 2}).multiple == 8
    with pytest.raises(ValueError, match="too small"):
        NetworkConfig(**{**tiny_config.__dict__, "d_pool": 4})
    for bad in (0, 3):
        with pytest.raises(ValueError, match="d_pool"):
            NetworkConfig(**{**tiny_config.__dict__, "d_pool": bad})


def test_ts_warps_are_voxelmorphs_spatial_transformer_without_autograph(rng, tmp_path):
    """T's warp layers are dgan's SpatialTransformer: VoxelMorph's layer (a subclass, saved
    under its name) whose call autograph leaves as written; the same warp as VoxelMorph's, bit
    for bit, eagerly and traced; a model saved with VoxelMorph's layer loads into it."""
    from dgan.compat import vxm
    from dgan.core.networks import SpatialTransformer

    assert issubclass(SpatialTransformer, vxm.layers.SpatialTransformer)
    volume = rng.random((1, 10, 11, 12, 1)).astype("float32")
    flow = rng.normal(0.0, 2.0, (1, 10, 11, 12, 3)).astype("float32")
    ours = SpatialTransformer(interp_method="linear", indexing="ij")
    theirs = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij")
    want = theirs([volume, flow]).numpy()
    np.testing.assert_array_equal(ours([volume, flow]).numpy(), want)
    # traced (where autograph would convert it), against VoxelMorph's traced alike
    traced_ours = tf.function(lambda v, f: ours([v, f]), autograph=True)
    traced_theirs = tf.function(lambda v, f: theirs([v, f]), autograph=True)
    np.testing.assert_array_equal(traced_ours(volume, flow).numpy(),
                                  traced_theirs(volume, flow).numpy())
    # a network written with VoxelMorph's own layer reads back into dgan's
    inputs = [keras.Input((10, 11, 12, 1)), keras.Input((10, 11, 12, 3))]
    saved = keras.Model(inputs, vxm.layers.SpatialTransformer(indexing="ij")(inputs))
    saved.save(tmp_path / "warp.keras")
    loaded = keras.models.load_model(tmp_path / "warp.keras", custom_objects=custom_objects())
    assert isinstance(loaded.layers[-1], SpatialTransformer)
    np.testing.assert_array_equal(loaded([volume, flow]).numpy(), want)
