"""The choices and defaults of registration that ``dgan-register`` shows, free of TensorFlow.

``dgan-register --help`` quotes these values and its parser checks the choices before TensorFlow
starts (issue 30.5: the help answers in under 2 s), so they cannot be read from the modules that
own them, which import TensorFlow. Each is a copy of its owner's value, named in its comment;
``tests/test_cli_register.py`` checks that every copy equals its owner. This module imports
nothing.
"""

#: :data:`dgan.training.trainers.SMOOTHED_FIELDS`: what the smoothness term may act on, the residual
#: (the change made to a starting field) or the whole flow.
SMOOTHED_FIELDS = ("residual", "flow")

#: :data:`dgan.registration.affine.AUTO_THRESHOLD_MM`: ``--affine auto`` applies the estimated
#: affine only when it moves the fixed scan's foreground by more than this RMS distance (mm).
AUTO_THRESHOLD_MM = 2.0

#: :data:`dgan.registration.registrar.DEFAULT_REFINE_STEPS`: refinement iterations per level by
#: default.
DEFAULT_REFINE_STEPS = 25

#: Defaults of :class:`dgan.registration.refine.RefineConfig` (its docstring says how they were
#: chosen): ``levels``, ``alpha``, ``smooth`` and ``lcc_stride``.
REFINE_LEVELS = (4, 2, 1)
REFINE_ALPHA = 1.0
REFINE_SMOOTH = "residual"
REFINE_LCC_STRIDE = 2

#: :data:`dgan.registration.registrar.START_CHOICES`:
#: :class:`dgan.registration.registrar.Registrar`'s ``start`` choices.
START_CHOICES = ("auto", "network", "identity")

#: :data:`dgan.registration.registrar.AFFINE_MODES`: the affine stage's modes.
AFFINE_MODES = ("auto", "on", "off")

#: :data:`dgan.registration.itk.ITK_SUFFIXES`: file endings of ``--out-affine`` (ITK text
#: transforms).
ITK_SUFFIXES = (".txt", ".tfm")
