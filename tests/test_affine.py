"""The affine stage (dgan.registration.affine), ITK transform files (dgan.registration.itk), and
their use by dgan-register."""


import numpy as np
import pytest
from scipy import ndimage

from dgan.bench.affine_cases import make_cases, move_content
from dgan.cli.register import main
from dgan.data import io as dio
from dgan.data.io import Volume
from dgan.errors import InputError
from dgan.registration import affine as daffine
from dgan.registration import itk
from dgan.registration.geometry import sample_through_world
from dgan.registration.settings import AUTO_THRESHOLD_MM, RefineConfig
from dgan.registration.registrar import Registrar
from dgan.training import prealign
from dgan.training import run as training
from dgan.training.config import TrainConfig

#: The phantom's grid: 32^3 voxels of 2 mm (64 mm), axes RAS, centred on the origin.
SHAPE = (32, 32, 32)
AFFINE = np.array([[2.0, 0, 0, -31], [0, 2.0, 0, -31], [0, 0, 2.0, -31], [0, 0, 0, 1]])
#: Tissue intensities of the two modalities (background, body, three inclusions): no monotone
#: map relates them, so only a cross-modal similarity can align them.
FIXED_CONTRAST = np.array([0.0, 0.3, 1.0, 0.6, 0.8])
MOVING_CONTRAST = np.array([0.0, 0.9, 0.2, 0.5, 0.35])


