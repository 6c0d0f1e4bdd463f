"""Python code run in a fresh interpreter: what a program sees that has imported nothing yet."""

import subprocess
import sys


def run_python(code, timeout=300):
    """``python -c code`` in a new process; returns its stdout (a non-zero exit status fails the
    test with the process's stderr)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout
