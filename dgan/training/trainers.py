"""The trainable models: Deform-GAN (Zhang et al. 2020, arXiv:2002.11430) and T alone.

Every method that :func:`dgan.training.run.train` trains is a Keras model with its own
``train_step`` and the same small interface: ``NETWORKS`` (one optimizer ``<n>_optimizer`` per
network, given to ``compile`` with the :class:`LossWeights`), ``LOSS_NAMES`` (what ``train_step``
reports), ``checkpoint_items()`` (what a checkpoint holds), ``registration_model`` (T, for
validation and the model folder) and ``generator`` (G, or None). They are :class:`DeformGAN`,
:class:`RegistrationTrainer` (T alone with L_T's terms taken on F(phi) directly) and VoxelMorph's
VxmDense (:class:`dgan.training.baselines.VxmTrainer`).

``DeformGAN``: Deform-GAN's alternating training of D, G and T.

One :meth:`DeformGAN.train_step` on a batch of unpaired (F = moving, R = fixed) volumes:

1. D, with T and G frozen: minimise the least-squares GAN loss telling the real pair
   (F(phi), R) from the generated pair (F(phi), F'(phi)).
2. G, with T and D frozen: minimise
   ``L_G = L_adv(D(F(phi), F'(phi))) + mu * (1 - L_LG(F'(phi), F(phi))) + lambda * L1(F'(phi), R)``.
3. T, with G and D frozen (gradients flow through G into T, but only T changes): minimise
   ``L_T = w * (1 - L_LCC(R, F'(phi))) + beta * (1 - L_LG(R, F(phi))) + alpha * sum |grad phi|^2``
   where w = ``w_lcc`` (1 in the paper), or ramps up from 0 to it over ``lcc_warmup`` steps.

``LossWeights.translate`` = ``"fixed"`` turns the translation round: G renders R in the moving
modality (R' = G(R); D tells (R, F(phi)) from (R, R'); L1 and L_LG compare R' with F(phi) and R)
and T's term is L_LCC(R', F(phi)).

This is the paper's objective with each similarity S written as the loss 1 - S (S in [0, 1]),
which changes no gradient. Each loss is computed per example and averaged over the *global*
batch with ``tf.nn.compute_average_loss``, so the step gives the same update on one device and
under ``tf.distribute`` strategies.
"""

from dataclasses import asdict, dataclass

from ..compat import keras, tf, vxm
from ..core import losses
from ..core.losses import SMOOTHED_FIELDS
from ..core.networks import (build_discriminator, build_generator, build_registration_net,
                             training_view)


#: What :attr:`LossWeights.translate` may name.
TRANSLATED_IMAGES = ("moved", "moving", "fixed")
#: What :attr:`LossWeights.lg_reference` may name.
LG_REFERENCES = ("fixed", "translated")


