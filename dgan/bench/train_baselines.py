"""``dgan-train-baselines``: train Deform-GAN and its learned baselines on the same data with the
same step budget, each through the one training run (``dgan.training.run.train``).

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
    # the brain model shipped with dgan (dgan-register --model brain), from a checkout
    dgan-train-baselines --data brain --methods deformgan --out runs/brain \
        --ship dgan/models/brain --ship-version 1

With ``--data brain``, the training scans (T1 moving, T2-like fixed, unpaired, seed 1000) and
validation pairs (seed 2000) are first written to ``<out>/data/``; the evaluation pairs use seed
0. Deform-GAN alone can be trained on the same files with dgan-train (``--preset brain --moving
<out>/data/moving --fixed <out>/data/fixed --val-pairs <out>/data/val_pairs.csv``).
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .. import compat
from ..core.settings import features_text, parse_features
from ..data import demo
from ..errors import InputError, TrainingDiverged
from ..training import presets
from ..training.settings import METHOD_NAMES, SCHEDULES, LossWeights
from . import brain
from .options import add_brain_file_arguments, add_verbose_argument, show_warnings

# The library is imported where it is used, not here (this module's docstring is --help's text):
# the training and benchmark modules start TensorFlow, which takes seconds and writes its
# start-up lines to stderr unless compat.quiet() came first.


def model_folder(run_root, method):
    """Where dgan-train-baselines leaves ``method``'s model folder under ``run_root``."""
    return os.path.join(os.fspath(run_root), method, "model")


