"""Deform-GAN's three networks (Zhang et al. 2020, arXiv:2002.11430): T, G and D.

- T, the registration network: VoxelMorph's U-Net on the concatenated (moving, fixed) pair, a 3x3x3
  convolution to a dense field, optionally integrated as a stationary velocity field (VoxelMorph's
  diffeomorphic ``VecInt`` scaling and squaring), then VoxelMorph's ``SpatialTransformer``.
  Inputs ``moving`` (F) and ``fixed`` (R), shape (B, X, Y, Z, 1); outputs ``moved`` = F(phi)
  (B, X, Y, Z, 1) and ``flow`` = phi (B, X, Y, Z, 3): a displacement in voxels, 'ij' indexing,
  moved(p) = moving(p + flow(p)).
- G, the generator: VoxelMorph's U-Net translating F(phi) into the fixed modality,
  F'(phi) = G(F(phi)), with a sigmoid output (intensities are normalised to [0, 1]); or,
  residual, F'(phi) = F(phi) + U(F(phi)) with U's last layer zero at initialisation.
- D, the discriminator: a 3D conditional PatchGAN (Isola et al. 2017). Inputs the condition
  F(phi) and an image in the fixed modality (R, or G's F'(phi)), optionally average-pooled;
  output one unbounded score per patch, (B, x', y', z', 1).

All three are plain functional Keras models whose layers are Keras or VoxelMorph layers, so they
save and reload with :func:`custom_objects`.
"""

from dataclasses import asdict, dataclass

from ..compat import keras, tf, vxm
from . import matching
from .settings import (MATCHING_LG_WINDOW, MATCHING_SMOOTHING, MATCHING_TEMPERATURE,
                       MATCHING_WINDOW, VXM_FEATURES, without_retired)