@dataclass(frozen=True)
class LossWeights:
    """The loss configuration of every method: the paper's weights and window sizes, and
    VoxelMorph's for the VxmDense baseline.

    :param alpha: weight of the smoothness term sum |grad phi|^2 in L_T. The sum runs over all 9
        derivatives dphi_c/dx_d, where VoxelMorph's ``Grad('l2')`` averages them, so alpha = 1 is
        VoxelMorph's lambda = 9 and VoxelMorph's lambda = 1 (its advice for NCC) is alpha = 1/9
    :param beta: weight of the local-gradient term L_LG(R, F(phi)) in L_T
    :param mu: weight of the local-gradient term L_LG(F'(phi), F(phi)) in L_G
    :param lam: lambda, weight of L1(F'(phi), R) in L_G
    :param lg_window: n, the local-gradient neighbourhood (n^3 voxels); 7 is the paper's best
    :param lcc_window: the local cross-correlation window
    :param lcc_warmup: T's L_LCC(R, F'(phi)) term is weighted min(1, step / lcc_warmup): while G
        is untrained, F'(phi) is noise and so is the gradient it sends into T; the
        modality-independent L_LG term guides T meanwhile. 0 (the paper) gives weight 1 throughout.
    :param w_lcc: weight of the L_LCC term in L_T (Deform-GAN: L_LCC(R, F'(phi)); T alone:
        L_LCC(R, F(phi))); 1 in the paper, 0 leaves T with L_LG and smoothness
    :param vxm_lambda: VoxelMorph's lambda in ``-MI(R, F(phi)) + lambda * Grad_l2(phi)``
        (the VxmDense baseline only)
    :param mi_bins: histogram bins of VoxelMorph's soft mutual information (VxmDense only)
    :param smooth: the field the smoothness term acts on when T has block matching
        (:mod:`dgan.core.matching`): ``"residual"``, the U-Net's residual r alone, or ``"flow"``,
        the composed phi (the paper's term, on T's whole field). phi_0 is the matching's own
        smoothed estimate and gets no gradient, so a penalty on phi's roughness can only be lowered
        by an r that undoes phi_0 (docs/notes/training-log.md). Without matching both are phi.
    :param translate: the image G renders for T's L_LCC term (Deform-GAN only): ``"moved"``, the
        paper's F'(phi) = G(F(phi)), so T's gradient passes through G; or ``"moving"``, G(F) warped
        by phi, equal for a smooth phi since G is convolutional (as refinement does,
        :mod:`dgan.registration.refine`), so T's gradient passes through the warp alone and T meets
        a mono-modal L_LCC term. G and D train on F(phi) either way. Or ``"fixed"``: the other
        direction, G renders R in the moving modality (G: R -> R', D tells (R, F(phi)) from (R, R'),
        G's terms are L_LG(R', R) and L1(R', F(phi))) and T's term is L_LCC(R', F(phi)), whose
        gradient passes through the warp alone (docs/notes/training-log.md, entry 18: a T2 -> T1 map
        is a function of the voxel, T1 -> T2 is not).
    :param lg_reference: the image T's L_LG term compares F(phi) with: ``"fixed"``, R (the
        paper's), or ``"translated"``, R' = G(R) (with ``translate = "fixed"`` only), so that
        both of T's similarity terms compare images of the moving modality
    """

    alpha: float = 1.0
    beta: float = 1.0
    mu: float = 1.0
    lam: float = 10.0
    lg_window: int = losses.DEFAULT_LG_WINDOW
    lcc_window: int = losses.DEFAULT_LCC_WINDOW
    lcc_warmup: int = 0
    w_lcc: float = 1.0
    vxm_lambda: float = 1.0
    mi_bins: int = 16
    smooth: str = "residual"
    translate: str = "moved"
    lg_reference: str = "fixed"

    def __post_init__(self):
        if self.smooth not in SMOOTHED_FIELDS:
            raise ValueError(f"smooth must be one of {', '.join(SMOOTHED_FIELDS)}, "
                             f"got {self.smooth!r}")
        if self.translate not in TRANSLATED_IMAGES:
            raise ValueError(f"translate must be one of {', '.join(TRANSLATED_IMAGES)}, "
                             f"got {self.translate!r}")
        if self.lg_reference not in LG_REFERENCES:
            raise ValueError(f"lg_reference must be one of {', '.join(LG_REFERENCES)}, "
                             f"got {self.lg_reference!r}")
        if self.lg_reference == "translated" and self.translate != "fixed":
            raise ValueError("lg_reference 'translated' needs translate 'fixed' (G renders R)")

    def to_dict(self):
        return asdict(self)


#: The names under which train_step and test_step report each loss term.
LOSS_NAMES = (
    "d_loss",
    "g_loss",
    "g_adv",
    "g_lg",
    "g_l1",
    "t_loss",
    "t_lcc",
    "t_lg",
    "t_smooth",
)