def parser():
    p = argparse.ArgumentParser(prog="dgan-train-baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHOD_NAMES,
                   default=list(METHOD_NAMES))
    p.add_argument("--out", required=True, help="output folder: <out>/<method>/ per method")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs in <out>/<method>/ (with --steps: a new budget)")
    p.add_argument("--ship", metavar="FOLDER",
                   help="also copy Deform-GAN's model folder to FOLDER as a model to ship with "
                        "dgan (dgan/models/<name>/, selected by --model <name>): its description "
                        "named after FOLDER and versioned, the command, the run's configuration "
                        "and results beside it in training.json")
    p.add_argument("--ship-version", type=int, default=1, metavar="N",
                   help="the shipped model's version (default %(default)s; raise it whenever "
                        "the weights change)")
    data = p.add_argument_group("data")
    data.add_argument("--data", choices=("brain", "demo"), default="brain")
    add_brain_file_arguments(data, labels=False)
    data.add_argument("--resolution", type=float, default=presets.BRAIN_SPACING_MM,
                      help="brain: training voxel size in mm (default %(default)g: 40 x 48 x 56)")
    data.add_argument("--network-spacing", type=float, metavar="MM",
                      help="the voxel size in mm at which the model folders have dgan-register "
                           f"run T (default {presets.BRAIN_NETWORK_SPACING_MM:g} with --data "
                           "brain, the benchmark's grid; else the training grid)")
    data.add_argument("--n-train", type=int, default=8,
                      help="brain: moving and fixed training scans (default 8 each)")
    data.add_argument("--n-val", type=int, default=4, help="validation pairs (default 4)")
    data.add_argument("--shape", type=int, nargs=3,
                      help="network grid (default: the brain grid, or the demo's "
                           f"{' '.join(map(str, demo.DEMO_SHAPE))})")
    data.add_argument("--spacing", type=float,
                      help=f"demo: voxel size in mm (default {demo.DEMO_SPACING:g})")
    baseline, network = presets.BASELINE_RUN, presets.BASELINE_NETWORK
    run = p.add_argument_group("the same budget for every method (defaults: the brain preset's)")
    run.add_argument("--steps", type=int,
                     help=f"training steps (default {presets.BRAIN_STEPS} with --data brain, "
                          f"{BASELINE_DEMO_STEPS} on the demo)")
    run.add_argument("--validate-every", type=int,
                     help=f"held-out Dice every this many steps (default "
                          f"{baseline['validate_every']}; 0: first and last)")
    run.add_argument("--batch-size", type=int, help="global batch size (default 1)")
    run.add_argument("--lr", type=float,
                     help="learning rate of the registration network (default: each method's "
                          "own, 1e-3 for T and 1e-4 for VxmDense, VoxelMorph's default, at which "
                          "it does not diverge)")
    run.add_argument("--lr-decay", choices=SCHEDULES,
                     help=f"the learning rates' schedule (default {baseline['lr_decay']})")
    run.add_argument("--seed", type=int, help="seed of the weights and the data (default 0)")
    run.add_argument("--t-features",
                     help="T's (and VxmDense's) U-Net features (default "
                          f"{features_text(network['t_features'])})")
    run.add_argument("--g-features",
                     help=f"Deform-GAN's G (default {features_text(network['g_features'])})")
    run.add_argument("--g-residual", action=argparse.BooleanOptionalAction,
                     help="Deform-GAN's G as the identity plus a learnt correction (default on, "
                          "as on the demo, where the paper's sigmoid G stayed flat grey)")
    run.add_argument("--d-features", type=int, metavar="N",
                     help=f"Deform-GAN's D: features (default {network['d_features']})")
    run.add_argument("--d-layers", type=int, metavar="N",
                     help=f"Deform-GAN's D: strided layers (default {network['d_layers']})")
    run.add_argument("--d-pool", type=int, metavar="N",
                     help="Deform-GAN's D: average-pools its input by this factor (default "
                          f"{network['d_pool']}, as on the demo: a cheaper update)")
    run.add_argument("--int-steps", type=int, metavar="N",
                     help=f"diffeomorphic integration steps (default {network['int_steps']})")
    run.add_argument("--refine-steps", type=int,
                     help="refinement iterations per level at the first and last validation and "
                          "in the model folders (default: the preset's, "
                          f"{presets.BRAIN_REFINE['steps']} with --data brain, with the L_LCC "
                          f"term through G and alpha {presets.BRAIN_REFINE['alpha']:g}; 0: T "
                          "alone)")
    run.add_argument("--log-every", type=int,
                     help=f"losses logged every this many steps (default {baseline['log_every']})")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbose_argument(run)
    loss = p.add_argument_group("losses (one configuration for every method)")
    loss.add_argument("--alpha", type=float, help="smoothness weight (Deform-GAN, lcc)")
    loss.add_argument("--beta", type=float, help="local-gradient weight (Deform-GAN, lcc)")
    loss.add_argument("--mu", type=float,
                      help="Deform-GAN: weight of L_LG(F'(phi), F(phi)) in G's loss (default "
                           f"{presets.BRAIN_LOSS['mu']:g} with --data brain, else the preset's)")
    loss.add_argument("--lambda", dest="lam", type=float,
                      help="Deform-GAN: weight of L1(F'(phi), R) in G's loss (default "
                           f"{presets.BRAIN_LOSS['lam']:g} with --data brain, else the preset's)")
    loss.add_argument("--vxm-lambda", type=float,
                      help=f"VoxelMorph: weight of Grad_l2 (default {LossWeights.vxm_lambda:g})")
    loss.add_argument("--mi-bins", type=int,
                      help=f"VoxelMorph: mutual-information bins (default {LossWeights.mi_bins})")
    coarse = f"grids of {presets.COARSE_GRID_MM:g} mm or coarser, as on the demo's"
    loss.add_argument("--lg-window", type=int,
                      help=f"local-gradient neighbourhood n (default "
                           f"{presets.COARSE_WINDOWS['lg_window']} on {coarse}, else "
                           f"{LossWeights.lg_window})")
    loss.add_argument("--lcc-window", type=int,
                      help=f"LCC window (default {presets.COARSE_WINDOWS['lcc_window']} on "
                           f"{coarse}, else {LossWeights.lcc_window})")
    return p


#: The step budget on the embedded demo data (each step a fraction of a brain step's cost).
BASELINE_DEMO_STEPS = 150
#: Each method's own learning rate unless --lr gives one: T's, and VoxelMorph's for VxmDense.
T_LR, VXM_LR = 1e-3, 1e-4


def learning_rate(method, given=None):
    """The registration network's learning rate for ``method``: ``given`` (--lr), else the
    method's own (:data:`T_LR`, :data:`VXM_LR`)."""
    return given or (VXM_LR if method == "vxm" else T_LR)


#: The loss options, given over the preset's loss settings.
LOSS_OPTIONS = ("alpha", "beta", "mu", "lam", "lg_window", "lcc_window", "vxm_lambda", "mi_bins")


def given_settings(args):
    """The :class:`dgan.TrainConfig` settings that the options given name (every method's), over
    the preset's: ``network``, ``loss``, ``refine`` and the run's."""
    network = {key: parse_features(value) for key, value in
               (("t_features", args.t_features), ("g_features", args.g_features))
               if value is not None}
    network.update({key: getattr(args, key) for key in
                    ("g_residual", "d_features", "d_layers", "d_pool", "int_steps")
                    if getattr(args, key) is not None})
    settings = {key: getattr(args, key) for key in
                ("batch_size", "seed", "lr_decay", "log_every", "validate_every", "network_spacing")
                if getattr(args, key) is not None}
    settings["loss"] = {key: getattr(args, key) for key in LOSS_OPTIONS
                        if getattr(args, key) is not None}
    settings["network"] = network
    if args.refine_steps is not None:
        settings["refine"] = {"steps": args.refine_steps}
    return settings


