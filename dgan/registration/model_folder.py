"""Trained Deform-GAN registration networks on disk: the dgan model folder.

Deform-GAN (Zhang et al. 2020, arXiv:2002.11430) registers with T; G renders the moved image in
the fixed modality and serves instance refinement (:mod:`dgan.registration.refine`); D only
shapes T during training. The model folder keeps T and G, written at the end of training by
:func:`save_model_folder` and read by :func:`load_model_folder` (and so by
:class:`dgan.registration.registrar.Registrar`)::

    <folder>/
      registration_net.keras   T as a Keras model file (tf_keras .keras format)
      generator.keras          G, the same way (format_version 2; absent in version 1 folders)
      dgan_model.json          {"format": "dgan-model", "format_version": 2,
                                "network": NetworkConfig.to_dict(),
                                "preprocessing": {"shape": [X, Y, Z],
                                                  "spacing": [sx, sy, sz] or null (native),
                                                  "percentiles": [0.5, 99.5],
                                                  "orientation": "RAS"}, ...}

Folders of format_version 1 (T alone) still load; their ``generator`` is None.
Loading reads the description and checks the Keras files without building a network: T and G
are built on first use, and :func:`registration_net_for_shape` builds T for the scan's shape
straight from the weights file, never at the training shape it does not need.
:mod:`dgan.registration.serving` exports T from a folder for TensorFlow Serving.

Model folders installed with dgan (package data under ``dgan/models/<name>/``, see
:func:`shipped_models`) are loaded by name wherever a folder is asked for (``--model brain``);
:func:`ship_model_folder` writes one from a training run, its description stamped with the name
and a version and the run's configuration and results kept beside it (``training.json``).

The flow is a displacement in voxels, 'ij' indexing: moved(p) = moving(p + flow(p)).
The folder is written atomically: built beside its destination and renamed into place only
when complete, so a crash never leaves a half-written model.
"""

import dataclasses
import functools
import json
import os
import shutil
import zipfile

from .. import __version__
from ..compat import keras
from ..core.networks import NetworkConfig, build_generator, build_registration_net, custom_objects
from ..data import io as dio
from ..data.preprocessing import Preprocessing
from ..errors import InputError, one_line

#: Name of the Keras model file of T inside a model folder.
MODEL_FILE = "registration_net.keras"
#: Name of the Keras model file of G inside a model folder (format_version 2).
GENERATOR_FILE = "generator.keras"
#: Name of the description file inside a model folder.
CONFIG_FILE = "dgan_model.json"
#: Value of the "format" key of :data:`CONFIG_FILE`.
FORMAT_NAME = "dgan-model"
#: Version of the model-folder format written here (2: G beside T).
FORMAT_VERSION = 2
#: Versions :func:`load_model_folder` reads (1: T alone).
READ_VERSIONS = (1, 2)
#: The flow convention, as stored in the description files.
FLOW_CONVENTION = "displacement in voxels, 'ij' indexing: moved(p) = moving(p + flow(p))"
#: The folder of the model folders installed with dgan, one sub-folder per name (package data).
SHIPPED_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "models")
#: The training run's configuration and results beside a shipped model's description.
TRAINING_FILE = "training.json"