class _TrainableModel(keras.Model):
    """What every trainable model shares: one ``keras.metrics.Mean`` tracker per loss term of
    ``LOSS_NAMES``, reported by ``train_step`` and ``test_step``."""

    LOSS_NAMES = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.LOSS_NAMES}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _training_view(self, moving, fixed, training):
        """T's outputs ``moved`` and ``flow`` and the field its smoothness term acts on,
        ``residual`` (:func:`dgan.core.networks.training_view`; built once)."""
        if getattr(self, "_view", None) is None:
            self._view = training_view(self.registration_net)
        return self._view({"moving": moving, "fixed": fixed}, training=training)

    def _report(self, terms):
        """Each tracker takes its per-example term (shape (B,)); the running means."""
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}


class DeformGAN(_TrainableModel):
    """Deform-GAN: the registration network T, the generator G and the discriminator D.

    ``compile(t_optimizer, g_optimizer, d_optimizer, weights)``; ``train_step`` reports
    :data:`LOSS_NAMES`.

    Calling the model (and so ``predict``) runs T alone: ``{"moving", "fixed"}`` ->
    ``{"moved", "flow"}``. :attr:`registration_model` is T itself, for export.

    :param registration_net: T, from :func:`dgan.core.networks.build_registration_net`
    :param generator: G, from :func:`dgan.core.networks.build_generator`
    :param discriminator: D, from :func:`dgan.core.networks.build_discriminator`
    """

    def __init__(self, registration_net, generator, discriminator, **kwargs):
        kwargs.setdefault("name", "deform_gan")
        super().__init__(**kwargs)
        self.registration_net = registration_net
        self.generator = generator
        self.discriminator = discriminator
        # G(F) warped by phi (LossWeights.translate "moving"), as T warps F
        self._warp = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij",
                                                   name="translation_at_flow")

    #: The networks, each with its optimizer ``<name>_optimizer``: T, G, D.
    NETWORKS = ("t", "g", "d")
    LOSS_NAMES = LOSS_NAMES

    @classmethod
    def from_config_object(cls, network_config):
        """Build T, G and D from a :class:`dgan.core.networks.NetworkConfig`."""
        return cls(
            build_registration_net(network_config),
            build_generator(network_config),
            build_discriminator(network_config),
        )

    @property
    def registration_model(self):
        """T alone: ``{"moving", "fixed"}`` -> ``{"moved", "flow"}``."""
        return self.registration_net

    def compile(self, t_optimizer, g_optimizer, d_optimizer, weights=None, **kwargs):
        """One optimizer per network; ``weights`` is a :class:`LossWeights` (the paper's
        symbols)."""
        super().compile(**kwargs)
        self.t_optimizer = t_optimizer
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.loss_config = weights or LossWeights()
        # create the optimizers' slots now, outside any replica context, so that a checkpoint
        # restores them before the first step
        for optimizer, net in self._pairs():
            optimizer.build(net.trainable_variables)

    def checkpoint_items(self):
        """What a checkpoint holds: the three networks and their optimizers."""
        return {"registration_net": self.registration_net, "generator": self.generator,
                "discriminator": self.discriminator, "t_optimizer": self.t_optimizer,
                "g_optimizer": self.g_optimizer, "d_optimizer": self.d_optimizer}

    def _pairs(self):
        return (
            (self.d_optimizer, self.discriminator),
            (self.g_optimizer, self.generator),
            (self.t_optimizer, self.registration_net),
        )

    def call(self, inputs, training=False):
        return self.registration_net(inputs, training=training)

    # --- the loss terms, per example -------------------------------------------------------

    def translation_pair(self, moved, fixed):
        """(what G translates, what it should look like): (F(phi), R), or (R, F(phi)) when
        :attr:`LossWeights.translate` is ``"fixed"``."""
        return (fixed, moved) if self.loss_config.translate == "fixed" else (moved, fixed)

    def discriminator_terms(self, moved, translated, fixed, training):
        source, target = self.translation_pair(moved, fixed)
        real = self.discriminator([source, target], training=training)
        fake = self.discriminator([source, translated], training=training)
        return {"d_loss": losses.discriminator_loss(real, fake)}

    def generator_terms(self, moved, fixed, training):
        w = self.loss_config
        source, target = self.translation_pair(moved, fixed)
        translated = self.generator(source, training=training)
        fake = self.discriminator([source, translated], training=False)
        terms = {
            "g_adv": losses.generator_adversarial_loss(fake),
            "g_lg": 1.0 - losses.local_gradient_similarity(translated, source, w.lg_window),
            "g_l1": losses.l1(translated, target),
        }
        terms["g_loss"] = terms["g_adv"] + w.mu * terms["g_lg"] + w.lam * terms["g_l1"]
        return terms

    def registration_terms(self, moving, fixed, training):
        w = self.loss_config
        out = self._training_view(moving, fixed, training)
        moved = out["moved"]
        if w.translate == "fixed":  # R' = G(R) against F(phi)
            translated = self.generator(fixed, training=False)
            lcc = losses.local_cross_correlation(translated, moved, w.lcc_window)
        elif w.translate == "moving":
            translated = self._warp([self.generator(moving, training=False), out["flow"]])
            lcc = losses.local_cross_correlation(fixed, translated, w.lcc_window)
        else:
            translated = self.generator(moved, training=False)
            lcc = losses.local_cross_correlation(fixed, translated, w.lcc_window)
        terms = {
            "t_lcc": 1.0 - lcc,
            "t_lg": 1.0 - losses.local_gradient_similarity(
                translated if w.lg_reference == "translated" else fixed, moved, w.lg_window),
            "t_smooth": losses.smoothness(out[w.smooth]),
        }
        lcc_weight = self.lcc_weight()
        terms["t_loss"] = (lcc_weight * terms["t_lcc"] + w.beta * terms["t_lg"]
                           + w.alpha * terms["t_smooth"])
        return terms, moved, translated

    def lcc_weight(self):
        """The weight of L_LCC in L_T at the current step (see :class:`LossWeights`)."""
        w_lcc, warmup = self.loss_config.w_lcc, self.loss_config.lcc_warmup
        if warmup <= 0:
            return w_lcc
        step = tf.cast(self.t_optimizer.iterations, tf.float32)
        return w_lcc * tf.minimum(1.0, step / float(warmup))

    # --- the three updates -----------------------------------------------------------------

    def _update(self, tape, loss, optimizer, net):
        gradients = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(gradients, net.trainable_variables))

    def warp_moving(self, moving, fixed):
        """F(phi) from the current T, without training it."""
        return self.registration_net({"moving": moving, "fixed": fixed}, training=False)["moved"]

    def train_d(self, moved, fixed):
        """Step 1: update D only. ``moved``: F(phi) from the current, frozen T."""
        translated = self.generator(self.translation_pair(moved, fixed)[0], training=False)
        with tf.GradientTape() as tape:
            terms = self.discriminator_terms(moved, translated, fixed, training=True)
            loss = tf.nn.compute_average_loss(terms["d_loss"])
        self._update(tape, loss, self.d_optimizer, self.discriminator)
        return terms

    def train_g(self, moved, fixed):
        """Step 2: update G only. ``moved``: F(phi) from the current, frozen T."""
        with tf.GradientTape() as tape:
            terms = self.generator_terms(moved, fixed, training=True)
            loss = tf.nn.compute_average_loss(terms["g_loss"])
        self._update(tape, loss, self.g_optimizer, self.generator)
        return terms

    def train_t(self, moving, fixed):
        """Step 3: update T only."""
        with tf.GradientTape() as tape:
            terms, _, _ = self.registration_terms(moving, fixed, training=True)
            loss = tf.nn.compute_average_loss(terms["t_loss"])
        self._update(tape, loss, self.t_optimizer, self.registration_net)
        return terms

    def train_step(self, data):
        moving, fixed = data["moving"], data["fixed"]
        # T is frozen during the D and G updates, so F(phi) is the same for both: compute it once
        moved = self.warp_moving(moving, fixed)
        terms = {}
        terms.update(self.train_d(moved, fixed))
        terms.update(self.train_g(moved, fixed))
        terms.update(self.train_t(moving, fixed))
        return self._report(terms)

    def test_step(self, data):
        moving, fixed = data["moving"], data["fixed"]
        terms, moved, translated = self.registration_terms(moving, fixed, training=False)
        terms.update(self.generator_terms(moved, fixed, training=False))
        terms.update(self.discriminator_terms(moved, translated, fixed, training=False))
        return self._report(terms)


