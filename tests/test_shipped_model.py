"""Models shipped with dgan: found by name, versioned, with their training record; written by
``ship_model_folder`` and ``dgan-train-baselines --ship``; a user's folder of the same name wins."""

import filecmp
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dgan.bench import train_baselines
from dgan.cli.register import main as register
from dgan.compat import tf
from dgan.core.networks import build_registration_net
from dgan.data import demo
from dgan.data import io as dio
from dgan.errors import InputError
from dgan.registration import model_folder as mf

@pytest.fixture
def tiny_model(tmp_path, tiny_config):
    tf.keras.utils.set_random_seed(0)
    return mf.save_model_folder(build_registration_net(tiny_config), tiny_config, None,
                                tmp_path / "trained" / "model")


def test_the_brain_model_is_shipped_versioned_and_recorded():
    shipped = mf.shipped_models()
    assert shipped["brain"] == os.path.join(mf.SHIPPED_FOLDER, "brain")
    model = mf.load_model_folder("brain")
    assert model.path == shipped["brain"]
    assert model.has_generator
    version = model.description["version"]
    assert isinstance(version, int) and version >= 1
    assert model.label == f"brain v{version} (shipped with dgan)"
    # small enough to install with the package: weights within a few MB
    size = sum(os.path.getsize(os.path.join(model.path, name)) for name in os.listdir(model.path))
    assert size < 5e6
    with open(os.path.join(model.path, mf.TRAINING_FILE), encoding="utf-8") as f:
        record = json.load(f)
    assert record["command"].startswith("dgan-train-baselines ")
    assert "--data brain" in record["command"] and "--ship" in record["command"]
    # trained to the end of its budget, on the brain preset, and scored on held-out pairs
    assert record["config"]["preset"] == "brain" and record["config"]["method"] == "deformgan"
    assert record["results"]["step"] == record["config"]["steps"]
    assert record["results"]["validation_dice_network"] > record["results"][
        "validation_dice_identity"]
    assert model.network_config.to_dict() == record["config"]["network"] | {
        "shape": list(model.network_config.shape)}


def mean_dice(labels, target):
    return np.mean([2 * np.sum((labels == k) & (target == k))
                    / (np.sum(labels == k) + np.sum(target == k)) for k in (1, 2, 3)])


def test_register_with_the_shipped_model_by_name_moves_the_right_way(tmp_path, capsys):
    """The demo brain (MNI152 T1 -> its T2-like rendering) at 4 mm, the brain model's training
    grid, the T1 moved by 1.5 voxels along x: T's field (the affine stage off, so that T does
    the work) must point +1.5 voxels along x over the brain and raise the tissue Dice."""
    volumes = demo.demo_volumes(shape=(48, 56, 48), spacing=4.0)
    shift = (1.5, 0.0, 0.0)
    moving = ndimage.shift(volumes.t1, shift, order=1).astype("float32")
    labels = ndimage.shift(volumes.labels, shift, order=0).astype("int32")
    names = ("moving", "labels", "fixed", "moved", "flow", "moved_labels")
    paths = {name: str(tmp_path / f"{name}.nii.gz") for name in names}
    for name, volume in (("moving", moving), ("labels", labels),
                         ("fixed", volumes.t2.astype("float32"))):
        dio.save_volume(paths[name], volume, volumes.affine)
    assert register(["--model", "brain", "--network-spacing", "4", "--affine", "off",
                     "--moving", paths["moving"], "--fixed", paths["fixed"],
                     "--out-moved", paths["moved"], "--out-flow", paths["flow"],
                     "--moving-labels", paths["labels"],
                     "--out-labels", paths["moved_labels"]]) == 0
    assert "model: brain v" in capsys.readouterr().out
    flow = np.asarray(nib.load(paths["flow"]).dataobj)
    mean = flow[volumes.labels > 0].mean(axis=0)
    assert abs(mean[0] - shift[0]) < 0.5 and np.all(np.abs(mean[1:]) < 0.3), mean
    moved = np.asarray(nib.load(paths["moved_labels"]).dataobj)
    assert mean_dice(moved, volumes.labels) > mean_dice(labels, volumes.labels) + 0.1


