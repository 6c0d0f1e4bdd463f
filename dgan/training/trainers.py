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
   where w = ``w_lcc`` (1 in the paper).

This is the paper's objective with each similarity S written as the loss 1 - S (S in [0, 1]),
which changes no gradient. Each loss is computed per example and averaged over the *global*
batch with ``tf.nn.compute_average_loss``, so the step gives the same update on one device and
under ``tf.distribute`` strategies.
"""


from ..compat import keras, tf
from ..core import losses
from .settings import LossWeights
from ..core.networks import (build_discriminator, build_generator, build_registration_net,
                             training_view)


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

    def _t_terms(self, fixed, moved, lcc_image, smoothed):
        """L_T's terms per example, each shape = (B,): ``t_lcc`` = 1 - L_LCC(R, ``lcc_image``),
        ``t_lg`` = 1 - L_LG(R, F(phi)), ``t_smooth`` = sum |grad ``smoothed``|^2, and ``t_loss``,
        their sum weighted by w_lcc, beta and alpha (:class:`LossWeights`)."""
        w = self.loss_config
        terms = {
            "t_lcc": 1.0 - losses.local_cross_correlation(fixed, lcc_image, w.lcc_window),
            "t_lg": 1.0 - losses.local_gradient_similarity(fixed, moved, w.lg_window),
            "t_smooth": losses.smoothness(smoothed),
        }
        terms["t_loss"] = (w.w_lcc * terms["t_lcc"] + w.beta * terms["t_lg"]
                           + w.alpha * terms["t_smooth"])
        return terms

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

    def discriminator_terms(self, moved, translated, fixed, training):
        real = self.discriminator([moved, fixed], training=training)
        fake = self.discriminator([moved, translated], training=training)
        return {"d_loss": losses.discriminator_loss(real, fake)}

    def generator_terms(self, moved, fixed, training):
        w = self.loss_config
        translated = self.generator(moved, training=training)
        fake = self.discriminator([moved, translated], training=False)
        terms = {
            "g_adv": losses.generator_adversarial_loss(fake),
            "g_lg": 1.0 - losses.local_gradient_similarity(translated, moved, w.lg_window),
            "g_l1": losses.l1(translated, fixed),
        }
        terms["g_loss"] = terms["g_adv"] + w.mu * terms["g_lg"] + w.lam * terms["g_l1"]
        return terms

    def registration_terms(self, moving, fixed, training):
        """L_T's terms (L_LCC through G) per example, F(phi) and F'(phi) = G(F(phi))."""
        return self._terms_of(self._training_view(moving, fixed, training), fixed)

    def _terms_of(self, out, fixed):
        """:meth:`registration_terms` from T's outputs ``out`` (:meth:`_training_view`), G
        frozen."""
        moved = out["moved"]
        translated = self.generator(moved, training=False)
        terms = self._t_terms(fixed, moved, translated, out[self.loss_config.smooth])
        return terms, moved, translated

    # --- the three updates -----------------------------------------------------------------

    def _update(self, tape, loss, optimizer, net):
        gradients = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(gradients, net.trainable_variables))

    def train_d(self, moved, fixed):
        """Step 1: update D only. ``moved``: F(phi) from the current, frozen T."""
        translated = self.generator(moved, training=False)
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

    def train_t(self, moving, fixed, tape=None, out=None):
        """Step 3: update T only. ``tape`` and ``out``: T's forward pass
        (:meth:`_training_view`) already recorded on ``tape``, or None: run here."""
        if tape is None:
            tape = tf.GradientTape()
            with tape:
                out = self._training_view(moving, fixed, training=True)
        with tape:  # G as updated in step 2, frozen
            terms, _, _ = self._terms_of(out, fixed)
            loss = tf.nn.compute_average_loss(terms["t_loss"])
        self._update(tape, loss, self.t_optimizer, self.registration_net)
        return terms

    def train_step(self, data):
        moving, fixed = data["moving"], data["fixed"]
        # T's forward pass once a step, recorded for its own update in step 3: T is frozen while
        # D and G train, so the F(phi) they see is the one T's update differentiates; T's block
        # matching and U-Net run once a step, not twice
        t_tape = tf.GradientTape()
        with t_tape:
            out = self._training_view(moving, fixed, training=True)
        moved = tf.stop_gradient(out["moved"])
        terms = {}
        terms.update(self.train_d(moved, fixed))
        terms.update(self.train_g(moved, fixed))
        terms.update(self.train_t(moving, fixed, tape=t_tape, out=out))
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
        out = self._training_view(moving, fixed, training)
        return self._t_terms(fixed, out["moved"], out["moved"], out[self.loss_config.smooth])

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
