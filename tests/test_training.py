"""The training CLI (dgan-train), in-process through main(argv), on tiny demo volumes in tmp_path."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

from dgan.cli import train as cli
from dgan.compat import keras, tf
from dgan.core.networks import NetworkConfig
from dgan.errors import InputError, TrainingDiverged
from dgan.registration.settings import RefineConfig
from dgan.training import presets, validation
from dgan.training import run as training
from dgan.training.config import TrainConfig
from dgan.training.trainers import LossWeights

TINY = ["--shape", "16", "16", "16", "--spacing", "12", "--t-features", "4,8/8,8,4",
        "--g-features", "4,4/4,4", "--d-features", "4", "--lg-window", "3", "--lcc-window", "5",
        "--refine-steps", "5", "--no-progress"]


def tiny_config(**changes):
    """The configuration the CLI makes of TINY (the demo preset), with ``changes``."""
    settings = cli.settings_from_args(cli.parser().parse_args(TINY))
    settings.update(changes)
    return cli.make_config(settings)


def checkpoint_weights(path):
    """{variable name: value} of the networks in a checkpoint (optimizer slots included)."""
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE") and "save_counter" not in name}


@pytest.fixture(scope="module")
def three_step_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "three"
    assert cli.main([*TINY, "--steps", "3", "--checkpoint-every", "2", "--validate-every", "2",
                     "--network-spacing", "6", "--out", str(run)]) == 0
    return run


def test_run_writes_every_output(three_step_run, capsys):
    run = three_step_run
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 3 and config["shape"] == [16, 16, 16]
    assert config["loss"]["lg_window"] == 3 and config["network"]["d_features"] == 4
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-3")
    assert (run / "checkpoints" / "ckpt-2.index").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for png in ("validation.png", "losses.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    description = json.loads((run / "model" / "dgan_model.json").read_text())
    assert description["registration"] == {"network_spacing": [6.0, 6.0, 6.0]}
    assert description["preprocessing"]["spacing"] == [12.0, 12.0, 12.0]  # trained at 12 mm
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 3 and 0 < results["validation_dice_identity"] <= 1
    lines = (run / "losses.csv").read_text().splitlines()
    assert lines[0].startswith("step,d_loss") and [l.split(",")[0] for l in lines[1:]] == ["1", "2", "3"]
    assert "validation mean Dice" in (run / "train.log").read_text()


def test_validation_goes_through_the_registrar_and_refines_at_the_first_and_last_check(
        three_step_run):
    from dgan.registration.registrar import Registrar

    run = three_step_run
    history = validation.read_validation_history(run / validation.VALIDATION_CSV)
    assert [s for s, _ in history["network"]] == [0, 2, 3]
    assert [s for s, _ in history["refined"]] == [0, 3]  # refinement costs seconds: not at 2
    assert {v for _, v in history["identity"]} == {history["identity"][0][1]}
    assert (run / "validation_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((run / "results.json").read_text())
    # validation.csv keeps 6 decimals: within 5e-7
    assert results["validation_dice_network"] == pytest.approx(history["network"][-1][1], abs=1e-6)
    assert results["validation_dice_refined"] == pytest.approx(history["refined"][-1][1], abs=1e-6)
    assert results["validation_dice_registered"] == results["validation_dice_refined"]
    # the model folder carries the refinement the run validated with: its windows, its steps
    registrar = Registrar(run / "model")
    assert registrar.refine_config.lg_window == 3 and registrar.refine_config.lcc_window == 5
    assert registrar.refine_config.steps == 5 and registrar.model.generator is not None
    assert registrar.refine_config.w_lcc == 0.0  # presets.REFINE_DEFAULTS: see its comment
    assert Registrar(run / "model", refine_steps=0).refine_config.steps == 0


def test_presets_are_explicit_and_recorded_and_the_cli_overrides_them():
    demo = TrainConfig.demo()
    assert demo.preset == "demo" and demo.lr_g == presets.DEMO_LR_G
    assert demo.network.g_residual and demo.network.d_pool == 2
    assert demo.loss.alpha == presets.DEMO_LOSS["alpha"] == 0.05
    assert demo.refine.steps == presets.DEMO_REFINE["steps"]
    assert demo.to_dict()["preset"] == "demo"
    # no hidden switch: the demo data alone changes no setting
    plain = TrainConfig(shape=(32, 32, 32))
    assert plain.preset is None and plain.uses_demo_data and plain.lr_g == presets.DEFAULT_LR_G
    assert not plain.network.g_residual and plain.loss.alpha == 1.0
    scans = TrainConfig.for_scans(["t1/"], ["t2/"], shape=(32, 32, 32))
    assert scans.preset == "scans" and scans.lr_g == presets.DEFAULT_LR_G
    assert not scans.network.g_residual and scans.network.d_pool == 1
    # a preset's dicts are overridden key by key; the module's constants stay as they are
    changed = TrainConfig.demo(network={"d_pool": 1}, lr_g=5e-4)
    assert changed.network.d_pool == 1 and changed.network.g_residual
    assert changed.lr_g == 5e-4 and presets.DEMO_NETWORK["d_pool"] == 2
    with pytest.raises(InputError, match="preset must be one of"):
        TrainConfig.from_preset("fast")
    args = cli.parser().parse_args([*TINY, "--no-g-residual", "--d-pool", "1", "--lr-g", "3e-4"])
    config = cli.make_config(cli.settings_from_args(args))
    assert not config.network.g_residual and config.network.d_pool == 1
    assert config.lr_g == 3e-4 and config.preset == "demo"
    cube = {"shape": (32, 32, 32)}
    assert cli.make_config({"moving": ["t1/"], "fixed": ["t2/"], **cube}).preset == "scans"
    assert cli.make_config(cube, preset="scans").lr_g == presets.DEFAULT_LR_G
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))).lr_g == 3e-4
    args = cli.parser().parse_args([*TINY, "--network-spacing", "2.5"])
    assert cli.make_config(cli.settings_from_args(args)).network_spacing == 2.5
    assert config.network_spacing is None  # T registers on the training grid unless told
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="network_spacing must be a positive number of mm"):
            TrainConfig(shape=(32, 32, 32), network_spacing=bad)


def test_a_config_written_before_presets_keeps_the_demo_refinement(three_step_run):
    """Before presets, the demo data implied DEMO_REFINE; a file without ``refine`` (written
    before refinement existed) must not lose it on resume."""
    saved = json.loads((three_step_run / "config.json").read_text())
    del saved["refine"], saved["preset"], saved["method"]
    old = TrainConfig.from_dict(saved)
    assert old.method == "deformgan"
    assert old.refine.steps == presets.DEMO_REFINE["steps"]
    assert old.refine.levels == tuple(presets.DEMO_REFINE["levels"])


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    """Same budget: the learning-rate schedule, optimizer state and data order all continue."""
    interrupted = tmp_path / "interrupted"
    result = training.train(tiny_config(steps=5, checkpoint_every=100), interrupted,
                            progress=False, extra_callbacks=[_SendSignal(2, signal.SIGINT)])
    assert result.stopped_early and result.step == 3
    assert cli.main(["--resume", str(interrupted), "--no-progress"]) == 0
    straight = tmp_path / "straight"
    assert cli.main([*TINY, "--steps", "5", "--checkpoint-every", "100", "--out", str(straight)]) == 0
    a = checkpoint_weights(tf.train.latest_checkpoint(str(interrupted / "checkpoints")))
    b = checkpoint_weights(tf.train.latest_checkpoint(str(straight / "checkpoints")))
    assert a.keys() == b.keys()
    optimizer_slots = [k for k in a if "optimizer" in k and k.endswith("VARIABLE_VALUE") and "iter" not in k]
    assert optimizer_slots  # Adam's moments are in the checkpoint and were restored
    for name in a:
        # the same kernels on the same batches in one process: equal (a restored state that
        # differed, e.g. a lost Adam moment, would change Adam's steps, ~lr >= 2e-4, by as much)
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)


def test_a_config_written_before_a_setting_existed_keeps_what_it_was_trained_with(three_step_run):
    saved = json.loads((three_step_run / "config.json").read_text())
    assert saved["lr_decay"] == "constant" and saved["network"]["g_residual"] is True
    assert saved["network"]["flow_resolution"] == 2
    del saved["lr_decay"], saved["network"]["g_residual"], saved["network"]["d_pool"]
    del saved["network"]["flow_resolution"]
    old = TrainConfig.from_dict(saved)
    # absent: what runs had before the setting existed, not today's default (linear)
    assert old.lr_decay == "constant" != TrainConfig(shape=(32, 32, 32)).lr_decay
    assert not old.network.g_residual and old.network.d_pool == 1
    assert old.network.flow_resolution == 1
    # a complete file round-trips unchanged
    full = json.loads((three_step_run / "config.json").read_text())
    assert TrainConfig.from_dict(full).to_dict() == full


def test_resume_refuses_changed_data_settings(three_step_run, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    shutil.copytree(three_step_run, resumed)
    assert cli.main(["--resume", str(resumed), "--shape", "24", "24", "24"]) == 2
    assert "cannot change shape when resuming" in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused_with_its_name(three_step_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(three_step_run, broken)
    for index in (broken / "checkpoints").glob("ckpt-3.data-*"):
        index.write_bytes(b"garbage")
    assert cli.main(["--resume", str(broken), "--steps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ckpt-3" in err and "corrupt or incompatible checkpoint" in err
    assert len(err.strip().splitlines()) == 1


class _SendSignal(keras.callbacks.Callback):
    def __init__(self, at_step, signum):
        super().__init__()
        self.at_step, self.signum = at_step, signum

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at_step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_a_loadable_checkpoint(tmp_path, signum):
    run = tmp_path / "interrupted"
    result = training.train(tiny_config(steps=50, checkpoint_every=100), run,
                            progress=False, extra_callbacks=[_SendSignal(2, signum)])
    assert result.stopped_early and result.step == 3  # the stop lands after the next step
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-3")
    assert all(np.all(np.isfinite(v)) for v in checkpoint_weights(latest).values())
    assert json.loads((run / "results.json").read_text())["stopped_early"] is True


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from dgan.core import losses

    poison = tf.Variable(0.0)
    original = losses.l1
    monkeypatch.setattr(losses, "l1", lambda a, b: original(a, b) + tf.where(poison > 0, np.nan, 0.0))

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 3:
                poison.assign(1.0)

    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"became nan at step 4.*ckpt-3"):
        training.train(tiny_config(steps=10, checkpoint_every=1), run, progress=False,
                       extra_callbacks=[Poison()])
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-3")
    assert all(np.all(np.isfinite(v)) for v in checkpoint_weights(latest).values())
    assert not (run / "model").exists()


def _write_nifti(path, array, affine=np.eye(4)):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


@pytest.fixture
def scans(tmp_path, rng):
    from scipy.ndimage import gaussian_filter

    good = gaussian_filter(rng.random((20, 20, 20)), 2).astype("float32")
    folder = tmp_path / "scans"
    folder.mkdir()
    files = {
        "good": _write_nifti(folder / "good.nii.gz", good),
        "flat": _write_nifti(folder / "flat.nii.gz", np.zeros((20, 20, 20), "float32")),
        "twod": _write_nifti(folder / "twod.nii.gz", good[:, :, 0]),
        "tiny": _write_nifti(folder / "tiny.nii.gz", good[:4, :4, :4], np.diag([12, 12, 12, 1.0])),
    }
    nan = good.copy()
    nan[3, 4, 5] = np.nan
    files["nan"] = _write_nifti(folder / "nan.nii.gz", nan)
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"not really gzip")
    files["corrupt"] = str(corrupt)
    files["labels_small"] = _write_nifti(folder / "labels.nii.gz", np.ones((10, 10, 10), "int16"))
    return files


@pytest.mark.parametrize("bad, message", [
    ("missing", "no files matched"),
    ("corrupt", "corrupt.nii.gz"),
    ("twod", "3D"),
    ("nan", "NaN"),
    ("flat", "empty"),
])
def test_bad_training_input_is_one_line_naming_the_file(scans, tmp_path, capsys, bad, message):
    moving = str(tmp_path / "nothing" / "*.nii.gz") if bad == "missing" else scans[bad]
    args = [*TINY, "--spacing", "0", "--moving", moving, "--fixed", scans["good"], "--steps", "1",
            "--out", str(tmp_path / "run"), "--t-features", "4,8/8,8,4"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert message in err
    assert ("nothing" if bad == "missing" else os.path.basename(scans[bad])) in err


def test_too_small_shape_and_mismatched_labels_are_refused(scans, tmp_path, capsys):
    assert cli.main([*TINY, "--shape", "8", "8", "8", "--out", str(tmp_path / "a")]) == 2
    assert "too small" in capsys.readouterr().err
    csv = tmp_path / "val.csv"
    csv.write_text("moving,fixed,moving_labels,fixed_labels\n"
                   f"{scans['good']},{scans['good']},{scans['labels_small']},{scans['labels_small']}\n")
    args = [*TINY, "--spacing", "0", "--moving", scans["good"], "--fixed", scans["good"], "--val-pairs", str(csv),
            "--out", str(tmp_path / "b"), "--steps", "1"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "labels.nii.gz" in err and "does not match" in err


def test_the_config_holds_typed_settings_and_reads_files_of_retired_experiments(three_step_run):
    config = TrainConfig.demo()
    assert isinstance(config.network, NetworkConfig) and config.network.shape == config.shape
    assert isinstance(config.loss, LossWeights) and isinstance(config.refine, RefineConfig)
    # refinement starts from the training loss's windows and beta, then the preset's settings
    assert (config.refine.lg_window, config.refine.lcc_window) == (3, 5)
    assert config.refine.steps == presets.DEMO_REFINE["steps"]
    typed = TrainConfig.demo(network=config.network, loss=config.loss, refine=config.refine)
    assert typed.to_dict() == config.to_dict()
    full = json.loads((three_step_run / "config.json").read_text())
    saved = json.loads(json.dumps(full))  # a run folder written before the experiments went
    saved["loss"].update(lcc_warmup=0, translate="moved", lg_reference="fixed")
    saved["network"]["g_pointwise"] = False
    assert TrainConfig.from_dict(saved).to_dict() == full
    saved["loss"]["translate"] = "fixed"
    with pytest.raises(InputError, match="^loss setting: translate='fixed' was an experiment"):
        TrainConfig.from_dict(saved)
    saved["loss"]["translate"], saved["network"]["g_pointwise"] = "moved", True
    with pytest.raises(InputError, match="^g_pointwise=True was an experiment"):
        TrainConfig.from_dict(saved)
    with pytest.raises(SystemExit):
        cli.parser().parse_args([*TINY, "--lcc-warmup", "10"])
