"""``dgan-evaluate``: evaluate Deform-GAN against identity, VoxelMorph, the LCC ablation and ANTs
SyN, on the same pairs.

Beside them runs the mono-modal ceiling: ANTs SyN-CC from the moving T1 to the fixed anatomy
as a T1 (the pair's ``fixed_t1``, same deformation and labels as the cross-modal fixed image).

Writes ``results.csv`` (one row per method and pair), ``summary.md`` (mean ± std per method, Dice
per structure), ``figures/*.png`` and ``config.json`` into ``--out``. Examples::

    # the 2 mm cross-modal brain benchmark, models from dgan-train-baselines
    dgan-evaluate --runs runs/baselines --out runs/eval-2mm
    # explicit model folders; the demo data's validation pairs
    dgan-evaluate --data demo --dgan runs/x/model --vxm runs/y/model --out runs/eval-demo

Every learned method is a dgan model folder, registered through
``dgan.registration.registrar.Registrar``. ANTs SyN needs ``pip install antspyx``; without it, it is
skipped with a message.
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from .. import compat
from ..errors import InputError
from ..data import demo
from ..evaluation import methods as evaluation
from ..registration.settings import NO_MODEL_REFINE_STEPS
from ..training.settings import METHOD_NAMES
from . import brain
from .options import add_brain_file_arguments, add_verbose_argument, show_warnings
from .train_baselines import model_folder

# The library is imported where it is used, not here (this module's docstring is --help's text):
# the registration, evaluation and benchmark modules start TensorFlow, which takes seconds and
# writes its start-up lines to stderr unless compat.quiet() came first.


def parser():
    p = argparse.ArgumentParser(prog="dgan-evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("pairs")
    data.add_argument("--data", choices=("brain", "demo"), default="brain",
                      help="brain: real T1 -> T2-like benchmark (default); demo: MNI152 demo")
    add_brain_file_arguments(data)
    data.add_argument("--resolution", type=float, default=2.0, help="brain: 2 or 1 mm")
    data.add_argument("--pairs", type=int, default=brain.BRAIN_PAIRS,
                      help="number of pairs (default %(default)s)")
    data.add_argument("--seed", type=int, default=0, help="seed of the pairs (default 0)")
    data.add_argument("--shape", type=int, nargs=3, default=list(demo.DEMO_SHAPE),
                      help="demo grid")
    data.add_argument("--spacing", type=float, default=demo.DEMO_SPACING,
                      help="demo voxel size in mm")
    methods = p.add_argument_group("methods (identity always runs)")
    methods.add_argument("--runs", metavar="DIR",
                         help="a folder from dgan-train-baselines: takes every <DIR>/<method>/"
                              "model that exists (deformgan, vxm, lcc)")
    methods.add_argument("--dgan", metavar="FOLDER", help="Deform-GAN model folder")
    methods.add_argument("--vxm", metavar="FOLDER", help="VoxelMorph (MI) model folder")
    methods.add_argument("--lcc", metavar="FOLDER", help="LCC ablation model folder")
    methods.add_argument("--network-spacing", type=float, nargs="+", metavar="MM",
                         help="run every model's T on a grid of this voxel size in mm (default: "
                              "each model's training spacing); several values add one method "
                              "each, e.g. 4 2 for a model trained at 4 mm")
    methods.add_argument("--refine-steps", type=int, nargs="+", default=[0], metavar="N",
                         help="also run every model method followed by N instance-refinement "
                              "iterations per level (dgan.registration.refine; default 0: T "
                              "alone); several values add one method each and refine_curve.png, "
                              "mean Dice against N")
    methods.add_argument("--refine-methods", nargs="+", choices=list(METHOD_NAMES),
                         default=list(METHOD_NAMES), metavar="METHOD",
                         help="the model methods that --refine-steps refines (default all: "
                              f"{' '.join(METHOD_NAMES)})")
    methods.add_argument("--refine-alone", action="store_true",
                         help="add 'refinement alone' (no model, from the identity: local "
                              "gradient + smoothness) and 'no model: matching + refinement' "
                              "(dgan-register without --model, its own choices: the block "
                              "matching where it earns it, then refinement with the joint "
                              "histogram's rendering); the largest --refine-steps, or the "
                              f"default {NO_MODEL_REFINE_STEPS}, iterations per level")
    methods.add_argument("--refine-set", nargs="+", metavar="KEY=VALUE",
                         help="change refinement settings (dgan.RefineConfig), e.g. alpha=1 "
                              "control=4 levels=2,1")
    methods.add_argument("--diffeomorphic", action="store_true",
                         help="refine a stationary velocity field (scaling and squaring)")
    methods.add_argument("--no-ants", action="store_true",
                         help="skip ANTs SyN (the cross-modal MI run and the ceiling)")
    methods.add_argument("--no-ceiling", action="store_true",
                         help="skip the mono-modal ceiling, ANTs SyN-CC to the T1 fixed image")
    methods.add_argument("--ants-iterations", type=int, nargs="+",
                         default=list(evaluation.ANTS_DEFAULTS["reg_iterations"]),
                         help="SyN iterations per level, coarse to fine (default %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output folder")
    out.add_argument("--figure-pairs", type=int, default=1,
                     help="pairs drawn per method (default 1; 0: no figures)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose_argument(out)
    return p


def model_folders(args):
    """[(method, name, folder)] of the learned methods, in table order."""
    given = {"deformgan": args.dgan, "vxm": args.vxm, "lcc": args.lcc}
    folders = []
    for method in METHOD_NAMES:
        folder = given[method]
        if folder is None and args.runs is not None:
            candidate = model_folder(args.runs, method)
            folder = candidate if os.path.isdir(candidate) else None
        if folder is not None:
            folders.append((method, METHOD_NAMES[method], folder))
    return folders


def refinement_methods(args):
    """The model methods (T alone, and T + refinement with --refine-steps) and refinement alone."""
    from ..registration.model_folder import as_model_folder
    from ..registration.registrar import model_refinement

    if min(args.refine_steps) < 0:
        raise InputError(f"--refine-steps must be >= 0, got {min(args.refine_steps)}")
    steps_list = refine_counts(args)
    changes = parse_settings(args.refine_set)
    if args.diffeomorphic:
        changes["int_steps"] = 7

    def config(folder):  # the model's own refinement settings (its windows), then the changes
        model = None if folder is None else as_model_folder(folder)
        try:
            return dataclasses.replace(model_refinement(model), **changes)
        except TypeError as error:
            raise InputError(f"--refine-set: {error}") from None

    methods = []
    for method, model_name, folder in model_folders(args):
        for spacing in args.network_spacing or [None]:
            name = spaced_name(model_name, spacing)
            methods.append(evaluation.ModelMethod(name, folder, network_spacing=spacing))
            for steps in steps_list if method in args.refine_methods else ():
                methods.append(evaluation.ModelMethod(refined_name(name, steps), folder, steps,
                                                      config(folder), network_spacing=spacing))
    if args.refine_alone:
        steps = max(steps_list, default=NO_MODEL_REFINE_STEPS)
        methods.append(evaluation.ModelMethod(f"refinement alone {steps}", None, steps,
                                              config(None), start="identity"))
        methods.append(evaluation.ModelMethod(f"no model: matching + refinement {steps}", None,
                                              steps, config(None), start="auto"))
    return methods


def refine_counts(args):
    """The positive --refine-steps, each once, in increasing order."""
    return sorted({n for n in args.refine_steps if n > 0})


def spaced_name(name, spacing):
    """The table's name of model method ``name`` with T run at ``spacing`` mm (None: as trained)."""
    return name if spacing is None else f"{name} (T at {spacing:g} mm)"


