"""dgan.compat: what quiet() holds back while the stack starts (the stack on first use:
tests/test_api.py)."""

import os
import sys

import pytest

from dgan import compat


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
