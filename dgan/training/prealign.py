"""Training scans aligned affinely to one reference scan, once, and cached (``dgan-train
--align``).

Deform-GAN's T (Zhang et al. 2020, arXiv:2002.11430) learns small, smooth deformations; a training
set of scans from several sessions differs first by head position and size. With ``--align``, every
moving and fixed training scan is aligned to the first fixed scan (the *reference*) by
:func:`dgan.registration.affine.estimate_affine` (mutual information, so across modalities) and
resampled once onto the reference's grid, before the usual preprocessing.

The aligned scans are cached in a folder (the run folder's ``aligned/``), one NIfTI per scan with
its transform beside it as an ITK text file (:mod:`dgan.registration.itk`), named after the scan and
a hash of what the result depends on (the scan's and the reference's path, size and modification
time, and the affine settings): a resumed run, or a new run pointed at the same cache, aligns
nothing twice, and a changed scan is aligned again.
"""

import hashlib
import logging
import os
from pathlib import Path

from ..data import io as dio
from ..registration import affine as daffine
from ..registration import itk

logger = logging.getLogger(__name__)


def _fingerprint(path):
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def cache_name(path, reference, config):
    """``<scan name>-<16 hex digits>.nii.gz``: the hash covers both files and the settings."""
    digest = hashlib.sha256("\n".join([_fingerprint(path), _fingerprint(reference),
                                       repr(config)]).encode()).hexdigest()[:16]
    stem = Path(path).name
    for suffix in dio.VOLUME_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}-{digest}.nii.gz"


def align_scans(moving_paths, fixed_paths, cache_dir, config=None):
    """Align every scan to ``fixed_paths[0]`` (cached); the reference itself is used as it is.

    :param moving_paths: moving-modality scan files
    :param fixed_paths: fixed-modality scan files; the first is the reference
    :param cache_dir: folder of the aligned scans (created if needed)
    :param config: :class:`dgan.registration.affine.AffineConfig`, or None for the defaults
    :return: (aligned moving paths, aligned fixed paths), in the given order
    :raises InputError: an unreadable scan, or a pair that cannot be aligned
    """
    config = daffine.AffineConfig() if config is None else config
    reference_path = str(fixed_paths[0])
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    reference = None
    done = {reference_path: reference_path}

    def aligned(path):
        nonlocal reference
        path = str(path)
        if path in done:
            return done[path]
        target = cache_dir / cache_name(path, reference_path, config)
        if not target.exists():
            if reference is None:
                reference = dio.load_volume(reference_path)
            volume = dio.load_volume(path)
            result = daffine.estimate_affine(volume, reference, config)
            moved = dio.resample_to_grid(daffine.through(volume, result.matrix),
                                         reference.affine, reference.shape)
            itk.write_affine(target.with_name(target.name[: -len(".nii.gz")] + ".txt"),
                             result.matrix)
            dio.save_volume(target, moved.array, reference.affine)  # last: marks it complete
            logger.info("aligned %s to %s: %.1f mm RMS, %.1f s", path, reference_path,
                        result.rms_mm, result.seconds)
        done[path] = str(target)
        return done[path]

    return [aligned(p) for p in moving_paths], [aligned(p) for p in fixed_paths]
