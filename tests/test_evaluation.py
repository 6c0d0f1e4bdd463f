"""The evaluation (dgan.evaluation, dgan-evaluate), the learned baselines (dgan.training.baselines)
trained through the one run (dgan-train-baselines), and the speed benchmark (dgan.bench.speed),
tiny."""

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from dgan.bench import bench_speed, speed, train_baselines
from dgan.bench import brain as dbrain
from dgan.bench import evaluate as evaluate_cli
from dgan.compat import tf
from dgan.core.networks import NetworkConfig, build_registration_net
from dgan.data import demo as ddemo
from dgan.data import synth
from dgan.data.preprocessing import Preprocessing
from dgan.evaluation import methods as evaluation
from dgan.evaluation import report as dreport
from dgan.registration.model_folder import load_model_folder, save_model_folder
from dgan.registration.registrar import Registrar
from dgan.training import baselines, presets
from dgan.training.config import METHODS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

#: The same tiny T as the ``tiny_config`` fixture, for module-scoped fixtures.
TINY_CONFIG = NetworkConfig(
    (16, 16, 16), t_features=((4, 8), (8, 8, 4)), g_features=((4, 4), (4, 4)), d_features=4,
    d_layers=2,
)
#: Demo data on a 16^3 grid of 12 mm voxels, tiny networks, small loss windows.
TINY_DATA = ["--shape", "16", "16", "16", "--spacing", "12"]
TINY_TRAIN = [*TINY_DATA, "--t-features", "4,8/8,8,4", "--g-features", "4,4/4,4",
              "--d-features", "4", "--d-layers", "2", "--lg-window", "3", "--lcc-window", "5",
              "--refine-steps", "0", "--n-val", "1", "--no-progress"]


def load_script(name):
    path = ROOT / "eval" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"eval_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["train_baselines", "evaluate", "bench_speed", "probe_loss",
                                  "probe_matching"])
