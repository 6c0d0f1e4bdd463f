"""``dgan-bench-speed``. Speed and memory: register one pair, and one training step, Deform-GAN vs
VoxelMorph (vs ANTs).

In one run: the median time and peak memory (``dgan.core.metrics.measure``) of registering one pair
with Deform-GAN's T, VoxelMorph's VxmDense with the same U-Net, and ANTs SyN (when antspyx is
installed), at each of ``--sizes``; then one Deform-GAN training step (D, G and T updated) and
one VxmDense training step at each of ``--train-sizes``; and the ratios. Examples::

    dgan-bench-speed --out runs/bench                # 2 mm and 1 mm, training at 2 mm
    dgan-bench-speed --ants-sizes 2mm --train-sizes 4mm --repeats 2 --out runs/bench
    dgan-bench-speed --sizes 32x32x32 --train-sizes 32x32x32 --repeats 1 --no-ants
    dgan-bench-speed --refine-only --sizes 2mm        # s per refinement iteration
    dgan-bench-speed --command --model runs/brain/deformgan/model --out runs/bench-command

``--command`` times what a user waits for (:mod:`dgan.bench.command`): ``dgan-register`` as a
command, one process per pair, without a model and with ``--model`` when given, ``--calls``
times each (the first with an empty XLA compile cache), and ANTs SyN-MI through antspyx on the
same files, at each of ``--sizes`` (``<r>mm`` only); wall time, each command's own stage times,
peak memory of the process and Dice.

``--refine-only`` measures instance refinement (:mod:`dgan.registration.refine`) alone: the seconds
per iteration at each size's full-resolution level, as the difference of two runs with different
iteration counts (so tracing and the once-per-level terms of R cancel), best of ``--repeats``; with
the L_LCC term (G(F) stood in by 1 - F) and without it, each compiled with XLA (the default) and
without.

A size is ``<r>mm`` (the brain benchmark's first pair on its grid at r mm: 2mm 80x96x112, 1mm
160x192x224, 4mm 40x48x56) or ``XxYxZ`` (random smooth volumes, 1 mm voxels); volumes are
zero-padded to a multiple of the U-Net's down-sampling (4mm: 48x48x64), as registration does.
Networks are VoxelMorph's default U-Net ((16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16)) unless
``--t-features`` says otherwise; T has its block-matching front end (``--matching``); G and D
are the lighter networks dgan-train-baselines trains (``--g-features``, ``--d-pool``). Times are
the network alone for T and VxmDense (no resampling), the whole registration for ANTs. Each
method is measured in a fresh process. Memory is the resident set of that process: ``peak`` is
its highest value from just before the method's network is built to the end of its timed calls
(warm-up included: TensorFlow keeps what the first call allocates), ``added`` that minus the
value just before (the inputs and TensorFlow already loaded).
"""

import argparse
import dataclasses
import os
import platform
import sys
from pathlib import Path

import numpy as np

from .. import compat
from ..core.settings import (DEFAULT_PASSES, VXM_FEATURES, features_text, parse_features,
                             parse_matching)
from ..data import synth
from ..data.io import crop_or_pad, write_json
from ..data.preprocessing import padded_shape
from ..errors import InputError
from ..evaluation import methods as evaluation
from ..registration.settings import RefineConfig
from ..training.presets import BASELINE_NETWORK
from . import brain, command
from .options import add_brain_file_arguments, add_verbose_argument, cpu_model, show_warnings

# TensorFlow (the networks, refinement, the timed methods) is imported in main(), after
# compat.quiet(): ``dgan-bench-speed --help`` answers without starting it.


def parser():
    p = argparse.ArgumentParser(prog="dgan-bench-speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["2mm", "1mm"],
                   help="registration sizes: 2mm, 1mm or XxYxZ (default: 2mm 1mm)")
    p.add_argument("--train-sizes", nargs="*", default=["2mm"],
                   help="training-step sizes (default: 2mm; none to skip)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (networks: >= 1)")
    p.add_argument("--ants-repeats", type=int, default=1, help="timed ANTs calls per size")
    p.add_argument("--no-ants", action="store_true", help="skip ANTs SyN")
    p.add_argument("--ants-sizes", nargs="*",
                   help="the sizes at which ANTs runs (default: every one of --sizes)")
    p.add_argument("--ants-iterations", type=int, nargs="+",
                   default=list(evaluation.ANTS_DEFAULTS["reg_iterations"]))
    p.add_argument("--t-features", help="U-Net features of T and VxmDense, e.g. "
                   "'16,32,32/32,32,32,16,16' (default: VoxelMorph's)")
    p.add_argument("--g-features", default=features_text(BASELINE_NETWORK["g_features"]),
                   help="G's U-Net features (default %(default)s, dgan-train-baselines')")
    p.add_argument("--d-pool", type=int, default=BASELINE_NETWORK["d_pool"],
                   help="D pools its input by this factor (default %(default)s; D has "
                        f"{BASELINE_NETWORK['d_features']} features and "
                        f"{BASELINE_NETWORK['d_layers']} strided layers, as "
                        "dgan-train-baselines trains it)")
    p.add_argument("--matching", type=parse_matching, default=list(DEFAULT_PASSES),
                   help="T's block-matching passes, e.g. 4:2,2:2,1:1 (the default) or none")
    add_brain_file_arguments(p)
    p.add_argument("--refine-only", action="store_true",
                   help="only the seconds per refinement iteration at each of --sizes")
    p.add_argument("--refine-iterations", type=int, nargs=2, default=[5, 25], metavar=("A", "B"),
                   help="the two iteration counts whose time difference is measured")
    p.add_argument("--command", action="store_true",
                   help="time dgan-register as a command, and ANTs, as a user runs them")
    p.add_argument("--model", help="with --command: also time dgan-register --model MODEL")
    p.add_argument("--calls", type=int, default=3,
                   help="with --command: calls of each dgan-register (default %(default)s)")
    p.add_argument("--out", help="folder for bench.json and bench.md")
    add_verbose_argument(p)
    return p


