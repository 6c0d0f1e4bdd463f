"""dgan.data.synth: warping against exact shifts, a linear oracle and voxelmorph; random flows;
rendered contrasts with known intensities; the aseg-to-tissue table."""

import numpy as np
import pytest

from dgan.data import synth
from dgan.compat import vxm


def grid(shape):
    """Voxel coordinates, shape = shape + (3,)."""
    return np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(np.float64)


def min_jacobian_determinant(flow):
    """Smallest det(I + grad flow) over the volume (central differences). flow: (X, Y, Z, 3)."""
    jacobian = np.stack([np.stack(np.gradient(flow[..., d]), -1) for d in range(3)], -2)
    return np.linalg.det(jacobian + np.eye(3)).min()


# --- warp ------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1])
def test_zero_flow_is_the_identity(order):
    array = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    np.testing.assert_array_equal(synth.warp(array, np.zeros((6, 7, 8, 3)), order=order), array)


@pytest.mark.parametrize("order", [0, 1])
def test_integer_shift_is_exact(order):
    array = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    flow = np.zeros((6, 7, 8, 3), np.float32)
    flow[..., 0] = 1.0
    moved = synth.warp(array, flow, order=order)
    np.testing.assert_array_equal(moved[:-1], array[1:])  # moved[i] = array[i + 1]
    np.testing.assert_array_equal(moved[-1], array[-1])  # beyond the border: the edge value

    flow = np.zeros((6, 7, 8, 3), np.float32)
    flow[..., 2] = -2.0
    moved = synth.warp(array, flow, order=order)
    np.testing.assert_array_equal(moved[:, :, 2:], array[:, :, :-2])


def test_warp_of_a_linear_function_is_exact():
    shape = (10, 11, 12)
    coefficients = np.array([0.7, -1.3, 2.1])
    array = (grid(shape) @ coefficients + 4.0).astype(np.float32)
    flow = synth.random_smooth_flow(shape, 1.5, 4.0, np.random.default_rng(1))
    moved = synth.warp(array, flow)
    target = grid(shape) + flow
    inside = np.all((target >= 0) & (target <= np.array(shape) - 1), axis=-1)
    assert inside.mean() > 0.5
    expected = target @ coefficients + 4.0
    # trilinear interpolation is exact on a linear function; float32 values <= 35: ulp 3.8e-6
    np.testing.assert_allclose(moved[inside], expected[inside], rtol=1e-5, atol=1e-4)


def test_warp_agrees_with_voxelmorph_spatial_transformer():
    rng = np.random.default_rng(2)
    array = rng.random((9, 10, 8, 2)).astype(np.float32)
    flow = synth.random_smooth_flow((9, 10, 8), 3.0, 4.0, rng)
    flow[0, 0, 0] = [20.0, -5.0, 3.0]  # far outside: both use the edge value
    moved = synth.warp(array, flow)
    reference = vxm.layers.SpatialTransformer()([array[None], flow[None]]).numpy()[0]
    # VoxelMorph interpolates in float32: 8 weighted values <= 1, a few ulps (measured 1.2e-7)
    np.testing.assert_allclose(moved, reference, atol=1e-5)


def test_warp_of_labels_keeps_dtype_and_ids():
    labels = np.random.default_rng(0).choice([0, 4, 41], size=(8, 8, 8)).astype(np.int32)
    flow = synth.random_smooth_flow((8, 8, 8), 1.7, 4.0, np.random.default_rng(0))
    moved = synth.warp(labels, flow, order=0)
    assert moved.dtype == np.int32
    assert set(np.unique(moved)) <= {0, 4, 41}
    assert not np.array_equal(moved, labels)


def test_warp_checks_shapes():
    with pytest.raises(ValueError, match="disagree"):
        synth.warp(np.zeros((4, 4, 4)), np.zeros((4, 4, 5, 3)))


# --- random smooth flows ---------------------------------------------------------------------


@pytest.mark.parametrize("max_displacement", [0.5, 2.5, 4.0])
def test_random_smooth_flow_reaches_exactly_the_requested_maximum(max_displacement):
    flow = synth.random_smooth_flow((16, 20, 12), max_displacement, 6.0, np.random.default_rng(0))
    assert flow.shape == (16, 20, 12, 3) and flow.dtype == np.float32
    lengths = np.linalg.norm(flow.astype(np.float64), axis=-1)
    assert lengths.max() == pytest.approx(max_displacement, rel=1e-5)  # float32 flow: ~1e-7


def test_random_smooth_flow_is_reproducible_by_seed():
    def flow(seed):
        return synth.random_smooth_flow((12, 12, 12), 2.0, 4.0, np.random.default_rng(seed))

    np.testing.assert_array_equal(flow(7), flow(7))
    assert not np.allclose(flow(7), flow(8))
    np.testing.assert_array_equal(flow(7), synth.random_smooth_flow((12, 12, 12), 2.0, 4.0, 7))