class ModelFolder:
    """A dgan model folder: its description, with T and G built on first use and kept.

    :param path: the folder
    :param registration_net: T, a Keras model built for ``network_config.shape``; None: built from
        ``<path>/registration_net.keras`` on first use of :attr:`registration_net`
    :param network_config: :class:`dgan.core.networks.NetworkConfig`
    :param preprocessing: :class:`dgan.data.preprocessing.Preprocessing`
    :param description: the parsed ``dgan_model.json``
    :param generator: G, a Keras model ``moved`` (B, X, Y, Z, 1) -> F'(phi); None: built on first
        use from the file that ``description["files"]["generator"]`` names, or no G (a folder
        written before G was kept, format_version 1, or a description that names none)
    """

    def __init__(self, path, registration_net, network_config, preprocessing, description,
                 generator=None):
        self.path = path
        self.network_config = network_config
        self.preprocessing = preprocessing
        self.description = description
        self._registration_net = registration_net
        self._generator = generator
        self._generator_file = ((description or {}).get("files") or {}).get("generator")

    def __repr__(self):
        return f"ModelFolder(path={self.path!r}, network_config={self.network_config!r})"

    @property
    def registration_net(self):
        """T for ``network_config.shape``, loaded from the folder on first use.

        :raises InputError: the file cannot be loaded or is not T for that shape
        """
        if self._registration_net is None:
            net = _load_keras(self.path, MODEL_FILE)
            _check_registration_net(self, _output_names(net), _spatial_input_shape(net, "moving"))
            self._registration_net = net
        return self._registration_net

    @property
    def generator(self):
        """G for ``network_config.shape``, loaded from the folder on first use, or None.

        :raises InputError: the file cannot be loaded or is not G for that shape
        """
        if self._generator is None and self._generator_file is not None:
            net = _load_keras(self.path, self._generator_file)
            _check_generator(self, self._generator_file, _first_input_shape(net))
            self._generator = net
        return self._generator

    @property
    def label(self):
        """How messages name the model: ``"brain v1 (shipped with dgan)"`` for a shipped model,
        ``"brain v1 (<folder>)"`` for a copy of one elsewhere, else the folder's path."""
        name, version = self.description.get("name"), self.description.get("version")
        if name is None:
            return self.path
        shipped = os.path.dirname(os.path.abspath(self.path)) == SHIPPED_FOLDER
        return f"{name} v{version} ({'shipped with dgan' if shipped else self.path})"

    @property
    def has_generator(self):
        """Whether the folder has G, without building it."""
        return self._generator is not None or self._generator_file is not None

    def _built(self, kind):
        """T (``kind`` "registration_net") or G ("generator") if built or given, else None."""
        return self._registration_net if kind == "registration_net" else self._generator

    def _file(self, kind):
        """The name of the Keras file of T or G inside the folder."""
        return MODEL_FILE if kind == "registration_net" else self._generator_file


# --- the model folder ---------------------------------------------------------------------------


def _as_preprocessing(preprocessing, network_config):
    if preprocessing is None:
        return Preprocessing(shape=network_config.shape)
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    return Preprocessing.from_dict(preprocessing)


def _description(network_config, preprocessing, with_generator):
    files = {"registration_net": MODEL_FILE}
    if with_generator:
        files["generator"] = GENERATOR_FILE
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dgan_version": __version__,
        "network": network_config.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "files": files,
        "flow": FLOW_CONVENTION,
    }


def _spatial_input_shape(net, name):
    """The spatial shape (X, Y, Z) of input ``name`` of a Keras model, or None."""
    tensor = dict(zip(getattr(net, "input_names", None) or [], net.inputs)).get(name)
    if tensor is None or len(tensor.shape) != 5 or None in tuple(tensor.shape)[1:4]:
        return None
    return tuple(int(s) for s in tuple(tensor.shape)[1:4])


def _first_input_shape(net):
    shape = tuple(net.inputs[0].shape)
    return tuple(int(s) for s in shape[1:4]) if len(shape) == 5 and None not in shape[1:4] else None


def save_model_folder(registration_net, network_config, preprocessing, path, *, generator=None,
                      refinement=None, network_spacing=None):
    """Write T (and G) and their description as a dgan model folder, atomically.

    The folder is built under a temporary name beside ``path`` and renamed into place when
    complete; an existing folder at ``path`` is replaced only then.

    :param registration_net: T, from :func:`dgan.core.networks.build_registration_net` (e.g.
        ``DeformGAN.registration_model`` after training)
    :param network_config: the :class:`~dgan.core.networks.NetworkConfig` T was built from
    :param preprocessing: :class:`Preprocessing` or its dict (``shape``, ``spacing`` in mm or
        None, ``percentiles``); None: ``network_config.shape``, native spacing, (0.5, 99.5)
    :param path: the model folder to write
    :param generator: G, from :func:`dgan.core.networks.build_generator` (e.g.
        ``DeformGAN.generator``), kept for instance refinement; None writes T alone
    :param refinement: the :class:`dgan.registration.settings.RefineConfig` settings (a dict) that
        suit this model (e.g. its training windows), used by
        :class:`dgan.registration.registrar.Registrar` unless the caller gives its own; None:
        refinement's defaults
    :param network_spacing: the voxel size in mm (one or three) at which
        :class:`dgan.registration.registrar.Registrar` runs T by default (``registration`` in the
        description); None: the training spacing
    :return: ``path`` as a string
    """
    preprocessing = _as_preprocessing(preprocessing, network_config)
    shape = _spatial_input_shape(registration_net, "moving")
    if shape is not None and shape != network_config.shape:
        raise ValueError(
            f"registration_net takes volumes of shape {shape}, but network_config says "
            f"{network_config.shape}"
        )
    if generator is not None:
        g_shape = _spatial_input_shape(generator, "moved") or _first_input_shape(generator)
        if g_shape != network_config.shape:
            raise ValueError(f"generator takes volumes of shape {g_shape}, but network_config "
                             f"says {network_config.shape}")
    description = _description(network_config, preprocessing, generator is not None)
    if refinement is not None:
        description["refinement"] = dict(refinement)
    if network_spacing is not None:
        spacing = dataclasses.replace(preprocessing, spacing=network_spacing).spacing  # checked
        description["registration"] = {"network_spacing": list(spacing)}
    path = os.fspath(path)
    with dio.atomic_write(path) as tmp:
        os.makedirs(tmp)
        registration_net.save(os.path.join(tmp, MODEL_FILE))
        if generator is not None:
            generator.save(os.path.join(tmp, GENERATOR_FILE))
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(description, f, indent=2)
            f.write("\n")
    return path


