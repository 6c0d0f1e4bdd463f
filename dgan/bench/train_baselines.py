"""``dgan-train-baselines``: train Deform-GAN and its learned baselines on the same data with the
same step budget, each through the one training run (``dgan.training.run.train``);
``python eval/train_baselines.py`` runs the same.

Methods (``--methods``, default all): ``deformgan`` (Deform-GAN), ``vxm`` (VoxelMorph's VxmDense,
same U-Net, loss -MI + lambda Grad_l2) and ``lcc`` (T alone with LCC(fixed, moved), the local
gradient and smoothness, no G and D). All take their loss settings from the one loss configuration
(``dgan.training.trainers.LossWeights``: the same alpha, beta and windows for every method). Each
run folder ``<out>/<method>/`` holds what any training run writes (config.json, losses.csv,
checkpoints/, tensorboard/, results.json, ...) and ends in ``<out>/<method>/model/``, a dgan model
folder for dgan-evaluate, and ``<out>/learning_curves.png`` draws every method's held-out Dice
against the step (TensorBoard: ``tensorboard --logdir <out>`` shows the runs side by side).
Examples::

    # brain benchmark, 4 mm training grid (40 x 48 x 56), 600 steps each (the defaults)
    dgan-train-baselines --data brain --out runs/baselines
    # embedded demo data (the demo preset's loss and refinement settings)
    dgan-train-baselines --data demo --steps 200 --out runs/baselines-demo
    # continue every run to 400 steps
    dgan-train-baselines --resume --steps 400 --out runs/baselines-demo

With ``--data brain``, the training scans (T1 moving, T2-like fixed, unpaired, seed 1000) and
validation pairs (seed 2000) are first written to ``<out>/data/``; the evaluation pairs use seed
0. Deform-GAN alone can be trained on the same files with dgan-train (``--moving
<out>/data/moving --fixed <out>/data/fixed --val-pairs <out>/data/val_pairs.csv``).
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ..core.networks import parse_features
from ..data import demo
from ..errors import InputError, TrainingDiverged
from ..evaluation import figures
from ..training.config import METHOD_NAMES, METHODS, TrainConfig, network_for_method
from ..training.run import train
from ..training.schedules import SCHEDULES
from ..training.trainers import LossWeights
from ..training.validation import VALIDATION_CSV, read_validation_history
from . import brain
from .options import add_brain_file_arguments, show_warnings


#: The networks every method trains with (T's U-Net, and Deform-GAN's G and D); dgan-bench-speed
#: times these. G and D are lighter than T; D pools its input by 2, as on the demo.
T_FEATURES = "16,32,32/32,32,32,16,16"
G_FEATURES = "8,16,16/16,16,16,8"
D_NETWORK = {"d_features": 8, "d_layers": 2, "d_pool": 2}


def model_folder(run_root, method):
    """Where dgan-train-baselines leaves ``method``'s model folder under ``run_root``."""
    return os.path.join(os.fspath(run_root), method, "model")


