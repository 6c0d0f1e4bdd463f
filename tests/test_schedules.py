"""The learning-rate schedules: exact values, refusals, and what the run's optimizers get."""

import numpy as np
import pytest

from dgan.compat import tf
from dgan.errors import InputError
from dgan.training import run as training
from dgan.training.config import TrainConfig
from dgan.training.schedules import LinearDecay, learning_rate


def test_linear_decay_is_constant_then_falls_to_zero():
    schedule = LinearDecay(1e-3, total_steps=400, decay_start=200)
    steps = np.array([0, 100, 200, 250, 300, 399, 400, 500])
    want = 1e-3 * np.clip((400 - steps) / 200.0, 0.0, 1.0)
    got = [float(schedule(s)) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32: a few operations, ~2e-7
    assert got[:3] == [pytest.approx(1e-3)] * 3 and got[-2:] == [0.0, 0.0]  # 1e-3 in float32
    assert LinearDecay.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_learning_rate_by_name_and_refusals():
    assert learning_rate(2e-4, "constant", 100) == 2e-4
    linear = learning_rate(2e-4, "linear", 100)
    assert isinstance(linear, LinearDecay) and linear.decay_start == 50
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine'"):
        learning_rate(2e-4, "cosine", 100)
    with pytest.raises(ValueError, match="decay_start"):
        LinearDecay(1e-3, total_steps=10, decay_start=10)
    with pytest.raises(InputError, match="lr_decay must be one of constant, linear"):
        TrainConfig.demo(lr_decay="cosine")


@pytest.mark.parametrize("decay", ["constant", "linear"])
def test_each_optimizer_follows_the_run_schedule(decay):
    config = TrainConfig.demo(steps=10, lr_t=1e-3, lr_g=4e-4, lr_d=2e-4, lr_decay=decay)
    optimizers = training.make_optimizers(config)
    for name, lr in (("t_optimizer", 1e-3), ("g_optimizer", 4e-4), ("d_optimizer", 2e-4)):
        optimizer = optimizers[name]
        weight = tf.Variable(1.0)
        optimizer.build([weight])
        optimizer.iterations.assign(8)  # two steps before the end: 2/5 of the rate when decaying
        optimizer.apply_gradients([(tf.constant(0.5), weight)])  # evaluates the schedule
        want = lr * (0.4 if decay == "linear" else 1.0)
        assert float(optimizer.learning_rate) == pytest.approx(want, rel=1e-6), name  # float32
    assert optimizers["g_optimizer"].beta_1 == 0.5 and optimizers["t_optimizer"].beta_1 == 0.9


def test_a_method_gets_one_optimizer_per_network():
    for method, networks in (("lcc", ["t_optimizer"]), ("vxm", ["t_optimizer"]),
                             ("deformgan", ["t_optimizer", "g_optimizer", "d_optimizer"])):
        config = TrainConfig.demo(method=method, network={"flow_resolution": 1})
        assert sorted(training.make_optimizers(config)) == sorted(networks)