def phantom_labels():
    """An ellipsoid body (label 1) with six off-centre spherical inclusions (labels 2, 3, 4): no
    symmetry, so that translation and rotation are both determined."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1)
    x = grid @ AFFINE[:3, :3].T + AFFINE[:3, 3]  # world mm
    labels = np.zeros(SHAPE, np.int32)
    labels[np.sum((x / [22.0, 18.0, 15.0]) ** 2, -1) < 1] = 1
    inclusions = ((2, (8, 5, 2), 6.0), (3, (-9, 2, -4), 5.0), (4, (0, -9, 5), 4.0),
                  (2, (-6, 9, 6), 3.0), (3, (12, -6, -3), 3.5), (4, (-12, -4, 6), 3.0))
    for label, centre, radius in inclusions:
        labels[np.sum((x - centre) ** 2, -1) < radius**2] = label
    return labels


def rendered(labels, contrast):
    """Intensities from labels, blurred by half a voxel (partial volume)."""
    return ndimage.gaussian_filter(contrast[labels].astype(np.float32), 0.5)


def transform(angles_deg=(0, 0, 0), translation=(0, 0, 0)):
    """y = R x + t about the world origin (the phantom's centre), (4, 4)."""
    out = np.eye(4)
    out[:3, :3] = daffine.euler_matrix(np.deg2rad(angles_deg))
    out[:3, 3] = translation
    return out


@pytest.fixture(scope="module")
def fixed():
    return Volume(rendered(phantom_labels(), FIXED_CONTRAST), AFFINE, path="fixed.nii.gz")


def moving_for(truth):
    """The moving modality with its content where ``truth`` (fixed -> moving world) puts it."""
    return move_content(rendered(phantom_labels(), MOVING_CONTRAST), AFFINE, truth,
                        margin_mm=12.0).replace(path="moving.nii.gz")


def error_mm(fixed, matrix, truth):
    return daffine.rms_displacement(matrix, truth, daffine.foreground_points(fixed))


# --- recovering known transforms -----------------------------------------------------------------


def test_several_transforms_score_together_as_each_alone(fixed):
    """The rigid stage optimises its starts in one run: the objective and its gradient for S
    transforms at once must be each transform's own (histograms are per transform)."""
    import tensorflow as tf  # after dgan.compat, imported by the modules above

    truth = transform(angles_deg=(0, 0, 10.0), translation=(3.0, -2.0, 1.0))
    moving = moving_for(truth)
    config = daffine.AffineConfig()
    moving_n, fixed_n = daffine._normalised(moving), daffine._normalised(fixed)
    level = daffine._prepare_level(moving_n, fixed_n, 4.0, daffine.centre_of_mass(fixed_n),
                                   daffine.centre_of_mass(moving_n), config)
    rng = np.random.default_rng(0)
    params = rng.normal(0.0, 3.0, (3, 12)).astype(np.float32)
    params[:, 6:] = 0.0
    base = np.stack([np.eye(3, dtype=np.float32)] * 3)
    rigid = tf.constant(True)

    def value_and_gradient(p, b):
        p = tf.constant(p)
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = daffine._objective(level, p, tf.constant(b), rigid, config.bins)
            total = tf.reduce_sum(value)
        return value.numpy(), tape.gradient(total, p).numpy()

    together, gradient = value_and_gradient(params, base)
    assert len(set(np.round(together, 4))) == 3  # three different transforms, three values
    for s in range(3):
        alone, gradient_alone = value_and_gradient(params[s:s + 1], base[s:s + 1])
        # the same samples and bins; sums over ~10^3 samples in another order: float32
        # round-off, relative ~1e-6 of MI ~ 0.1-1
        np.testing.assert_allclose(together[s], alone[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gradient[s], gradient_alone[0], rtol=1e-4,
                                   atol=1e-5 * np.abs(gradient_alone).max())




def test_the_optimisers_inputs_come_in_a_few_shapes_and_their_padding_changes_nothing(fixed):
    """Scans of nearby grids and foregrounds give level inputs of one shape (XLA compiles one
    program, not one per scan); the padding (zeros beyond the scan, samples far outside it)
    leaves the objective as it is without it."""
    import tensorflow as tf  # after dgan.compat, imported by the modules above

    config = daffine.AffineConfig()
    moving = daffine._normalised(moving_for(transform(translation=(3.0, -2.0, 1.0))))
    fixed_n = daffine._normalised(fixed)
    cropped = Volume(fixed_n.array[1:-2, 2:, :-1], AFFINE @ _shifted(1, 2, 0))
    levels = [daffine._prepare_level(moving, target, 4.0, daffine.centre_of_mass(target),
                                     daffine.centre_of_mass(moving), config)
              for target in (fixed_n, cropped)]
    for key in ("moving", "moving_valid", "points", "fixed_bins"):
        assert levels[0][key].shape == levels[1][key].shape, key
    level = levels[0]
    assert all(n % daffine.SHAPE_BUCKET == 0 for n in level["moving"].shape)
    assert level["points"].shape[0] % daffine.POINT_BUCKET == 0
    real = int(np.sum(np.any(level["points"].numpy() != daffine.FAR_MM, axis=1)))
    assert 0 < real < level["points"].shape[0]  # padded, not every sample
    own = daffine._at_spacing(moving, 4.0).shape
    assert any(n + 2 < b for n, b in zip(own, level["moving"].shape))  # padded
    inner = tuple(slice(0, n + 2) for n in own)  # the level's scan and its zero border
    bare = {**level, "moving": level["moving"][inner], "moving_valid": level["moving_valid"][inner],
            "points": level["points"][:real], "fixed_bins": level["fixed_bins"][:real]}
    params = tf.constant(np.random.default_rng(1).normal(0.0, 2.0, (3, 12)), tf.float32)
    base = tf.constant(np.stack([np.eye(3)] * 3), tf.float32)
    values = [daffine._objective(inputs, params, base, tf.constant(False), config.bins).numpy()
              for inputs in (level, bare)]
    # the same samples; the padding adds zeros to the histogram's sums: float32 round-off
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5, atol=1e-6)


def _shifted(*voxels):
    out = np.eye(4)
    out[:3, 3] = voxels
    return out


@pytest.mark.parametrize("truth", [transform(translation=(6.0, -4.0, 3.0)),
                                   transform(angles_deg=(0, 0, 25.0)),
                                   transform(angles_deg=(-15.0, 12.0, 0))],
                         ids=["translation", "rotation z", "rotation xy"])
def test_a_translation_and_a_rotation_are_recovered(fixed, truth):
    before = error_mm(fixed, np.eye(4), truth)
    result = daffine.estimate_affine(moving_for(truth), fixed)
    # "Recovered" = better than half a voxel (1 mm): MI's optimum on 2 mm voxels, trilinear
    # interpolation and a blurred, cross-modal phantom is biased by a fraction of a voxel (0.4 mm
    # measured), while a wrong convention or a missed optimum is off by millimetres (before:
    # 3.8 to 7.8 mm on this small phantom).
    assert before > 3.0
    assert error_mm(fixed, result.matrix, truth) < 1.0
    assert result.rms_mm == pytest.approx(error_mm(fixed, np.eye(4), result.matrix))


def test_the_xla_optimiser_finds_the_plain_ones_transform(fixed):
    """XLA fuses the optimiser's ops (another order of the same sums, float32 round-off): the
    estimate must still recover the transform, and land where the plain optimiser does, to a
    small fraction of a voxel (2 mm): both converge to the same optimum of MI."""
    truth = transform(angles_deg=(-15.0, 12.0, 0), translation=(3.0, 0.0, -2.0))
    moving = moving_for(truth)
    assert daffine.AffineConfig().uses_xla(fixed.shape) is False  # a phantom: no compilation
    plain = daffine.estimate_affine(moving, fixed, daffine.AffineConfig(xla="off"))
    xla = daffine.estimate_affine(moving, fixed, daffine.AffineConfig(xla="on"))
    assert error_mm(fixed, xla.matrix, truth) < 1.0
    assert daffine.rms_displacement(xla.matrix, plain.matrix,
                                    daffine.foreground_points(fixed)) < 0.1
    assert xla.start == plain.start


def test_the_estimate_is_deterministic(fixed):
    truth = transform(angles_deg=(0, 0, 12.0))
    first = daffine.estimate_affine(moving_for(truth), fixed)
    second = daffine.estimate_affine(moving_for(truth), fixed)
    np.testing.assert_array_equal(first.matrix, second.matrix)


def test_the_transform_maps_fixed_points_to_moving_points():
    truth = transform(angles_deg=(0, 0, 90), translation=(10, 0, 0))
    # hand-computed: R_z(90) takes (1, 0, 0) to (0, 1, 0); then + (10, 0, 0)
    np.testing.assert_allclose(daffine.apply(truth, [[1.0, 0, 0]]), [[10.0, 1.0, 0]], atol=1e-12)
    volume = Volume(np.arange(27, dtype=np.float32).reshape(3, 3, 3), np.eye(4))
    seen = daffine.through(volume, truth)
    # reading ``seen`` at world x reads ``volume`` at truth x: its voxel of x is volume's of T x
    x = np.array([[-9.0, 1.0, 2.0]])
    np.testing.assert_allclose(daffine.apply(np.linalg.inv(seen.affine), x),
                               daffine.apply(truth, x), atol=1e-12)


def test_compose_flow_is_the_affine_then_the_field(fixed, rng):
    matrix = transform(angles_deg=(3, -2, 5), translation=(2.0, 1.0, -1.5))
    moving = moving_for(matrix)
    flow = rng.normal(0, 0.7, SHAPE + (3,)).astype(np.float32)
    composed = daffine.compose_flow(flow, matrix, fixed.affine)
    one_step = sample_through_world(daffine.through(moving, matrix), fixed.affine, flow)
    via_headers = sample_through_world(moving, fixed.affine, composed)
    # the same sample points up to float32 rounding of the composed flow (|flow| < 20 voxels,
    # relative 6e-8: 1e-6 voxel), times intensity gradients < 1 per voxel
    np.testing.assert_allclose(via_headers, one_step, atol=1e-4)


# --- ITK transform files ------------------------------------------------------------------------


def test_itk_file_by_hand(tmp_path):
    matrix = transform(angles_deg=(0, 0, 90), translation=(1.0, 2.0, 3.0))
    path = tmp_path / "t.txt"
    itk.write_affine(path, matrix)
    lines = path.read_text().splitlines()
    assert lines[0] == "#Insight Transform File V1.0"
    assert lines[2] == "Transform: AffineTransform_double_3_3"
    values = np.array(lines[3].split(":")[1].split(), float)
    # LPS = diag(-1, -1, 1) RAS: the rotation about z keeps its form, the translation's x and y
    # change sign
    np.testing.assert_allclose(values[:9], [0, -1, 0, 1, 0, 0, 0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(values[9:], [-1.0, -2.0, 3.0])
    assert lines[4] == "FixedParameters: 0.0 0.0 0.0"
    # ITK's point mapping M (x - c) + c + t in LPS, for RAS point (10, 20, 30) = LPS (-10, -20, 30)
    lps = values[:9].reshape(3, 3) @ np.array([-10.0, -20.0, 30.0]) + values[9:]
    np.testing.assert_allclose(lps * [-1, -1, 1], daffine.apply(matrix, [[10.0, 20.0, 30.0]])[0])


def test_itk_file_with_a_centre_is_read(tmp_path):
    path = tmp_path / "ants.txt"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\n"
                    "Transform: MatrixOffsetTransformBase_double_3_3\n"
                    "Parameters: 1 0 0 0 1 0 0 0 2 1 2 3\nFixedParameters: 4 5 6\n")
    # LPS: y = M (x - c) + c + t, M = diag(1, 1, 2): offset (1, 2, 3 + 6 - 12) = (1, 2, -3)
    expected = np.diag([1.0, 1.0, 2.0, 1.0])
    expected[:3, 3] = [-1.0, -2.0, -3.0]  # back in RAS: x and y change sign
    np.testing.assert_allclose(itk.read_affine(path), expected)


@pytest.mark.parametrize("text, message", [
    ("hello\n", "not an ITK text transform"),
    ("#Insight Transform File V1.0\nTransform: BSplineTransform_double_3_3\n", "BSplineTransform"),
    ("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nParameters: 1 2\n"
     "FixedParameters: 0 0 0\n", "expected 12 parameters"),
])
def test_bad_itk_files_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        itk.read_affine(path)
    assert str(path) in str(error.value)


# --- dgan-register -------------------------------------------------------------------------------


def write_pair(folder, truth, moving_affine_shift=(0.0, 0.0, 0.0)):
    """NIfTI files: the fixed phantom on a LAS grid, the moving one moved by ``truth``."""
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = SHAPE[0] - 1  # voxel i -> 31 - i: the same world box, first axis flipped
    fixed_affine = AFFINE @ flip
    paths = {"fixed": str(folder / "fixed.nii.gz"), "moving": str(folder / "moving.nii.gz")}
    fixed_array = rendered(phantom_labels(), FIXED_CONTRAST)[::-1]
    dio.save_volume(paths["fixed"], fixed_array, fixed_affine)
    moving = moving_for(truth)
    shifted = moving.affine.copy()
    shifted[:3, 3] += moving_affine_shift
    dio.save_volume(paths["moving"], moving.array, shifted)
    return paths


def cli(paths, out, *extra):
    return main(["--moving", paths["moving"], "--fixed", paths["fixed"],
                 "--out-moved", str(out / "moved.nii.gz"), "--out-flow", str(out / "flow.nii.gz"),
                 *extra])


def test_registrar_and_its_itk_file_map_world_points_alike(tmp_path, capsys):
    truth = transform(angles_deg=(0, 5, 10), translation=(5.0, -3.0, 2.0))
    paths = write_pair(tmp_path, truth)
    registrar = Registrar(None, refine_steps=0, affine="on")  # affine alone
    result = registrar.register_files(paths["moving"], paths["fixed"])
    out = tmp_path / "out"
    assert cli(paths, out, "--refine-steps", "0", "--affine", "on",
               "--out-affine", str(out / "affine.txt")) == 0
    assert "affine:" in capsys.readouterr().out
    read = itk.read_affine(out / "affine.txt")
    np.testing.assert_array_equal(read, result.transform)  # written with repr: exact
    assert result.alignment is not None and result.transform is result.alignment.matrix
    # the flow written on the fixed grid moves each voxel centre p to the world point T(A_f p):
    # float32 flow (< 10 voxels: rounding 1e-6 voxel) -> 1e-4 mm is ample
    fixed_affine = dio.load_volume(paths["fixed"]).affine
    voxels = np.array([[3, 4, 5], [16, 16, 16], [28, 20, 9]])
    world = daffine.world_points(fixed_affine, voxels + result.flow[tuple(voxels.T)])
    np.testing.assert_allclose(world, daffine.apply(read, daffine.world_points(fixed_affine, voxels)),
                               atol=1e-4)
    assert error_mm(dio.load_volume(paths["fixed"]), read, truth) < 1.0  # the bound used above


def test_affine_off_is_todays_registration(tmp_path, monkeypatch):
    paths = write_pair(tmp_path, transform(translation=(1.0, 0, 0)))

    def never(*args, **kwargs):
        raise AssertionError("the affine stage ran")

    monkeypatch.setattr(daffine, "estimate_affine", never)
    moving, fixed = dio.load_volume(paths["moving"]), dio.load_volume(paths["fixed"])
    refine = RefineConfig(steps=1, levels=(1,))  # one level: one trace of refinement's step
    default = Registrar(None, refine_config=refine).register_volumes(moving, fixed)
    off = Registrar(None, refine_config=refine, affine="off").register_volumes(moving, fixed)
    np.testing.assert_array_equal(default.flow, off.flow)
    np.testing.assert_array_equal(default.moved, off.moved)
    np.testing.assert_array_equal(off.transform, np.eye(4))
    assert off.alignment is None
    # the moved image is the moving scan sampled once at A_m^-1 A_f (p + flow(p)), as before
    np.testing.assert_array_equal(off.moved, sample_through_world(moving, fixed.affine, off.flow))
    assert cli(paths, tmp_path / "out", "--refine-steps", "1", "--refine-levels", "1",
               "--affine", "off") == 0


def test_auto_applies_the_affine_only_beyond_the_threshold(fixed):
    refine = RefineConfig(steps=1, levels=(1,))  # auto may apply nothing: refinement required
    aligned = Registrar(None, refine_config=refine, affine="auto").register_volumes(
        moving_for(np.eye(4)), fixed)
    np.testing.assert_array_equal(aligned.transform, np.eye(4))  # the headers are right:
    # estimated even though the foregrounds overlap (a real PD's header 9 degrees off overlapped
    # its T1's head with Dice 0.94), and within the threshold
    assert aligned.alignment.rms_mm <= AUTO_THRESHOLD_MM
    shifted = Registrar(None, refine_config=refine, affine="auto").register_volumes(
        moving_for(transform(translation=(0, 6.0, 0))), fixed)
    assert shifted.alignment.rms_mm > AUTO_THRESHOLD_MM
    assert shifted.transform is shifted.alignment.matrix


@pytest.mark.parametrize("judged, applied", [
    (((0.30, 0.875), (0.45, 0.875)), True),  # centimetres off: L_LG +0.15, outlines as well
    (((0.603, 0.959), (0.644, 0.974)), True),  # a whole head shifted by 3-4 mm
    (((0.617, 0.569), (0.640, 0.584)), False),  # an aligned spinal-cord pair's soft tissue fit
    (((0.30, 0.90), (0.45, 0.85)), False),  # L_LG gains, but the outlines fall apart
], ids=["misaligned", "shifted", "soft-tissue fit", "outlines lost"])
def test_auto_applies_an_estimate_only_with_a_clear_local_gradient_gain(fixed, monkeypatch,
                                                                        judged, applied):
    """Beyond the RMS threshold and with MI's gain, --affine auto applies the estimate when L_LG
    on the overlap rises by AFFINE_LG_MARGIN and the foregrounds' Dice does not fall by more than
    FOREGROUND_TOLERANCE; it says which."""
    estimate = daffine.AffineResult(matrix=transform(translation=(0, 6.0, 0)), objective=-0.2,
                                    rms_mm=6.0, seconds=0.0, header_objective=-0.1)
    said = []
    registrar = Registrar(None, affine="auto", progress=said.append)
    monkeypatch.setattr(registrar, "estimate_affine", lambda *args: estimate)
    monkeypatch.setattr(registrar, "judge_affine", lambda *args: judged)
    alignment, matrix = registrar._affine_stage(moving_for(np.eye(4)), fixed)
    assert alignment is estimate and (matrix is estimate.matrix) == applied
    assert said[-1].startswith("affine: applied" if applied else "affine: kept")


def test_auto_skips_scans_too_small_for_the_pyramid(fixed):
    tiny = np.diag([0.5, 0.5, 0.5, 1.0])  # 16 mm: 8 voxels at 2 mm, fewer than 16
    refine = RefineConfig(steps=1, levels=(1,))
    small_fixed = fixed.replace(affine=tiny)
    result = Registrar(None, refine_config=refine, affine="auto").register_volumes(
        moving_for(np.eye(4)).replace(affine=tiny), small_fixed)
    assert result.alignment is None and np.array_equal(result.transform, np.eye(4))
    with pytest.raises(InputError, match="too small for the affine stage"):
        daffine.estimate_affine(small_fixed, small_fixed)


def test_a_pair_without_overlap_is_refused(tmp_path, capsys, fixed):
    paths = write_pair(tmp_path, np.eye(4), moving_affine_shift=(500.0, 0, 0))
    out = tmp_path / "out"
    assert cli(paths, out, "--affine", "off") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the moving scan")
    assert "does not overlap the fixed scan" in err and paths["moving"] in err
    assert err.count("\n") == 1 and not out.exists()
    # the affine stage checks its own result the same way
    far = transform(translation=(500.0, 0, 0))
    with pytest.raises(InputError, match="do not overlap at all"):
        daffine.check_overlap(moving_for(np.eye(4)), fixed, far)


def test_bad_affine_arguments(tmp_path, capsys):
    paths = {"moving": "m.nii", "fixed": "f.nii"}
    with pytest.raises(SystemExit):
        cli(paths, tmp_path, "--affine", "maybe")
    assert "invalid choice: 'maybe'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(paths, tmp_path, "--out-affine", str(tmp_path / "a.nii"))
    assert "--out-affine must end in .txt or .tfm" in capsys.readouterr().err
    with pytest.raises(InputError, match="affine must be one of"):
        Registrar(None, affine="yes")
    with pytest.raises(InputError, match="refinement steps must be > 0"):
        Registrar(None, refine_steps=0, affine="auto")  # auto may apply nothing: a no-op


def test_ants_applies_the_itk_file_as_dgan_does(tmp_path, fixed):
    ants = pytest.importorskip("ants", reason="antspyx is not installed (the 'ants' extra)")
    matrix = transform(angles_deg=(4, -3, 10), translation=(3.0, -2.0, 1.5))
    moving = moving_for(matrix)
    paths = {name: str(tmp_path / f"{name}.nii.gz") for name in ("fixed", "moving")}
    dio.save_volume(paths["fixed"], fixed.array, fixed.affine)
    dio.save_volume(paths["moving"], moving.array, moving.affine)
    itk.write_affine(tmp_path / "t.txt", matrix)
    warped = ants.apply_transforms(ants.image_read(paths["fixed"]), ants.image_read(paths["moving"]),
                                   [str(tmp_path / "t.txt")], interpolator="linear").numpy()
    ours = dio.resample_to_grid(daffine.through(moving, matrix), fixed.affine, fixed.shape).array
    inside = ndimage.binary_erosion(fixed.array > 0.05, iterations=2)  # away from the FOV edge
    # both interpolate trilinearly at the same points; ITK computes them in float64 from float32
    # header values: coordinates agree to ~1e-5 voxel, intensities (gradient < 1) to 1e-4
    np.testing.assert_allclose(warped[inside], ours[inside], atol=1e-4)


# --- training on unaligned scans (train_dgan.py --align) ------------------------------------------


def _train_script():
    from dgan.cli import train as train_cli

    return train_cli


def test_training_scans_are_aligned_once_and_cached(tmp_path, monkeypatch):
    truths = {"moving": transform(angles_deg=(0, 0, 20.0)), "fixed1": transform(translation=(0, 7, -4))}
    paths = {"fixed0": str(tmp_path / "fixed0.nii.gz")}
    dio.save_volume(paths["fixed0"], rendered(phantom_labels(), FIXED_CONTRAST), AFFINE)
    for name, truth in truths.items():
        volume = move_content(rendered(phantom_labels(), MOVING_CONTRAST if name == "moving"
                                       else FIXED_CONTRAST), AFFINE, truth, margin_mm=12.0)
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        dio.save_volume(paths[name], volume.array, volume.affine)
    script = _train_script()
    args = script.parser().parse_args(["--moving", paths["moving"], "--fixed", paths["fixed0"],
                                       paths["fixed1"], "--shape", "32", "32", "32",
                                       "--spacing", "0", "--align"])
    config = TrainConfig.for_scans(**script.settings_from_args(args))
    assert config.align and config.to_dict()["align"] is True
    cache = tmp_path / "run" / training.ALIGNED_DIR
    training._dataset_fn(config, cache)
    reference = dio.load_volume(paths["fixed0"])
    for name, truth in truths.items():
        [aligned] = cache.glob(f"{name}-*.nii.gz")
        volume = dio.load_volume(aligned)
        np.testing.assert_array_equal(volume.affine, reference.affine)  # on the reference grid
        matrix = itk.read_affine(aligned.with_name(aligned.name.replace(".nii.gz", ".txt")))
        assert error_mm(reference, matrix, truth) < 1.0  # the recovery bound above
    assert len(list(cache.iterdir())) == 4  # two scans, two transforms; the reference as it is

    def never(*args, **kwargs):
        raise AssertionError("aligned again")

    monkeypatch.setattr(daffine, "estimate_affine", never)
    moving, fixed = prealign.align_scans([paths["moving"]], [paths["fixed0"], paths["fixed1"]],
                                         cache)
    assert fixed[0] == paths["fixed0"] and moving[0].startswith(str(cache))


# --- the benchmark's cases (eval/bench_affine.py) -------------------------------------------------


def test_benchmark_cases_have_the_issues_ranges_and_an_exact_truth(fixed):
    labels = phantom_labels()
    pair = {"fixed": fixed.array, "fixed_t1": rendered(labels, MOVING_CONTRAST),
            "moving": rendered(labels, MOVING_CONTRAST), "moving_labels": labels,
            "fixed_labels": labels}
    cases = make_cases([pair], 3, 2.0, seed=1)
    centre = daffine.centre_of_mass(cases[0].fixed)  # the cases' grid: diag(2 mm), origin 0
    for case in cases:
        linear = case.truth[:3, :3]  # R_z R_y R_x diag(scales) H, H unit upper triangular
        q, r = np.linalg.qr(linear)
        signs = np.sign(np.diag(r))
        rotation, upper = q * signs, signs[:, None] * r  # QR with a positive diagonal
        angles = np.degrees([np.arctan2(rotation[2, 1], rotation[2, 2]),
                             -np.arcsin(rotation[2, 0]),
                             np.arctan2(rotation[1, 0], rotation[0, 0])])
        np.testing.assert_allclose(rotation, daffine.euler_matrix(np.radians(angles)), atol=1e-12)
        assert np.all(np.abs(angles) <= 15.0)
        assert np.all(np.abs(np.diag(upper) - 1) <= 0.10)  # scales
        assert np.all(np.abs((upper / np.diag(upper)[:, None])[np.triu_indices(3, 1)]) <= 0.05)
        translation = case.truth[:3, 3] - centre + linear @ centre
        assert np.all(np.abs(translation) <= 15.0)
        assert case.moving.shape == tuple(n + 2 * 12 for n in SHAPE)  # 24 mm of margin, 2 mm voxels
    [case] = make_cases([pair], 1, 2.0, seed=1, moving_key="moving", resample=False)
    # moving the grid, not the voxels: read through the truth, the moving scan and its labels
    # are the pair's own on the fixed grid (float64 matrix products: 1e-9 voxel, snapped)
    np.testing.assert_array_equal(case.moving.array, pair["moving"])
    on_fixed = sample_through_world(daffine.through(case.moving_labels, case.truth), case.fixed.affine,
                                    np.zeros(SHAPE + (3,), np.float32), order=0)
    np.testing.assert_array_equal(on_fixed, labels)


def test_the_optimisers_sampling_is_trilinear_interpolation_with_a_zero_border(rng):
    """_sample at _corners' eight corners = scipy's order-1 map_coordinates inside the grid;
    outside it the coordinates clip to the grid, whose outer layer is 0 (so, beyond one voxel,
    0); both volumes sampled at one set of corners."""
    from dgan.compat import tf

    volume = np.pad(rng.random((7, 8, 9)).astype(np.float32), 1)  # the zero border
    inside = rng.uniform(0.0, np.array(volume.shape) - 1.0, (200, 3)).astype(np.float32)
    outside = np.array([[-3.0, 4.0, 4.0], [4.0, 20.0, 4.0], [4.0, 4.0, -0.5]], np.float32)
    corners = daffine._corners(tf.shape(volume), tf.constant(np.concatenate([inside, outside])))
    got = daffine._sample(tf.constant(volume), corners).numpy()
    want = ndimage.map_coordinates(volume.astype(np.float64), inside.T.astype(np.float64),
                                   order=1)
    # eight products of weights in [0, 1] and values in [0, 1], summed in float32
    np.testing.assert_allclose(got[:200], want, rtol=0, atol=8 * 4 * np.finfo(np.float32).eps)
    np.testing.assert_array_equal(got[200:], 0.0)
    ones = daffine._sample(tf.ones(volume.shape), corners).numpy()
    np.testing.assert_allclose(ones, 1.0, atol=4 * np.finfo(np.float32).eps)  # partition of unity
