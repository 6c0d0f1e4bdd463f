"""VoxelMorph's VxmDense (Balakrishnan et al. 2019) as a baseline for Deform-GAN (Zhang et al. 2020,
arXiv:2002.11430), trained by the same run (:func:`dgan.training.run.train`, method ``"vxm"``).

VxmDense is built with T's U-Net features and integration steps (:func:`build_vxm_dense`) and
trained with VoxelMorph's cross-modal loss ``L = -MI(R, F(phi)) + lambda * Grad_l2(phi)``
(``vxm.losses.MutualInformation``, soft-histogram MI with ``mi_bins`` bins, and
``vxm.losses.Grad('l2')``; :class:`VxmTrainer`): the peer a user would pick. VxmDense with
``int_resolution=1`` has exactly T's layer structure (the same U-Net, a 3x3x3 convolution to the
flow, a ``SpatialTransformer``); :func:`vxm_to_registration_net` checks this layer by layer and
copies its weights into :func:`dgan.core.networks.build_registration_net`, so that a VxmDense run
ends in an ordinary dgan model folder, registered through
:class:`dgan.registration.registrar.Registrar` like every other method.
"""

import contextlib
import io

from ..compat import vxm
from ..core.networks import build_registration_net
from .trainers import RegistrationTrainer


# --- VoxelMorph's VxmDense and T ----------------------------------------------------------------


def build_vxm_dense(network_config, name="vxm_dense"):
    """VoxelMorph's ``VxmDense`` with T's U-Net features and integration steps.

    ``int_resolution=1`` integrates at full resolution, as T does, so that both networks have the
    same layers. Inputs ``[moving, fixed]`` (B, X, Y, Z, 1); outputs ``[moved, flow]``.
    """
    if network_config.flow_resolution != 1:
        raise ValueError("the VxmDense baseline needs flow_resolution 1: VoxelMorph 0.2 does not "
                         "upsample a coarse field the way T does")
    encoder, decoder = network_config.t_features
    return vxm.networks.VxmDense(
        network_config.shape,
        nb_unet_features=[list(encoder), list(decoder)],
        int_steps=network_config.int_steps,
        int_resolution=1,
        name=name,
    )


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def _role(layer, prefix):
    """A layer's name without its network's prefix: ``<prefix>_unet_...`` -> ``unet_...``."""
    name = layer.name
    return name[len(prefix) + 1:] if name.startswith(prefix + "_") else name


def check_same_structure(vxm_model, registration_net):
    """Raise ``ValueError`` unless VxmDense and T have the same layers in the same order.

    Compared: the sequence of layer types, and for every layer with weights its role (name
    without the network prefix; VoxelMorph's ``flow`` / ``flow_int`` are T's ``velocity`` /
    ``flow`` when integrating) and its weight shapes.
    """
    vxm_types = [type(layer).__name__ for layer in vxm_model.layers]
    t_types = [type(layer).__name__ for layer in registration_net.layers]
    if vxm_types != t_types:
        raise ValueError(f"VxmDense and T differ in their layers: {vxm_types} vs {t_types}")
    renamed = {"flow": "velocity" if any(t == "VecInt" for t in t_types) else "flow"}
    for a, b in zip(_weighted_layers(vxm_model), _weighted_layers(registration_net)):
        role_a = _role(a, vxm_model.name)
        role_a = renamed.get(role_a, role_a)
        role_b = _role(b, registration_net.name)
        shapes_a = [tuple(w.shape) for w in a.weights]
        shapes_b = [tuple(w.shape) for w in b.weights]
        if role_a != role_b or shapes_a != shapes_b:
            raise ValueError(f"VxmDense layer {a.name} {shapes_a} does not match T's layer "
                             f"{b.name} {shapes_b}")


def vxm_to_registration_net(vxm_model, network_config):
    """T (:func:`dgan.core.networks.build_registration_net`) holding the weights of a VxmDense.

    :param vxm_model: from :func:`build_vxm_dense` with the same ``network_config``
    :return: T, ``{"moving", "fixed"}`` -> ``{"moved", "flow"}``, computing what VxmDense computes
    :raises ValueError: the two networks do not have the same layers
    """
    net = build_registration_net(network_config)
    check_same_structure(vxm_model, net)
    for a, b in zip(_weighted_layers(vxm_model), _weighted_layers(net)):
        b.set_weights(a.get_weights())
    return net


def mutual_information(bins):
    """VoxelMorph's soft-histogram mutual information (its constructor prints; silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return vxm.losses.MutualInformation(nb_bins=int(bins))


# --- the training model -------------------------------------------------------------------------


class VxmTrainer(RegistrationTrainer):
    """VxmDense trained with ``-MI(R, F(phi)) + vxm_lambda * Grad_l2(phi)``
    (:class:`dgan.training.trainers.LossWeights` ``vxm_lambda``, ``mi_bins``); reports
    :attr:`LOSS_NAMES`.

    :param vxm_dense: from :func:`build_vxm_dense` (list inputs ``[moving, fixed]``, list
        outputs ``[moved, flow]``)
    :param network_config: the :class:`dgan.core.networks.NetworkConfig` it was built from
    """

    LOSS_NAMES = ("t_loss", "t_mi", "t_grad")

    def __init__(self, vxm_dense, network_config, **kwargs):
        kwargs.setdefault("name", "vxm_trainer")
        super().__init__(vxm_dense, **kwargs)
        self.network_config = network_config
        self._registration_net = None  # T holding a copy of the weights, built once

    @classmethod
    def from_config_object(cls, network_config):
        return cls(build_vxm_dense(network_config), network_config)

    @property
    def registration_model(self):
        """T (:func:`dgan.core.networks.build_registration_net`) with VxmDense's current weights:
        what validation registers with and the model folder holds."""
        if self._registration_net is None:
            self._registration_net = vxm_to_registration_net(self.registration_net,
                                                             self.network_config)
        else:
            for a, b in zip(_weighted_layers(self.registration_net),
                            _weighted_layers(self._registration_net)):
                b.set_weights(a.get_weights())
        return self._registration_net

    def compile(self, t_optimizer, weights=None, **kwargs):
        super().compile(t_optimizer, weights, **kwargs)
        self.mi = mutual_information(self.loss_config.mi_bins)
        self.grad = vxm.losses.Grad("l2")

    def warp(self, moving, fixed, training):
        moved, flow = self.registration_net([moving, fixed], training=training)
        return moved, flow

    def registration_terms(self, moving, fixed, training):
        moved, flow = self.warp(moving, fixed, training=training)
        terms = {"t_mi": self.mi.loss(fixed, moved), "t_grad": self.grad.loss(None, flow)}
        terms["t_loss"] = terms["t_mi"] + self.loss_config.vxm_lambda * terms["t_grad"]
        return terms