def test_random_smooth_flow_is_smooth():
    flow = synth.random_smooth_flow((32, 32, 32), 2.0, 8.0, np.random.default_rng(3))
    neighbour_step = np.abs(np.diff(flow, axis=0)).max()
    assert neighbour_step < 0.5  # 2 voxels over ~8 voxels, never a jump


@pytest.mark.parametrize("shape", [(16, 16, 16), (24, 32, 24), (48, 56, 48)])
def test_default_flows_do_not_fold(shape):
    for seed in range(5):
        flow = synth.random_smooth_flow(shape, rng=np.random.default_rng(seed))
        assert min_jacobian_determinant(flow) > 0.05


def test_random_smooth_flow_needs_a_generator():
    with pytest.raises(TypeError, match="rng"):
        synth.random_smooth_flow((8, 8, 8))


def test_zero_maximum_gives_zero_flow():
    assert not synth.random_smooth_flow((8, 8, 8), 0.0, 4.0, np.random.default_rng(0)).any()


# --- intensities -----------------------------------------------------------------------------


def blob_labels(shape=(20, 20, 20)):
    """Nested spheres: WM core, GM shell, CSF shell, background outside. (X, Y, Z) int32."""
    radius = np.linalg.norm(grid(shape) - (np.array(shape) - 1) / 2, axis=-1)
    labels = np.zeros(shape, np.int32)
    labels[radius < 9] = synth.CSF
    labels[radius < 7] = synth.GREY_MATTER
    labels[radius < 4] = synth.WHITE_MATTER
    return labels


def test_render_contrast_without_corruption_gives_the_intensities():
    labels = blob_labels()
    image = synth.render_contrast(labels, synth.T2_LIKE, np.random.default_rng(0), blur_sigma=0,
                                  bias_strength=0, noise_std=0)
    assert image.dtype == np.float32
    for tissue, value in enumerate(synth.T2_LIKE):
        # the float32 image holds the intensity rounded: 6e-8
        np.testing.assert_allclose(image[labels == tissue], value, rtol=1e-6)


def test_render_contrast_of_probability_maps_equals_that_of_labels():
    labels = blob_labels()
    one_hot = np.eye(4, dtype=np.float32)[labels]
    kwargs = dict(blur_sigma=1.0, bias_strength=0.2, noise_std=0.02)
    from_labels = synth.render_contrast(labels, synth.T2_LIKE, np.random.default_rng(5), **kwargs)
    from_maps = synth.render_contrast(one_hot, synth.T2_LIKE, np.random.default_rng(5), **kwargs)
    np.testing.assert_allclose(from_labels, from_maps, atol=1e-6)  # the same operations: equal


def test_render_contrast_corrupted_keeps_the_t2_order_and_the_background():
    labels = blob_labels()
    image = synth.render_contrast(labels, synth.T2_LIKE, np.random.default_rng(0))
    assert image.min() == 0.0 and image.max() == 1.0
    means = [image[labels == tissue].mean() for tissue in range(4)]
    assert means[synth.CSF] > means[synth.GREY_MATTER] > means[synth.WHITE_MATTER] > 0.1
    far = np.linalg.norm(grid(labels.shape) - 9.5, axis=-1) > 13  # beyond the blur
    assert not image[far].any()


def test_render_contrast_checks_its_input():
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        synth.render_contrast(np.full((4, 4, 4), 4), synth.T2_LIKE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="probability maps"):
        synth.render_contrast(np.zeros((4, 4, 4, 3)), synth.T2_LIKE, np.random.default_rng(0))


def test_random_intensity_augmentation():
    labels = blob_labels()
    image = np.array(synth.T2_LIKE, np.float32)[labels]
    out = synth.random_intensity_augmentation(image, np.random.default_rng(1))
    again = synth.random_intensity_augmentation(image, np.random.default_rng(1))
    other = synth.random_intensity_augmentation(image, np.random.default_rng(2))
    np.testing.assert_array_equal(out, again)
    assert not np.allclose(out, other)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_array_equal(out[labels == 0], 0.0)  # the background stays zero
    assert np.abs(out - image)[labels > 0].mean() > 0.01  # it did change something
    # contrast survives: CSF brighter than WM
    assert out[labels == synth.CSF].mean() > out[labels == synth.WHITE_MATTER].mean()


# --- aseg ------------------------------------------------------------------------------------


