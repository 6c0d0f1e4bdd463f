"""A training run's settings free of TensorFlow: what dgan-train, dgan-train-baselines and
dgan-evaluate quote in ``--help`` before TensorFlow starts (the methods' names, the schedules, the
strategies, :class:`LossWeights`)."""

from dataclasses import asdict, dataclass

from ..core.settings import DEFAULT_LCC_WINDOW, DEFAULT_LG_WINDOW, SMOOTHED_FIELDS, without_retired

#: The methods a run trains (:data:`dgan.training.config.METHODS`), with their readable names,
#: as the evaluation tables show them.
METHOD_NAMES = {
    "deformgan": "Deform-GAN",
    "vxm": "VoxelMorph (MI)",
    "lcc": "T + LCC (no G, D)",
}
#: The schedules :func:`dgan.training.schedules.learning_rate` knows.
SCHEDULES = ("constant", "linear")
#: The strategies of :mod:`dgan.training.distribute`.
STRATEGIES = ("auto", "one", "mirrored", "multiworker")


#: Settings of experiments that were not kept (docs/notes/training-log.md), with the value that
#: is today's behaviour: a saved configuration may name them at that value, and no other.
RETIRED = {"lcc_warmup": 0, "translate": "moved", "lg_reference": "fixed"}


@dataclass(frozen=True)
class LossWeights:
    """The loss configuration of every method: the paper's weights and window sizes, and
    VoxelMorph's for the VxmDense baseline.

    :param alpha: weight of the smoothness term sum |grad phi|^2 in L_T. The sum runs over all 9
        derivatives dphi_c/dx_d, where VoxelMorph's ``Grad('l2')`` averages them, so alpha = 1 is
        VoxelMorph's lambda = 9 and VoxelMorph's lambda = 1 (its advice for NCC) is alpha = 1/9
    :param beta: weight of the local-gradient term L_LG(R, F(phi)) in L_T
    :param mu: weight of the local-gradient term L_LG(F'(phi), F(phi)) in L_G
    :param lam: lambda, weight of L1(F'(phi), R) in L_G
    :param lg_window: n, the local-gradient neighbourhood (n^3 voxels); 7 is the paper's best
    :param lcc_window: the local cross-correlation window
    :param w_lcc: weight of the L_LCC term in L_T (Deform-GAN: L_LCC(R, F'(phi)); T alone:
        L_LCC(R, F(phi))); 1 in the paper, 0 leaves T with L_LG and smoothness
    :param vxm_lambda: VoxelMorph's lambda in ``-MI(R, F(phi)) + lambda * Grad_l2(phi)``
        (the VxmDense baseline only)
    :param mi_bins: histogram bins of VoxelMorph's soft mutual information (VxmDense only)
    :param smooth: the field the smoothness term acts on when T has block matching
        (:mod:`dgan.core.matching`): ``"residual"``, the U-Net's residual r alone, or ``"flow"``,
        the composed phi (the paper's term, on T's whole field). phi_0 is the matching's own
        smoothed estimate and gets no gradient, so a penalty on phi's roughness can only be lowered
        by an r that undoes phi_0 (docs/notes/training-log.md). Without matching both are phi.
    """

    alpha: float = 1.0
    beta: float = 1.0
    mu: float = 1.0
    lam: float = 10.0
    lg_window: int = DEFAULT_LG_WINDOW
    lcc_window: int = DEFAULT_LCC_WINDOW
    w_lcc: float = 1.0
    vxm_lambda: float = 1.0
    mi_bins: int = 16
    smooth: str = "residual"

    def __post_init__(self):
        if self.smooth not in SMOOTHED_FIELDS:
            raise ValueError(f"smooth must be one of {', '.join(SMOOTHED_FIELDS)}, "
                             f"got {self.smooth!r}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, settings):
        """Loss settings as saved (``config.json``), :data:`RETIRED` settings left out."""
        return cls(**without_retired(settings, RETIRED))