def refined_name(name, steps):
    """The table's name of model method ``name`` refined ``steps`` iterations per level."""
    return f"{name} + refinement {steps}"


def save_refine_curve(path, records, args):
    """``refine_curve.png``: each refined model method's mean Dice (over pairs) against the
    refinement iterations per level, from 0 (T alone), with T at the first --network-spacing;
    None when fewer than two counts ran."""
    from ..evaluation import figures

    steps_list = refine_counts(args)
    spacing = (args.network_spacing or [None])[0]
    if len(steps_list) < 2:
        return None

    def mean_dice(method):
        values = [r["dice_mean"] for r in records if r["method"] == method]
        return float(np.mean(values)) if values else None

    history, labels = {}, {}
    for method, model_name, _ in model_folders(args):
        if method not in args.refine_methods:
            continue
        name = spaced_name(model_name, spacing)
        points = [(n, mean_dice(name if n == 0 else refined_name(name, n)))
                  for n in (0, *steps_list)]
        history[method] = [(n, d) for n, d in points if d is not None]
        labels[method] = name
    identity = mean_dice(evaluation.IdentityMethod.name)
    if identity is not None:
        history["identity"] = [(0, identity), (steps_list[-1], identity)]
        labels["identity"] = "identity"
    figures.save_validation_curve(path, history, labels=labels,
                                  title="mean Dice against refinement iterations per level",
                                  xlabel="refinement iterations per level (0: T alone)")
    return path


