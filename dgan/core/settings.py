"""The loss terms' shared settings, free of TensorFlow: what the command lines quote in
``--help`` before TensorFlow starts, and what training and registration both read.

- the paper's window sizes and eps of the local gradient L_LG and of LCC
  (:mod:`dgan.core.losses` computes the terms);
- what the smoothness term may act on (:data:`SMOOTHED_FIELDS`);
- :func:`without_retired`: saved settings read back without those of experiments that were not
  kept (a run folder's ``config.json``, a model folder's ``dgan_model.json``).
"""

#: The paper's best neighbourhood size for the local gradient (n = 7).
DEFAULT_LG_WINDOW = 7
#: VoxelMorph's window for local cross-correlation.
DEFAULT_LCC_WINDOW = 9
#: The eps in n = v / (|v| + eps).
DEFAULT_LG_EPS = 1e-5
#: The eps in cc = cross^2 / (var_R var_F + eps).
DEFAULT_LCC_EPS = 1e-5
#: What the smoothness term may act on: the residual (the change made to a starting field, e.g.
#: the block matching's or T's) or the whole flow phi (the paper's term).
SMOOTHED_FIELDS = ("residual", "flow")
#: VoxelMorph's default U-Net features: ([encoder], [decoder]) (:mod:`dgan.core.networks`).
VXM_FEATURES = ((16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16))


def without_retired(settings, retired):
    """``settings`` (a dict, as saved) without the keys of ``retired``, a dict of the settings of
    experiments that were not kept, each with the value that is today's behaviour.

    :raises ValueError: a retired setting at another value (files written while the experiment
        ran describe something dgan no longer builds)
    """
    kept = dict(settings)
    for name, today in retired.items():
        value = kept.pop(name, today)
        if value != today:
            raise ValueError(f"{name}={value!r} was an experiment that dgan no longer runs "
                             f"(only {today!r} is read)")
    return kept


#: The passes T uses by default, (factor, radius) coarse to fine: they search up to 8 + 8 + 1 =
#: 17 voxels in all, more than a single pass or two can.
DEFAULT_PASSES = ((4, 2), (2, 2), (1, 1))

#: The block matching's local-gradient window, cost window and smoothing, and the temperature of
#: its soft arg-max (chosen on the demo's validation pairs and the brain benchmark,
#: docs/notes/training-log.md): a larger smoothing folds less, a sharper temperature follows the
#: cost's best displacement more closely (:mod:`dgan.core.matching`).
MATCHING_LG_WINDOW = 3
MATCHING_WINDOW = 5
MATCHING_SMOOTHING = 7
MATCHING_TEMPERATURE = 0.005


def parse_features(text):
    """U-Net features from the command-line form ``"16,32,32/32,32,32,16,16"`` (encoder/decoder)."""
    try:
        encoder, decoder = text.split("/")
        return [[int(f) for f in encoder.split(",")], [int(f) for f in decoder.split(",")]]
    except ValueError:
        raise ValueError(f"features must look like '16,32,32/32,32,32,16,16', got {text!r}") from None


def features_text(features):
    """The command-line form of U-Net features, ``"16,32,32/32,32,32,16,16"``
    (:func:`parse_features` reads it back)."""
    return "/".join(",".join(str(int(f)) for f in part) for part in features)


def parse_matching(text):
    """Block-matching passes from the command-line form ``"4:2,2:2,1:1"`` (factor:radius, coarse
    to fine); ``"none"`` gives no passes."""
    if text.strip().lower() == "none":
        return []
    try:
        return [[int(v) for v in item.split(":")] for item in text.split(",")]
    except ValueError:
        raise ValueError(f"matching must look like '4:2,2:2,1:1' or 'none', got {text!r}") from None
