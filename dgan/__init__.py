"""dgan: unsupervised cross-modal 3D deformable registration with Deform-GAN.

Zhang et al. 2020, "Deform-GAN: An Unsupervised Learning Model for Deformable Registration",
arXiv:2002.11430.
"""

from . import compat  # noqa: F401  (must come first: arranges Keras 2 for voxelmorph/neurite)

__version__ = "0.1.0"
