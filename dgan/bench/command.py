"""What a user waits for: ``dgan-register`` as a command, one process per pair, against ANTs.

:func:`bench_commands` writes the brain benchmark's first pair at a given resolution as NIfTI
files (moving, fixed and their label maps), then runs, each in a child process and timed from
outside (wall time, the child's peak resident memory): ``dgan-register`` without a model and,
when given one, with ``--model``, ``calls`` times each (the first with an empty XLA compile cache,
:func:`dgan.compat.use_compile_cache`, as on a machine's first call, the others with the cache
it filled); and ANTs SyN-MI (:data:`dgan.evaluation.methods.ANTS_DEFAULTS`, through antspyx,
reading and writing the same files). Each row has the command's own stage times (the
``run time:`` line of ``dgan-register``) and the Dice of the moved labels. The command line is
``dgan-bench-speed --command`` (:mod:`dgan.bench.bench_speed`).
"""

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core import metrics
from ..data import io as dio
from . import brain

#: The ``run time:`` line of ``dgan-register``: total and per-stage seconds.
_RUN_TIME = re.compile(r"run time: ([\d.]+) s \(affine ([\d.]+) s, network ([\d.]+) s, "
                       r"refinement ([\d.]+) s\)")


@dataclasses.dataclass
class CommandTime:
    """One timed command: ``wall`` seconds from start to exit as the user waits, the child's peak
    resident memory (MiB), the stage seconds it printed (``run``, ``affine``, ``network``,
    ``refinement``; empty for ANTs) and the mean Dice of its moved labels."""

    method: str
    call: int
    wall: float
    peak_mib: float
    stages: dict
    dice: float


def write_pair(npz_path, resolution_mm, folder):
    """The brain benchmark's first pair at ``resolution_mm`` as NIfTI files in ``folder``
    (identity direction, the voxel size as spacing).

    :return: ({"moving", "fixed", "moving_labels"} -> path, the fixed labels as an int32 array)
    """
    pair = brain.load_brain_benchmark(brain.check_brain_file(npz_path), resolution_mm,
                                      n_pairs=1, seed=0)[0]
    affine = np.diag([resolution_mm] * 3 + [1.0])
    paths = {}
    for key in ("moving", "fixed", "moving_labels"):
        paths[key] = str(Path(folder) / f"{key}.nii.gz")
        array = pair[key] if "labels" not in key else pair[key].astype(np.int32)
        dio.save_volume(paths[key], array, affine)
    return paths, pair["fixed_labels"].astype(np.int32)


#: Runs its arguments as a command and writes that child's peak resident memory (KiB) last on
#: stderr. A process's peak counts what it held before it started the command: a child forked
#: from a benchmark that has TensorFlow loaded would report the benchmark's size; this small
#: process in between holds a few MiB.
_TRAMPOLINE = ("import resource, subprocess, sys\n"
               "code = subprocess.run(sys.argv[1:]).returncode\n"
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
               "sys.stderr.write(f'\\n{peak}\\n')\n"
               "sys.exit(code)\n")


def run_timed(command, env=None):
    """Run ``command`` (a list) in a child process; (wall seconds, its peak resident MiB, its
    stdout). A non-zero exit raises RuntimeError with the end of its stderr."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _TRAMPOLINE, *command], capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - started
    err, _, peak = done.stderr.rstrip("\n").rpartition("\n")
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({done.returncode}): "
                           f"{err[-2000:]}")
    return wall, int(peak) / 1024.0, done.stdout


def stages_of(output):
    """The stage seconds of ``dgan-register``'s output ({} when it printed none)."""
    found = _RUN_TIME.search(output)
    if not found:
        return {}
    return dict(zip(("run", "affine", "network", "refinement"), map(float, found.groups())))


def mean_dice(moved_labels_path, fixed_labels, label_ids):
    """Mean Dice over ``label_ids`` of a moved label file against the fixed labels."""
    moved = dio.load_volume(moved_labels_path, kind="labels").array
    return metrics.mean_dice(moved, fixed_labels, label_ids)


