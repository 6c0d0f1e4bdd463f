"""dgan-train, dgan-evaluate, the benchmarks and the probes as dgan-register
(tests/test_cli_register.py): TensorFlow's start-up lines kept off stderr unless --verbose,
--help before TensorFlow starts.

Each case runs in a fresh process (what a user's terminal sees); the commands' runs themselves
are tested in-process by tests/test_training.py and tests/test_evaluation.py.
"""

import os
import subprocess
import sys

import pytest

from test_cli_register import TENSORFLOW_LINE

#: Each command's module (its ``main``, the console script).
COMMANDS = {
    "dgan-train": "dgan.cli.train",
    "dgan-evaluate": "dgan.bench.evaluate",
    "dgan-train-baselines": "dgan.bench.train_baselines",
    "dgan-bench-speed": "dgan.bench.bench_speed",
    "dgan-bench-affine": "dgan.bench.bench_affine",
    "dgan-probe-loss": "dgan.bench.probe_loss",
    "dgan-probe-matching": "dgan.bench.probe_matching",
}

#: ``main(argv)`` in a fresh process: its exit status (SystemExit's code for --help) and whether
#: TensorFlow started, as the last line of stdout.
PROGRAM = """\
import sys
from {module} import main
try:
    status = main({argv!r})
except SystemExit as exit_:
    status = exit_.code
print('exit', status, 'tensorflow' in sys.modules)
"""


def start(command, argv):
    """``main(argv)`` of ``command`` in a new process, with TensorFlow's log level unset (as on a
    user's terminal)."""
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    code = PROGRAM.format(module=COMMANDS[command], argv=list(argv))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(process):
    """(stdout without its last line, stderr, exit status, whether TensorFlow started)."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    *lines, last = out.rstrip("\n").split("\n")
    word, status, started = last.split()
    assert word == "exit", out
    return "\n".join(lines), err, int(status), started == "True"


@pytest.fixture(scope="module")
def helps():
    """{command: finish(...)} of ``--help``, side by side."""
    runs = {command: start(command, ["--help"]) for command in COMMANDS}
    return {command: finish(run) for command, run in runs.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_the_usage_and_verbose_and_nothing_on_stderr(helps, command):
    out, err, status, _ = helps[command]
    assert status == 0
    assert out.startswith(f"usage: {command} ") and "--verbose" in out
    assert err == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_answers_without_starting_tensorflow(helps, command):
    _, _, status, started = helps[command]
    assert status == 0 and not started


#: For each command, arguments refused after TensorFlow has started: (argv, the one error line).
OUT = ["--out", "{tmp}/out"]
ABSENT = ["--brain-npz", "{tmp}/absent.npz"]
MISSING = "the brain benchmark file is missing"
REFUSED = {
    "dgan-train": (["--shape", "8", "8", "8", *OUT], "is too small"),
    "dgan-evaluate": (["--data", "demo", "--pairs", "1", "--shape", "16", "16", "16", "--spacing",
                       "12", "--refine-steps", "-1", *OUT], "--refine-steps must be >= 0"),
    "dgan-train-baselines": ([*ABSENT, *OUT], MISSING),
    "dgan-bench-speed": (["--refine-only", "--sizes", "8x8", *OUT], "a size is 2mm, 1mm or XxYxZ"),
    "dgan-bench-affine": ([*ABSENT, *OUT], MISSING),
    "dgan-probe-loss": (ABSENT, MISSING),
    "dgan-probe-matching": (ABSENT, MISSING),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_tensorflow_start_up_lines_stay_off_stderr_unless_verbose(tmp_path, command):
    template, message = REFUSED[command]
    argv = [a.format(tmp=tmp_path) for a in template]
    runs = [start(command, argv), start(command, [*argv, "--verbose"])]  # side by side
    (_, quiet, quiet_status, quiet_started), (_, verbose, verbose_status, verbose_started) = (
        finish(run) for run in runs)
    assert (quiet_status, verbose_status) == (2, 2)
    assert quiet_started and verbose_started, "refused before TensorFlow started: choose other " \
        "arguments in REFUSED, or this test checks nothing"
    assert quiet.startswith("error: ") and quiet.count("\n") == 1 and message in quiet, quiet
    start_up = [line for line in verbose.splitlines() if message not in line]
    if not start_up:
        pytest.skip("this TensorFlow build writes nothing at start-up: nothing to keep off")
    assert any(TENSORFLOW_LINE.search(line) for line in start_up), verbose
