"""The settings a run starts from: named presets over :class:`dgan.training.config.TrainConfig`'s
defaults (:meth:`~dgan.training.config.TrainConfig.from_preset`).

Each preset is a dict of ``TrainConfig`` fields; ``network``, ``loss`` and ``refine`` are dicts
of :class:`dgan.core.networks.NetworkConfig`, :class:`dgan.training.trainers.LossWeights` and
:class:`dgan.registration.settings.RefineConfig` fields, merged key by key with what the caller
gives.
"""

from ..core.settings import DEFAULT_PASSES

#: Small networks for the demo's coarse grid, cheap enough for a CPU. T predicts its field at
#: half resolution (the demo's deformations are smooth), which costs less per update and learns
#: as much per step. G is residual, so that it starts as the identity (see
#: :class:`~dgan.core.networks.NetworkConfig`); D pools its input by 2, for a cheaper update.
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
#: voxels and would span 35-45 mm at 5 mm, so they are scaled down. alpha = 0.05: on the demo
#: pairs the true deformation's smoothness cost at alpha = 1 outweighs what it gains in L_LCC and
#: L_LG, so the identity would be (nearly) optimal and T would learn nothing
#: (docs/notes/training-log.md). G's weights mu = 10, lambda = 1, as the brain preset's (G
#: translates F(phi) rather than drawing R), and the smoothness term on T's whole field (the
#: paper's), which lets T's residual smooth the block matching's field: with constant learning
#: rates, T's held-out Dice rises over the run instead of falling below its start
#: (docs/notes/2026-12-07-demo-training.md).
DEMO_LOSS = {"lg_window": 3, "lcc_window": 5, "alpha": 0.05, "mu": 10.0, "lam": 1.0,
             "smooth": "flow"}

#: Instance refinement (:mod:`dgan.registration.refine`) of the demo model's fields: one level
#: on the demo grid with the field on a grid 4 times coarser (the demo's deformations have a
#: 16-voxel control spacing). Its windows and beta come from the training loss. The paper's eps
#: in L_LG (``lg_noise`` 0): these settings were chosen with it, and the eps from each scan's
#: own gradient scale (made for pairs of real scans, each with its own noise) lowered the demo
#: model's refinement below T alone (docs/notes/2026-12-07-speed.md, section 9).
DEMO_REFINE = {"steps": 100, "levels": [1], "control": 4, "learning_rate": 0.25, "alpha": 0.05,
               "lg_noise": 0.0}

#: Refinement of a trained model leaves out L_LCC(R, G(F)(phi)) by default (w_lcc = 0): G
#: trained with lambda L1(F'(phi), R) learns to render R's anatomy whatever the alignment, and
#: the term then holds the field back (docs/notes/training-log.md).
REFINE_DEFAULTS = {"w_lcc": 0.0}

#: G's learning rate: 1e-3 on the demo, where G must learn the T1 -> T2 contrast within a few
#: hundred steps; pix2pix's 2e-4 otherwise.
DEMO_LR_G = 1e-3
DEFAULT_LR_G = 2e-4

#: The demo's step budget: short enough for the README's first command on a CPU; T's accuracy
#: there is mostly its block matching's (docs/notes/training-log.md).
DEMO_STEPS = 300


#: The networks of the brain baselines (``dgan-train-baselines``, every method the same T): the
#: demo's (G and D lighter than T, G residual, D pooling its input by 2) with T's field at full
#: resolution, as VoxelMorph's VxmDense cannot predict a coarser one; block matching aside (the
#: presets add it to the methods that have it).
BASELINE_NETWORK = {**{k: v for k, v in DEMO_NETWORK.items() if k != "matching"},
                    "int_steps": 0, "flow_resolution": 1}
#: How the brain baselines run every method, on the brain benchmark or the demo data: those
#: networks, constant learning rates, held-out Dice and the loss log every 25 steps.
BASELINE_RUN = {"network": BASELINE_NETWORK, "lr_decay": "constant", "validate_every": 25,
                "log_every": 25}

#: The paper's windows (n = 7, LCC 9) are for ~1 mm voxels; on grids this coarse or coarser (mm)
#: the demo's (3, 5) are used instead (the brain preset's, for its 4 mm grid).
COARSE_GRID_MM = 3.0
COARSE_WINDOWS = {"lg_window": 3, "lcc_window": 5}

#: The brain preset's training grid (mm): the brain benchmark at 4 mm, 40 x 48 x 56.
BRAIN_SPACING_MM = 4.0
#: The brain preset's step budget (docs/notes/training-log.md: at 600 steps Deform-GAN's T is
#: above the ablation without G and D, at 150 they tie).
BRAIN_STEPS = 600
#: G's weights on the brain benchmark: mu 10, lambda 1 (the paper's pix2pix-style 1 and 10 the
#: other way round), so that G translates F(phi), keeping its local-gradient structure, rather
#: than drawing R: T's term L_LCC(R, G(F(phi))) then no longer pulls T off its block matching
#: (docs/notes/training-log.md).
BRAIN_LOSS = {**COARSE_WINDOWS, "mu": 10.0, "lam": 1.0}
#: The grid, in mm, at which a brain model's T registers by default: the benchmark's 2 mm, finer
#: than the 4 mm it trains on and more accurate (docs/notes/training-log.md).
BRAIN_NETWORK_SPACING_MM = 2.0
#: The refinement saved in a brain model folder (and run at its first and last validation): 10
#: iterations per level with the L_LCC term through G (w_lcc 1) and alpha 4, which does not fold
#: with that term (docs/notes/training-log.md). A model without G (the ablation, VoxelMorph)
#: refines with L_LG and smoothness alone.
BRAIN_REFINE = {"steps": 10, "w_lcc": 1.0, "alpha": 4.0}


#: The presets :meth:`TrainConfig.from_preset` knows: settings over the dataclass defaults.
#: ``demo``: the embedded demo data's coarse grid (the values above); ``scans``: your scans at
#: about 1 mm (the paper's windows and weights, pix2pix's learning rate for G); ``brain``: the
#: brain benchmark's training scans at 4 mm, as ``dgan-train-baselines --data brain`` trains
#: Deform-GAN (its models register at 2 mm).
PRESETS = {
    "demo": {"network": DEMO_NETWORK, "loss": DEMO_LOSS, "refine": DEMO_REFINE,
             "lr_g": DEMO_LR_G, "steps": DEMO_STEPS, "lr_decay": "constant"},
    "scans": {"lr_g": DEFAULT_LR_G, "network": {"matching": [list(p) for p in DEFAULT_PASSES]}},
    "brain": {**BASELINE_RUN,
              "network": {**BASELINE_NETWORK, "matching": [list(p) for p in DEFAULT_PASSES]},
              "loss": BRAIN_LOSS, "refine": BRAIN_REFINE, "lr_g": DEFAULT_LR_G,
              "steps": BRAIN_STEPS, "spacing": BRAIN_SPACING_MM,
              "network_spacing": BRAIN_NETWORK_SPACING_MM},
}
#: Every preset gives T its block-matching front end (:mod:`dgan.core.matching`), which registers
#: more than the paper's T learns in a CPU's step budget (docs/notes/training-log.md); VoxelMorph's
#: VxmDense (method ``vxm``) is VoxelMorph as its users know it, without it.
