"""``dgan-register``: register one pair of scans, or every pair of a CSV file (``--batch``).

A thin layer over :class:`dgan.registration.registrar.Registrar` (one pair,
:func:`dgan.registration.files.write_outputs`) and :mod:`dgan.registration.batch` (a CSV file of
pairs, one process). The arguments are parsed, and ``--help`` answered, before TensorFlow starts:
this module imports the library only in :func:`main`, after :func:`dgan.compat.quiet` (TensorFlow's
start-up lines stay off the terminal unless ``--verbose``).
"""

import argparse
import dataclasses
import os
import sys
import time

from .. import compat
from ..core.settings import SMOOTHED_FIELDS
from ..errors import InputError
from ..registration.settings import (AFFINE_MODES, AUTO_THRESHOLD_MM, CAUTIOUS_STEPS,
                                     NO_MODEL_LEVELS, NO_MODEL_REFINE_STEPS, START_CHOICES,
                                     RefineConfig)

#: Exit status: every pair registered; some rows of a batch failed (see its results.csv); the
#: input was refused (nothing registered).
EXIT_OK, EXIT_ROWS_FAILED, EXIT_BAD_INPUT = 0, 1, 2

#: The options of one pair, which ``--batch`` replaces; the first four are required without it.
PAIR_OPTIONS = ("moving", "fixed", "out_moved", "out_flow", "moving_labels", "out_labels",
                "out_affine")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (no usage block): exit status 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _whole_number(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _option(name):
    return "--" + name.replace("_", "-")


def _parser():
    parser = _OneLineParser(
        prog="dgan-register",
        description="Register a moving scan to a fixed scan with a trained Deform-GAN model, "
        "then refine the field on the pair (Deform-GAN's objective, G frozen); without --model, "
        "a parameter-free block matching, then refinement (local gradient, smoothness and local "
        "correlation with the moving scan rendered by the joint histogram; no training). An "
        "affine stage (mutual information) runs first when the scans are misaligned (--affine). "
        "Outputs are NIfTI on the fixed scan's grid, with its affine and header. "
        "The flow is 4D (X, Y, Z, 3): displacements in voxels of the fixed grid, 'ij' "
        "indexing, moved(p) = moving(p + flow(p)). With --batch, every pair of a CSV file in "
        "one process. Exit status: 0 registered; 1 some rows of a batch failed; 2 bad input.",
    )
    add = parser.add_argument
    add("--model", metavar="FOLDER|NAME", help="dgan model folder (from training), or the name "
        "of a model shipped with dgan ('brain': T and G trained on brain MRI, T1 to a T2-like "
        "contrast); a folder of that name wins; without it, the block matching and "
        "refinement, no training")
    add("--moving", metavar="PATH", help="moving scan (.nii, .nii.gz, .mgz, .npz); required "
        "without --batch")
    add("--fixed", metavar="PATH", help="fixed scan; outputs are on its grid; required "
        "without --batch")
    add("--out-moved", metavar="PATH", help="registered moving scan (.nii[.gz]); required "
        "without --batch")
    add("--out-flow", metavar="PATH", help="displacement field (.nii[.gz]); required without "
        "--batch")
    add("--moving-labels", metavar="PATH", help="label map of the moving scan (its own grid)")
    add("--out-labels", metavar="PATH", help="registered labels (.nii[.gz]); with --moving-labels")
    add("--batch", metavar="CSV",
        help="register every pair of this CSV file in one process (the model loaded once), "
             "instead of --moving/--fixed/--out-*: header moving,fixed and optionally "
             "moving_labels; relative paths are relative to the CSV file's folder. Each row "
             "writes OUT_DIR/<moving stem>_moved.nii.gz and _flow.nii.gz (and "
             "<moving-labels stem>_moved_labels.nii.gz); OUT_DIR/results.csv says per row its "
             "seconds and ok or its error. A bad row is skipped (exit status 1); the other "
             "options apply to every row")
    add("--out-dir", metavar="OUT_DIR", help="output folder of --batch (created if missing)")
    add("--moving-mask", metavar="PATH",
        help="binary mask on the moving scan's grid: only the voxels inside it are compared "
             "(outside the scan's own grid nothing is compared anyway)")
    add("--fixed-mask", metavar="PATH",
        help="binary mask on the fixed scan's grid: only the voxels inside it are compared")
    add("--refine-steps", type=_whole_number, metavar="N",
        help="refinement iterations per level (default: the model's, else "
             f"{NO_MODEL_REFINE_STEPS}; 0: T's field alone)")
    add("--refine-levels", type=int, nargs="+", metavar="F",
        help="refinement levels as down-sampling factors of the fixed grid, coarse to fine, "
             "powers of two (default: the model's, else "
             f"{' '.join(map(str, NO_MODEL_LEVELS))})")
    add("--diffeomorphic", action="store_true",
        help="refine a stationary velocity field (scaling and squaring): no folding")
    add("--refine-smooth", choices=SMOOTHED_FIELDS,
        help="what refinement's smoothness term acts on: residual, the change it makes to T's "
             "field (keeps T's detail), or flow, the whole field (the paper's term); default: "
             f"the model's, else {RefineConfig.smooth}, and flow after the block matching "
             "(whose roughness is noise)")
    add("--refine-lcc", type=float, metavar="W",
        help="weight of refinement's L_LCC term, w_lcc: against the moving scan rendered in the "
             "fixed contrast by the model's G after T, by the two scans' joint histogram after "
             "the block matching (default: the model's: 1 for brain models from "
             "dgan-train-baselines, whose G translates; 0 for the demo's and dgan-train's, whose "
             f"G draws the fixed image; without a model {RefineConfig.w_lcc:g}; 0: no L_LCC)")
    add("--refine-lcc-stride", type=int, metavar="S",
        help="refinement's L_LCC as the mean over the windows around every S-th voxel along "
             f"each axis (default {RefineConfig.lcc_stride}, about a third of the window sums; "
             "1: every window)")
    add("--refine-alpha", type=float, metavar="A",
        help="weight of refinement's smoothness term, alpha (default: the model's, else "
             f"{RefineConfig.alpha:g}; 4 for brain models, whose refinement keeps the L_LCC "
             "term)")
    add("--network-spacing", type=float, metavar="MM",
        help="voxel size in mm of the grid T runs on (default: the model folder's, else its "
             "training spacing); a T trained at 4 mm can run at 2 mm, more accurate and slower)")
    add("--affine", choices=AFFINE_MODES, default="auto",
        help="affine pre-alignment (mutual information, 8-4-2 mm): on, off, or auto (default): "
             "applied only when it moves the fixed scan's foreground by more than "
             f"{AUTO_THRESHOLD_MM:g} mm RMS and beats the headers' alignment on MI, the local "
             "gradient and the foregrounds' overlap (it prints what it decided and why)")
    add("--start", choices=START_CHOICES, default="auto",
        help="the field refinement starts from: auto (default), the best of the identity, the "
             "block matching's and T's by the local gradient on the overlap, each kept only when "
             "it gains (T only where the matching it builds on holds), and from the identity a "
             f"cautious refinement (the finest level alone, {CAUTIOUS_STEPS} small steps: a "
             "small local correction, unless a --refine option is given); network: T's field "
             "(without --model, the matching's) as it is; identity: the zero field "
             "(refinement alone)")
    add("--out-affine", metavar="PATH",
        help="write the affine transform as an ITK text file (.txt or .tfm; fixed -> moving, "
             "LPS, for antsApplyTransforms and ITK-SNAP); the identity when none was applied")
    add("--verbose", action="store_true",
        help="let TensorFlow's start-up and log lines (absl, oneDNN, CUDA) and its warnings "
             "through to stderr (hidden by default)")
    return parser


def _check_arguments(parser, args):
    """The combinations argparse cannot say: one pair or --batch; labels in and out together."""
    if args.batch is not None:
        given = [_option(name) for name in PAIR_OPTIONS if getattr(args, name) is not None]
        if given:
            parser.error(f"--batch replaces the options of one pair: leave out {', '.join(given)}")
        if args.out_dir is None:
            parser.error("--batch needs --out-dir, the folder of its outputs")
        return
    if args.out_dir is not None:
        parser.error("--out-dir goes with --batch (one pair: --out-moved, --out-flow)")
    missing = [_option(name) for name in PAIR_OPTIONS[:4] if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} "
                     "(or --batch CSV --out-dir DIR)")
    if (args.moving_labels is None) != (args.out_labels is None):
        parser.error("--moving-labels and --out-labels must be given together")
    if args.out_affine is not None:
        from ..registration.itk import ITK_SUFFIXES  # NumPy, SciPy and nibabel: only when needed

        if not args.out_affine.lower().endswith(ITK_SUFFIXES):
            parser.error(f"--out-affine must end in {' or '.join(ITK_SUFFIXES)}: "
                         f"{args.out_affine}")


