"""dgan: unsupervised cross-modal 3D deformable registration with Deform-GAN.

Zhang et al. 2020, "Deform-GAN: An Unsupervised Learning Model for Deformable Registration",
arXiv:2002.11430.

The public API is imported on first use (PEP 562), so ``import dgan`` starts no TensorFlow::

    import dgan

    registrar = dgan.Registrar("runs/t1-t2/model")      # None: training-free
    result = registrar.register_files("t1.nii.gz", "t2.nii.gz")
    run = dgan.train(dgan.TrainConfig.from_preset("demo"), "runs/demo")

Each name below lives in one module of the subpackages (``dgan.core``, ``dgan.data``,
``dgan.registration``, ``dgan.training``, ``dgan.evaluation``).
"""

import importlib

from . import compat  # noqa: F401  (must come first: arranges Keras 2 for voxelmorph/neurite)

__version__ = "0.1.0"

#: The public API: each name and the module that defines it.
_PUBLIC = {
    "InputError": "dgan.errors",
    "TrainingDiverged": "dgan.errors",
    "Volume": "dgan.data.io",
    "load_volume": "dgan.data.io",
    "save_volume": "dgan.data.io",
    "Preprocessing": "dgan.data.preprocessing",
    "Registrar": "dgan.registration.registrar",
    "ArrayRegistration": "dgan.registration.registrar",
    "FileRegistration": "dgan.registration.registrar",
    "write_outputs": "dgan.registration.files",
    "refine": "dgan.registration.refine",
    "RefineConfig": "dgan.registration.settings",
    "RefineResult": "dgan.registration.refine",
    "estimate_affine": "dgan.registration.affine",
    "AffineConfig": "dgan.registration.affine",
    "AffineResult": "dgan.registration.affine",
    "ModelFolder": "dgan.registration.model_folder",
    "load_model_folder": "dgan.registration.model_folder",
    "export_saved_model": "dgan.registration.serving",
    "NetworkConfig": "dgan.core.networks",
    "LossWeights": "dgan.training.settings",
    "TrainConfig": "dgan.training.config",
    "train": "dgan.training.run",
    "RunResult": "dgan.training.run",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    """The public API's names, each imported from its module on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_PUBLIC})
