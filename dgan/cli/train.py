"""``dgan-train``: train Deform-GAN (or T alone, or VoxelMorph's VxmDense) on the embedded demo
data or your scans.

Examples::

    dgan-train                                                   # demo: MNI152 T1 -> T2-like
    dgan-train --moving 't1/*.nii.gz' --fixed t2/ --shape 160 192 160 --spacing 1
    dgan-train --resume runs/20261123-101500 --steps 2000
    dgan-train --strategy multiworker --auto-resume --out /shared/runs/a  # on each worker
    dgan-train --method lcc --w-lcc 0              # T alone, L_LG + smoothness, demo data
    dgan-train --method vxm --flow-resolution 1    # VoxelMorph's VxmDense, demo data

Without --moving/--fixed the run starts from the demo preset (``TrainConfig.demo``), with them
from the preset for scans (``TrainConfig.for_scans``); --preset chooses, and every option given
overrides the preset. Several GPUs and machines: docs/distributed.md.
"""

import argparse
import sys
from pathlib import Path

from .. import compat
from ..core.settings import SMOOTHED_FIELDS, parse_features, parse_matching
from ..errors import InputError, TrainingDiverged
from ..training import presets
from ..training.settings import METHOD_NAMES, SCHEDULES, STRATEGIES, LossWeights

# The library is imported where it is used, not here (this module's docstring is --help's text):
# the training modules start TensorFlow, which takes seconds and writes its start-up lines to
# stderr unless compat.quiet() came first.


def parser():
    p = argparse.ArgumentParser(prog="dgan-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHOD_NAMES,
                   help="what to train (default deformgan): Deform-GAN, lcc (T alone with L_T's "
                        "terms on F(phi)) or vxm (VoxelMorph's VxmDense, -MI + lambda Grad_l2)")
    p.add_argument("--preset", choices=presets.PRESETS,
                   help="the settings to start from (default: demo without --moving, else scans)")
    data = p.add_argument_group("data (both or neither: neither trains on the embedded demo data)")
    data.add_argument("--moving", nargs="+", help="moving-modality scans: folders, globs or a CSV")
    data.add_argument("--fixed", nargs="+", help="fixed-modality scans: folders, globs or a CSV")
    data.add_argument("--val-pairs", help="CSV: moving,fixed,moving_labels,fixed_labels for Dice")
    data.add_argument("--shape", nargs=3, type=int, help="network input shape X Y Z")
    data.add_argument("--spacing", type=float, help="resample to this voxel size in mm (0: native)")
    data.add_argument("--network-spacing", type=float, metavar="MM",
                      help="the voxel size in mm at which dgan-register runs T with the model "
                           "(default: --spacing): a T trained at 4 mm registers more accurately "
                           "at 2 mm")
    data.add_argument("--align", action="store_true",
                      help="align every scan affinely to the first fixed scan first (mutual "
                           "information; once, cached in the run folder's aligned/)")
    run = p.add_argument_group("run")
    run.add_argument("--steps", type=int, help="total training steps (default: the preset's, "
                     "300 on the demo data, 400 for scans)")
    run.add_argument("--batch-size", type=int, help="global batch size (default 1)")
    run.add_argument("--out", help="run folder (default runs/<timestamp>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    run.add_argument("--auto-resume", action="store_true",
                     help="with --out: continue that run if it holds a checkpoint, else start it "
                          "(rerunning the same command resumes a lost or preempted run)")
    run.add_argument("--seed", type=int)
    run.add_argument("--checkpoint-every", type=int)
    run.add_argument("--keep-checkpoints", type=int)
    run.add_argument("--validate-every", type=int)
    run.add_argument("--strategy", choices=STRATEGIES)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true",
                     help="let TensorFlow's start-up and log lines (absl, oneDNN, CUDA) and its "
                          "warnings through to stderr (hidden by default)")
    opt = p.add_argument_group("optimisation and the paper's loss weights")
    opt.add_argument("--lr-t", type=float)
    opt.add_argument("--lr-g", type=float)
    opt.add_argument("--lr-d", type=float)
    opt.add_argument("--lr-decay", choices=SCHEDULES,
                     help="learning rates constant, or constant for the first half of --steps "
                          "then linearly to 0 (default: the preset's: constant on the demo and "
                          "brain presets, else linear, as CycleGAN)")
    opt.add_argument("--alpha", type=float, help="smoothness weight in L_T")
    opt.add_argument("--beta", type=float, help="local-gradient weight in L_T")
    opt.add_argument("--mu", type=float, help="local-gradient weight in L_G")
    opt.add_argument("--lambda", dest="lam", type=float, help="L1 weight in L_G")
    opt.add_argument("--lg-window", type=int,
                     help=f"local-gradient neighbourhood n (default {LossWeights.lg_window})")
    opt.add_argument("--lcc-window", type=int,
                     help=f"LCC window (default {LossWeights.lcc_window})")
    opt.add_argument("--refine-steps", type=int,
                     help="instance-refinement iterations per level when validating and in the "
                          "exported model (dgan-register's default; 0: T alone; demo: 100)")
    opt.add_argument("--w-lcc", type=float,
                     help=f"weight of T's LCC term (default {LossWeights.w_lcc:g}, the paper)")
    opt.add_argument("--smooth", choices=SMOOTHED_FIELDS,
                     help="with --matching: the smoothness term on the U-Net's residual (default) "
                          "or on the whole field phi (the paper's)")
    opt.add_argument("--vxm-lambda", type=float,
                     help=f"vxm: weight of Grad_l2 (default {LossWeights.vxm_lambda:g})")
    opt.add_argument("--mi-bins", type=int,
                     help=f"vxm: mutual-information bins (default {LossWeights.mi_bins})")
    net = p.add_argument_group("networks")
    net.add_argument("--int-steps", type=int, help="diffeomorphic integration steps (0: off)")
    net.add_argument("--flow-resolution", type=int, choices=(1, 2, 4),
                     help="T predicts the field at 1/k resolution and upsamples it (demo: 2)")
    net.add_argument("--t-features", help="T's U-Net features, e.g. '16,32,32/32,32,32,16,16'")
    net.add_argument("--g-features", help="G's U-Net features, same form")
    net.add_argument("--g-residual", action=argparse.BooleanOptionalAction,
                     help="G adds a learnt correction to its input and starts as the identity "
                          "(demo: on)")
    net.add_argument("--matching", type=parse_matching,
                     help="T's block-matching first estimate, passes 'factor:radius,...' coarse "
                          "to fine (default '4:2,2:2,1:1'); 'none': the paper's T, U-Net alone")
    net.add_argument("--d-features", type=int, help="D's first-layer features")
    net.add_argument("--d-layers", type=int, help="D's strided 4^3 convolutions (default 3)")
    net.add_argument("--d-pool", type=int, choices=(1, 2, 4),
                     help="D average-pools its input by this factor first (demo: 2)")
    return p