def pair_for(size, npz_path):
    """(moving, fixed, spacing, description) for a size token."""
    if size.endswith("mm"):
        resolution = float(size[:-2])
        pair = brain.load_brain_benchmark(brain.check_brain_file(npz_path), resolution, n_pairs=1,
                                          seed=0)[0]
        return pair["moving"], pair["fixed"], (resolution,) * 3, f"brain {size}"
    try:
        shape = tuple(int(n) for n in size.lower().split("x"))
    except ValueError:
        raise InputError(f"a size is 2mm, 1mm or XxYxZ, got {size!r}") from None
    if len(shape) != 3:
        raise InputError(f"a size is 2mm, 1mm or XxYxZ, got {size!r}")
    rng = np.random.default_rng(0)
    moving = np.clip(synth.smooth_noise(shape, 4.0, rng)[..., 0] * 0.25 + 0.5, 0, 1)
    fixed = np.clip(synth.smooth_noise(shape, 4.0, rng)[..., 0] * 0.25 + 0.5, 0, 1)
    return moving, fixed, (1.0, 1.0, 1.0), "x".join(map(str, shape))


def network_config(moving, fixed, args):
    """(NetworkConfig, moving, fixed): T's (and VxmDense's) features from --t-features, G the
    same U-Net, D its default; the arrays zero-padded, centred, to the networks' multiple, as
    dgan.registration.registrar.Registrar pads them."""
    from ..core.networks import NetworkConfig

    features = parse_features(args.t_features) if args.t_features else VXM_FEATURES
    settings = dict(t_features=features, g_features=parse_features(args.g_features),
                    g_residual=True, matching=args.matching, d_pool=args.d_pool,
                    d_features=BASELINE_NETWORK["d_features"],
                    d_layers=BASELINE_NETWORK["d_layers"])
    probe = NetworkConfig((64, 64, 64), **settings)
    shape = padded_shape(moving.shape, probe.multiple)
    moving, _ = crop_or_pad(moving, shape)
    fixed, _ = crop_or_pad(fixed, shape)
    return NetworkConfig(shape, **settings), moving, fixed


def refine_seconds_per_iteration(moving, fixed, iterations, repeats, int_steps=0, lcc=True,
                                 xla="on"):
    """Seconds per refinement iteration on one full-resolution level (best of ``repeats``)."""
    from ..registration.refine import refine

    translated = 1.0 - moving if lcc else None

    def seconds(steps):
        config = RefineConfig(steps=steps, levels=(1,), int_steps=int_steps, xla=xla)
        return sum(refine(moving, fixed, None, translated, config).seconds)

    for steps in iterations:  # the first call traces (and compiles)
        seconds(steps)
    best = []
    for _ in range(repeats):
        a, b = (seconds(s) for s in iterations)
        best.append((b - a) / (iterations[1] - iterations[0]))
    return min(best), best


def refine_main(args):
    for size in args.sizes:
        moving, fixed, _, name = pair_for(size, args.brain_npz)
        for label, kwargs in (("LG + LCC + smoothness", {}), ("LG + smoothness", {"lcc": False}),
                              ("diffeomorphic, LG + LCC", {"int_steps": 7})):
            for xla, compiled in (("on", "XLA"), ("off", "no XLA")):
                best, all_ = refine_seconds_per_iteration(moving, fixed, args.refine_iterations,
                                                          args.repeats, xla=xla, **kwargs)
                print(f"{name} {moving.shape} refinement ({label}, {compiled}): {best:.3f} s per "
                      f"iteration (best of {args.repeats}: {', '.join(f'{t:.3f}' for t in all_)})",
                      flush=True)
    return 0