def _registrar(args):
    """The :class:`dgan.registration.registrar.Registrar` the options describe (the model loaded
    once)."""
    from ..registration.registrar import Registrar, model_refinement

    model = None
    if args.model is not None:  # Keras, neurite and voxelmorph: only with a model
        from ..registration.model_folder import as_model_folder
        model = as_model_folder(args.model)
        print(f"model: {model.label}")
    changes = {}
    if args.refine_levels is not None:
        changes["levels"] = tuple(args.refine_levels)
    if args.diffeomorphic:
        changes["int_steps"] = 7
    for name, value in (("smooth", args.refine_smooth), ("w_lcc", args.refine_lcc),
                        ("lcc_stride", args.refine_lcc_stride), ("alpha", args.refine_alpha)):
        if value is not None:
            changes[name] = value
    config = dataclasses.replace(model_refinement(model), **changes)
    # refinement options given: refinement runs as told, also from the identity
    cautious = not changes and args.refine_steps is None
    return Registrar(model, refine_steps=args.refine_steps, refine_config=config,
                     progress=print, affine=args.affine,
                     network_spacing=args.network_spacing, start=args.start, cautious=cautious)


def _register_pair(args):
    """One pair: register, write, say the folding and the time."""
    from ..registration.files import check_outputs, write_outputs

    start = time.perf_counter()
    check_outputs(args.out_moved, args.out_flow, args.out_labels)
    registrar = _registrar(args)
    result = registrar.register_files(args.moving, args.fixed, args.moving_labels,
                                      args.moving_mask, args.fixed_mask)
    write_outputs(result, args.out_moved, args.out_flow, args.out_labels, args.out_affine)
    seconds = time.perf_counter() - start
    print(
        f"non-positive Jacobian determinant: {result.folding_fraction:.6f} of voxels "
        f"({100 * result.folding_fraction:.4f}%)"
    )
    print(f"run time: {seconds:.2f} s (affine {result.seconds['affine']:.2f} s, "
          f"network {result.seconds['network']:.2f} s, "
          f"refinement {result.seconds['refinement']:.2f} s)")
    return EXIT_OK


