"""A training-free stand-in for G: the moving scan rendered in the fixed modality by the
conditional mean of the fixed intensities given the moving ones.

Deform-GAN's G translates the moving image F into the fixed modality, so that refinement
(:mod:`dgan.registration.refine`) can add the mono-modal term L_LCC(R, G(F)(phi)) to the
modality-independent L_LG. Without a trained G there is no such term. Where the two contrasts are
related by a function of intensity (tissue by tissue, as T1 and T2 or PD of one subject largely
are), the least-squares estimate of that function is the conditional mean

    h(f) = E[R(p) | F(phi(p)) = f]

over the voxels p where both scans have data, read from their joint histogram at the alignment
phi found so far (Roche et al. 1998, the correlation ratio's regression). h is then a G that
needs no training: refinement compares R with h(F(phi)). It is global, so a bias
field or a contrast that no function of intensity explains leaves a residual; L_LCC is local
(a window's mean and scale are its own), which absorbs a slow bias.

h is piecewise linear through the points (mean of F, mean of R) of every histogram bin that holds
at least :data:`MIN_BIN_VOXELS` voxels, and constant beyond the outermost ones; it is kept as a
table of its values at equally spaced intensities (:class:`Rendering`), which refinement applies
to the warped moving scan, h(F(phi)) (a model's G runs once, on F, and its output is warped:
G(F)(phi)). NumPy and SciPy only (the warp: :func:`dgan.data.synth.warp`).
"""

import dataclasses

import numpy as np

from ..data import synth

#: Bins of the moving scan's intensities for :func:`rendering`.
DEFAULT_BINS = 64

#: A bin with fewer voxels than this is too noisy to estimate h at: h interpolates across it.
MIN_BIN_VOXELS = 20

#: Samples of h in a :class:`Rendering` (equally spaced over F's range): four per bin, so that the
#: table's linear interpolation follows h's knots within a quarter of a bin.
TABLE_SAMPLES = 4 * DEFAULT_BINS + 1


@dataclasses.dataclass(frozen=True, eq=False)
class Rendering:
    """h as a table: its values at :data:`TABLE_SAMPLES` equally spaced intensities from ``low``
    to ``high``, linear between them, constant beyond. Refinement applies it to the warped
    moving scan, h(F(phi)), inside its objective (:mod:`dgan.registration.refine`): one warped
    channel instead of two (F and h(F)), which at 1 mm is most of refinement's memory.

    :param low: the first sample's intensity
    :param high: the last sample's intensity (> low)
    :param values: h at the samples, float32 (TABLE_SAMPLES,)
    """

    low: float
    high: float
    values: np.ndarray

    def __call__(self, array):
        """h(array), NumPy, float32."""
        positions = np.linspace(self.low, self.high, len(self.values))
        return np.interp(np.asarray(array, np.float32), positions, self.values).astype(np.float32)


def rendering(moving, fixed, flow=None, mask=None, bins=DEFAULT_BINS):
    """h of the module docstring, estimated on the pair, as a :class:`Rendering`.

    :param moving: F, shape = (X, Y, Z), on the fixed grid (not yet warped by ``flow``)
    :param fixed: R, same shape
    :param flow: phi, the alignment at which h is estimated, voxels (X, Y, Z, 3), or None: the
        identity
    :param mask: where both scans have data, bool (X, Y, Z), or None: everywhere; voxels where
        both scans read 0 (the background of skull-stripped scans) are left out as well
    :param bins: number of equal-width bins over F's range
    :return: :class:`Rendering`, or None when fewer than two bins hold :data:`MIN_BIN_VOXELS`
        voxels (no function to read)
    """
    moving = np.asarray(moving, np.float32)
    fixed = np.asarray(fixed, np.float32)
    warped = moving if flow is None else synth.warp(moving, flow)
    region = (warped != 0) | (fixed != 0)
    if mask is not None:
        region &= np.asarray(mask, bool)
    low, high = float(moving.min()), float(moving.max())
    if not region.any() or high <= low:
        return None
    values = warped[region].astype(np.float64)
    index = np.clip(((values - low) / (high - low) * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    kept = counts >= MIN_BIN_VOXELS
    if np.count_nonzero(kept) < 2:
        return None
    mean_moving = np.bincount(index, weights=values, minlength=bins)[kept] / counts[kept]
    mean_fixed = np.bincount(index, weights=fixed[region], minlength=bins)[kept] / counts[kept]
    samples = np.linspace(low, high, TABLE_SAMPLES)
    return Rendering(low, high, np.interp(samples, mean_moving, mean_fixed).astype(np.float32))