def _row(size, shape, method, m):
    added = "n/a" if m["added_mib"] is None else f"{m['added_mib']:.0f}"
    return f"| {size} {shape} | {method} | {m['seconds']:.3f} | {m['peak_mib']:.0f} | {added} |"


def command_main(args):
    """``--command``: :func:`dgan.bench.command.bench_commands` at each size, the table printed
    and written to OUT/command.md and OUT/command.json."""
    ants_settings = None
    if not args.no_ants:
        ants, reason = evaluation.import_ants()
        if ants is None:
            print(reason, file=sys.stderr)
        else:
            ants_settings = {**evaluation.ANTS_DEFAULTS,
                             "reg_iterations": tuple(args.ants_iterations)}
    label_ids = brain.read_label_ids(args.labels)
    by_size = {}
    for size in args.sizes:
        if not size.endswith("mm"):
            raise InputError(f"--command takes sizes <r>mm, got {size!r}")
        with_ants = ants_settings if args.ants_sizes is None or size in args.ants_sizes else None
        by_size[size] = command.bench_commands(args.brain_npz, float(size[:-2]), label_ids,
                                               args.model, args.calls, with_ants)
    text = f"CPU: {cpu_model()}, {os.cpu_count()} cores\n\n{command.table(by_size)}"
    print(text)
    if args.out:
        write_json(Path(args.out) / "command.json", {
            "cpu": cpu_model(), "cpus": os.cpu_count(),
            "rows": {size: [dataclasses.asdict(r) for r in rows]
                     for size, rows in by_size.items()}})
        with open(Path(args.out) / "command.md", "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


def main(argv=None):
    """``dgan-bench-speed``; returns the exit status (2 for bad input)."""
    args = parser().parse_args(argv)
    compat.quiet(args.verbose)  # before the library below starts TensorFlow
    from . import speed

    show_warnings()
    mode = command_main if args.command else refine_main if args.refine_only else None
    if mode is not None:
        try:
            return mode(args)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    ants = None
    if not args.no_ants:
        ants, reason = evaluation.import_ants()
        if ants is None:
            print(reason, file=sys.stderr)
    ants_settings = {"reg_iterations": tuple(args.ants_iterations)}
    results = {"inference": {}, "training_step": {},
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "settings": {**vars(args), "ants": {**evaluation.ANTS_DEFAULTS, **ants_settings}}}
    lines = ["| size | method | median s | peak MiB | added MiB |", "|---|---|---:|---:|---:|"]
    ratios = []
    try:
        for size in args.sizes:
            moving, fixed, spacing, name = pair_for(size, args.brain_npz)
            config, moving, fixed = network_config(moving, fixed, args)
            print(f"registering one pair at {name} {moving.shape} ...", flush=True)
            with_ants = ants if args.ants_sizes is None or size in args.ants_sizes else None
            out = speed.bench_inference(config, moving, fixed, spacing, args.repeats,
                                             args.warmup, ants=with_ants,
                                             ants_settings=ants_settings,
                                             ants_repeats=args.ants_repeats)
            results["inference"][name] = {"shape": list(moving.shape), **out}
            lines += [_row(name, moving.shape, k, v) for k, v in out.items()]
            t, v = out["Deform-GAN T"]["seconds"], out["VoxelMorph VxmDense"]["seconds"]
            ratios.append(f"{name}: Deform-GAN T / VxmDense inference time = {t / v:.2f}")
            if evaluation.AntsSyNMethod.name in out:
                a = out[evaluation.AntsSyNMethod.name]["seconds"]
                ratios.append(f"{name}: ANTs SyN / Deform-GAN T time = {a / t:.0f}")
        for size in args.train_sizes or []:
            moving, fixed, spacing, name = pair_for(size, args.brain_npz)
            config, moving, fixed = network_config(moving, fixed, args)
            print(f"one training step at {name} {moving.shape} ...", flush=True)
            out = speed.bench_training_step(config, moving, fixed, args.repeats,
                                                 args.warmup)
            results["training_step"][name] = {"shape": list(moving.shape), **out}
            lines += [_row(f"train {name}", moving.shape, k, v) for k, v in out.items()]
            g, v = out["Deform-GAN (D+G+T)"], out["VoxelMorph VxmDense (MI)"]
            ratios.append(f"{name}: Deform-GAN / VxmDense training step time = "
                          f"{g['seconds'] / v['seconds']:.2f}, peak memory = "
                          f"{g['peak_mib'] / v['peak_mib']:.2f}")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = "\n".join(lines)
    results["ratios"] = ratios
    print(table)
    print("\n".join(ratios))
    if args.out:
        write_json(Path(args.out) / "bench.json", results)
        with open(Path(args.out) / "bench.md", "w", encoding="utf-8") as handle:
            handle.write(table + "\n\n" + "\n".join(f"- {r}" for r in ratios) + "\n")
    return 0

