"""One preprocessing description (dgan.data.preprocessing) for training and registration."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dgan.core.networks import build_registration_net
from dgan.data import io, preprocessing
from dgan.data import scans as dscans
from dgan.data.preprocessing import Preprocessing, padded_shape
from dgan.errors import InputError
from dgan.registration.model_folder import load_model_folder, save_model_folder
from dgan.registration.registrar import Registrar
from dgan.training.config import TrainConfig

#: The training grid of the test: 2 mm voxels, 20 x 24 x 16 (multiples of the tiny T's 4).
SHAPE, SPACING = (20, 24, 16), 2.0


@pytest.fixture
def oblique_scan(tmp_path, rng):
    """A scan that needs every step: 1 mm voxels (resampled to 2 mm), axes in L, P, I order
    (reoriented to RAS+), an origin away from 0, an intensity range far from [0, 1], and a
    field of view that lands on the training grid exactly (40 x 48 x 32 mm)."""
    array = gaussian_filter(rng.random((40, 48, 32)), 3).astype(np.float32) * 1000 + 50
    affine = np.array([[-1.0, 0, 0, 30], [0, -1.0, 0, 40], [0, 0, -1.0, 20], [0, 0, 0, 1]])
    path = tmp_path / "scan.nii.gz"
    io.save_volume(path, array, affine)
    return str(path)


def test_training_and_registration_prepare_a_scan_into_identical_arrays(oblique_scan, tmp_path,
                                                                         tiny_config):
    """The array ScanSet trains on and the array T receives from Registrar.register_volumes'
    code path are equal, element for element: the same functions on the same description."""
    import dataclasses

    network_config = dataclasses.replace(tiny_config, shape=SHAPE)
    network = {k: v for k, v in network_config.to_dict().items() if k != "shape"}
    config = TrainConfig.for_scans([oblique_scan], [oblique_scan], shape=SHAPE,
                                            spacing=SPACING, network=network)
    save_model_folder(build_registration_net(network_config), network_config,
                      config.preprocessing, tmp_path / "model")
    model = load_model_folder(tmp_path / "model")
    assert model.preprocessing == config.preprocessing  # through dgan_model.json and back

    trained = dscans.ScanSet([oblique_scan], config.shape, config.spacing)[0]
    registrar = Registrar(model, refine_steps=0)
    volume = io.load_volume(oblique_scan)
    registered = registrar.prepare(volume)
    assert trained.shape == registered.shape == SHAPE
    np.testing.assert_array_equal(trained, registered)
    # the preparation did something: reoriented, resampled, scaled to [0, 1]
    assert not np.allclose(volume.affine[:3, :3], np.diag([2.0] * 3))
    grid = registrar.network_grid(volume)
    np.testing.assert_allclose(io.voxel_spacing(grid.affine), SPACING)
    assert np.all(np.diag(grid.affine)[:3] > 0)  # RAS+
    assert registered.min() == 0.0 and registered.max() == 1.0
    # and it is the same as training's own function, used for validation pairs and the demo
    prepared = preprocessing.preprocess_volume(volume, SHAPE, SPACING)
    np.testing.assert_array_equal(prepared.array, trained)
    np.testing.assert_allclose(prepared.affine, grid.affine, atol=1e-9)


def test_a_changed_description_changes_both_sides(oblique_scan, tmp_path, tiny_config):
    """Percentiles stored in the model folder reach the registration side (no default is
    applied behind the description's back)."""
    import dataclasses

    network_config = dataclasses.replace(tiny_config, shape=SHAPE)
    narrow = Preprocessing(SHAPE, SPACING, percentiles=(10.0, 90.0))
    save_model_folder(build_registration_net(network_config), network_config, narrow,
                      tmp_path / "model")
    volume = io.load_volume(oblique_scan)
    registered = Registrar(tmp_path / "model", refine_steps=0).prepare(volume)
    np.testing.assert_array_equal(registered, narrow.prepare(volume).array)
    assert not np.array_equal(registered, Preprocessing(SHAPE, SPACING).prepare(volume).array)


@pytest.mark.parametrize("shape, multiple, expected", [
    ((20, 24, 16), 4, (20, 24, 16)),  # already fits
    ((17, 5, 33), 4, (20, 8, 36)),  # up to the multiple, at least two of them
    ((12, 16, 20), 8, (16, 16, 24)),
])
def test_padded_shape(shape, multiple, expected):
    assert padded_shape(shape, multiple) == expected


def test_a_volume_too_small_for_the_network_is_refused_naming_it(tmp_path, rng):
    path = tmp_path / "small.nii.gz"  # 10 voxels of 1 mm: 5 of 2 mm, fewer than MIN_SIZE
    io.save_volume(path, rng.random((10, 10, 10)).astype(np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"small.nii.gz: too small for the network.* at 2.0 mm"):
        Preprocessing(SHAPE, SPACING).prepare(io.load_volume(path))