#: Settings of experiments that were not kept (docs/notes/training-log.md), with the value that
#: builds today's networks: a saved description may name them at that value, and no other.
RETIRED = {"g_pointwise": False}


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of T, G and D.

    :param shape: the spatial shape (X, Y, Z) every network is built for
    :param t_features: T's U-Net features, ([encoder], [decoder]) as in VoxelMorph
    :param g_features: G's U-Net features, same form
    :param d_features: D's feature count in its first layer, doubled at each stride
    :param d_layers: D's number of strided 4x4x4 convolutions
    :param int_steps: scaling-and-squaring steps for a diffeomorphic T; 0 gives a plain
        displacement field, as in the paper
    :param flow_resolution: T predicts phi on a grid this many times coarser and upsamples it
        (VoxelMorph's ``svf_resolution``): 1 (full resolution) or a power of two up to T's
        down-sampling factor. 2 skips T's last up-sampling, so its final convolutions run on
        1/8 of the voxels: faster, for fields that are smooth anyway
    :param g_residual: G predicts a correction added to its input, F'(phi) = F(phi) + U(F(phi)),
        with U's last layer initialised to zero: G starts as the identity, so T's L_LCC
        compares R with the moved image itself until G has learnt the translation, instead of
        with an untrained G's flat grey output. False: F'(phi) = sigmoid(U(F(phi)))
    :param matching: T's parameter-free first estimate of phi, ((factor, radius), ...) passes of
        :class:`dgan.core.networks.BlockMatching` (block matching of local-gradient directions,
        coarse to fine); T's U-Net then sees the moving image warped by it and predicts the residual
        field, composed with it. () (the default): the paper's T, the U-Net alone
    :param d_pool: D average-pools its input pair by this factor before its first strided
        convolution (1: none). D's weight gradients are the costliest part of a step on CPU;
        2 makes D's update several times cheaper
    """

    shape: tuple
    t_features: tuple = VXM_FEATURES
    g_features: tuple = VXM_FEATURES
    d_features: int = 16
    d_layers: int = 3
    int_steps: int = 0
    flow_resolution: int = 1
    g_residual: bool = False
    d_pool: int = 1
    matching: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "t_features", _as_features(self.t_features))
        object.__setattr__(self, "g_features", _as_features(self.g_features))
        object.__setattr__(self, "matching", tuple((int(f), int(r)) for f, r in self.matching))
        if len(self.shape) != 3:
            raise ValueError(f"shape must have three spatial sizes, got {self.shape}")
        levels = len(self.t_features[0])
        allowed = [2**k for k in range(levels + 1)]
        if self.flow_resolution not in allowed:
            raise ValueError(f"flow_resolution must be one of {allowed} for T's {levels} "
                             f"down-samplings, got {self.flow_resolution}")
        for factor, radius in self.matching:
            if factor not in allowed or radius < 1:
                raise ValueError(f"a matching pass needs a factor in {allowed} and a radius >= 1, "
                                 f"got ({factor}, {radius})")
        if self.d_pool < 1 or self.d_pool & (self.d_pool - 1):
            raise ValueError(f"d_pool must be a power of two (1: no pooling), got {self.d_pool}")
        multiple = self.multiple
        if any(s % multiple for s in self.shape):
            raise ValueError(
                f"shape {self.shape} must be divisible by {multiple} (the U-Nets down-sample "
                f"{multiple}x); pad or crop the volumes"
            )
        if min(self.shape) < multiple * 2:
            raise ValueError(f"shape {self.shape} is too small: at least {2 * multiple} per axis")

    @property
    def multiple(self):
        """Every spatial size must be a multiple of this: 2 ** (number of down-samplings)."""
        d_levels = self.d_layers + self.d_pool.bit_length() - 1
        return 2 ** max(len(self.t_features[0]), len(self.g_features[0]), d_levels)

    def to_dict(self):
        return {k: _as_lists(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, config):
        """A configuration as saved (:meth:`to_dict`), :data:`RETIRED` settings left out."""
        return cls(**without_retired(config, RETIRED))


def _as_features(features):
    encoder, decoder = features
    return tuple(int(f) for f in encoder), tuple(int(f) for f in decoder)


def _as_lists(value):
    return [_as_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


class BlockMatching(keras.layers.Layer):
    """T's first layer: the coarse-to-fine block matching of :func:`dgan.core.matching.match`,
    (moving, fixed) -> phi; no weights, no gradient.

    :param passes: ((factor, radius), ...), applied in order, each on the moving image warped
        by the previous passes
    """

    def __init__(self, passes, lg_window=MATCHING_LG_WINDOW, window=MATCHING_WINDOW,
                 smoothing=MATCHING_SMOOTHING, temperature=MATCHING_TEMPERATURE, **kwargs):
        kwargs["trainable"] = False  # no weights; also when rebuilt from its config
        super().__init__(**kwargs)
        self.passes = tuple((int(f), int(r)) for f, r in passes)
        if not self.passes:
            raise ValueError("BlockMatching needs at least one (factor, radius) pass")
        for factor, radius in self.passes:
            if factor < 1 or factor & (factor - 1) or radius < 1:
                raise ValueError(f"a matching pass needs a power-of-two factor and a radius >= 1, "
                                 f"got ({factor}, {radius})")
        self.lg_window, self.window = int(lg_window), int(window)
        self.smoothing, self.temperature = int(smoothing), float(temperature)

    @tf.autograph.experimental.do_not_convert  # no Python control flow on tensors: converting
    def call(self, inputs, training=None):  # it cost seconds per build of T in each process
        del training  # the same in training and inference (Keras passes it: the decorator
        moving, fixed = (tf.stop_gradient(x) for x in inputs)  # hides call's signature)
        return tf.stop_gradient(matching.match(moving, fixed, self.passes, None,
                                               self.lg_window, self.window, self.smoothing,
                                               self.temperature))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (3,)

    def get_config(self):
        return {**super().get_config(), "passes": [list(p) for p in self.passes],
                "lg_window": self.lg_window, "window": self.window,
                "smoothing": self.smoothing, "temperature": self.temperature}


class SpatialTransformer(vxm.layers.SpatialTransformer):
    """VoxelMorph's ``SpatialTransformer`` (its arithmetic, settings and saved form), its ``call``
    run as written instead of converted by autograph: it has no Python control flow on tensors,
    and converting VoxelMorph's and neurite's warp code cost about a second per layer each time
    T was built, three layers per T."""

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):  # Keras passes training: the decorator hides the
        del training  # signature; the warp is the same in training and inference
        return super().call(inputs)


def _unet(inputs, features, name, upsample_skips=0, model_inputs=None):
    """VoxelMorph's U-Net over the channel-concatenation of ``inputs``; returns its output tensor
    (at 1 / 2 ** upsample_skips of the input resolution). ``inputs`` may be tensors computed
    from ``model_inputs`` (the Keras inputs they depend on; default: ``inputs`` themselves)."""
    feeder = keras.Model(list(model_inputs or inputs), list(inputs), name=f"{name}_inputs")
    encoder, decoder = features
    unet = vxm.networks.Unet(input_model=feeder, nb_features=[list(encoder), list(decoder)],
                             nb_upsample_skips=upsample_skips, name=name)
    return unet.output


def build_registration_net(config, name="registration_net", matching_input=False):
    """T: (moving F, fixed R) -> (moved F(phi), flow phi). See the module docstring.

    :param matching_input: for a T with block matching, take the matching's field phi_0 as a
        third input ``initial`` (B, X, Y, Z, 3), voxels, instead of computing it: the same
        weights (the matching has none), for a caller that has computed phi_0 already (the
        registrar scores it as a start field of its own), so that it is not computed, and traced,
        twice
    """
    moving = keras.Input((*config.shape, 1), name="moving")
    fixed = keras.Input((*config.shape, 1), name="fixed")
    inputs = {"moving": moving, "fixed": fixed}
    source, initial = moving, None
    if config.matching:  # the U-Net sees F warped by the block-matching field phi_0
        if matching_input:
            initial = inputs["initial"] = keras.Input((*config.shape, 3), name="initial")
        else:
            initial = BlockMatching(config.matching, name="matching")([moving, fixed])
        source = SpatialTransformer(interp_method="linear", indexing="ij",
                                    name="matched")([moving, initial])
    # two inputs into the U-Net, so VoxelMorph concatenates them
    skips = config.flow_resolution.bit_length() - 1
    features = _unet([source, fixed], config.t_features, f"{name}_unet", upsample_skips=skips,
                     model_inputs=list(inputs.values()))
    init = keras.initializers.RandomNormal(mean=0.0, stddev=1e-5)
    field_name = "velocity" if config.int_steps > 0 else "flow"
    if initial is not None:
        field_name = f"residual_{field_name}"
    field = keras.layers.Conv3D(
        3, 3, padding="same", kernel_initializer=init,
        name=f"{field_name}_coarse" if skips else field_name,
    )(features)
    if skips:  # resize to full resolution, scaling the displacements (voxels) with it
        field = vxm.layers.RescaleTransform(config.flow_resolution, name=field_name)(field)
    flow_name = "flow" if initial is None else "residual_flow"
    if config.int_steps > 0:
        residual = vxm.layers.VecInt(method="ss", int_steps=config.int_steps, name=flow_name)(field)
    else:
        residual = field
    if initial is None:
        flow = residual
    else:  # phi = phi_0 then the residual r: phi(p) = r(p) + phi_0(p + r(p))
        at_residual = SpatialTransformer(interp_method="linear", indexing="ij",
                                         name="initial_at_residual")([initial, residual])
        flow = keras.layers.Add(name="flow")([residual, at_residual])
    moved = SpatialTransformer(interp_method="linear", indexing="ij", name="moved")(
        [moving, flow]
    )
    return keras.Model(inputs, {"moved": moved, "flow": flow}, name=name)


def training_view(net):
    """T (from :func:`build_registration_net`) with a third output for training, ``residual``:
    the U-Net's residual r when T has block matching (layer ``residual_flow``), else phi itself.
    The view shares T's layers and weights; T itself (what is saved and served) is unchanged."""
    names = {layer.name for layer in net.layers}
    residual = "residual_flow" if "residual_flow" in names else "flow"
    return keras.Model(net.inputs, {"moved": net.get_layer("moved").output,
                                    "flow": net.get_layer("flow").output,
                                    "residual": net.get_layer(residual).output},
                       name=f"{net.name}_training_view")


def build_generator(config, name="generator"):
    """G: F(phi) -> F'(phi), the moved image rendered in the fixed image's modality."""
    moved = keras.Input((*config.shape, 1), name="moved")
    encoder, decoder = config.g_features
    feeder = keras.Model(moved, moved, name=f"{name}_inputs")
    features = vxm.networks.Unet(
        input_model=feeder, nb_features=[list(encoder), list(decoder)], name=f"{name}_unet"
    ).output
    if config.g_residual:
        delta = keras.layers.Conv3D(1, 3, padding="same", kernel_initializer="zeros",
                                    name="translation_residual")(features)
        translated = keras.layers.Add(name="translated")([moved, delta])
    else:
        translated = keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid",
                                         name="translated")(features)
    return keras.Model(moved, translated, name=name)