def train_config(args, out):
    """The :class:`dgan.TrainConfig` every method trains with (``method`` aside): the brain preset
    on the brain benchmark's training files (written to ``<out>/data/`` first), the demo preset with
    the baselines' networks and run settings (:data:`dgan.training.presets.BASELINE_RUN`) on the
    demo data, and the options given over it. Every method has flow_resolution 1 (VxmDense cannot
    have another), so that T is the same network for all."""
    from ..training.config import TrainConfig

    settings = given_settings(args)
    steps = args.steps or (presets.BRAIN_STEPS if args.data == "brain" else BASELINE_DEMO_STEPS)
    settings.update(steps=steps, checkpoint_every=steps, n_val=args.n_val,
                    lr_t=learning_rate("deformgan", args.lr))
    if args.data == "demo":
        run = {**presets.BASELINE_RUN, **settings}
        run["network"] = {**presets.BASELINE_NETWORK, **settings["network"]}
        if args.shape:
            run["shape"] = tuple(args.shape)
        if args.spacing:
            run["spacing"] = args.spacing
        return TrainConfig.from_preset("demo", **run)
    if args.resolution < presets.COARSE_GRID_MM:  # the brain preset's windows are for 4 mm
        settings["loss"] = {"lg_window": LossWeights.lg_window,
                            "lcc_window": LossWeights.lcc_window, **settings["loss"]}
    files = brain.write_brain_training_data(args.brain_npz, out / "data", args.resolution,
                                            n_train=args.n_train, n_val=args.n_val)
    print(f"training data: {files['moving']} and {files['fixed']} (unpaired), validation "
          f"{files['val_pairs']}, grid {files['shape']} at {args.resolution:g} mm")
    return TrainConfig.from_preset("brain", moving=[files["moving"]], fixed=[files["fixed"]],
                                   val_pairs=files["val_pairs"],
                                   shape=tuple(args.shape or files["shape"]),
                                   spacing=args.resolution, **settings)


def main(argv=None):
    """``dgan-train-baselines``; returns the exit status (2 for bad input or a diverged run)."""
    p = parser()
    args = p.parse_args(argv)
    if args.ship and "deformgan" not in args.methods:
        p.error("--ship copies Deform-GAN's model: --methods must include deformgan")
    compat.quiet(args.verbose)  # before the library below starts TensorFlow
    from ..training.config import network_for_method
    from ..training.run import train

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
    if args.ship:
        print(f"shipped: {ship(out, args.ship, args.ship_version, argv)}")
    for r in results:
        print(f"{METHOD_NAMES[r.method]}: step {r.step} in {r.seconds:.0f} s, "
              f"validation mean Dice {r.dice_identity:.4f} -> T alone {r.dice_network:.4f} "
              f"-> registered {r.dice_registered:.4f}, model {model_folder(out, r.method)}")
    if curves:
        print(f"learning curves: {curves}")
    return 0


def ship(out, folder, version, argv=None):
    """Copy ``<out>/deformgan/model`` to ``folder`` as a model shipped with dgan
    (:func:`dgan.registration.model_folder.ship_model_folder`), named after ``folder``, with the
    command, the machine, the run's config.json and results.json as its training record."""
    import datetime
    import json
    import shlex

    from ..registration.model_folder import ship_model_folder
    from .options import cpu_model

    run = out / "deformgan"
    record = {"command": shlex.join(["dgan-train-baselines", *(sys.argv[1:] if argv is None
                                                                else argv)]),
              "date": datetime.date.today().isoformat(), "cpu": cpu_model()}
    for key, file in (("config", "config.json"), ("results", "results.json")):
        with open(run / file, encoding="utf-8") as f:
            record[key] = json.load(f)
    name = os.path.basename(os.path.normpath(folder))
    return ship_model_folder(model_folder(out, "deformgan"), folder, name, version, record)


def save_learning_curves(out, methods):
    """``<out>/learning_curves.png``: each method's held-out Dice (T alone) against the step, and
    the identity; returns its path, or None when no run has validated."""
    from ..evaluation import figures
    from ..training.validation import VALIDATION_CSV, read_validation_history

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