def parser():
    p = argparse.ArgumentParser(prog="dgan-train-baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS,
                   default=list(METHODS))
    p.add_argument("--out", required=True, help="output folder: <out>/<method>/ per method")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs in <out>/<method>/ (with --steps: a new budget)")
    data = p.add_argument_group("data")
    data.add_argument("--data", choices=("brain", "demo"), default="brain")
    add_brain_file_arguments(data, labels=False)
    data.add_argument("--resolution", type=float, default=4.0,
                      help="brain: training voxel size in mm (default 4: 40 x 48 x 56)")
    data.add_argument("--network-spacing", type=float, metavar="MM",
                      help="the voxel size in mm at which the model folders have dgan-register "
                           f"run T (default {BRAIN_NETWORK_SPACING_MM:g} with --data brain, the "
                           "benchmark's grid: a T trained at 4 mm registers its pairs more "
                           "accurately there; else the training grid)")
    data.add_argument("--n-train", type=int, default=8,
                      help="brain: moving and fixed training scans (default 8 each)")
    data.add_argument("--n-val", type=int, default=4, help="validation pairs (default 4)")
    data.add_argument("--shape", type=int, nargs=3,
                      help="network grid (default: the brain grid, or the demo's "
                           f"{' '.join(map(str, demo.DEMO_SHAPE))})")
    data.add_argument("--spacing", type=float,
                      help=f"demo: voxel size in mm (default {demo.DEMO_SPACING:g})")
    run = p.add_argument_group("the same budget for every method")
    run.add_argument("--steps", type=int,
                     help=f"training steps (default {BRAIN_STEPS} with --data brain, "
                          f"{DEFAULT_STEPS} on the demo)")
    run.add_argument("--validate-every", type=int, default=25,
                     help="held-out Dice every this many steps (default 25; 0: first and last)")
    run.add_argument("--batch-size", type=int, default=1)
    run.add_argument("--lr", type=float,
                     help="learning rate of the registration network (default: each method's "
                          "own, 1e-3 for T and 1e-4 for VxmDense, VoxelMorph's default, at which "
                          "it does not diverge)")
    run.add_argument("--lr-decay", choices=SCHEDULES, default="constant",
                     help="the learning rates' schedule (default constant)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--t-features", default=T_FEATURES,
                     help="T's (and VxmDense's) U-Net features (default %(default)s)")
    run.add_argument("--g-features", default=G_FEATURES, help="Deform-GAN's G")
    run.add_argument("--g-residual", action=argparse.BooleanOptionalAction, default=True,
                     help="Deform-GAN's G as the identity plus a learnt correction (default on, "
                          "as on the demo, where the paper's sigmoid G stayed flat grey)")
    run.add_argument("--d-features", type=int, default=D_NETWORK["d_features"],
                     help="Deform-GAN's D: features")
    run.add_argument("--d-layers", type=int, default=D_NETWORK["d_layers"],
                     help="Deform-GAN's D: strided layers (default 2)")
    run.add_argument("--d-pool", type=int, default=D_NETWORK["d_pool"],
                     help="Deform-GAN's D: average-pools its input by this factor (default 2, "
                          "as on the demo: a cheaper update)")
    run.add_argument("--int-steps", type=int, default=0)
    run.add_argument("--refine-steps", type=int,
                     help="refinement iterations per level at the first and last validation and "
                          "in the model folders (default 10 with --data brain, with the L_LCC "
                          "term through G and alpha 4: BRAIN_REFINE; else the preset's; 0: T "
                          "alone)")
    run.add_argument("--log-every", type=int, default=25)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    loss = p.add_argument_group("losses (one configuration for every method)")
    loss.add_argument("--alpha", type=float, help="smoothness weight (Deform-GAN, lcc)")
    loss.add_argument("--beta", type=float, help="local-gradient weight (Deform-GAN, lcc)")
    loss.add_argument("--mu", type=float,
                      help="Deform-GAN: weight of L_LG(F'(phi), F(phi)) in G's loss (default "
                           f"{BRAIN_G_LOSS['mu']:g} with --data brain, else the preset's)")
    loss.add_argument("--lambda", dest="lam", type=float,
                      help="Deform-GAN: weight of L1(F'(phi), R) in G's loss (default "
                           f"{BRAIN_G_LOSS['lam']:g} with --data brain, else the preset's)")
    loss.add_argument("--vxm-lambda", type=float,
                      help=f"VoxelMorph: weight of Grad_l2 (default {LossWeights.vxm_lambda:g})")
    loss.add_argument("--mi-bins", type=int,
                      help=f"VoxelMorph: mutual-information bins (default {LossWeights.mi_bins})")
    loss.add_argument("--lg-window", type=int,
                      help="local-gradient neighbourhood n (default 3 on grids of 3 mm or "
                           f"coarser, as on the demo's, else {LossWeights.lg_window})")
    loss.add_argument("--lcc-window", type=int,
                      help="LCC window (default 5 on grids of 3 mm or coarser, as on the "
                           f"demo's, else {LossWeights.lcc_window})")
    return p