def dgan_command(paths, out, model=None):
    """``dgan-register`` on the pair, its outputs in ``out``, as a user types it."""
    command = [sys.executable, "-m", "dgan.cli.register", "--moving", paths["moving"],
               "--fixed", paths["fixed"], "--moving-labels", paths["moving_labels"],
               "--out-moved", str(Path(out) / "moved.nii.gz"),
               "--out-flow", str(Path(out) / "flow.nii.gz"),
               "--out-labels", str(Path(out) / "moved_labels.nii.gz")]
    return command + (["--model", str(model)] if model is not None else [])


def ants_command(paths, out, settings):
    """ANTs SyN through antspyx on the same files, in a fresh Python, as a script would run it."""
    code = (
        "import ants\n"
        f"fixed = ants.image_read({paths['fixed']!r})\n"
        f"moving = ants.image_read({paths['moving']!r})\n"
        f"result = ants.registration(fixed, moving, verbose=False, **{settings!r})\n"
        f"labels = ants.apply_transforms(fixed, ants.image_read({paths['moving_labels']!r}), "
        "result['fwdtransforms'], interpolator='nearestNeighbor')\n"
        f"ants.image_write(result['warpedmovout'], {str(Path(out) / 'moved.nii.gz')!r})\n"
        f"ants.image_write(labels, {str(Path(out) / 'moved_labels.nii.gz')!r})\n")
    return [sys.executable, "-c", code]


def bench_commands(npz_path, resolution_mm, label_ids, model=None, calls=3, ants_settings=None,
                   progress=print):
    """Time ``dgan-register`` (no model; with ``model`` when given) ``calls`` times each and ANTs
    (``ants_settings``, None: skipped) once, on the brain pair at ``resolution_mm``.

    :return: list of :class:`CommandTime`
    """
    rows = []

    def timed(method, call, command, out, env=None):
        wall, peak, output = run_timed(command, env)
        dice = mean_dice(out / "moved_labels.nii.gz", fixed_labels, label_ids)
        rows.append(CommandTime(method, call, wall, peak, stages_of(output), dice))
        progress(f"{method} call {call}: {wall:.1f} s, {peak:.0f} MiB, Dice {dice:.3f}")

    with tempfile.TemporaryDirectory(prefix="dgan-bench-command-") as folder:
        paths, fixed_labels = write_pair(npz_path, resolution_mm, folder)
        runs = [("dgan-register (no model)", None)]
        if model is not None:
            runs.append(("dgan-register --model", model))
        for method, model_path in runs:
            env = {**os.environ, "DGAN_COMPILE_CACHE": str(Path(folder) / f"cache-{len(rows)}")}
            for call in range(1, calls + 1):
                out = Path(folder) / f"out-{len(rows)}"
                out.mkdir()
                timed(method, call, dgan_command(paths, out, model_path), out, env)
        if ants_settings is not None:
            out = Path(folder) / "out-ants"
            out.mkdir()
            timed("ANTs SyN (MI), antspyx", 1, ants_command(paths, out, ants_settings), out)
    return rows


def table(rows_by_size):
    """Markdown table of {size name: [CommandTime]}."""
    lines = ["| size | method | call | wall s | run s (affine / network / refinement) | "
             "peak MiB | Dice |", "|---|---|---:|---:|---|---:|---:|"]
    for size, rows in rows_by_size.items():
        for r in rows:
            s = r.stages
            stages = (f"{s['run']:.1f} ({s['affine']:.1f} / {s['network']:.1f} / "
                      f"{s['refinement']:.1f})" if s else "-")
            lines.append(f"| {size} | {r.method} | {r.call} | {r.wall:.1f} | {stages} | "
                         f"{r.peak_mib:.0f} | {r.dice:.3f} |")
    return "\n".join(lines)
