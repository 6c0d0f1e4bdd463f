"""The dgan model folder and the TensorFlow Serving export (dgan.export)."""

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from dgan.cli import export as export_cli
from dgan.compat import keras
from dgan.core.networks import (NetworkConfig, build_generator, build_registration_net,
                                custom_objects)
from dgan.data.preprocessing import Preprocessing
from dgan.errors import InputError
from dgan.registration import serving
from dgan.registration import model_folder as folders
from dgan.registration.model_folder import (CONFIG_FILE, GENERATOR_FILE, MODEL_FILE,
                                            generator_for_shape, load_model_folder,
                                            registration_net_for_shape, save_model_folder)
from dgan.registration.serving import export_saved_model

#: The same tiny T as the ``tiny_config`` fixture of conftest.py, for module-scoped fixtures.
TINY = dict(t_features=((4, 8), (8, 8, 4)), g_features=((4, 4), (4, 4)), d_features=4, d_layers=2)


def perturbed_net(config, seed=0):
    """T with seeded random flow weights, so that its flow is about one voxel, not ~0."""
    net = build_registration_net(config)
    layer = net.get_layer("flow")
    kernel, bias = layer.get_weights()
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, 0.05, kernel.shape).astype("float32"),
                       rng.normal(0, 0.3, bias.shape).astype("float32")])
    return net


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model folder, the T saved in it)."""
    config = NetworkConfig((16, 16, 16), **TINY)
    path = tmp_path_factory.mktemp("model") / "dgan_model"
    net = perturbed_net(config)
    save_model_folder(net, config, {"shape": (16, 16, 16), "spacing": [2.0] * 3}, path)
    return path, net


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained[0]


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model_folder(model_dir)


def leftovers(folder):
    """Hidden temporary files or folders that a writer left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def inputs(batch=2, shape=(16, 16, 16), seed=1):
    rng = np.random.default_rng(seed)
    return (rng.random((batch, *shape, 1)).astype("float32"),
            rng.random((batch, *shape, 1)).astype("float32"))


# --- the model folder ---------------------------------------------------------------------------