#: The step budget on the embedded demo data (each step a fraction of a brain step's cost).
DEFAULT_STEPS = 150
#: The step budget on the brain benchmark: 600 steps. Deform-GAN's take 9.8 minutes at 4 mm on two
#: cores of an AMD EPYC with AVX-512 (the ablation 6.7, VoxelMorph 3.8; validations, and the
#: refinement at the first and last, included), inside the 20 minutes a method may take; on the same
#: CPU model without AVX-512 a step took 4.6 s (entry 12), so there 600 steps take well over 20
#: minutes and ``--steps 150`` is the budget (13 minutes). At 150 steps Deform-GAN's T ties with the
#: ablation on the 2 mm benchmark (0.7405 against 0.7416); at 600 it is above it with two seeds
#: (0.7469 against 0.7443 and 0.7481 against 0.7462; docs/notes/training-log.md, entry 25).
BRAIN_STEPS = 600

#: The paper's windows (n = 7, LCC 9) are for ~1 mm voxels; on grids this coarse or coarser
#: (mm) the demo's (3, 5) are the default, as the paper's would span 28-36 mm at 4 mm.
COARSE_GRID_MM = 3.0
COARSE_WINDOWS = {"lg_window": 3, "lcc_window": 5}

#: G's weights on the brain benchmark: mu 10, lambda 1 (the paper's pix2pix-style 1 and 10 the
#: other way round), so that G translates F(phi), keeping its local-gradient structure, rather
#: than drawing R: T's term L_LCC(R, G(F(phi))) then no longer pulls T off its block matching
#: (held-out Dice at step 150: 0.584 against 0.563; docs/notes/training-log.md, entry 15).
BRAIN_G_LOSS = {"mu": 10.0, "lam": 1.0}

#: The grid, in mm, at which a brain model's T registers by default: the benchmark's 2 mm, where
#: Deform-GAN's T, trained at 4 mm, scores 0.741 against 0.670 on its own 4 mm grid
#: (docs/notes/training-log.md, entry 19).
BRAIN_NETWORK_SPACING_MM = 2.0
#: The refinement saved in a brain model folder (and run at its first and last validation):
#: 10 iterations per level with the L_LCC term through G (w_lcc 1) and alpha 4. After T at 2 mm
#: on the benchmark's 8 pairs this scores 0.747 against T alone's 0.741, above it on 8 of 8
#: pairs, in 0.31 of ANTs SyN-MI's time (6.8 s a pair); 25 iterations score 0.745 in twice the
#: time, alpha 1 folds 0.12 % of the voxels, and without the term refinement adds nothing
#: (docs/notes/training-log.md, entries 21, 23 and 24). A model without G (the ablation, VoxelMorph)
#: refines with L_LG and smoothness alone.
BRAIN_REFINE = {"steps": 10, "w_lcc": 1.0, "alpha": 4.0}

#: Each method's own learning rate unless --lr gives one: T's, and VoxelMorph's for VxmDense.
T_LR, VXM_LR = 1e-3, 1e-4


def learning_rate(method, given=None):
    """The registration network's learning rate for ``method``: ``given`` (--lr), else the
    method's own (:data:`T_LR`, :data:`VXM_LR`)."""
    return given or (VXM_LR if method == "vxm" else T_LR)


