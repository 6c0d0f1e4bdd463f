"""T as a TensorFlow Serving SavedModel (``dgan-export``).

:func:`export_saved_model` writes T alone, from a dgan model folder
(:mod:`dgan.registration.model_folder`), as ``<base>/<version>/saved_model.pb`` + ``variables/``,
with one ``serving_default`` signature: float32 inputs ``moving`` and ``fixed``, shape
(batch, X, Y, Z, 1); outputs ``moved`` (batch, X, Y, Z, 1) and ``flow`` (batch, X, Y, Z, 3),
displacements in voxels, 'ij' indexing, moved(p) = moving(p + flow(p)). It holds only
TensorFlow ops and variables, so it loads with TensorFlow alone (no dgan, voxelmorph or Keras
import). The export is atomic: built beside its destination and renamed into place when complete.
"""

import json
import os

from ..compat import tf
from ..data import io as dio
from ..errors import InputError
from .model_folder import CONFIG_FILE, as_model_folder, registration_net_for_shape

#: Name of the TF Serving signature.
SIGNATURE_NAME = "serving_default"
#: Where an export keeps a copy of the model folder's description (ignored by TF Serving).
SAVED_MODEL_DESCRIPTION = os.path.join("assets.extra", CONFIG_FILE)


class _ServingModule(tf.Module):
    """T's forward pass as a tf.function with a fixed input signature, for tf.saved_model.save.

    Only T's variables are tracked (not the Keras model object), so the SavedModel holds plain
    TensorFlow functions and variables and needs no Keras, voxelmorph or dgan class to load.
    """

    def __init__(self, net, shape):
        super().__init__(name="dgan_registration")
        self.registration_variables = list(net.weights)
        spec = [None, *shape, 1]  # (batch, X, Y, Z, 1)

        @tf.function(
            input_signature=[
                tf.TensorSpec(spec, tf.float32, name="moving"),
                tf.TensorSpec(spec, tf.float32, name="fixed"),
            ]
        )
        def serve(moving, fixed):
            out = net({"moving": moving, "fixed": fixed}, training=False)
            return {
                "moved": tf.identity(out["moved"], name="moved"),  # (B, X, Y, Z, 1)
                "flow": tf.identity(out["flow"], name="flow"),  # (B, X, Y, Z, 3), voxels
            }

        self.serve = serve


def export_saved_model(model_folder, base_dir, version=1, shape=None, overwrite=False):
    """Export T as a TensorFlow Serving SavedModel, ``<base_dir>/<version>/``.

    Signature ``serving_default``: inputs ``moving``, ``fixed`` float32 (batch, X, Y, Z, 1),
    already preprocessed as in training (see :class:`Preprocessing`, also copied to
    ``assets.extra/dgan_model.json``); outputs ``moved`` (batch, X, Y, Z, 1) and ``flow``
    (batch, X, Y, Z, 3), in voxels, moved(p) = moving(p + flow(p)).

    :param model_folder: a dgan model folder (path) or :class:`ModelFolder`
    :param base_dir: the model base path that TF Serving watches
    :param version: positive integer version; the folder must not exist unless ``overwrite``
    :param shape: (X, Y, Z) the signature takes; default: the training network's shape
    :param overwrite: replace an existing version folder
    :return: the version folder, a string
    :raises InputError: bad model folder, version or shape; existing version without overwrite
    """
    model = as_model_folder(model_folder)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"version must be a positive integer, got {version!r}")
    shape = model.network_config.shape if shape is None else tuple(int(s) for s in shape)
    destination = os.path.join(os.fspath(base_dir), str(version))
    if os.path.exists(destination) and not overwrite:
        raise InputError("version folder already exists (overwrite=True replaces it)", destination)
    net = registration_net_for_shape(model, shape)
    module = _ServingModule(net, shape)
    description = dict(model.description)
    description["serving"] = {"signature": SIGNATURE_NAME, "shape": list(shape)}
    with dio.atomic_write(destination) as tmp:
        tf.saved_model.save(module, tmp, signatures={SIGNATURE_NAME: module.serve})
        extra = os.path.join(tmp, SAVED_MODEL_DESCRIPTION)
        os.makedirs(os.path.dirname(extra), exist_ok=True)
        with open(extra, "w", encoding="utf-8") as f:
            json.dump(description, f, indent=2)
            f.write("\n")
    return destination
