"""Registering arrays and scan files with a trained T (dgan.register): API, CLI, geometry, errors."""

import os

import nibabel as nib
import numpy as np
import pytest

from dgan.cli.register import main
from dgan.compat import tf
from dgan.core.networks import NetworkConfig, build_registration_net
from dgan.data import io as dio
from dgan.data import synth
from dgan.errors import InputError
from dgan.registration import files, geometry
from dgan.registration.model_folder import save_model_folder
from dgan.registration.registrar import Registrar

#: The same tiny T as the ``tiny_config`` fixture of conftest.py, for module-scoped fixtures.
TINY_CONFIG = NetworkConfig(
    (16, 16, 16), t_features=((4, 8), (8, 8, 4)), g_features=((4, 4), (4, 4)), d_features=4, d_layers=2
)

#: Fixed grid: 20 x 22 x 18 voxels of 1 mm, first axis pointing left (x flipped: LAS).
FIXED_SHAPE = (20, 22, 18)
FIXED_AFFINE = np.array([[-1.0, 0, 0, 10], [0, 1, 0, -11], [0, 0, 1, -9], [0, 0, 0, 1]])
#: Moving grid: 1.5 mm voxels, second axis pointing posterior (y flipped); it covers the fixed
#: box except its top slices (z > 6.5 mm), where the moved image must be 0.
MOVING_SHAPE = (18, 20, 13)
MOVING_AFFINE = np.array([[1.5, 0, 0, -13], [0, -1.5, 0, 14], [0, 0, 1.5, -11.5], [0, 0, 0, 1]])


def content(world):
    """The scans' intensity: a linear function of world millimetres, (..., 3) -> (...)."""
    return 5.0 + 0.2 * world[..., 0] + 0.3 * world[..., 1] - 0.15 * world[..., 2]


def label_content(world):
    """Labels 1..4 from two world half-spaces, (..., 3) -> (...) int32."""
    return (1 + (world[..., 0] > 0.3) + 2 * (world[..., 1] > 1.2)).astype(np.int32)


def world_of(affine, shape):
    """World coordinates of every voxel centre: shape + (3,)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    return grid @ affine[:3, :3].T + affine[:3, 3]


def voxel_of(affine, world):
    """Voxel coordinates of world points: (..., 3) -> (..., 3)."""
    inverse = np.linalg.inv(affine)
    return world @ inverse[:3, :3].T + inverse[:3, 3]


def write_scans(folder, rng=None):
    """Moving scan, moving labels and fixed scan on their grids; random fixed if rng is given."""
    paths = {name: str(folder / f"{name}.nii.gz") for name in ("moving", "labels", "fixed")}
    moving_world = world_of(MOVING_AFFINE, MOVING_SHAPE)
    dio.save_volume(paths["moving"], content(moving_world).astype("float32"), MOVING_AFFINE)
    dio.save_volume(paths["labels"], label_content(moving_world), MOVING_AFFINE)
    fixed = content(world_of(FIXED_AFFINE, FIXED_SHAPE))
    if rng is not None:
        fixed = fixed + rng.normal(0, 1.0, FIXED_SHAPE)
    dio.save_volume(paths["fixed"], fixed.astype("float32"), FIXED_AFFINE)
    return paths


def save_model(folder, net, spacing):
    return str(save_model_folder(net, TINY_CONFIG, {"shape": (16, 16, 16), "spacing": spacing}, folder))


def constant_flow_net(displacement):
    """T whose flow is ``displacement`` (network voxels) everywhere: zero kernel, that bias."""
    net = build_registration_net(TINY_CONFIG)
    kernel, _ = net.get_layer("flow").get_weights()
    net.get_layer("flow").set_weights([np.zeros_like(kernel), np.asarray(displacement, dtype="float32")])
    return net


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model folders: a perturbed T at native spacing, and constant-flow Ts at 2 mm."""
    folder = tmp_path_factory.mktemp("models")
    tf.keras.utils.set_random_seed(0)  # the same T whatever the test order or the worker
    net = build_registration_net(TINY_CONFIG)
    layer = net.get_layer("flow")
    kernel, bias = layer.get_weights()
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(0, 0.05, kernel.shape).astype("float32"),
                       rng.normal(0, 0.3, bias.shape).astype("float32")])
    return {
        "perturbed": save_model(folder / "perturbed", net, None),
        "identity": save_model(folder / "identity", constant_flow_net([0, 0, 0]), 2.0),
        "shift": save_model(folder / "shift", constant_flow_net([1.0, -0.5, 0.25]), 2.0),
    }


