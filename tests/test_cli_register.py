"""dgan-register's command line (dgan.cli.register): one pair or --batch, --help before
TensorFlow starts, TensorFlow's start-up lines kept off stderr unless --verbose."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dgan.cli.register import EXIT_BAD_INPUT, main
from dgan.core.settings import SMOOTHED_FIELDS
from dgan.registration import settings
from fresh_process import run_python
from test_register import constant_flow_net, save_model, write_scans

#: A line TensorFlow (C++ or Python), absl, oneDNN or CUDA writes.
TENSORFLOW_LINE = re.compile(r"onednn|absl|cuda|tensorflow|cpu_feature_guard|^[IWEF]\d{4} ", re.I)


def test_the_help_quotes_the_librarys_defaults_and_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    defaults = settings.RefineConfig()
    assert f"else {settings.NO_MODEL_REFINE_STEPS}; 0: T's field alone" in text
    assert f"else {' '.join(map(str, settings.NO_MODEL_LEVELS))})" in text
    assert f"else {defaults.alpha:g};" in text and f"else {defaults.smooth}" in text
    assert f"(default {defaults.lcc_stride}," in text
    assert f"more than {settings.AUTO_THRESHOLD_MM:g} mm RMS" in text
    for choices in (settings.START_CHOICES, settings.AFFINE_MODES, SMOOTHED_FIELDS):
        assert "{" + ",".join(choices) + "}" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "p.csv", "--out-dir", "o", "--moving", "m.nii"],
         "--batch replaces the options of one pair: leave out --moving"),
        (["--batch", "p.csv", "--out-dir", "o", "--out-flow", "f.nii", "--out-affine", "a.txt"],
         "--batch replaces the options of one pair: leave out --out-flow, --out-affine"),
        (["--batch", "p.csv"], "--batch needs --out-dir"),
        (["--moving", "m.nii", "--fixed", "f.nii", "--out-moved", "a.nii", "--out-flow", "b.nii",
          "--out-dir", "o"], "--out-dir goes with --batch"),
        (["--moving", "m.nii"],
         "the following arguments are required: --fixed, --out-moved, --out-flow (or --batch"),
        ([], "the following arguments are required: --moving, --fixed, --out-moved, --out-flow"),
    ],
)
def test_one_pair_or_a_batch_never_both(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"dgan-register: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_help_answers_without_starting_tensorflow():
    out = run_python("import sys\n"
                     "from dgan.cli import register\n"
                     "try:\n"
                     "    register.main(['--help'])\n"
                     "except SystemExit as exit_:\n"
                     "    assert exit_.code == 0, exit_.code\n"
                     "print('started:', [m for m in ('tensorflow', 'tf_keras', 'neurite',\n"
                     "                               'voxelmorph') if m in sys.modules])\n",
                     timeout=120)
    assert "--batch CSV" in out and "--verbose" in out
    assert out.rstrip().endswith("started: []")


def test_tensorflow_start_up_lines_stay_off_stderr_unless_verbose(tmp_path):
    paths = write_scans(tmp_path, np.random.default_rng(3))
    folder = save_model(tmp_path / "model", constant_flow_net([0.0, 0.0, 0.0]), 2.0)
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}

    def start(*extra):
        argv = [sys.executable, "-m", "dgan.cli.register", "--model", folder,
                "--moving", paths["moving"], "--fixed", paths["fixed"], "--refine-steps", "0",
                "--out-moved", str(tmp_path / f"moved{len(extra)}.nii.gz"),
                "--out-flow", str(tmp_path / f"flow{len(extra)}.nii.gz"), *extra]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)

    runs = [start(), start("--verbose")]  # side by side: each starts TensorFlow
    (quiet_out, quiet), (verbose_out, verbose) = (run.communicate(timeout=300) for run in runs)
    assert [run.returncode for run in runs] == [0, 0], quiet + verbose
    assert "run time" in quiet_out and "run time" in verbose_out
    assert [line for line in quiet.splitlines() if TENSORFLOW_LINE.search(line)] == []
    if not verbose:
        pytest.skip("this TensorFlow build writes nothing at start-up: nothing to keep off")
    assert TENSORFLOW_LINE.search(verbose), verbose  # what the quiet run kept off
