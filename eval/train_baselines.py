#!/usr/bin/env python
"""Train Deform-GAN and its learned baselines on the same data with the same step budget.

Methods (``--methods``, default all): ``deformgan`` (Deform-GAN, as train/train_dgan.py trains
it), ``vxm`` (VoxelMorph's VxmDense, same U-Net, loss -MI + lambda Grad_l2) and ``lcc`` (T alone
with LCC(fixed, moved) + local gradient + smoothness, no G and D). Each ends in
``<out>/<method>/model/``, a dgan model folder for eval/evaluate.py. Examples::

    # brain benchmark, 4 mm training grid (40 x 48 x 56), 300 steps each
    python eval/train_baselines.py --data brain --steps 300 --out runs/baselines
    # embedded demo data
    python eval/train_baselines.py --data demo --steps 200 --out runs/baselines-demo

With ``--data brain``, the training scans (T1 moving, T2-like fixed, unpaired, seed 1000) and
validation pairs (seed 2000) are first written to ``<out>/data/``; the evaluation pairs use seed
0. Deform-GAN alone can be trained on the same files with train/train_dgan.py (``--moving
<out>/data/moving --fixed <out>/data/fixed --val-pairs <out>/data/val_pairs.csv``).
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import dgan  # noqa: E402,F401
from dgan.networks import parse_features  # noqa: E402
from dgan import baselines, training  # noqa: E402
from dgan.errors import InputError, TrainingDiverged  # noqa: E402

#: ../shared/data beside the repository (the brain benchmark's files).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=baselines.METHODS,
                   default=list(baselines.METHODS))
    p.add_argument("--out", required=True, help="output folder: <out>/<method>/ per method")
    data = p.add_argument_group("data")
    data.add_argument("--data", choices=("brain", "demo"), default="brain")
    data.add_argument("--brain-npz", default=str(SHARED_DATA / "brain_t1_aseg.npz"))
    data.add_argument("--resolution", type=float, default=4.0,
                      help="brain: training voxel size in mm (default 4: 40 x 48 x 56)")
    data.add_argument("--n-train", type=int, default=8,
                      help="brain: moving and fixed training scans (default 8 each)")
    data.add_argument("--n-val", type=int, default=2, help="validation pairs (default 2)")
    data.add_argument("--shape", type=int, nargs=3,
                      help="network grid (default: the brain grid, or the demo's 48 56 48)")
    data.add_argument("--spacing", type=float,
                      help="demo: voxel size in mm (default 4)")
    run = p.add_argument_group("the same budget for every method")
    run.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    run.add_argument("--batch-size", type=int, default=1)
    run.add_argument("--lr", type=float, default=1e-3,
                     help="learning rate of the registration network (default 1e-3)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--t-features", default="16,32,32/32,32,32,16,16",
                     help="T's (and VxmDense's) U-Net features (default %(default)s)")
    run.add_argument("--g-features", default="8,16,16/16,16,16,8", help="Deform-GAN's G")
    run.add_argument("--d-features", type=int, default=8, help="Deform-GAN's D: features")
    run.add_argument("--d-layers", type=int, default=3, help="Deform-GAN's D: strided layers")
    run.add_argument("--int-steps", type=int, default=0)
    run.add_argument("--log-every", type=int, default=25)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    loss = p.add_argument_group("baseline losses")
    loss.add_argument("--vxm-lambda", type=float, default=baselines.BaselineLoss.vxm_lambda,
                      help="VoxelMorph: weight of Grad_l2 (default %(default)s)")
    loss.add_argument("--mi-bins", type=int, default=baselines.BaselineLoss.mi_bins)
    loss.add_argument("--lg-window", type=int, default=baselines.BaselineLoss.lg_window)
    loss.add_argument("--lcc-window", type=int, default=baselines.BaselineLoss.lcc_window)
    return p


def train_config(args, out):
    """The :class:`dgan.training.TrainConfig` every method trains with."""
    network = {"t_features": parse_features(args.t_features), "g_features": parse_features(args.g_features),
               "d_features": args.d_features, "d_layers": args.d_layers,
               "int_steps": args.int_steps, "g_residual": False, "d_pool": 1}
    # every method trains with a constant learning rate: the baselines' trainer has no schedule
    common = dict(steps=args.steps, batch_size=args.batch_size, lr_t=args.lr, seed=args.seed,
                  lr_decay="constant",
                  network=network, n_val=args.n_val, log_every=args.log_every,
                  checkpoint_every=args.steps, validate_every=0,
                  loss={"lg_window": args.lg_window, "lcc_window": args.lcc_window})
    if args.data == "demo":
        extra = {}
        if args.shape:
            extra["shape"] = tuple(args.shape)
        if args.spacing:
            extra["spacing"] = args.spacing
        return training.TrainConfig(**common, **extra)
    files = baselines.write_brain_training_data(args.brain_npz, out / "data", args.resolution,
                                                n_train=args.n_train, n_val=args.n_val)
    print(f"training data: {files['moving']} and {files['fixed']} (unpaired), validation "
          f"{files['val_pairs']}, grid {files['shape']} at {args.resolution:g} mm")
    return training.TrainConfig(moving=[files["moving"]], fixed=[files["fixed"]],
                                val_pairs=files["val_pairs"],
                                shape=tuple(args.shape or files["shape"]),
                                spacing=args.resolution, **common)


def main(argv=None):
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    loss = baselines.BaselineLoss(vxm_lambda=args.vxm_lambda, mi_bins=args.mi_bins,
                                  lg_window=args.lg_window, lcc_window=args.lcc_window)
    try:
        if args.data == "brain" and not Path(args.brain_npz).is_file():
            raise InputError("the brain benchmark file is missing", args.brain_npz)
        config = train_config(args, out)
        results = [baselines.train_method(method, config, out / method, loss=loss,
                                          progress=not args.no_progress)
                   for method in args.methods]
    except (InputError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{baselines.METHOD_NAMES[r.method]}: {r.steps} steps in {r.seconds:.0f} s, "
              f"validation mean Dice {r.dice_identity:.4f} -> {r.dice_registered:.4f}, "
              f"model {baselines.model_folder(out, r.method)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