class RegistrationTrainer(_TrainableModel):
    """T alone (no G, no D), trained with L_T's terms taken on the moved image itself:

    ``L = w_lcc * (1 - L_LCC(R, F(phi))) + beta * (1 - L_LG(R, F(phi))) + alpha * sum |grad phi|^2``

    with the weights and windows of :class:`LossWeights` (``w_lcc = 0``: the local-gradient term
    and smoothness alone). ``compile(t_optimizer, weights)``; ``train_step`` reports
    :attr:`LOSS_NAMES`. Subclasses change the network (:meth:`warp`) and the loss
    (:meth:`registration_terms`), as :class:`dgan.training.baselines.VxmTrainer` does.

    :param registration_net: the network trained, T from
        :func:`dgan.core.networks.build_registration_net` here
    """

    NETWORKS = ("t",)
    LOSS_NAMES = ("t_loss", "t_lcc", "t_lg", "t_smooth")
    generator = None

    def __init__(self, registration_net, **kwargs):
        kwargs.setdefault("name", "registration_trainer")
        super().__init__(**kwargs)
        self.registration_net = registration_net

    @classmethod
    def from_config_object(cls, network_config):
        """T built from a :class:`dgan.core.networks.NetworkConfig`."""
        return cls(build_registration_net(network_config))

    @property
    def registration_model(self):
        """T: ``{"moving", "fixed"}`` -> ``{"moved", "flow"}``."""
        return self.registration_net

    def compile(self, t_optimizer, weights=None, **kwargs):
        """One optimizer; ``weights`` is a :class:`LossWeights`."""
        super().compile(**kwargs)
        self.t_optimizer = t_optimizer
        self.loss_config = weights or LossWeights()
        # the optimizer's slots now, outside any replica context (see DeformGAN.compile)
        t_optimizer.build(self.registration_net.trainable_variables)

    def checkpoint_items(self):
        """What a checkpoint holds: the network and its optimizer."""
        return {"registration_net": self.registration_net, "t_optimizer": self.t_optimizer}

    def call(self, inputs, training=False):
        moved, flow = self.warp(inputs["moving"], inputs["fixed"], training=training)
        return {"moved": moved, "flow": flow}

    def warp(self, moving, fixed, training):
        """(F(phi) (B, X, Y, Z, 1), phi (B, X, Y, Z, 3)) from the trained network."""
        out = self.registration_net({"moving": moving, "fixed": fixed}, training=training)
        return out["moved"], out["flow"]

    def registration_terms(self, moving, fixed, training):
        """Per-example loss terms, each shape = (B,); ``"t_loss"`` is the total."""
        w = self.loss_config
        out = self._training_view(moving, fixed, training)
        moved = out["moved"]
        terms = {
            "t_lcc": 1.0 - losses.local_cross_correlation(fixed, moved, w.lcc_window),
            "t_lg": 1.0 - losses.local_gradient_similarity(fixed, moved, w.lg_window),
            "t_smooth": losses.smoothness(out[w.smooth]),
        }
        terms["t_loss"] = (w.w_lcc * terms["t_lcc"] + w.beta * terms["t_lg"]
                           + w.alpha * terms["t_smooth"])
        return terms

    def train_step(self, data):
        variables = self.registration_net.trainable_variables
        with tf.GradientTape() as tape:
            terms = self.registration_terms(data["moving"], data["fixed"], training=True)
            loss = tf.nn.compute_average_loss(terms["t_loss"])
        gradients = tape.gradient(loss, variables)
        self.t_optimizer.apply_gradients(zip(gradients, variables))
        return self._report(terms)

    def test_step(self, data):
        return self._report(self.registration_terms(data["moving"], data["fixed"], training=False))