@pytest.fixture(scope="module")
def registrar(models):
    return Registrar(models["perturbed"], refine_steps=0, start="network")  # T's field: these tests check T's geometry


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    return write_scans(tmp_path_factory.mktemp("scans"), np.random.default_rng(3))


def run_cli(model, paths, out, labels=True):
    argv = ["--model", model, "--moving", paths["moving"], "--fixed", paths["fixed"],
            "--out-moved", str(out / "moved.nii.gz"), "--out-flow", str(out / "flow.nii.gz"),
            "--refine-steps", "0", "--affine", "off", "--start", "network"]  # affine: test_affine
    if labels:
        argv += ["--moving-labels", paths["labels"], "--out-labels", str(out / "labels.nii.gz")]
    return main(argv)


# --- API and command line agree; outputs overlay the fixed scan -----------------------------------


def test_api_and_cli_give_identical_outputs_on_the_fixed_grid(registrar, models, scans, tmp_path, capsys):
    result = registrar.register_files(scans["moving"], scans["fixed"], moving_labels=scans["labels"])
    assert result.moved.shape == FIXED_SHAPE and result.moved.dtype == np.float32
    assert result.flow.shape == FIXED_SHAPE + (3,) and result.flow.dtype == np.float32
    assert result.labels.shape == FIXED_SHAPE and result.labels.dtype == np.int32
    assert np.isfinite(result.flow).all()
    # The perturbed T moves things, and by less than the fixed box (1 mm voxels) is long.
    assert 0.1 < np.abs(result.flow).max() < max(FIXED_SHAPE)
    assert 0.0 <= result.folding_fraction <= 1.0

    assert run_cli(models["perturbed"], scans, tmp_path) == 0
    out = capsys.readouterr().out
    assert "non-positive Jacobian determinant" in out and "run time" in out
    fixed = nib.load(scans["fixed"])
    written = {name: nib.load(tmp_path / f"{name}.nii.gz") for name in ("moved", "flow", "labels")}
    for name, image in written.items():
        np.testing.assert_array_equal(image.affine, fixed.affine, err_msg=name)
        assert image.header["sform_code"] == fixed.header["sform_code"]
    np.testing.assert_array_equal(written["moved"].get_fdata(dtype=np.float32), result.moved)
    np.testing.assert_array_equal(written["flow"].get_fdata(dtype=np.float32), result.flow)
    np.testing.assert_array_equal(np.asarray(written["labels"].dataobj), result.labels)
    assert written["flow"].shape == FIXED_SHAPE + (3,)
    assert written["flow"].header.get_intent() == ("vector", (), files.FLOW_INTENT_NAME)
    assert written["flow"].header["descrip"].item().decode() == files.FLOW_DESCRIP
    assert sorted(os.listdir(tmp_path)) == ["flow.nii.gz", "labels.nii.gz", "moved.nii.gz"]