def build_discriminator(config, name="discriminator"):
    """D: (condition F(phi), image in the fixed modality) -> PatchGAN scores (B, x', y', z', 1)."""
    condition = keras.Input((*config.shape, 1), name="condition")
    image = keras.Input((*config.shape, 1), name="image")
    x = keras.layers.Concatenate(name=f"{name}_pair")([condition, image])
    if config.d_pool > 1:
        x = keras.layers.AveragePooling3D(config.d_pool, name=f"{name}_pool")(x)
    for level in range(config.d_layers):
        x = keras.layers.Conv3D(
            config.d_features * 2**level, 4, strides=2, padding="same", name=f"{name}_conv_{level}"
        )(x)
        x = keras.layers.LeakyReLU(0.2, name=f"{name}_act_{level}")(x)
    x = keras.layers.Conv3D(
        config.d_features * 2**config.d_layers, 3, padding="same", name=f"{name}_conv_last"
    )(x)
    x = keras.layers.LeakyReLU(0.2, name=f"{name}_act_last")(x)
    scores = keras.layers.Conv3D(1, 3, padding="same", name=f"{name}_scores")(x)
    return keras.Model([condition, image], scores, name=name)


def custom_objects():
    """The non-Keras layers in T, G and D, for ``keras.models.load_model``."""
    return {
        "SpatialTransformer": SpatialTransformer,
        "VecInt": vxm.layers.VecInt,
        "RescaleTransform": vxm.layers.RescaleTransform,
        "BlockMatching": BlockMatching,
    }