def test_aseg_to_tissue():
    ids = [0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 31, 41, 42, 43,
           44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60, 63, 72, 77, 85, 251, 255, 1000]
    expected = [0, 3, 2, 1, 1, 3, 2, 2, 2, 2, 2, 1, 1, 3, 2, 2, 1, 2, 2, 1, 3, 2, 1,
                1, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 3, 3, 3, 3, 0]
    seg = np.array(ids, dtype=np.float64).reshape(1, 1, -1)
    tissue = synth.aseg_to_tissue(seg)
    assert tissue.dtype == np.int32
    np.testing.assert_array_equal(tissue.ravel(), expected)
    with pytest.raises(ValueError, match="integers"):
        synth.aseg_to_tissue(np.array([[[2.5]]]))


# --- tissue maps consistent with a T1 ----------------------------------------------------------


def t1_and_aseg(shape=(20, 20, 20)):
    """A skull-stripped T1 (X, Y, Z) and its aseg, like the real one: the T1's brain (radius 9)
    is larger than the labelled region. Labelled: WM (aseg 2, T1 0.9) core, cortex (3, T1 0.5)
    shell, a ventricle (4, T1 0.2); unlabelled (aseg 0): the extra-cerebral shell 7 < r < 9
    (dark CSF, T1 0.2) and a sulcus slab through the cortex (partial volume, T1 0.35)."""
    radius = np.linalg.norm(grid(shape) - (np.array(shape) - 1) / 2, axis=-1)
    seg = np.zeros(shape, np.int32)
    t1 = np.zeros(shape, np.float32)
    t1[radius < 9], seg[radius < 7] = 0.2, 3
    t1[radius < 7] = 0.5
    seg[radius < 4], t1[radius < 4] = 2, 0.9
    seg[9:11, 9:11, 9:11], t1[9:11, 9:11, 9:11] = 4, 0.2
    sulcus = (radius >= 4.5) & (radius < 7) & (np.abs(grid(shape)[..., 2] - 9.5) < 1)
    seg[sulcus], t1[sulcus] = 0, 0.35
    return t1, seg, radius, sulcus


def test_brain_tissue_maps_give_every_brain_voxel_a_tissue():
    t1, seg, radius, sulcus = t1_and_aseg()
    maps = synth.brain_tissue_maps(seg, t1)
    assert maps.shape == t1.shape + (4,) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-6)  # p and 1 - p in float32: an ulp
    brain = radius < 9
    assert np.array_equal(synth.brain_mask(t1, seg), brain)
    assert not maps[brain, synth.BACKGROUND].any() and (maps[~brain, synth.BACKGROUND] == 1).all()
    shell = (radius >= 7) & brain
    np.testing.assert_array_equal(maps[shell, synth.CSF], 1.0)  # T1 0.2 = the CSF median
    # sulcus T1 0.35: halfway between the CSF (0.2) and grey-matter (0.5) medians (float32
    # values rounded to 3e-8, one subtraction and division: ~1e-7)
    np.testing.assert_allclose(maps[sulcus, synth.GREY_MATTER], 0.5, atol=1e-6)
    np.testing.assert_allclose(maps[sulcus, synth.CSF], 0.5, atol=1e-6)
    labelled = seg > 0
    np.testing.assert_array_equal(maps[labelled], np.eye(4)[synth.aseg_to_tissue(seg)][labelled])


def test_rendering_from_brain_tissue_maps_leaves_no_brain_voxel_at_background():
    t1, seg, radius, _ = t1_and_aseg()
    brain = radius < 9
    clean = dict(blur_sigma=0, bias_strength=0, noise_std=0)
    # the aseg alone renders the unlabelled brain as background: the inconsistency fixed here
    from_aseg = synth.render_contrast(synth.aseg_to_tissue(seg), synth.T2_LIKE,
                                      np.random.default_rng(0), **clean)
    assert (from_aseg[brain] == 0).sum() > 1000
    image = synth.render_contrast(synth.brain_tissue_maps(seg, t1), synth.T2_LIKE,
                                  np.random.default_rng(0), **clean)
    # darkest; the float32 image holds the intensity rounded (6e-8; approx's rel 1e-6)
    assert image[brain].min() == pytest.approx(synth.T2_LIKE[synth.WHITE_MATTER])
    assert not image[~brain].any()
    corrupted = synth.render_contrast(synth.brain_tissue_maps(seg, t1), synth.T2_LIKE,
                                      np.random.default_rng(0))
    # 1 voxel inside the edge (blur 1) the darkest tissue is white matter, 0.3; bias exp(+-0.2),
    # noise 0.02 (6 sigma), scaled by 1 / (99.5th percentile <= 1.0 * exp(0.2) + 6 * 0.02):
    # >= (0.3 * exp(-0.2) - 0.12) / 1.34 = 0.094
    assert corrupted[brain & (radius < 8)].min() > 0.05


def test_brain_mask_checks_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        synth.brain_mask(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