def test_the_eval_scripts_are_the_console_scripts(name):
    import importlib

    assert load_script(name).main is importlib.import_module(f"dgan.bench.{name}").main


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    """Every method trained 2 steps on the tiny demo data through the one run
    (dgan-train-baselines), then resumed to step 3."""
    out = tmp_path_factory.mktemp("baselines")
    assert train_baselines.main([*TINY_TRAIN, "--data", "demo", "--steps", "2",
                                 "--out", str(out)]) == 0
    assert train_baselines.main(["--resume", "--steps", "3", "--no-progress",
                                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def untrained_dgan(tmp_path_factory):
    """A Deform-GAN model folder with T untrained, for the demo's 12 mm grid."""
    folder = tmp_path_factory.mktemp("dgan") / "model"
    tf.keras.utils.set_random_seed(0)
    save_model_folder(build_registration_net(TINY_CONFIG), TINY_CONFIG,
                      Preprocessing(TINY_CONFIG.shape, 12.0), folder)
    return folder


# --- VoxelMorph's VxmDense is T ----------------------------------------------------------------


@pytest.mark.parametrize("int_steps", [0, 2])
def test_vxm_dense_weights_in_t_compute_the_same(tiny_config, int_steps, rng):
    import dataclasses

    config = dataclasses.replace(tiny_config, int_steps=int_steps)
    tf.keras.utils.set_random_seed(1)
    vxm_model = baselines.build_vxm_dense(config)
    # give the flow layer weights large enough to move voxels, so the check means something
    flow_layer = [layer for layer in vxm_model.layers if layer.weights][-1]
    kernel, bias = flow_layer.get_weights()
    flow_layer.set_weights([rng.normal(0, 0.05, kernel.shape), rng.normal(0, 0.5, bias.shape)])
    net = baselines.vxm_to_registration_net(vxm_model, config)
    moving = rng.random((1, *config.shape, 1)).astype("float32")
    fixed = rng.random((1, *config.shape, 1)).astype("float32")
    moved_v, _ = vxm_model([moving, fixed], training=False)
    out = net({"moving": moving, "fixed": fixed}, training=False)
    assert np.abs(out["flow"].numpy()).max() > 0.1
    # the same layers and kernels on the same weights: equal (1e-5 is ~100 ulps of values <= 1)
    np.testing.assert_allclose(out["moved"].numpy(), moved_v.numpy(), atol=1e-5)


def test_structure_check_rejects_other_features(tiny_config):
    import dataclasses

    with pytest.raises(ValueError, match="flow_resolution 1"):
        baselines.build_vxm_dense(dataclasses.replace(tiny_config, flow_resolution=2))

    other = dataclasses.replace(tiny_config, t_features=((4, 8), (8, 8, 8)))
    with pytest.raises(ValueError, match="does not match"):
        baselines.check_same_structure(baselines.build_vxm_dense(other),
                                       build_registration_net(tiny_config))


# --- scores --------------------------------------------------------------------------------------


def test_score_of_a_known_shift():
    """Labels shifted by one voxel, registered by the exact shift: Dice 1, HD95 0, no folding;
    the identity scores the analytic Dice of two shifted boxes."""
    fixed_labels = np.zeros((12, 12, 12), np.int32)
    fixed_labels[3:7, 3:9, 3:9] = 1  # 4 x 6 x 6 box
    moving_labels = np.roll(fixed_labels, 1, axis=0)  # moving(p) = fixed(p - e_x)
    pair = {"fixed_labels": fixed_labels}
    flow = np.zeros((12, 12, 12, 3), np.float32)
    flow[..., 0] = 1.0  # moved(p) = moving(p + e_x) = fixed(p)
    warped = synth.warp(moving_labels, flow, order=0)
    record = dreport.score(evaluation.MethodResult(flow, warped, warped, 0.5), pair, [1, 2],
                              spacing=(2.0, 2.0, 2.0))
    assert record["dice_1"] == 1.0 and math.isnan(record["dice_2"])
    assert record["dice_mean"] == 1.0 and record["hd95_mean_mm"] == 0.0
    # a constant field: det J = 1 exactly, SDlogJ 0
    assert record["folding_fraction"] == 0.0 and record["sdlogj"] == pytest.approx(0.0, abs=1e-6)
    assert record["seconds"] == 0.5
    identity = evaluation.IdentityMethod().register(moving_labels.astype("float32"), None,
                                                     moving_labels, (2.0,) * 3)
    record = dreport.score(identity, pair, [1], spacing=(2.0, 2.0, 2.0))
    # float64 ratios of counts and distances: approx's rel 1e-6 is ample
    assert record["dice_1"] == pytest.approx(2 * 3 * 36 / (2 * 4 * 36))  # overlap 3 of 4 slabs
    assert record["hd95_mean_mm"] == pytest.approx(2.0)  # one voxel of 2 mm


def test_summary_markdown_has_every_method_and_structure():
    records = [{"method": m, "pair": k, "dice_mean": d, "hd95_mean_mm": 2.0,
                "folding_fraction": f, "sdlogj": 0.1, "seconds": 1.0, "dice_1": d, "dice_2": d}
               for m, d, f in (("a", 0.5, 0.0), ("b", 0.7, 0.001)) for k in range(2)]
    bench = dreport.Benchmark("x", [], (1.0,) * 3, (1, 2), {1: "one", 2: "two"})
    text = dreport.summary_markdown(records, bench)
    assert "| a | 0.500 ± 0.000 | 2.000 ± 0.000 | 0.000 ± 0.000 |" in text
    assert "| b | 0.700 ± 0.000 | 2.000 ± 0.000 | 0.100 ± 0.000 |" in text  # folding in %
    assert "| one (1) | 0.500 | 0.700 |" in text


# --- the baseline trainer --------------------------------------------------------------------


def test_every_method_trains_checkpoints_resumes_and_exports_through_the_one_run(method_runs):
    pair = ddemo.demo_validation_pairs(1, seed=7, shape=(16, 16, 16), spacing=12.0)[0]
    saved = {}
    for method, model_class in METHODS.items():
        run = method_runs / method
        config = json.loads((run / "config.json").read_text())
        saved[method] = config
        assert config["method"] == method and config["steps"] == 3
        assert config["preset"] == "demo"
        checkpoints = run / "checkpoints"
        assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-3")
        assert (checkpoints / "ckpt-2.index").exists()  # the first run's, kept by the resume
        reader = tf.train.load_checkpoint(str(checkpoints / "ckpt-3"))
        iterations = [k for k in reader.get_variable_to_shape_map()
                      if k.endswith("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")]
        # one optimizer per network, each restored at 2 and stepped once more
        assert len(iterations) == len(model_class.NETWORKS)
        assert all(reader.get_tensor(k) == 3 for k in iterations)
        lines = (run / "losses.csv").read_text().splitlines()
        assert lines[0] == ",".join(("step", *model_class.LOSS_NAMES))
        assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]
        results = json.loads((run / "results.json").read_text())
        assert results["step"] == 3 and results["method"] == method
        assert 0 < results["validation_dice_identity"] <= 1
        model = load_model_folder(run / "model")
        assert model.network_config.shape == (16, 16, 16)
        assert model.preprocessing.spacing == (12.0, 12.0, 12.0)
        assert (model.generator is None) == (method != "deformgan")
        out = Registrar(model, refine_steps=0).register_arrays(pair["moving"], pair["fixed"])
        assert out.flow.shape == (16, 16, 16, 3) and np.all(np.isfinite(out.flow))
    # one loss configuration: every method was given the same weights and windows
    assert saved["deformgan"]["loss"] == saved["vxm"]["loss"] == saved["lcc"]["loss"]
    assert saved["lcc"]["loss"]["alpha"] == presets.DEMO_LOSS["alpha"]


def test_baseline_refuses_an_existing_run(method_runs, capsys):
    assert train_baselines.main([*TINY_TRAIN, "--data", "demo", "--methods", "vxm", "--steps",
                                 "2", "--out", str(method_runs)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_brain_defaults_coarse_windows_pooled_d_and_each_methods_learning_rate(monkeypatch,
                                                                              tmp_path):
    def fake_data(npz, out, resolution, n_train, n_val):
        return {"moving": "m", "fixed": "f", "val_pairs": "v.csv", "shape": (40, 48, 56)}

    monkeypatch.setattr(dbrain, "write_brain_training_data", fake_data)
    args = train_baselines.parser().parse_args(["--out", str(tmp_path)])
    config = train_baselines.train_config(args, tmp_path)
    assert config.preset == "brain"  # the library's brain preset, as dgan-train --preset brain
    assert config.loss.lg_window == 3 and config.loss.lcc_window == 5  # 4 mm grid
    assert config.network.d_pool == 2 and config.network.g_residual is True
    assert config.network.matching and config.network.flow_resolution == 1
    assert config.steps == presets.BRAIN_STEPS and config.validate_every == 25
    assert config.checkpoint_every == config.steps and config.lr_decay == "constant"
    assert config.loss.mu == 10.0 and config.loss.lam == 1.0  # G translates
    assert config.network_spacing == 2.0  # the models register at the benchmark's grid
    refine = config.refine  # 10 iterations, L_LCC through G, alpha 4
    assert (refine.steps, refine.w_lcc, refine.alpha) == (10, 1.0, 4.0)
    assert (refine.lg_window, refine.lcc_window) == (3, 5)  # the training loss's windows
    library = TrainConfig.from_preset("brain", moving=["m"], fixed=["f"], val_pairs="v.csv",
                                      shape=(40, 48, 56), checkpoint_every=config.steps)
    assert library.to_dict() == config.to_dict()
    args = train_baselines.parser().parse_args(["--out", str(tmp_path), "--resolution", "2",
                                                "--lg-window", "5", "--lambda", "4",
                                                "--network-spacing", "3", "--refine-steps", "0"])
    config = train_baselines.train_config(args, tmp_path)
    # 2 mm: the paper's LCC window, n and lambda as given
    assert (config.loss.lg_window, config.loss.lcc_window) == (5, 9)
    assert (config.loss.mu, config.loss.lam) == (10.0, 4.0)
    assert config.network_spacing == 3.0
    assert (config.refine.steps, config.refine.w_lcc) == (0, 1.0)  # only the count
    args = train_baselines.parser().parse_args(["--out", str(tmp_path), "--data", "demo"])
    demo = train_baselines.train_config(args, tmp_path)
    assert demo.network_spacing is None and demo.refine.steps == presets.DEMO_REFINE["steps"]
    assert demo.preset == "demo" and demo.network.d_pool == 2 and demo.network.flow_resolution == 1
    assert demo.steps == train_baselines.BASELINE_DEMO_STEPS and demo.log_every == 25


def test_evaluate_refines_only_the_methods_named(untrained_dgan):
    args = evaluate_cli.parser().parse_args(["--dgan", str(untrained_dgan), "--vxm",
                                             str(untrained_dgan), "--refine-steps", "2",
                                             "--refine-methods", "deformgan", "--out", "x"])
    names = [m.name for m in evaluate_cli.refinement_methods(args)]
    assert names == ["Deform-GAN", "Deform-GAN + refinement 2", "VoxelMorph (MI)"]
    args = evaluate_cli.parser().parse_args(["--dgan", str(untrained_dgan), "--refine-steps", "5",
                                             "2", "--refine-alone", "--out", "x"])
    methods = evaluate_cli.refinement_methods(args)
    assert [m.name for m in methods] == ["Deform-GAN", "Deform-GAN + refinement 2",
                                         "Deform-GAN + refinement 5", "refinement alone 5",
                                         "no model: matching + refinement 5"]
    # T as trained; refinement alone from the identity; dgan-register's training-free default,
    # its own choices
    assert [m.registrar.start for m in methods] == ["network"] * 3 + ["identity", "auto"]
    args.refine_steps = [3, -1]
    with pytest.raises(evaluate_cli.InputError, match="must be >= 0, got -1"):
        evaluate_cli.refinement_methods(args)


def test_evaluate_runs_t_at_each_network_spacing_given(untrained_dgan):
    args = evaluate_cli.parser().parse_args(["--dgan", str(untrained_dgan), "--network-spacing",
                                             "4", "2.5", "--refine-steps", "3", "--out", "x"])
    methods = evaluate_cli.refinement_methods(args)
    assert [m.name for m in methods] == [
        "Deform-GAN (T at 4 mm)", "Deform-GAN (T at 4 mm) + refinement 3",
        "Deform-GAN (T at 2.5 mm)", "Deform-GAN (T at 2.5 mm) + refinement 3"]
    assert [m.registrar.preprocessing.spacing for m in methods] == [(4.0,) * 3] * 2 + [(2.5,) * 3] * 2


def test_refine_settings_parse_numbers_tuples_and_words():
    settings = evaluate_cli.parse_settings(["alpha=0.5", "levels=4,2,1", "steps=25", "xla=off",
                                            "learning_rate=1e-1"])
    assert settings == {"alpha": 0.5, "levels": (4, 2, 1), "steps": 25, "xla": "off",
                        "learning_rate": 0.1}
    assert type(settings["steps"]) is int
    with pytest.raises(evaluate_cli.InputError, match="--refine-set takes KEY=VALUE, got 'alpha'"):
        evaluate_cli.parse_settings(["alpha"])


def test_refine_curve_draws_mean_dice_against_iterations(untrained_dgan, tmp_path):
    args = evaluate_cli.parser().parse_args(["--dgan", str(untrained_dgan), "--refine-steps", "0",
                                             "10", "20", "--out", str(tmp_path)])
    records = [{"method": m, "pair": k, "dice_mean": d} for k in range(2)
               for m, d in (("identity", 0.5), ("Deform-GAN", 0.6),
                            ("Deform-GAN + refinement 10", 0.65),
                            ("Deform-GAN + refinement 20", 0.7))]
    path = evaluate_cli.save_refine_curve(tmp_path / "curve.png", records, args)
    assert path.read_bytes().startswith(PNG)
    args.refine_steps = [20]
    assert evaluate_cli.save_refine_curve(tmp_path / "none.png", records, args) is None


def test_brain_training_data_seeds_are_disjoint_from_evaluation(tmp_path):
    from dgan.errors import InputError

    with pytest.raises(InputError, match="must differ from the evaluation seed"):
        dbrain.write_brain_training_data("unused.npz", tmp_path, seed=0)


# --- the mono-modal ceiling ---------------------------------------------------------------------


class RecordingMethod:
    """The identity, remembering the fixed image it was given."""

    warmup = False

    def __init__(self, name, fixed_key=None):
        self.name = name
        if fixed_key is not None:
            self.fixed_key = fixed_key
        self.seen = []

    def register(self, moving, fixed, moving_labels, spacing):
        self.seen.append(fixed)
        return evaluation.IdentityMethod().register(moving, fixed, moving_labels, spacing)


def tiny_benchmark(with_t1=True):
    rng = np.random.default_rng(0)
    labels = np.zeros((8, 8, 8), np.int32)
    labels[2:6, 2:6, 2:6] = 1
    pairs = []
    for _ in range(2):
        pair = {"moving": rng.random((8, 8, 8), np.float32),
                "fixed": rng.random((8, 8, 8), np.float32),
                "moving_labels": labels, "fixed_labels": labels}
        if with_t1:
            pair["fixed_t1"] = rng.random((8, 8, 8), np.float32)
        pairs.append(pair)
    return dreport.Benchmark("tiny", pairs, (2.0,) * 3, (1,), {1: "box"})


def test_the_ceiling_registers_to_the_same_modality_fixed_image(tmp_path):
    bench = tiny_benchmark()
    cross, ceiling = RecordingMethod("cross"), RecordingMethod("ceiling", "fixed_t1")
    result = dreport.evaluate([cross, ceiling], bench, tmp_path, figure_pairs=0,
                                 progress=False)
    assert [f is p["fixed"] for f, p in zip(cross.seen, bench.pairs)] == [True, True]
    assert [f is p["fixed_t1"] for f, p in zip(ceiling.seen, bench.pairs)] == [True, True]
    assert [r["method"] for r in result.records] == ["cross"] * 2 + ["ceiling"] * 2
    # scored against the same labels: identical labels, Dice 1 for both
    assert all(r["dice_mean"] == 1.0 for r in result.records)


def test_the_ceiling_needs_pairs_with_a_same_modality_fixed_image(tmp_path):
    from dgan.errors import InputError

    with pytest.raises(InputError, match="registers to 'fixed_t1', which the pairs of tiny"):
        dreport.evaluate([RecordingMethod("ceiling", "fixed_t1")],
                            tiny_benchmark(with_t1=False), tmp_path, figure_pairs=0,
                            progress=False)


def test_ants_ceiling_is_syn_cc_to_the_t1_fixed_image():
    ants_module = object()  # stored, not called, until a registration runs
    ceiling = evaluation.ants_ceiling(ants_module, reg_iterations=(4, 2, 0))
    assert ceiling.name == evaluation.CEILING_NAME and ceiling.fixed_key == "fixed_t1"
    assert ceiling.settings == {**evaluation.ANTS_DEFAULTS, "syn_metric": "CC",
                                "syn_sampling": 2, "reg_iterations": (4, 2, 0)}
    cross = evaluation.AntsSyNMethod(ants_module)
    assert cross.fixed_key == "fixed" and cross.name == "ANTs SyN (MI)"
    assert cross.settings["syn_metric"] == "mattes"


def test_the_benchmark_has_eight_pairs_by_default():
    import inspect

    assert dbrain.BRAIN_PAIRS == 8
    for fn in (dbrain.load_brain_benchmark, dbrain.benchmark_pairs):
        assert inspect.signature(fn).parameters["n_pairs"].default == 8
    assert evaluate_cli.parser().parse_args(["--out", "x"]).pairs == 8


# --- the evaluation CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation_run(tmp_path_factory, method_runs, untrained_dgan):
    out = tmp_path_factory.mktemp("eval")
    code = evaluate_cli.main(["--data", "demo", *TINY_DATA, "--pairs", "2", "--dgan",
                              str(untrained_dgan), "--runs", str(method_runs), "--no-ants",
                              "--no-progress", "--out", str(out)])
    assert code == 0
    return out


#: What evaluation_run evaluates: the identity, the untrained Deform-GAN given by --dgan, and the
#: other methods' models from --runs.
METHODS_EVALUATED = ("identity", "Deform-GAN", "VoxelMorph (MI)", "T + LCC (no G, D)")


def test_evaluation_writes_csv_markdown_and_figures(evaluation_run):
    out = evaluation_run
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["pair"]) for r in rows] == [
        (m, str(k)) for m in METHODS_EVALUATED for k in (0, 1)]
    assert {"dice_mean", "hd95_mean_mm", "folding_fraction", "sdlogj", "seconds", "dice_1",
            "dice_2", "dice_3"} <= set(rows[0])
    for row in rows:
        assert 0 <= float(row["dice_mean"]) <= 1 and float(row["hd95_mean_mm"]) >= 0
        assert 0 <= float(row["folding_fraction"]) <= 1 and float(row["seconds"]) >= 0
    for row in rows[:2]:  # identity: the zero flow
        assert float(row["folding_fraction"]) == 0 and float(row["sdlogj"]) == 0
    # an untrained T barely moves: the same Dice as the identity, a nearly flat field (a
    # property of the initial weights, not round-off)
    for before, after in zip(rows[:2], rows[2:4]):
        assert float(after["dice_mean"]) == pytest.approx(float(before["dice_mean"]), abs=0.02)
        assert float(after["folding_fraction"]) == 0
    summary = (out / "summary.md").read_text()
    assert "| method | Dice | HD95 (mm) | folding (%) | SDlogJ | s / pair |" in summary
    assert "| Deform-GAN |" in summary and "| grey matter (2) |" in summary
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["comparison_pair0.png", "deform_gan_pair0.png", "dice_boxplot.png",
                       "identity_pair0.png", "t_lcc_no_g_d_pair0.png", "voxelmorph_mi_pair0.png"]
    for name in figures:
        assert (out / "figures" / name).read_bytes()[:8] == PNG
    config = json.loads((out / "config.json").read_text())
    assert config["methods"] == list(METHODS_EVALUATED)


def test_evaluation_records_read_back(evaluation_run):
    records = dreport.read_csv(evaluation_run / "results.csv")
    summary = dreport.summary_markdown(records)
    assert summary.count("\n") == 1 + len(METHODS_EVALUATED)  # header, rule, one per method


def test_missing_ants_is_skipped_with_a_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ants", None)  # import ants raises ImportError
    ants, reason = evaluation.import_ants()
    assert ants is None and "pip install antspyx" in reason
    assert evaluate_cli.main(["--data", "demo", *TINY_DATA, "--pairs", "1", "--figure-pairs",
                              "0", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "ANTs SyN skipped: antspyx is not installed" in capsys.readouterr().err
    with open(tmp_path / "results.csv", newline="") as handle:
        assert [r["method"] for r in csv.DictReader(handle)] == ["identity"]


def test_missing_brain_data_is_one_line(tmp_path, capsys):
    assert evaluate_cli.main(["--brain-npz", str(tmp_path / "absent.npz"), "--out",
                              str(tmp_path / "out")]) == 2
    assert "the brain benchmark file is missing" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="antspyx is not installed")
def test_ants_flow_follows_the_flow_convention():
    """ANTs' own warped image is the moving image warped by the flow we derive, and not by its
    opposite; and it moves the moving image towards the fixed one."""
    import ants

    rng = np.random.default_rng(3)
    fixed = np.clip(synth.smooth_noise((24, 24, 24), 4.0, rng)[..., 0] * 0.3 + 0.5, 0, 1)
    moving = synth.warp(fixed, synth.random_smooth_flow((24, 24, 24), 1.5, 8.0, rng))
    flow, warped = evaluation.AntsSyNMethod(ants, reg_iterations=(20, 10, 0)).run(
        moving, fixed, (2.0, 2.0, 2.0))
    assert flow.shape == (24, 24, 24, 3) and np.abs(flow).max() > 0.2
    inner = (slice(3, -3),) * 3
    # ANTs warps and stores its field in float32: ~1e-6 of values <= 1
    np.testing.assert_allclose(synth.warp(moving, flow)[inner], warped[inner], atol=1e-4)
    assert np.abs(synth.warp(moving, -flow) - warped)[inner].max() > 0.01
    assert np.abs(warped - fixed)[inner].mean() < np.abs(moving - fixed)[inner].mean()


# --- the speed benchmark -----------------------------------------------------------------------


def test_each_method_is_measured_in_a_fresh_process():
    import os

    assert speed.in_fresh_process(os.getpid) != os.getpid()
    assert speed.in_fresh_process(max, 2, 7) == 7


def test_bench_speed_runs_small(tmp_path, capsys):
    """Registration timing only: tracing Deform-GAN's training step takes half a minute even
    for tiny networks (dgan-bench-speed --train-sizes; measured in docs/benchmarks.md)."""
    assert bench_speed.main(["--sizes", "12x16x20", "--train-sizes", "--repeats", "2",
                             "--warmup", "1", "--no-ants", "--t-features", "4,8/8,8,4",
                             "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "12x16x20: Deform-GAN T / VxmDense inference time =" in out
    results = json.loads((tmp_path / "bench.json").read_text())
    inference = results["inference"]["12x16x20"]
    assert inference["shape"] == [16, 16, 24]  # padded to the U-Net's multiple (8), min 16
    assert set(inference) == {"shape", "Deform-GAN T", "VoxelMorph VxmDense"}
    for name in ("Deform-GAN T", "VoxelMorph VxmDense"):
        m = inference[name]
        assert len(m["times"]) == 2 and m["seconds"] > 0 and m["peak_mib"] > 0
        if m["memory_source"] == "vmhwm_reset":  # the window holds building the network
            assert m["added_mib"] > 0
    assert results["training_step"] == {}
    assert (tmp_path / "bench.md").read_text().startswith("| size | method |")