def test_files_on_a_canonical_grid_match_arrays(registrar, tmp_path):
    """At native spacing on a RAS grid, the network grid is the fixed grid: same flow as arrays."""
    rng = np.random.default_rng(5)
    moving = rng.random((18, 17, 20)).astype("float32")
    fixed = rng.random((18, 17, 20)).astype("float32")
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    dio.save_volume(tmp_path / "m.nii", moving, affine)
    dio.save_volume(tmp_path / "f.nii", fixed, affine)
    from_files = registrar.register_files(tmp_path / "m.nii", tmp_path / "f.nii")
    from_arrays = registrar.register_arrays(moving, fixed)
    # the same network input (resampling onto the own grid is exact to float32): equal
    np.testing.assert_allclose(from_files.flow, from_arrays.flow, atol=1e-6)
    # where p + flow(p) stays inside the volume; beyond its border files give 0 and arrays the
    # edge values (as voxelmorph)
    target = np.stack(np.meshgrid(*(np.arange(n) for n in moving.shape), indexing="ij"), -1) + from_arrays.flow
    inside = np.all((target >= 0) & (target <= np.array(moving.shape) - 1), axis=-1)
    assert inside.mean() > 0.5
    # files warp through world coordinates: float32 flows <= 5 voxels (to 2.4e-7) times steps of
    # random intensities in [0, 1] per voxel, ~1e-6 (measured 7e-7)
    np.testing.assert_allclose(from_files.moved[inside], from_arrays.moved[inside], atol=1e-5)


# --- geometry: grids, orientations, voxel sizes ----------------------------------------------------


def test_moving_on_another_grid_lands_on_the_fixed_grid(models, tmp_path):
    """Zero flow: the moved scan is the moving content at the fixed voxels' world positions."""
    paths = write_scans(tmp_path)
    result = Registrar(models["identity"], refine_steps=0, start="network").register_files(paths["moving"], paths["fixed"], paths["labels"])
    np.testing.assert_array_equal(result.flow, 0)
    assert result.network_shape == (10, 11, 9)  # 2 mm, RAS+
    np.testing.assert_array_equal(result.network_affine[:3, :3], np.diag([2.0, 2.0, 2.0]))

    world = world_of(FIXED_AFFINE, FIXED_SHAPE)
    source = voxel_of(MOVING_AFFINE, world)  # where each fixed voxel lies in the moving scan
    inside = np.all((source >= 0) & (source <= np.array(MOVING_SHAPE) - 1), axis=-1)
    outside = np.any((source < -0.5) | (source > np.array(MOVING_SHAPE) - 0.5), axis=-1)
    assert inside.mean() > 0.7 and outside.any()
    # trilinear interpolation is exact on a linear function; float32 values <= 12: ~1e-6
    np.testing.assert_allclose(result.moved[inside], content(world)[inside], atol=1e-4)
    np.testing.assert_array_equal(result.moved[outside], 0)

    # labels, nearest neighbour: right wherever the moving voxel's neighbourhood is one label
    clear = inside & (np.abs(world[..., 0] - 0.3) > 1.5) & (np.abs(world[..., 1] - 1.2) > 1.5)
    assert clear.mean() > 0.4
    np.testing.assert_array_equal(result.labels[clear], label_content(world)[clear])
    assert set(np.unique(result.labels)) <= {0, 1, 2, 3, 4}


def test_flow_vectors_are_converted_to_fixed_voxels(models, tmp_path):
    """A constant network flow t (2 mm RAS voxels) is the world shift 2 t; on the fixed grid
    (1 mm, x flipped) that is (-2 t_x, 2 t_y, 2 t_z) voxels."""
    paths = write_scans(tmp_path)
    result = Registrar(models["shift"], refine_steps=0, start="network").register_files(paths["moving"], paths["fixed"])
    t = np.array([1.0, -0.5, 0.25])
    # a zero kernel gives the bias exactly, re-expressed with factors of 2: exact
    np.testing.assert_allclose(result.flow, np.broadcast_to([-2.0, -1.0, 0.5], result.flow.shape), atol=1e-6)
    np.testing.assert_allclose(result.folding_fraction, 0.0)
    world = world_of(FIXED_AFFINE, FIXED_SHAPE) + 2.0 * t  # moved(p) = moving(world(p) + 2 t)
    source = voxel_of(MOVING_AFFINE, world)
    inside = np.all((source >= 0) & (source <= np.array(MOVING_SHAPE) - 1), axis=-1)
    assert inside.mean() > 0.6
    np.testing.assert_allclose(result.moved[inside], content(world)[inside], atol=1e-4)  # as above


