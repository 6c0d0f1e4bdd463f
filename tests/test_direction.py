"""Does training move T's field the right way? A few dozen T updates on one tiny pair related by a
known translation must predict that translation (right sign, at least half the size); a pair of
identical images must keep the field near zero. A sign error anywhere between the losses, the
SpatialTransformer's convention (moved(p) = moving(p + flow(p))) and the optimiser fails this."""

import numpy as np
import pytest

from dgan.compat import keras, tf
from dgan.core.networks import NetworkConfig
from dgan.data import synth
from dgan.training.trainers import DeformGAN, LossWeights

SHAPE = (16, 16, 16)


def smooth_image(seed):
    """A smooth random texture in [0, 1] with structure at every voxel (no flat background)."""
    noise = synth.smooth_noise(SHAPE, 4.0, np.random.default_rng(seed))[..., 0]
    return (noise - noise.min()) / (noise.max() - noise.min())


def train_t_on(moving, fixed, steps=40):
    keras.utils.set_random_seed(3)
    config = NetworkConfig(SHAPE, t_features=((8, 16), (16, 16, 8)), g_features=((4, 4), (4, 4)),
                           d_features=4, d_layers=2, g_residual=True)
    model = DeformGAN.from_config_object(config)
    # G is residual and starts as the identity, so T's LCC term compares R with F(phi) itself
    model.compile(keras.optimizers.Adam(3e-3), keras.optimizers.Adam(1e-3),
                  keras.optimizers.Adam(1e-3),
                  LossWeights(alpha=0.05, lg_window=3, lcc_window=5))
    moving = tf.constant(moving[None, ..., None], tf.float32)
    fixed = tf.constant(fixed[None, ..., None], tf.float32)
    step = tf.function(model.train_t)
    for _ in range(steps):
        step(moving, fixed)
    flow = model.registration_net({"moving": moving, "fixed": fixed})["flow"].numpy()[0]
    return flow[4:-4, 4:-4, 4:-4].reshape(-1, 3).mean(axis=0)  # interior: away from the border


@pytest.mark.parametrize("shift", [2.0, -2.0])
def test_t_learns_a_known_translation_with_the_right_sign(shift):
    moving = smooth_image(0)
    translation = np.zeros(SHAPE + (3,), np.float32)
    translation[..., 0] = shift
    fixed = synth.warp(moving, translation)  # fixed(p) = moving(p + t): the true flow is +t
    mean_flow = train_t_on(moving, fixed)
    assert np.sign(mean_flow[0]) == np.sign(shift) and abs(mean_flow[0]) >= abs(shift) / 2, mean_flow
    assert np.all(np.abs(mean_flow[1:]) < abs(shift) / 4), mean_flow


def test_identical_images_keep_the_field_near_zero():
    image = smooth_image(0)
    mean_flow = train_t_on(image, image)
    assert np.all(np.abs(mean_flow) < 0.25), mean_flow