def train_config(args, out):
    """The :class:`dgan.TrainConfig` every method trains with (``method`` aside): the
    demo preset on the demo data, the preset for scans on the brain benchmark, and the
    options given over it (an option left out keeps the preset's value). Every method has
    flow_resolution 1 (VxmDense cannot have another), so that T is the same network for all."""
    network = {"t_features": parse_features(args.t_features),
               "g_features": parse_features(args.g_features),
               "g_residual": args.g_residual,
               "d_features": args.d_features, "d_layers": args.d_layers, "d_pool": args.d_pool,
               "int_steps": args.int_steps, "flow_resolution": 1}
    loss = dict(COARSE_WINDOWS) if args.data == "brain" and args.resolution >= COARSE_GRID_MM \
        else {}
    if args.data == "brain":
        loss.update(BRAIN_G_LOSS)
    loss.update({k: getattr(args, k) for k in ("alpha", "beta", "mu", "lam", "lg_window",
                                               "lcc_window", "vxm_lambda", "mi_bins")
                 if getattr(args, k) is not None})
    steps = args.steps or (BRAIN_STEPS if args.data == "brain" else DEFAULT_STEPS)
    common = dict(steps=steps, batch_size=args.batch_size, lr_t=learning_rate("deformgan", args.lr),
                  seed=args.seed,
                  lr_decay=args.lr_decay, network=network, loss=loss, n_val=args.n_val,
                  log_every=args.log_every, checkpoint_every=steps,
                  validate_every=args.validate_every)
    network_spacing = args.network_spacing
    refine = {}
    if args.data == "brain":
        network_spacing = BRAIN_NETWORK_SPACING_MM if network_spacing is None else network_spacing
        refine = dict(BRAIN_REFINE)
    if args.refine_steps is not None:
        refine["steps"] = args.refine_steps
    if refine:
        common["refine"] = refine
    common["network_spacing"] = network_spacing
    if args.data == "demo":
        if args.shape:
            common["shape"] = tuple(args.shape)
        if args.spacing:
            common["spacing"] = args.spacing
        return TrainConfig.demo(**common)
    files = brain.write_brain_training_data(args.brain_npz, out / "data", args.resolution,
                                            n_train=args.n_train, n_val=args.n_val)
    print(f"training data: {files['moving']} and {files['fixed']} (unpaired), validation "
          f"{files['val_pairs']}, grid {files['shape']} at {args.resolution:g} mm")
    return TrainConfig.for_scans([files["moving"]], [files["fixed"]],
                                          val_pairs=files["val_pairs"],
                                          shape=tuple(args.shape or files["shape"]),
                                          spacing=args.resolution, **common)


def main(argv=None):
    """``dgan-train-baselines``; returns the exit status (2 for bad input or a diverged run)."""
    args = parser().parse_args(argv)
    show_warnings()
    out = Path(args.out)
    try:
        if args.resume:
            config = {} if args.steps is None else {"steps": args.steps}
        else:
            if args.data == "brain":
                brain.check_brain_file(args.brain_npz)
            config = train_config(args, out)
        results = []
        for method in args.methods:
            run_config = config if args.resume else dataclasses.replace(
                config, method=method,
                network=network_for_method(method, config.network),
                lr_t=learning_rate(method, args.lr))
            results.append(train(run_config, out / method, resume=args.resume,
                                 progress=not args.no_progress))
    except (InputError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    curves = save_learning_curves(out, [r.method for r in results])
    for r in results:
        print(f"{METHOD_NAMES[r.method]}: step {r.step} in {r.seconds:.0f} s, "
              f"validation mean Dice {r.dice_identity:.4f} -> T alone {r.dice_network:.4f} "
              f"-> registered {r.dice_registered:.4f}, model {model_folder(out, r.method)}")
    if curves:
        print(f"learning curves: {curves}")
    return 0


def save_learning_curves(out, methods):
    """``<out>/learning_curves.png``: each method's held-out Dice (T alone) against the step, and
    the identity; returns its path, or None when no run has validated."""
    history, labels = {}, {"identity": "identity"}
    for method in methods:
        runs = read_validation_history(out / method / VALIDATION_CSV)
        if runs["network"]:
            history[method] = runs["network"]
            labels[method] = METHOD_NAMES[method]
            history.setdefault("identity", runs["identity"])
    if not history:
        return None
    path = out / "learning_curves.png"
    figures.save_validation_curve(path, history, labels=labels,
                                  title="held-out Dice (T alone) against the training step")
    return path