def parse_settings(items):
    """``["alpha=1", "levels=2,1", "xla=off"]`` -> ``{"alpha": 1, "levels": (2, 1), "xla": "off"}``
    (numbers, or words; commas make tuples)."""
    settings = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep:
            raise InputError(f"--refine-set takes KEY=VALUE, got {item!r}")
        values = [_setting_value(v) for v in text.split(",")]
        settings[key] = tuple(values) if "," in text else values[0]
    return settings


def _setting_value(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def main(argv=None):
    """``dgan-evaluate``; returns the exit status (2 for bad input)."""
    args = parser().parse_args(argv)
    compat.quiet(args.verbose)  # before the library below starts TensorFlow
    from ..data.io import write_json
    from ..evaluation.report import evaluate

    show_warnings()
    try:
        benchmark = brain.benchmark_pairs(
            args.data, npz_path=args.brain_npz, labels_path=args.labels,
            resolution_mm=args.resolution, n_pairs=args.pairs, seed=args.seed,
            shape=tuple(args.shape), spacing=args.spacing)
        methods = [evaluation.IdentityMethod()]
        methods += refinement_methods(args)
        ants_settings = {"reg_iterations": tuple(args.ants_iterations)}
        if not args.no_ants:
            ants, reason = evaluation.import_ants()
            if ants is None:
                print(reason, file=sys.stderr)
            else:
                methods.append(evaluation.AntsSyNMethod(ants, **ants_settings))
                if not args.no_ceiling and "fixed_t1" in benchmark.pairs[0]:
                    methods.append(evaluation.ants_ceiling(ants, **ants_settings))
        write_json(Path(args.out) / "config.json", {
            **vars(args), "benchmark": benchmark.name, "spacing_mm": benchmark.spacing,
            "label_ids": list(benchmark.label_ids), "methods": [m.name for m in methods],
            "ants": {**evaluation.ANTS_DEFAULTS, **ants_settings},
            "ants_ceiling": {**evaluation.ANTS_DEFAULTS, **evaluation.ANTS_CC, **ants_settings},
        })
        result = evaluate(methods, benchmark, args.out,
                                     figure_pairs=args.figure_pairs,
                                     progress=not args.no_progress)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    curve = save_refine_curve(Path(args.out) / "refine_curve.png", result.records, args)
    print(result.summary_path.read_text())
    if curve:
        print(f"wrote {curve}")
    print(f"wrote {result.csv_path}, {result.summary_path} and {len(result.figures)} figures")
    return 0