def test_network_spacing_runs_t_on_that_grid(models, tmp_path, capsys):
    """The same constant-flow T (trained at 2 mm) run at 1 mm: the network grid is the fixed
    box at 1 mm, and t network voxels are t mm, (-t_x, t_y, t_z) fixed voxels."""
    paths = write_scans(tmp_path)
    result = Registrar(models["shift"], refine_steps=0, network_spacing=1.0, start="network").register_files(
        paths["moving"], paths["fixed"])
    assert result.network_shape == (20, 22, 18)
    np.testing.assert_array_equal(result.network_affine[:3, :3], np.eye(3))
    # a zero kernel gives the bias exactly; 1 mm voxels re-expressed in 1 mm voxels: exact
    np.testing.assert_allclose(result.flow, np.broadcast_to([-1.0, -0.5, 0.25], result.flow.shape),
                               atol=1e-6)
    out = tmp_path / "cli"
    out.mkdir()
    argv = ["--model", models["shift"], "--moving", paths["moving"], "--fixed", paths["fixed"],
            "--out-moved", str(out / "moved.nii.gz"), "--out-flow", str(out / "flow.nii.gz"),
            "--refine-steps", "0", "--affine", "off", "--network-spacing", "1", "--start", "network"]
    assert main(argv) == 0
    np.testing.assert_allclose(nib.load(out / "flow.nii.gz").get_fdata(), result.flow, atol=1e-6)


def test_the_model_folder_says_where_t_runs_unless_told(tmp_path):
    net = constant_flow_net([0, 0, 0])
    prep = {"shape": (16, 16, 16), "spacing": 2.0}
    folder = save_model_folder(net, TINY_CONFIG, prep, tmp_path / "m", network_spacing=1.5)
    assert Registrar(folder, refine_steps=0, start="network").preprocessing.spacing == (1.5, 1.5, 1.5)
    assert Registrar(folder, refine_steps=0, network_spacing=3).preprocessing.spacing == (3.0,) * 3
    plain = save_model_folder(net, TINY_CONFIG, prep, tmp_path / "plain")
    assert Registrar(plain, refine_steps=0, start="network").preprocessing.spacing == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="spacing must be three positive"):
        save_model_folder(net, TINY_CONFIG, prep, tmp_path / "bad", network_spacing=-1.0)
    assert not (tmp_path / "bad").exists()
    description = tmp_path / "m" / "dgan_model.json"
    description.write_text(description.read_text().replace("1.5", "-1.5"))
    with pytest.raises(InputError, match=r"m: the network spacing must be one or three"):
        Registrar(folder, refine_steps=0, start="network")


@pytest.mark.parametrize("spacing", [0.0, -2.0, float("nan"), (1.0, 2.0)])
def test_bad_network_spacing_refused(models, spacing):
    with pytest.raises(InputError, match="network spacing must be one or three positive"):
        Registrar(models["shift"], refine_steps=0, network_spacing=spacing)


def test_network_spacing_needs_a_model():
    with pytest.raises(InputError, match="network spacing needs a model folder"):
        Registrar(None, refine_steps=5, network_spacing=2.0)


def test_flow_to_grid_keeps_the_world_displacement():
    """An affine field on a 2 mm RAS grid, re-expressed on the flipped 1 mm fixed grid: for every
    fixed voxel p, A_f (p + out(p)) == A_s (q + flow(q)) with q = A_s^-1 A_f p."""
    source_affine = np.array([[2.0, 0, 0, -10], [0, 2, 0, -12], [0, 0, 2, -9], [0, 0, 0, 1]])
    source_shape = (10, 12, 10)
    q = np.stack(np.meshgrid(*(np.arange(n) for n in source_shape), indexing="ij"), axis=-1)
    mix = np.array([[0.1, -0.05, 0.02], [0.03, 0.08, -0.04], [-0.06, 0.01, 0.05]])
    flow = (q @ mix.T + [0.5, -0.3, 0.2]).astype("float32")  # varies in space; trilinear is exact
    out = geometry.flow_to_grid(flow, source_affine, FIXED_AFFINE, FIXED_SHAPE)
    assert out.shape == FIXED_SHAPE + (3,) and out.dtype == np.float32
    world = world_of(FIXED_AFFINE, FIXED_SHAPE)
    q_of_p = voxel_of(source_affine, world)
    inside = np.all((q_of_p >= 0) & (q_of_p <= np.array(source_shape) - 1), axis=-1)
    assert inside.mean() > 0.8
    moved_world = world + out @ FIXED_AFFINE[:3, :3].T
    want_world = world + (q_of_p @ mix.T + [0.5, -0.3, 0.2]) @ source_affine[:3, :3].T
    # float32 output flow of <= 3 voxels: within 2.4e-7 (times 1 mm)
    np.testing.assert_allclose(moved_world[inside], want_world[inside], atol=1e-5)