def test_model_folder_round_trip(trained, model):
    model_dir, reference = trained
    assert sorted(os.listdir(model_dir)) == [CONFIG_FILE, MODEL_FILE]
    description = json.loads((model_dir / CONFIG_FILE).read_text())
    assert description["format"] == "dgan-model" and description["format_version"] == 2
    assert description["preprocessing"] == {
        "shape": [16, 16, 16], "spacing": [2.0, 2.0, 2.0], "percentiles": [0.5, 99.5], "orientation": "RAS",
    }
    assert model.network_config == NetworkConfig((16, 16, 16), **TINY)
    assert model.preprocessing == Preprocessing((16, 16, 16), (2.0, 2.0, 2.0), (0.5, 99.5))
    for saved, original in zip(model.registration_net.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(saved, original)
    moving, fixed = inputs()
    got = model.registration_net.predict({"moving": moving, "fixed": fixed}, verbose=0)
    want = reference.predict({"moving": moving, "fixed": fixed}, verbose=0)
    # the same weights, kernels and input shapes in this process: equal
    np.testing.assert_allclose(got["flow"], want["flow"], atol=1e-6)
    assert np.abs(got["flow"]).max() > 0.1  # the perturbation makes the flow non-trivial


def test_native_spacing_is_null(tmp_path, tiny_config):
    save_model_folder(build_registration_net(tiny_config), tiny_config, None, tmp_path / "m")
    description = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert description["preprocessing"]["spacing"] is None
    assert description["preprocessing"]["shape"] == [16, 16, 16]


def test_save_replaces_an_existing_folder_only_when_complete(tmp_path, tiny_config, monkeypatch):
    net = build_registration_net(tiny_config)
    target = tmp_path / "m"
    save_model_folder(net, tiny_config, None, target)
    (target / "sentinel").write_text("old")
    before = (target / CONFIG_FILE).read_text()

    def crash(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(net, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model_folder(net, tiny_config, None, target)
    assert (target / "sentinel").read_text() == "old"
    assert (target / CONFIG_FILE).read_text() == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    save_model_folder(net, tiny_config, {"shape": (16, 16, 16), "spacing": 1.5}, target)
    assert not (target / "sentinel").exists()
    assert load_model_folder(target).preprocessing.spacing == (1.5, 1.5, 1.5)
    assert leftovers(tmp_path) == []


def test_save_refuses_a_config_of_another_shape(tmp_path, tiny_config):
    other = NetworkConfig((32, 16, 16), **TINY)
    with pytest.raises(ValueError, match=r"\(16, 16, 16\).*\(32, 16, 16\)"):
        save_model_folder(build_registration_net(tiny_config), other, None, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _break(folder, how, model_dir):
    """Make ``folder`` a broken copy of the model folder, in one of several ways."""
    if how == "missing":
        return
    if how == "a file":
        folder.write_text("hello")
        return
    folder.mkdir()
    if how == "empty":
        return
    model_bytes = (model_dir / MODEL_FILE).read_bytes()
    description = json.loads((model_dir / CONFIG_FILE).read_text())
    if how == "bad json":
        (folder / CONFIG_FILE).write_text("{not json")
    elif how == "not dgan json":
        (folder / CONFIG_FILE).write_text('{"name": "something else"}')
    elif how == "future version":
        description["format_version"] = 99
        (folder / CONFIG_FILE).write_text(json.dumps(description))
    elif how == "bad network":
        description["network"]["shape"] = [15, 16, 16]
        (folder / CONFIG_FILE).write_text(json.dumps(description))
    else:
        (folder / CONFIG_FILE).write_text(json.dumps(description))
    if how == "corrupt weights":
        (folder / MODEL_FILE).write_bytes(model_bytes[: len(model_bytes) // 2])
    elif how in ("bad json", "not dgan json", "future version", "bad network"):
        (folder / MODEL_FILE).write_bytes(model_bytes)


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing", "model folder not found"),
        ("a file", "not a dgan model folder: a file, expected a folder"),
        ("empty", "not a dgan model folder: dgan_model.json is missing"),
        ("bad json", "not a dgan model folder: dgan_model.json is not valid JSON"),
        ("not dgan json", "not a dgan model folder: dgan_model.json is not a dgan model description"),
        ("future version", "dgan_model.json has format_version 99; this dgan reads 1 or 2"),
        ("bad network", "dgan_model.json: invalid or missing 'network'"),
        ("missing weights", "not a dgan model folder: registration_net.keras is missing"),
        ("corrupt weights", "registration_net.keras cannot be loaded"),
    ],
)
def test_not_a_model_folder(tmp_path, model_dir, how, message):
    folder = tmp_path / "model"
    _break(folder, how, model_dir)
    with pytest.raises(InputError) as error:
        load_model_folder(folder)
    assert str(error.value).startswith(f"{folder}: {message}")
    assert "\n" not in str(error.value)


def test_rebuilt_for_another_shape_keeps_the_weights(model):
    net = registration_net_for_shape(model, (32, 16, 24))
    assert net.get_layer("flow").output.shape[1:4] == (32, 16, 24)
    for rebuilt, trained in zip(net.get_weights(), model.registration_net.get_weights()):
        np.testing.assert_array_equal(rebuilt, trained)
    assert registration_net_for_shape(model, (16, 16, 16)) is model.registration_net
    with pytest.raises(InputError, match="divisible by 4"):
        registration_net_for_shape(model, (18, 16, 16))


@pytest.fixture(scope="module")
def with_g(tmp_path_factory):
    """A model folder with T and G, both with random weights (T without block matching, which has
    no weights and costs seconds to trace)."""
    config = NetworkConfig((16, 16, 16), **TINY, g_residual=True)
    rng = np.random.default_rng(3)
    net = perturbed_net(config, seed=3)
    generator = build_generator(config)
    generator.set_weights([rng.normal(0, 0.2, w.shape).astype("float32")
                           for w in generator.get_weights()])  # G's last layer starts at 0
    path = tmp_path_factory.mktemp("model_g") / "dgan_model"
    save_model_folder(net, config, {"shape": (16, 16, 16), "spacing": [2.0] * 3}, path,
                      generator=generator)
    return path


def old_route(folder, name, builder, config):
    """The network as load_model_folder built it before T and G were loaded lazily: the whole
    model at the saved shape, its weights copied into a fresh build for ``config.shape``."""
    saved = keras.models.load_model(os.path.join(folder, name), custom_objects=custom_objects(),
                                    compile=False)
    net = builder(config)
    net.set_weights(saved.get_weights())
    return net


def test_loading_a_model_folder_builds_no_network(with_g, monkeypatch):
    def no_keras(*args, **kwargs):
        raise AssertionError("a Keras layer or model was built")

    monkeypatch.setattr(keras.layers.Layer, "__init__", no_keras)  # every layer and model
    monkeypatch.setattr(keras.models, "load_model", no_keras)
    monkeypatch.setattr(folders, "build_registration_net", no_keras)
    monkeypatch.setattr(folders, "build_generator", no_keras)
    model = load_model_folder(with_g)
    assert model.has_generator
    monkeypatch.undo()
    # built on first use, for the saved shape, and kept
    assert model.registration_net.inputs[0].shape[1:4] == (16, 16, 16)
    assert model.registration_net is model.registration_net
    assert model.generator.inputs[0].shape[1:4] == (16, 16, 16)
    assert model.generator is model.generator


def test_another_shape_is_built_from_the_weights_file_with_the_same_numbers(with_g, monkeypatch):
    model = load_model_folder(with_g)
    shape = (32, 16, 24)
    config = NetworkConfig(shape, **TINY, g_residual=True)
    t_want = old_route(with_g, MODEL_FILE, build_registration_net, config)
    g_want = old_route(with_g, GENERATOR_FILE, build_generator, config)

    def no_saved_model(*args, **kwargs):
        raise AssertionError("the model at the saved shape was built")

    monkeypatch.setattr(keras.models, "load_model", no_saved_model)
    t_net = registration_net_for_shape(model, shape)
    g_net = generator_for_shape(model, shape)
    monkeypatch.undo()
    moving, fixed = inputs(batch=1, shape=shape, seed=4)
    got = t_net({"moving": moving, "fixed": fixed})
    want = t_want({"moving": moving, "fixed": fixed})
    assert np.abs(want["flow"].numpy()).max() > 0.1  # random weights: a flow that shows mix-ups
    # the same graph and the same weights: bit-identical
    np.testing.assert_array_equal(got["flow"].numpy(), want["flow"].numpy())
    np.testing.assert_array_equal(got["moved"].numpy(), want["moved"].numpy())
    np.testing.assert_array_equal(g_net(moving).numpy(), g_want(moving).numpy())


def _copy_folder(source, target):
    target.mkdir()
    for name in os.listdir(source):
        (target / name).write_bytes((source / name).read_bytes())
    return target


@pytest.mark.parametrize("name", [MODEL_FILE, GENERATOR_FILE])
@pytest.mark.parametrize("how, reason", [
    ("truncated", "File is not a zip file"),
    ("flipped byte", "model.weights.h5 in the archive is damaged"),
    ("not a zip", "File is not a zip file"),
    ("no weights", "the archive has no model.weights.h5"),
])
def test_corrupt_weights_are_refused_at_load(with_g, tmp_path, name, how, reason):
    folder = _copy_folder(with_g, tmp_path / "model")
    data = (folder / name).read_bytes()
    if how == "truncated":
        data = data[: len(data) - 100]
    elif how == "flipped byte":  # inside the compressed weights: only the CRC check sees it
        with zipfile.ZipFile(folder / name) as archive:
            info = archive.getinfo("model.weights.h5")
        start = info.header_offset  # the member's local header: 30 bytes, its name, extra
        header = 30 + sum(int.from_bytes(data[start + i:start + i + 2], "little") for i in (26, 28))
        at = start + header + info.compress_size // 2
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    elif how == "not a zip":
        data = b"\x89HDF\r\n\x1a\n" + bytes(1000)  # an HDF5 signature, as a legacy .h5 file
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(folder / name) as archive, zipfile.ZipFile(buffer, "w") as out:
            for member in archive.namelist():
                if member != "model.weights.h5":
                    out.writestr(member, archive.read(member))
        data = buffer.getvalue()
    (folder / name).write_bytes(data)
    with pytest.raises(InputError) as error:
        load_model_folder(folder)
    assert str(error.value) == f"{folder}: {name} cannot be loaded ({reason})"


def test_a_generator_in_place_of_t_is_refused_at_load(with_g, tmp_path):
    folder = _copy_folder(with_g, tmp_path / "model")
    (folder / MODEL_FILE).write_bytes((folder / GENERATOR_FILE).read_bytes())
    with pytest.raises(InputError, match=r"registration_net.keras is not a registration network "
                                         r"for shape \(16, 16, 16\) \(outputs \['translated'\]"):
        load_model_folder(folder)


def test_weights_of_another_architecture_are_refused_in_one_line(with_g, tmp_path):
    folder = _copy_folder(with_g, tmp_path / "model")
    description = json.loads((folder / CONFIG_FILE).read_text())
    description["network"]["t_features"] = [[4, 8], [8, 8, 8]]  # T's last decoder layer differs
    (folder / CONFIG_FILE).write_text(json.dumps(description))
    model = load_model_folder(folder)
    with pytest.raises(InputError) as error:
        registration_net_for_shape(model, (32, 16, 16))
    assert str(error.value).startswith(
        f"{folder}: the weights do not fit the network described in {CONFIG_FILE} (")
    assert "\n" not in str(error.value)

# --- TensorFlow Serving -------------------------------------------------------------------------

#: Runs in a fresh interpreter with TensorFlow alone: loads the SavedModel, calls its signature
#: directly, from a serialised gRPC PredictRequest and from a REST JSON body.
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    export_dir, data, out = sys.argv[1:4]
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    arrays = np.load(data)
    moving, fixed = arrays["moving"], arrays["fixed"]
    results = {}

    direct = serve(moving=tf.constant(moving), fixed=tf.constant(fixed))
    results.update({"direct_" + k: v.numpy() for k, v in direct.items()})

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dgan"
    request.model_spec.signature_name = "serving_default"
    request.inputs["moving"].CopyFrom(tf.make_tensor_proto(moving))
    request.inputs["fixed"].CopyFrom(tf.make_tensor_proto(fixed))
    parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    grpc = serve(**{name: tf.constant(tf.make_ndarray(proto)) for name, proto in parsed.inputs.items()})
    results.update({"grpc_" + k: v.numpy() for k, v in grpc.items()})

    body = json.dumps({"signature_name": "serving_default",
                       "inputs": {"moving": moving.tolist(), "fixed": fixed.tolist()}})
    rest_inputs = json.loads(body)["inputs"]
    rest = serve(**{name: tf.constant(np.asarray(v, dtype=np.float32)) for name, v in rest_inputs.items()})
    results.update({"rest_" + k: v.numpy() for k, v in rest.items()})
    np.savez(out, **results)

    _, specs = serve.structured_input_signature
    print(json.dumps({
        "modules": {m: m in sys.modules for m in ("dgan", "voxelmorph", "neurite", "tf_keras")},
        "inputs": {k: [list(s.shape), s.dtype.name] for k, s in specs.items()},
        "outputs": {k: [list(s.shape), s.dtype.name] for k, s in serve.structured_outputs.items()},
        "grpc_model": parsed.model_spec.name,
    }))
    """
)


def test_saved_model_serves_without_dgan(tmp_path, model_dir, model):
    version_dir = export_saved_model(model_dir, tmp_path / "serving", version=3)
    assert version_dir == str(tmp_path / "serving" / "3")
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.isfile(os.path.join(version_dir, "variables", "variables.index"))
    assert sorted(os.listdir(tmp_path / "serving")) == ["3"]  # no temporary folder left
    with open(os.path.join(version_dir, serving.SAVED_MODEL_DESCRIPTION)) as f:
        assert json.load(f)["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]

    moving, fixed = inputs()
    np.savez(tmp_path / "inputs.npz", moving=moving, fixed=fixed)
    want = model.registration_net.predict({"moving": moving, "fixed": fixed}, verbose=0)
    script = tmp_path / "serve.py"
    script.write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run(
        [sys.executable, str(script), version_dir, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["modules"] == {"dgan": False, "voxelmorph": False, "neurite": False, "tf_keras": False}
    assert report["inputs"] == {"moving": [[None, 16, 16, 16, 1], "float32"],
                                "fixed": [[None, 16, 16, 16, 1], "float32"]}
    assert report["outputs"] == {"moved": [[None, 16, 16, 16, 1], "float32"],
                                 "flow": [[None, 16, 16, 16, 3], "float32"]}
    assert report["grpc_model"] == "dgan"
    served = np.load(tmp_path / "out.npz")
    # another process and graph (the SavedModel's, optimised and fused otherwise) may sum in
    # another order: float32 round-off of T, ~1e-6 of flows and images <= 1 (changing T's
    # weights by one ulp moves them by up to 1.5e-6); a wrong input or output moves them by ~0.1
    for route in ("direct", "grpc", "rest"):
        for name in ("moved", "flow"):
            np.testing.assert_allclose(served[f"{route}_{name}"], want[name], atol=1e-4,
                                       err_msg=f"{route} {name}")


def test_export_cli_refuses_to_overwrite(tmp_path, model_dir, capsys):
    base = tmp_path / "serving"
    argv = ["--model", str(model_dir), "--base-dir", str(base), "--version", "2"]
    assert export_cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    variables = base / "2" / "variables" / "variables.index"
    stamp = variables.stat().st_mtime_ns

    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {base / '2'}: version folder already exists; pass --overwrite to replace it\n"
    assert variables.stat().st_mtime_ns == stamp

    assert export_cli.main(argv + ["--overwrite", "--shape", "32", "16", "24"]) == 0
    with open(base / "2" / serving.SAVED_MODEL_DESCRIPTION) as f:
        assert json.load(f)["serving"]["shape"] == [32, 16, 24]
    assert sorted(os.listdir(base)) == ["2"]

    assert export_cli.main(["--model", str(tmp_path / "nothing"), "--base-dir", str(base)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing'}: model folder not found\n"
    assert export_cli.main(argv + ["--overwrite", "--shape", "18", "16", "16"]) == 2
    assert "divisible by 4" in capsys.readouterr().err
