"""dgan.compat: the stack on first use, and what quiet() holds back while it starts."""

import os
import subprocess
import sys

import pytest

from dgan import compat


def test_import_dgan_leaves_tensorflow_unstarted_until_first_use():
    code = ("import sys, dgan\n"
            "before = 'tensorflow' in sys.modules\n"
            "from dgan.compat import keras\n"
            "print(before, 'tensorflow' in sys.modules, keras.__version__[:2])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "2."]


def test_held_back_stderr_is_dropped_when_the_block_succeeds(capfd):
    with compat._stderr_held_back():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
        print("a Python warning", file=sys.stderr)
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "after\n"


def test_held_back_stderr_is_written_out_when_the_block_fails(capfd):
    with pytest.raises(ImportError, match="no such library"):
        with compat._stderr_held_back():
            os.write(2, b"F0000 what went wrong first\n")
            print("then this", file=sys.stderr)
            raise ImportError("no such library")
    assert capfd.readouterr().err == "F0000 what went wrong first\nthen this\n"


def test_unknown_names_are_still_attribute_errors():
    with pytest.raises(AttributeError, match="has no attribute 'torch'"):
        compat.torch  # noqa: B018