def _read_description(path):
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise InputError(f"not a dgan model folder: {CONFIG_FILE} is missing", path)
    try:
        with open(config_path, encoding="utf-8") as f:
            description = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"not a dgan model folder: {CONFIG_FILE} is not valid JSON ({error})", path
        ) from error
    if not isinstance(description, dict) or description.get("format") != FORMAT_NAME:
        raise InputError(
            f"not a dgan model folder: {CONFIG_FILE} is not a dgan model description", path
        )
    version = description.get("format_version")
    if version not in READ_VERSIONS:
        raise InputError(
            f"{CONFIG_FILE} has format_version {version!r}; this dgan reads "
            f"{' or '.join(map(str, READ_VERSIONS))}", path
        )
    try:
        network_config = NetworkConfig.from_dict(description["network"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{CONFIG_FILE}: invalid or missing 'network' ({error})", path)
    try:
        preprocessing = Preprocessing.from_dict(description["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{CONFIG_FILE}: invalid or missing 'preprocessing' ({error})", path)
    return description, network_config, preprocessing


def load_model_folder(path):
    """Read a dgan model folder written by :func:`save_model_folder`.

    Builds no network: the description and the Keras files are checked (each file an intact
    archive whose configuration is T, or G, for ``network_config.shape``); T and G are built on
    first use of :attr:`ModelFolder.registration_net` and :attr:`ModelFolder.generator`, or
    straight for another shape by :func:`registration_net_for_shape`.

    :param path: the model folder, or the name of a model shipped with dgan
        (:func:`shipped_models`; a folder of that name that exists is read instead)
    :return: :class:`ModelFolder`
    :raises InputError: ``"<folder>: <what is wrong>"`` for a missing folder, a missing, invalid
        or unsupported ``dgan_model.json``, or missing or corrupt weights
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        shipped = shipped_models()
        if path in shipped:
            path = shipped[path]
        elif os.sep in path or (os.altsep and os.altsep in path):  # a path, not a name
            raise InputError("model folder not found", path)
        else:
            names = ", ".join(sorted(shipped)) or "none installed"
            raise InputError(f"model folder not found, nor a model shipped with dgan ({names})",
                             path)
    if not os.path.isdir(path):
        raise InputError("not a dgan model folder: a file, expected a folder", path)
    description, network_config, preprocessing = _read_description(path)
    model = ModelFolder(path=path, registration_net=None, network_config=network_config,
                        preprocessing=preprocessing, description=description)
    if not os.path.isfile(os.path.join(path, MODEL_FILE)):
        raise InputError(f"not a dgan model folder: {MODEL_FILE} is missing", path)
    inputs, outputs = _inspect_keras(path, MODEL_FILE)
    _check_registration_net(model, outputs, inputs.get("moving"))
    generator_file = model._file("generator")
    if generator_file is not None:
        if not os.path.isfile(os.path.join(path, generator_file)):
            raise InputError(f"{generator_file} is missing (named in {CONFIG_FILE})", path)
        inputs, _ = _inspect_keras(path, generator_file)
        _check_generator(model, generator_file, next(iter(inputs.values()), None))
    return model


def shipped_models():
    """The model folders installed with dgan: {name: folder} for each sub-folder of
    :data:`SHIPPED_FOLDER` that holds a description (:data:`CONFIG_FILE`)."""
    if not os.path.isdir(SHIPPED_FOLDER):
        return {}
    return {name: os.path.join(SHIPPED_FOLDER, name) for name in sorted(os.listdir(SHIPPED_FOLDER))
            if not name.startswith(".")  # a folder being written (dgan.data.io.atomic_write)
            and os.path.isfile(os.path.join(SHIPPED_FOLDER, name, CONFIG_FILE))}


def ship_model_folder(source, destination, name, version, training):
    """Copy the model folder ``source`` to ``destination`` as a model to ship, atomically: its
    description gains ``name`` and ``version`` (how :attr:`ModelFolder.label` names it) and
    ``training`` is written beside it as :data:`TRAINING_FILE`.

    :param source: a model folder written by training (checked by :func:`load_model_folder`)
    :param destination: the folder to write, e.g. ``<checkout>/dgan/models/<name>``
    :param name: the name users select it by (``--model <name>``)
    :param version: a positive integer, raised whenever the weights change
    :param training: a JSON-serialisable dict: the command, the run's configuration and results
    :return: ``destination`` as a string
    """
    model = load_model_folder(source)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive integer, not {version!r}")
    description = {**model.description, "name": str(name), "version": version}
    files = [MODEL_FILE] + ([model._file("generator")] if model.has_generator else [])
    destination = os.fspath(destination)
    with dio.atomic_write(destination) as tmp:
        os.makedirs(tmp)
        for file in files:
            shutil.copyfile(os.path.join(model.path, file), os.path.join(tmp, file))
        for file, content in ((CONFIG_FILE, description), (TRAINING_FILE, training)):
            dio.write_json(os.path.join(tmp, file), content)
    return destination


#: Members of a tf_keras ``.keras`` archive: the model's configuration and its weights.
_KERAS_CONFIG = "config.json"
_KERAS_WEIGHTS = "model.weights.h5"


def _inspect_keras(folder, name):
    """The inputs and outputs of a ``.keras`` file, read from its configuration, after checking
    that the archive is intact (CRCs) and holds a configuration and weights; builds nothing.

    :return: ({input name: spatial shape (X, Y, Z) or None}, [output name, ...]), inputs in order
    :raises InputError: ``"<folder>: <name> cannot be loaded (...)"``
    """
    try:
        with zipfile.ZipFile(os.path.join(folder, name)) as archive:
            missing = sorted({_KERAS_CONFIG, _KERAS_WEIGHTS} - set(archive.namelist()))
            if missing:
                raise ValueError(f"the archive has no {' or '.join(missing)}")
            damaged = archive.testzip()
            if damaged is not None:
                raise ValueError(f"{damaged} in the archive is damaged")
            config = json.loads(archive.read(_KERAS_CONFIG))["config"]
        shapes = {layer["config"]["name"]: layer["config"].get("batch_input_shape")
                  for layer in config["layers"] if layer["class_name"] == "InputLayer"}
        inputs = _named_layers(config["input_layers"])
        inputs = {key: _spatial(shapes.get(layer)) for key, layer in inputs.items()}
        outputs = list(_named_layers(config["output_layers"]))
    except Exception as error:  # zipfile, json and missing keys: a file not written by Keras
        raise InputError(f"{name} cannot be loaded ({one_line(error)})", folder) from error
    return inputs, outputs


def _named_layers(entries):
    """{name: layer name} of a Functional config's ``input_layers`` or ``output_layers`` (a dict
    for named inputs or outputs, else a list of [layer name, node, tensor])."""
    if isinstance(entries, dict):
        return {key: entry[0] for key, entry in entries.items()}
    if entries and isinstance(entries[0], str):  # a single tensor: [layer name, node, tensor]
        entries = [entries]
    return {entry[0]: entry[0] for entry in entries}


def _spatial(batch_shape):
    """(X, Y, Z) of a 5-D (B, X, Y, Z, C) input shape, or None."""
    if batch_shape is None or len(batch_shape) != 5 or None in tuple(batch_shape)[1:4]:
        return None
    return tuple(int(s) for s in tuple(batch_shape)[1:4])


def _output_names(net):
    return list(getattr(net, "output_names", None) or [])


def _check_registration_net(model, outputs, shape):
    """Refuse T unless it outputs ``moved`` and ``flow`` and takes ``network_config.shape``."""
    if not {"moved", "flow"} <= set(outputs) or shape != model.network_config.shape:
        raise InputError(
            f"{MODEL_FILE} is not a registration network for shape {model.network_config.shape} "
            f"(outputs {sorted(outputs)}, input shape {shape})",
            model.path,
        )


def _check_generator(model, name, shape):
    if shape != model.network_config.shape:
        raise InputError(f"{name} is not a generator for shape {model.network_config.shape}",
                         model.path)


def _load_keras(folder, name):
    try:
        return keras.models.load_model(os.path.join(folder, name),
                                       custom_objects=custom_objects(), compile=False)
    except Exception as error:  # zipfile, h5py and Keras raise many types for a corrupt file
        raise InputError(f"{name} cannot be loaded ({one_line(error)})", folder) from error


def _load_weights(net, folder, name):
    """Load the weights of ``<folder>/<name>`` (a ``.keras`` file of the same architecture) into
    ``net``, a network built for any shape: its variables do not depend on the spatial shape.

    The variables are matched by layer type and order (tf_keras ``load_weights``); the file must
    hold exactly as many arrays, of the same shapes, as ``net`` has.

    :raises ValueError, KeyError, OSError: the weights do not fit ``net``
    """
    import h5py  # a tf_keras dependency, needed on this path alone

    path = os.path.join(folder, name)
    shapes = []
    with zipfile.ZipFile(path) as archive, archive.open(_KERAS_WEIGHTS) as file, \
            h5py.File(file, "r") as weights:
        weights.visititems(lambda _, item: shapes.append(tuple(item.shape))
                           if isinstance(item, h5py.Dataset) else None)
    want = [tuple(int(s) for s in v.shape) for v in net.weights]
    if sorted(shapes) != sorted(want):
        raise ValueError(f"{name} holds {len(shapes)} weight arrays, the network has "
                         f"{len(want)}, or their shapes differ")
    net.load_weights(path)


def as_model_folder(model):
    """A :class:`ModelFolder` from itself or from a folder path."""
    return model if isinstance(model, ModelFolder) else load_model_folder(model)


def registration_net_for_shape(model, shape, matching_input=False):
    """T with the trained weights, for volumes of another spatial shape.

    T is fully convolutional, so its weights do not depend on the spatial shape: it is built with
    :func:`dgan.core.networks.build_registration_net` for ``shape`` and given the weights, from
    ``model.registration_net`` when that is already built, else straight from the folder's file
    (T at the training shape is then never built). For ``network_config.shape`` it is
    ``model.registration_net`` itself.

    :param model: :class:`ModelFolder` or a folder path
    :param shape: (X, Y, Z), each a multiple of ``network_config.multiple`` and at least twice it
    :param matching_input: for a T with block matching, the variant that takes the matching's
        field as a third input ``initial`` (:func:`dgan.core.networks.build_registration_net`);
        always built, with the same weights
    :return: a Keras model ``{"moving", "fixed"}`` (B, X, Y, Z, 1) -> ``{"moved", "flow"}``
    :raises InputError: a shape the network cannot take, or weights that do not fit it
    """
    model = as_model_folder(model)
    if matching_input and model.network_config.matching:
        return _net_for_shape(model, "registration_net", functools.partial(
            build_registration_net, matching_input=True), shape, "registration network",
            reuse=False)
    return _net_for_shape(model, "registration_net", build_registration_net, shape,
                          "registration network")


def generator_for_shape(model, shape):
    """G with the trained weights for volumes of spatial ``shape`` (as
    :func:`registration_net_for_shape`); None when the folder has no G.

    :return: a Keras model (B, X, Y, Z, 1) -> (B, X, Y, Z, 1), or None
    """
    model = as_model_folder(model)
    if not model.has_generator:
        return None
    return _net_for_shape(model, "generator", build_generator, shape, "generator")


def _net_for_shape(model, kind, builder, shape, what, reuse=True):
    """T (``kind`` "registration_net") or G ("generator") of ``model`` built for ``shape``
    (``reuse``: the folder's own network where the shape is the training shape)."""
    shape = tuple(int(s) for s in shape)
    if reuse and shape == model.network_config.shape:
        return getattr(model, kind)
    try:
        config = dataclasses.replace(model.network_config, shape=shape)
    except ValueError as error:
        raise InputError(f"cannot build the {what}: {error}") from error
    net = builder(config)
    trained = model._built(kind)
    try:
        if trained is not None:
            net.set_weights(trained.get_weights())
        else:
            _load_weights(net, model.path, model._file(kind))
    except (ValueError, KeyError, OSError) as error:
        raise InputError(
            f"the weights do not fit the network described in {CONFIG_FILE} ({one_line(error)})",
            model.path,
        ) from error
    return net