def _register_batch(args):
    """Every row of the CSV file: a line per row on stderr, a summary on stdout."""
    from ..registration import batch

    start = time.perf_counter()
    pairs = batch.read_pairs(args.batch)
    registrar = _registrar(args)

    def report(row):
        done = f"row {row.pair.row}/{len(pairs)}"
        if row.ok:
            print(f"{done}: ok, {row.seconds:.1f} s ({row.pair.moving})", file=sys.stderr)
        else:
            print(f"{done}: failed: {row.status}", file=sys.stderr)

    results = batch.register_pairs(registrar, pairs, args.out_dir, args.moving_mask,
                                   args.fixed_mask, report)
    failed = sum(not row.ok for row in results)
    seconds = time.perf_counter() - start
    print(f"registered {len(results) - failed} of {len(results)} pairs in {seconds:.1f} s "
          f"({seconds / len(results):.1f} s a pair); results: "
          f"{os.path.join(args.out_dir, batch.RESULTS_NAME)}")
    if failed:
        print(f"error: {failed} of {len(results)} rows failed (their lines above and in "
              f"{batch.RESULTS_NAME})", file=sys.stderr)
        return EXIT_ROWS_FAILED
    return EXIT_OK


def main(argv=None):
    """``dgan-register``; returns the exit status (:data:`EXIT_OK`, :data:`EXIT_ROWS_FAILED`,
    or :data:`EXIT_BAD_INPUT` with a one-line message on stderr)."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    compat.quiet(args.verbose)  # before the library below starts TensorFlow
    compat.use_compile_cache()
    try:
        return _register_batch(args) if args.batch is not None else _register_pair(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