def settings_from_args(args):
    """The TrainConfig fields the user gave on the command line (and nothing else)."""
    fields = {}
    for name in ("method", "moving", "fixed", "val_pairs", "steps", "batch_size", "seed", "checkpoint_every",
                 "keep_checkpoints", "validate_every", "strategy", "lr_t", "lr_g", "lr_d", "lr_decay",
                 "network_spacing"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.shape is not None:
        fields["shape"] = tuple(args.shape)
    if args.align:
        fields["align"] = True
    if args.spacing is not None:
        fields["spacing"] = args.spacing or None
    loss = {k: getattr(args, k) for k in ("alpha", "beta", "mu", "lam", "lg_window", "lcc_window",
                                          "w_lcc", "vxm_lambda", "mi_bins", "smooth")
            if getattr(args, k) is not None}
    if args.refine_steps is not None:
        fields["refine"] = {"steps": args.refine_steps}
    network = {}
    for key, value in (("t_features", args.t_features), ("g_features", args.g_features)):
        if value is not None:
            network[key] = parse_features(value)
    for key in ("d_features", "d_layers", "int_steps", "flow_resolution", "g_residual", "d_pool",
                "matching"):
        if getattr(args, key) is not None:
            network[key] = getattr(args, key)
    if network:
        fields["network"] = network
    if loss:
        fields["loss"] = loss
    return fields


def make_config(settings, preset=None):
    """A new run's :class:`dgan.TrainConfig`: ``preset`` (default: demo without moving
    scans, else scans) with ``settings`` over it."""
    from ..training.config import TrainConfig

    if preset is None:
        preset = "demo" if settings.get("moving") is None else "scans"
    return TrainConfig.from_preset(preset, **settings)


def main(argv=None):
    """``dgan-train``; returns the exit status (2: bad input or a diverged run, 3: a lost worker)."""
    args = parser().parse_args(argv)
    compat.quiet(args.verbose)  # before the library below starts TensorFlow
    from ..training import run as training_run

    try:
        settings = settings_from_args(args)
        if (args.moving is None) != (args.fixed is None):
            raise InputError("give both --moving and --fixed, or neither (to use the demo data)")
        resume = args.resume is not None
        if args.auto_resume and (resume or not args.out):
            raise InputError("--auto-resume needs --out RUN_DIR (and no --resume)")
        if resume:
            run_dir = Path(args.resume)
        else:
            run_dir = Path(args.out or training_run.new_run_dir())
            resume = args.auto_resume and training_run.has_checkpoint(run_dir)
        if resume and args.preset:
            raise InputError("--preset applies to a new run; a resumed run keeps its settings")
        config = settings if resume else make_config(settings, args.preset)
        result = training_run.train(config, run_dir, resume=resume,
                                    progress=not args.no_progress, restart=args.auto_resume)
    except (InputError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except compat.tf.errors.UnavailableError as error:  # a worker of a multi-worker run was lost
        print(f"error: lost contact with another worker ({str(error).strip().splitlines()[0]}); "
              "restart every worker with the same command and --auto-resume", file=sys.stderr)
        return 3
    print(f"run folder: {result.run_dir}")
    print(f"step {result.step}, {result.seconds:.0f} s")
    print(f"validation mean Dice: identity {result.dice_identity:.4f} -> "
          f"T alone {result.dice_network:.4f} -> registered {result.dice_registered:.4f}")
    return 0

