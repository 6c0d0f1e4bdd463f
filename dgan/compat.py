"""Arrange the Keras-2 / voxelmorph 0.2 / neurite 0.2 stack; the only module that does so.

voxelmorph 0.2 and neurite 0.2 are the last releases with TensorFlow code. They need Keras 2,
which TensorFlow >= 2.16 provides through the ``tf_keras`` package when ``TF_USE_LEGACY_KERAS=1``
is set before TensorFlow is imported. neurite 0.2 also calls ``inspect.getargspec``, removed in
Python 3.11; it is provided here from ``inspect.getfullargspec``.

``import dgan`` imports this module first. Everything else in the project takes ``tf``, ``keras``
(tf_keras), ``vxm`` and ``ne`` from here. They are imported on first use (``from dgan.compat
import tf``), not by ``import dgan``: a command line parses its arguments, and answers ``--help``,
before TensorFlow starts (seconds). :func:`quiet`, called before that first use, keeps
TensorFlow's start-up and log lines off the user's terminal.
"""

import collections
import contextlib
import hashlib
import importlib
import inspect
import io
import logging
import os
import platform
import sys
import tempfile
import warnings
from importlib import metadata


class StackError(ImportError):
    """The installed TensorFlow/Keras combination cannot run dgan."""


def _keras3_already_active():
    """True when TensorFlow was imported before us with Keras 3 behind ``tf.keras``."""
    if "tensorflow" not in sys.modules:
        return False
    if os.environ.get("TF_USE_LEGACY_KERAS", "0").lower() in ("1", "true"):
        return False
    tf_module = sys.modules["tensorflow"]
    try:
        version = tf_module.keras.__version__
    except AttributeError:  # pragma: no cover - partially imported TensorFlow
        return False
    return not str(version).startswith("2.")


if _keras3_already_active():
    raise StackError(
        "dgan needs Keras 2 (tf_keras), but TensorFlow was imported with Keras 3 active: "
        "set TF_USE_LEGACY_KERAS=1 before importing tensorflow, or import dgan first"
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"

if not hasattr(inspect, "getargspec"):
    _ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")

    def _getargspec(func):
        spec = inspect.getfullargspec(func)
        return _ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)

    inspect.getargspec = _getargspec

#: The names this module provides on first use, and the modules they are.
_STACK = {"tf": "tensorflow", "keras": "tf_keras", "ne": "neurite", "vxm": "voxelmorph"}

#: Libraries whose Python warnings and log records :func:`quiet` keeps off the terminal.
_NOISY_LIBRARIES = ("tensorflow", "tf_keras", "keras", "absl", "neurite", "voxelmorph")

#: Set by :func:`quiet`: the stack's start-up lines are held back while it is imported.
_hold_back_start_up = False


def quiet(verbose=False):
    """Keep TensorFlow's start-up and log lines (absl, oneDNN, CUDA, CPU features) and the Python
    warnings of TensorFlow, Keras, neurite and voxelmorph off the terminal, unless ``verbose``.

    For command lines, before they first use ``tf`` (or ``keras``, ``ne``, ``vxm``): sets
    ``TF_CPP_MIN_LOG_LEVEL`` to 3 unless the environment already says otherwise, raises the
    ``tensorflow`` and ``absl`` loggers to ERROR, ignores those libraries' warnings, and holds
    back what the import writes to stderr before TensorFlow's own log settings apply (written
    out after all if the import fails). It changes process-wide settings: library code never
    calls it. ``verbose`` leaves everything as TensorFlow has it.
    """
    global _hold_back_start_up
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    pattern = "|".join(_NOISY_LIBRARIES)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
    _hold_back_start_up = True


#: Where :func:`use_compile_cache` keeps compiled XLA programs when not told otherwise.
COMPILE_CACHE_ENV = "DGAN_COMPILE_CACHE"


def compile_cache_folder(root=None):
    """The folder of :func:`use_compile_cache` for this machine: ``root`` (default
    ``$DGAN_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/dgan/xla`` or ``~/.cache/dgan/xla``), then a
    subfolder named after the TensorFlow version and the CPU (model and instruction-set flags),
    so that a program compiled for one processor is never loaded on another."""
    root = root or os.environ.get(COMPILE_CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "dgan", "xla")
    try:
        version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - a differently named build
        version = "unknown"
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = "".join(line for line in handle
                          if line.startswith(("model name", "flags", "Features")))
    except OSError:  # not Linux: the platform's description
        cpu = platform.processor() + platform.machine()
    digest = hashlib.sha256(cpu.encode()).hexdigest()[:16]
    return os.path.join(root, f"tf-{version}-cpu-{digest}")


