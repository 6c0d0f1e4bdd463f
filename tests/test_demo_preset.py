"""The run folder's losses.png: one panel per network (issue 30, item 6;
docs/notes/2026-12-07-demo-training.md)."""

import matplotlib.image
import numpy as np
import pytest

from dgan.evaluation import figures
from dgan.training.baselines import VxmTrainer
from dgan.training.trainers import LOSS_NAMES, RegistrationTrainer


def _history(names, steps=60):
    """A loss log like losses.csv's: every name logged at every step, decreasing with noise."""
    rng = np.random.default_rng(0)
    scale = {"t_smooth": 1e-3, "t_mi": -1.0}
    return {name: [(s, scale.get(name, 1.0) * (1.0 + 1.0 / s + 0.05 * rng.random()))
                   for s in range(1, steps + 1)] for name in names}


def test_deform_gan_losses_are_drawn_as_one_panel_per_network_with_every_term():
    panels = figures.curve_panels(LOSS_NAMES)
    assert [title.split(",")[0] for title, _ in panels] == ["D", "G", "T"]
    assert [names for _, names in panels] == [
        ["d_loss"], ["g_loss", "g_adv", "g_lg", "g_l1"], ["t_loss", "t_lcc", "t_lg", "t_smooth"]]
    # every term is drawn once, and each has a legend text of its own
    drawn = [n for _, names in panels for n in names]
    assert sorted(drawn) == sorted(LOSS_NAMES)
    assert len({figures.CURVE_LABELS[n] for n in drawn}) == len(drawn)


@pytest.mark.parametrize("names, titles", [
    (RegistrationTrainer.LOSS_NAMES, ["T"]),
    (VxmTrainer.LOSS_NAMES, ["T"]),
    (("t_loss", "lr"), ["T", "other"]),  # a column of no network still gets drawn
    ((), []),
])
def test_other_trainers_get_a_panel_per_network_they_train(names, titles):
    panels = figures.curve_panels(names)
    assert [title.split(",")[0] for title, _ in panels] == titles
    assert sorted(n for _, group in panels for n in group) == sorted(names)


def test_losses_png_is_three_readable_panels_not_a_row_of_nine(tmp_path):
    path = tmp_path / "losses.png"
    figures.save_curves(path, _history(LOSS_NAMES))
    height, width = matplotlib.image.imread(path).shape[:2]
    # 3 panels of 4.6 x 3.6 inches at 100 dpi (the old figure: 9 panels of 3.0 x 2.8, 2700 x 280)
    assert (width, height) == (1380, 360)
    figures.save_curves(tmp_path / "t.png", _history(RegistrationTrainer.LOSS_NAMES))
    assert matplotlib.image.imread(tmp_path / "t.png").shape[:2] == (360, 460)
    figures.save_curves(tmp_path / "empty.png", {})  # a run stopped before its first log
    assert (tmp_path / "empty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_running_mean_averages_each_value_with_the_ones_before_it():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(figures._running_mean(values, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(figures._running_mean(values, 1), values)


def test_the_demo_models_refinement_keeps_the_papers_eps(tmp_path):
    """The demo preset's refinement was chosen with the paper's eps in L_LG; the eps from each
    scan's gradient scale (lg_noise, for pairs of real scans) lowered it below T alone, so the
    preset sets lg_noise 0, and the README's first command and dgan-train-baselines --data demo
    train with it; the brain preset keeps the default."""
    from dgan.bench import train_baselines
    from dgan.cli import train as train_cli
    from dgan.registration.settings import RefineConfig
    from dgan.training import presets

    assert presets.DEMO_REFINE["lg_noise"] == 0.0
    no_options = train_cli.settings_from_args(train_cli.parser().parse_args([]))
    assert train_cli.make_config(no_options).refine.lg_noise == 0.0  # the README's first command
    args = train_baselines.parser().parse_args(["--out", str(tmp_path), "--data", "demo"])
    assert train_baselines.train_config(args, tmp_path).refine.lg_noise == 0.0
    # the brain preset sets no lg_noise: its refinement keeps RefineConfig's (real scans)
    assert "lg_noise" not in presets.BRAIN_REFINE and RefineConfig().lg_noise > 0


def test_the_demo_trains_g_to_translate_and_smooths_ts_whole_field_at_constant_rates():
    """The README's first command: G's weights mu 10 / lambda 1, the smoothness term on T's whole
    field, constant learning rates (with the paper's mu 1 / lambda 10, the residual's smoothness
    and the linear decay, T's held-out Dice fell below its start over the demo's run)."""
    from dgan.cli import train as train_cli
    from dgan.training import presets

    config = train_cli.make_config(train_cli.settings_from_args(train_cli.parser().parse_args([])))
    assert (config.loss.mu, config.loss.lam, config.loss.smooth) == (10.0, 1.0, "flow")
    assert config.lr_decay == "constant" and config.loss.alpha == presets.DEMO_LOSS["alpha"]
    # an option still wins over the preset
    args = train_cli.parser().parse_args(["--lr-decay", "linear", "--smooth", "residual"])
    config = train_cli.make_config(train_cli.settings_from_args(args))
    assert config.lr_decay == "linear" and config.loss.smooth == "residual"
