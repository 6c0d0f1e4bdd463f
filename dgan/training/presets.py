"""The settings a run starts from: named presets over :class:`dgan.training.config.TrainConfig`'s
defaults (:meth:`~dgan.training.config.TrainConfig.from_preset`).

Each preset is a dict of ``TrainConfig`` fields; ``network``, ``loss`` and ``refine`` are dicts
of :class:`dgan.core.networks.NetworkConfig`, :class:`dgan.training.trainers.LossWeights` and
:class:`dgan.registration.refine.RefineConfig` fields, merged key by key with what the caller
gives.
"""

from ..core.matching import DEFAULT_PASSES

#: Small networks that train in minutes on two CPU cores at the demo size. T predicts its field
#: at half resolution (the demo's deformations are smooth): a T update takes 0.56 s instead of
#: 1.3 s on two cores and learns as much per step (measured). G is residual, so that it starts
#: as the identity (see :class:`~dgan.core.networks.NetworkConfig`); D pools its input by 2, which
#: makes its update six times cheaper.
DEMO_NETWORK = {
    "t_features": [[16, 32, 32], [32, 32, 32, 16, 16]],
    "g_features": [[8, 16, 16], [16, 16, 16, 8]],
    "g_residual": True,
    "d_features": 8,
    "d_layers": 2,
    "d_pool": 2,
    "flow_resolution": 2,
    "matching": [list(p) for p in DEFAULT_PASSES],
}

#: Loss settings for the demo's coarse grid: the paper's windows (n = 7, LCC 9) are for ~1 mm
#: voxels and would span 35-45 mm here, so they are scaled down. G's weights are the paper's
#: (mu = 1, lambda = 10); with G residual there is no need to warm up T's LCC term.
#: alpha = 0.05: on the demo pairs, undoing the true deformation raises L_LCC by about 0.11 and
#: L_LG (n = 3) by 0.04 but costs 0.09-0.13 in sum |grad phi|^2, so with alpha = 1 the identity
#: is (nearly) optimal and T learns nothing.
DEMO_LOSS = {"lg_window": 3, "lcc_window": 5, "lcc_warmup": 0, "alpha": 0.05, "mu": 1.0,
             "lam": 10.0}

#: Instance refinement (:mod:`dgan.registration.refine`) of the demo model's fields, measured on the demo's
#: validation pairs from the identity (docs/notes/training-log.md): one level on the demo grid with the
#: field on a grid 4 times coarser (the demo's deformations have a 16-voxel control spacing).
#: Its windows and beta come from the training loss (:meth:`TrainConfig.refine_config`).
DEMO_REFINE = {"steps": 100, "levels": [1], "control": 4, "learning_rate": 0.25, "alpha": 0.05}

#: Refinement of a trained model leaves out L_LCC(R, G(F)(phi)) by default (w_lcc = 0): G
#: trained with lambda L1(F'(phi), R) learns to render R's anatomy whatever the alignment, and
#: the term then holds the field back. On the demo's validation pairs, refining the same trained
#: T's fields gave 0.501 with the term and 0.657 without it (docs/notes/training-log.md, entry 8).
REFINE_DEFAULTS = {"w_lcc": 0.0}

#: G's learning rate: 1e-3 on the demo, where G must learn the T1 -> T2 contrast within a few
#: hundred steps; pix2pix's 2e-4 otherwise.
DEMO_LR_G = 1e-3
DEFAULT_LR_G = 2e-4

#: The demo's step budget: a demo step takes about 1.3 s on two cores of an AMD EPYC without
#: AVX-512, so 300 steps keep the README's first command within 10 minutes of training; T's
#: accuracy there is mostly its block matching's (docs/notes/training-log.md, entries 10 and 11).
DEMO_STEPS = 300


#: The presets :meth:`TrainConfig.from_preset` knows: settings over the dataclass defaults.
#: ``demo``: the embedded demo data's coarse grid (the values above); ``scans``: your scans at
#: about 1 mm (the paper's windows and weights, pix2pix's learning rate for G).
PRESETS = {
    "demo": {"network": DEMO_NETWORK, "loss": DEMO_LOSS, "refine": DEMO_REFINE,
             "lr_g": DEMO_LR_G, "steps": DEMO_STEPS},
    "scans": {"lr_g": DEFAULT_LR_G, "network": {"matching": [list(p) for p in DEFAULT_PASSES]}},
}
#: Both presets give T its block-matching front end (:mod:`dgan.core.matching`; docs/notes/training-log.md,
#: entry 9): on the demo it alone scores 0.633 against 0.496 for 400 steps of the paper's T.
#: VoxelMorph's VxmDense (method ``vxm``) is VoxelMorph as its users know it, without it.
