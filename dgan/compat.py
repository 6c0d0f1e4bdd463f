"""Arrange the Keras-2 / voxelmorph 0.2 / neurite 0.2 stack; the only module that does so.

voxelmorph 0.2 and neurite 0.2 are the last releases with TensorFlow code. They need Keras 2,
which TensorFlow >= 2.16 provides through the ``tf_keras`` package when ``TF_USE_LEGACY_KERAS=1``
is set before TensorFlow is imported. neurite 0.2 also calls ``inspect.getargspec``, removed in
Python 3.11; it is provided here from ``inspect.getfullargspec``.

``import dgan`` imports this module first. Everything else in the project takes ``tf``, ``keras``
(tf_keras), ``vxm`` and ``ne`` from here.
"""

import collections
import inspect
import os
import sys


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

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import neurite as ne  # noqa: E402
import voxelmorph as vxm  # noqa: E402

if not keras.__version__.startswith("2."):  # pragma: no cover - broken installation
    raise StackError(f"dgan needs tf_keras 2.x, found {keras.__version__}: pip install tf-keras")

__all__ = ["tf", "keras", "ne", "vxm", "StackError"]