# --- arrays of any size -----------------------------------------------------------------------------


def test_odd_sizes_round_trip(registrar):
    rng = np.random.default_rng(7)
    moving = rng.random((2, 37, 41, 29)).astype("float32") * 100
    fixed = rng.random((2, 37, 41, 29)).astype("float32")
    batch = registrar.register_arrays(moving, fixed)
    assert batch.moved.shape == (2, 37, 41, 29) and batch.flow.shape == (2, 37, 41, 29, 3)
    assert ("T", (40, 44, 32)) in registrar._nets  # T built once for the padded shape
    single = registrar.register_arrays(moving[1], fixed[1])
    assert single.moved.shape == (37, 41, 29) and single.flow.shape == (37, 41, 29, 3)
    # a batch of 2 and a single volume may run other kernels (blocking by shape), so another
    # summation order: float32 round-off of T, ~1e-6 of flows <= 5 (changing T's weights by one
    # ulp moves them by up to 7e-7); a wrong padding or sample moves them by ~0.1
    np.testing.assert_allclose(single.flow, batch.flow[1], atol=1e-4)
    # the same warp of the same values: equal
    np.testing.assert_allclose(single.moved, synth.warp(moving[1], single.flow), rtol=1e-6)
    tiny = registrar.register_arrays(moving[0, :5, :9, :3], fixed[0, :5, :9, :3])  # below 2 x multiple
    assert tiny.flow.shape == (5, 9, 3, 3)


def test_arrays_at_the_training_shape_match_model_predict(registrar):
    rng = np.random.default_rng(8)
    moving = rng.random((16, 16, 16)).astype("float32") * 50 + 10
    fixed = rng.random((16, 16, 16)).astype("float32") * 3
    result = registrar.register_arrays(moving, fixed)
    normalized = {"moving": dio.normalize_intensity(moving)[None, ..., None],
                  "fixed": dio.normalize_intensity(fixed)[None, ..., None]}
    want = registrar.model.registration_net.predict(normalized, verbose=0)
    # another model instance and graph, as in test_odd_sizes_round_trip: ~1e-6 (1e-4 for any
    # summation order)
    np.testing.assert_allclose(result.flow, want["flow"][0], atol=1e-4)
    # the moved image is the moving intensities warped, not the normalised network output (the
    # same warp of the same values: equal)
    np.testing.assert_allclose(result.moved, synth.warp(moving, result.flow), rtol=1e-6)


@pytest.mark.parametrize(
    "moving, fixed, message",
    [
        (np.zeros((16, 16)), np.zeros((16, 16)), "moving: expected a 3D array (X, Y, Z) or a batch"),
        (np.zeros((16,) * 3), np.zeros((16, 16, 15)), "moving and fixed differ in shape"),
        (np.zeros((16,) * 3), np.full((16,) * 3, np.nan), "fixed: 4096 voxels are NaN or Inf"),
    ],
)
def test_bad_arrays(registrar, moving, fixed, message):
    with pytest.raises(InputError) as error:
        registrar.register_arrays(moving, fixed)
    assert str(error.value).startswith(message)


# --- bad inputs on the command line ----------------------------------------------------------------


def _bad_file(path, how):
    if how == "missing":
        return
    if how == "unreadable":
        path.write_bytes(b"\x1f\x8b this is not a gzipped NIfTI file")
        return
    data = {"2D": np.ones((16, 16), "float32"), "4D": np.ones((16, 16, 16, 2), "float32")}.get(how)
    if how == "NaN":
        data = np.ones((16, 16, 16), "float32")
        data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


