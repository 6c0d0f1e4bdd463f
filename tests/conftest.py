"""Shared test set-up: two logical CPU devices (for tf.distribute tests) and tiny networks."""

from pathlib import Path

import numpy as np
import pytest

import dgan  # noqa: F401  (arranges Keras 2 before TensorFlow is used)
from dgan.bench.options import BRAIN_FILE, checkout_data
from dgan.compat import tf

# Two logical CPUs so MirroredStrategy can be tested on one machine; this must happen before
# TensorFlow initialises its devices, i.e. before any test runs an op.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture
def shared_data():
    """The folder of the brain benchmark's files (the checkout's ../shared/data; never
    committed); the test is skipped without them."""
    path = checkout_data(BRAIN_FILE)
    if path is None or not Path(path).is_file():
        pytest.skip(f"real data not available: no {BRAIN_FILE} in ../shared/data beside the "
                    "checkout")
    return Path(path).parent


@pytest.fixture
def tiny_config():
    from dgan.core.networks import NetworkConfig

    return NetworkConfig(
        (16, 16, 16),
        t_features=((4, 8), (8, 8, 4)),
        g_features=((4, 4), (4, 4)),
        d_features=4,
        d_layers=2,
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
