"""dgan.bench.command: what it reads from a command and how it measures the child process."""

import sys

import pytest

from dgan.bench import command


def test_stages_are_read_from_dgan_registers_run_time_line():
    output = ("start: matching (...)\nnon-positive Jacobian determinant: 0.000277 of voxels\n"
              "run time: 31.46 s (affine 6.59 s, network 7.08 s, refinement 12.15 s)\n")
    assert command.stages_of(output) == {"run": 31.46, "affine": 6.59, "network": 7.08,
                                         "refinement": 12.15}
    assert command.stages_of("error: no such file\n") == {}


def test_run_timed_reports_this_childs_own_peak_memory():
    big = [sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
           "; print('done')"]
    small = [sys.executable, "-c", "print('small')"]
    wall, peak_big, out = command.run_timed(big)
    assert out == "done\n" and wall > 0 and peak_big >= 300
    _, peak_small, _ = command.run_timed(small)  # after the big one: its own peak, not the max
    assert peak_small < 200
    with pytest.raises(RuntimeError, match="failed"):
        command.run_timed([sys.executable, "-c", "raise SystemExit(3)"])