@pytest.mark.parametrize("role", ["moving", "fixed", "labels"])
@pytest.mark.parametrize(
    "how, message",
    [
        ("missing", "file not found"),
        ("unreadable", "cannot read the file"),
        ("2D", "expected a 3D volume, got shape (16, 16)"),
        ("4D", "expected a 3D volume, got shape (16, 16, 16, 2)"),
        ("NaN", "1 voxels"),
    ],
)
def test_bad_input_files(models, scans, tmp_path, capsys, role, how, message):
    paths = dict(scans)
    paths[role] = str(tmp_path / f"bad_{role}.nii.gz")
    _bad_file(tmp_path / f"bad_{role}.nii.gz", how)
    out = tmp_path / "out"
    assert run_cli(models["perturbed"], paths, out) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {paths[role]}: {message}")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not out.exists()


def test_not_a_model_folder_on_the_command_line(scans, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    assert run_cli(str(tmp_path / "model"), scans, tmp_path / "out") == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'model'}: not a dgan model folder: dgan_model.json is missing\n"
    )


def test_bad_output_names(models, scans, tmp_path, capsys):
    argv = ["--model", models["perturbed"], "--moving", scans["moving"], "--fixed", scans["fixed"],
            "--out-moved", str(tmp_path / "moved.png"), "--out-flow", str(tmp_path / "flow.nii")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'moved.png'}: an output must end in .nii")
    assert main(argv[:-4] + ["--out-moved", str(tmp_path / "a.nii"), "--out-flow", str(tmp_path / "a.nii")]) == 2
    assert capsys.readouterr().err == "error: the output files must be distinct\n"
    with pytest.raises(SystemExit) as exit_:
        main(argv[:-4] + ["--out-moved", str(tmp_path / "m.nii"), "--out-flow", str(tmp_path / "f.nii"),
                          "--out-labels", str(tmp_path / "l.nii")])
    assert exit_.value.code == 2
    assert "--moving-labels and --out-labels must be given together" in capsys.readouterr().err


def test_failed_write_leaves_no_partial_file_and_keeps_old_outputs(models, scans, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "moved.nii.gz").write_bytes(b"previous result")
    real_write = dio.nib.Nifti1Image.to_file_map
    calls = []

    def write_then_fail(image, file_map=None, dtype=None):
        """Writes the first file, then half of the second, then the disk is full."""
        calls.append(image)
        if len(calls) == 1:
            return real_write(image, file_map, dtype)
        (file_map or image.file_map)["image"].get_prepare_fileobj(mode="wb").write(
            b"\x1f\x8b half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dio.nib.Nifti1Image, "to_file_map", write_then_fail)
    assert run_cli(models["perturbed"], scans, out) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out / 'flow.nii.gz'}: cannot write the file (No space left on device)\n"
    assert sorted(os.listdir(out)) == ["moved.nii.gz"]  # no temporary or half-written file
    assert (out / "moved.nii.gz").read_bytes() == b"previous result"


def test_sampling_through_world_in_blocks_equals_one_block(monkeypatch, rng):
    """The moved scan is sampled a block of rows at a time to bound the temporaries: blocks that
    split the grid mid-way (and a last, shorter block) give the same voxels as one block."""
    volume = dio.Volume(rng.random((9, 8, 7)).astype(np.float32),
                        np.diag([1.5, 1.0, 2.0, 1.0]) + np.eye(4, k=3) * 0.3)
    target = np.diag([1.2, 1.1, 1.9, 1.0])
    flow = rng.uniform(-2, 2, (10, 9, 8, 3)).astype(np.float32)
    whole = geometry.sample_through_world(volume, target, flow)
    monkeypatch.setattr(geometry, "BLOCK_VOXELS", 3 * 9 * 8)  # 3 rows a block: 4 blocks
    np.testing.assert_array_equal(geometry.sample_through_world(volume, target, flow), whole)
    assert np.count_nonzero(whole) > whole.size // 2