def test_a_folder_named_like_a_shipped_model_wins(tiny_model, tiny_config, tmp_path,
                                                  monkeypatch):
    shutil.copytree(tiny_model, tmp_path / "brain")
    monkeypatch.chdir(tmp_path)
    model = mf.load_model_folder("brain")
    assert model.path == "brain" and model.label == "brain"
    assert model.network_config.shape == tiny_config.shape


def test_an_unknown_name_says_which_models_are_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        mf.load_model_folder("brian")
    assert str(error.value) == ("brian: model folder not found, nor a model shipped with dgan "
                                f"({', '.join(mf.shipped_models())})")
    with pytest.raises(InputError) as error:  # a path: no list of names
        mf.load_model_folder(os.path.join("runs", "brain"))
    assert str(error.value) == f"{os.path.join('runs', 'brain')}: model folder not found"


def test_ship_model_folder_stamps_name_and_version_and_keeps_the_weights(tiny_model, tmp_path,
                                                                          monkeypatch):
    shipped = tmp_path / "models"
    record = {"command": "dgan-train-baselines --data demo", "results": {"step": 3}}
    assert mf.ship_model_folder(tiny_model, shipped / "tiny", "tiny", 3, record) == str(
        shipped / "tiny")
    assert filecmp.cmp(os.path.join(tiny_model, mf.MODEL_FILE), shipped / "tiny" / mf.MODEL_FILE,
                       shallow=False)
    with open(shipped / "tiny" / mf.TRAINING_FILE, encoding="utf-8") as f:
        assert json.load(f) == record
    monkeypatch.setattr(mf, "SHIPPED_FOLDER", str(shipped))
    monkeypatch.chdir(tmp_path)
    assert mf.shipped_models() == {"tiny": str(shipped / "tiny")}
    model = mf.load_model_folder("tiny")
    assert model.label == "tiny v3 (shipped with dgan)"
    assert mf.load_model_folder(shutil.copytree(shipped / "tiny", tmp_path / "copy")).label == (
        f"tiny v3 ({tmp_path / 'copy'})")
    assert model.description["network"] == mf.load_model_folder(tiny_model).description["network"]
    # a bad version or a source that is no model folder leaves the shipped folder as it was
    before = sorted(os.listdir(shipped / "tiny"))
    for version in (0, "2", True):
        with pytest.raises(ValueError, match="version must be a positive integer"):
            mf.ship_model_folder(tiny_model, shipped / "tiny", "tiny", version, {})
    with pytest.raises(InputError, match="dgan_model.json is missing"):
        mf.ship_model_folder(tmp_path, shipped / "tiny", "tiny", 4, {})
    assert sorted(os.listdir(shipped / "tiny")) == before
    assert mf.load_model_folder("tiny").description["version"] == 3
    assert os.listdir(shipped) == ["tiny"]  # no temporary folder left


def test_train_baselines_ship_records_the_command_and_the_run(tiny_model, tmp_path):
    run = tmp_path / "runs" / "deformgan"
    shutil.copytree(tiny_model, run / "model")
    config, results = {"preset": "brain", "steps": 5}, {"step": 5}
    for name, content in (("config.json", config), ("results.json", results)):
        (run / name).write_text(json.dumps(content))
    argv = ["--data", "brain", "--out", "runs", "--ship", str(tmp_path / "brain")]
    path = train_baselines.ship(tmp_path / "runs", tmp_path / "brain", 2, argv)
    model = mf.load_model_folder(path)
    assert model.description["name"] == "brain" and model.description["version"] == 2
    with open(os.path.join(path, mf.TRAINING_FILE), encoding="utf-8") as f:
        record = json.load(f)
    assert record["command"] == "dgan-train-baselines " + " ".join(argv)
    assert record["config"] == config and record["results"] == results
    assert record["cpu"] and record["date"]


def test_train_baselines_refuses_ship_without_deformgan(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_baselines.main(["--methods", "vxm", "--ship", "x", "--out", "y"])
    assert exit_.value.code == 2
    assert "--methods must include deformgan" in capsys.readouterr().err