def use_compile_cache(root=None):
    """Keep the programs XLA compiles (refinement's iterations on large grids) on disk and
    reuse them in later processes: a registration command compiles each grid shape once per
    machine instead of once per call (seconds each). Sets ``TF_XLA_FLAGS`` before TensorFlow
    starts, so a command line calls it first, as :func:`quiet`; nothing when TensorFlow has
    already started (too late), when the flags already name a persistent cache, or when
    ``$DGAN_COMPILE_CACHE`` is ``off``. The folder: :func:`compile_cache_folder`; deleting it is
    always safe.

    :return: the folder, or None when not used
    """
    if os.environ.get(COMPILE_CACHE_ENV, "").lower() == "off":
        return None
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "persistent_cache_directory" in flags or "tensorflow" in sys.modules:
        return None
    folder = compile_cache_folder(root)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without the cache
        return None
    os.environ["TF_XLA_FLAGS"] = " ".join(filter(None, [
        flags, f"--tf_xla_persistent_cache_directory={folder}",
        "--tf_xla_persistent_cache_device_types=CPU,XLA_CPU,GPU,XLA_GPU"]))
    return folder


def compile_cache_in_use():
    """The folder XLA's persistent compile cache reads in this process (``TF_XLA_FLAGS``'s
    ``--tf_xla_persistent_cache_directory``), or None."""
    for flag in os.environ.get("TF_XLA_FLAGS", "").split():
        name, _, value = flag.partition("=")
        if name == "--tf_xla_persistent_cache_directory" and value:
            return value
    return None


def compile_cache_error(error, compiled):
    """A TensorFlow op's error as it is, unless it comes from a program XLA compiled
    (``compiled``), is not out of memory, and XLA reads a persistent compile cache
    (:func:`use_compile_cache`): then most likely a damaged cache file (truncated by a full disk
    or a copy), which fails every later call too: a one-line :class:`dgan.errors.InputError`
    naming the folder and what to do. Raise what it returns ``from error``."""
    from .errors import InputError, one_line

    folder = compile_cache_in_use()
    tensorflow = sys.modules.get("tensorflow")  # the error came from it: it has started
    out_of_memory = tensorflow is not None and isinstance(
        error, tensorflow.errors.ResourceExhaustedError)
    if not compiled or folder is None or out_of_memory:
        return error
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()]
    said = [line for line in lines if line and not line.startswith(
        ("[[", "File ", "Detected at node", "Graph execution error"))]
    return InputError(f"a compiled program could not be read from the XLA compile cache "
                      f"({one_line(said[-1] if said else error)}): delete that folder, or set "
                      f"{COMPILE_CACHE_ENV}=off", folder)


@contextlib.contextmanager
def _stderr_held_back():
    """Hold back what the block writes to stderr: file descriptor 2 (C++) into a temporary file,
    ``sys.stderr`` (Python) into a string. On an exception both go to stderr after all, before
    the exception propagates."""
    sys.stderr.flush()
    saved = os.dup(2)
    python_held = io.StringIO()
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            with contextlib.redirect_stderr(python_held):
                yield
        except BaseException:
            _restore_stderr(saved)
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace") + python_held.getvalue())
            raise
        else:
            _restore_stderr(saved)


def _restore_stderr(saved):
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _import(name):
    """Import the library behind ``name`` of :data:`_STACK` (alone: registering without a model
    needs TensorFlow, not Keras, neurite or voxelmorph) and bind it here."""
    held_back = _stderr_held_back() if _hold_back_start_up else contextlib.nullcontext()
    with held_back:
        module = importlib.import_module(_STACK[name])
    if name == "keras" and not module.__version__.startswith("2."):  # pragma: no cover
        raise StackError(f"dgan needs tf_keras 2.x, found {module.__version__}: "
                         "pip install tf-keras")
    globals()[name] = module


def __getattr__(name):
    """``tf``, ``keras``, ``ne`` and ``vxm``, each on its first use (PEP 562)."""
    if name not in _STACK:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _import(name)
    return globals()[name]


__all__ = ["tf", "keras", "ne", "vxm", "StackError", "quiet", "use_compile_cache",
           "compile_cache_folder", "compile_cache_in_use"]
