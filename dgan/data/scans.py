"""The scans a user trains on: finding them, loading and preparing them, labelled pairs.

- :func:`find_scans`: folders, glob patterns, CSV lists, single files;
- :class:`ScanSet`: scans loaded, checked and prepared
  (:func:`dgan.data.preprocessing.preprocess_volume`) in parallel threads, then kept in memory, a
  sequence of arrays for :func:`dgan.data.pipeline.make_dataset`;
- labelled pairs from a CSV (:func:`read_pair_csv`, :func:`write_pair_csv`,
  :func:`load_labelled_pairs`), the validation pairs of a training run.
"""

import concurrent.futures
import csv
import functools
import glob
import logging
import os
from pathlib import Path

from ..errors import InputError
from .io import VOLUME_SUFFIXES, atomic_write, load_volume, volume_suffix
from .preprocessing import check_shape, preprocess_volume

logger = logging.getLogger(__name__)


def _is_volume_file(path):
    return path.is_file() and not path.name.startswith(".") and volume_suffix(path) is not None


def _read_csv(path):
    """Paths in the first column; a first row whose first cell is not a volume file is a header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row and row[0].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the CSV file ({error})", path) from error
    if rows and volume_suffix(rows[0][0].strip()) is None:
        rows = rows[1:]
    return [str(path.parent / Path(row[0].strip()).expanduser()) for row in rows]


def _find_one(spec):
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return [str(p) for p in sorted(path.iterdir()) if _is_volume_file(p)]
    if path.suffix.lower() == ".csv" and path.is_file():
        return _read_csv(path)
    if any(c in text for c in "*?["):
        return [p for p in sorted(glob.glob(os.path.expanduser(text))) if _is_volume_file(Path(p))]
    return [str(path)] if path.is_file() else []


def find_scans(spec):
    """The scan files a user means.

    :param spec: a folder (every ``.nii``, ``.nii.gz``, ``.mgz``, ``.npz`` file in it, sorted),
        a glob pattern, a CSV file (first column: paths, header row optional, relative paths are
        relative to the CSV's folder), a single file, or a list of these
    :return: list of paths (str), in order
    :raises InputError: "no files matched", naming the spec that matched nothing
    """
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise InputError("no files matched (empty list)")
    paths = []
    for item in specs:
        found = _find_one(item)
        if not found:
            raise InputError(
                f"no files matched (expected a folder, glob, CSV or file of type "
                f"{', '.join(VOLUME_SUFFIXES)})",
                item,
            )
        paths.extend(found)
    return paths


def _load_preprocessed(path, shape, spacing, kind):
    volume = load_volume(path, kind=kind)
    if kind == "labels":
        return preprocess_volume(volume, shape, spacing, order=0, normalize=False)
    return preprocess_volume(volume, shape, spacing)


class ScanSet:
    """Scans loaded, checked and preprocessed in parallel threads, then kept in memory.

    Behaves as a read-only sequence of arrays, so it can be passed to :func:`make_dataset`.

    :param paths: files (see :func:`find_scans`)
    :param shape: the network's input shape (X, Y, Z)
    :param spacing: voxel size in mm to resample to, or None
    :param kind: ``"image"`` (float32 in [0, 1]) or ``"labels"`` (int32, nearest neighbour)
    :param workers: threads; default min(8, CPU count)
    :raises InputError: for the first file (in the given order) that cannot be used
    """

    def __init__(self, paths, shape, spacing=None, kind="image", workers=None):
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise ValueError("ScanSet needs at least one path")
        self.shape = check_shape(shape)
        self.spacing = spacing
        workers = workers or min(8, os.cpu_count() or 1)
        load = functools.partial(_load_preprocessed, shape=self.shape, spacing=spacing, kind=kind)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            self.volumes = tuple(pool.map(load, self.paths))
        for volume in self.volumes:
            volume.array.setflags(write=False)
        logger.info("loaded %d scans of shape %s", len(self.volumes), self.shape)

    @property
    def arrays(self):
        """The preprocessed arrays, each of shape (X, Y, Z)."""
        return [volume.array for volume in self.volumes]

    @property
    def affines(self):
        """The affine of each preprocessed grid, shape = (4, 4) each."""
        return [volume.affine for volume in self.volumes]

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, index):
        return self.volumes[index].array

    def __iter__(self):
        return iter(self.arrays)


# --- labelled pairs (validation) -------------------------------------------------------------

#: The columns of a CSV of labelled pairs (validation pairs; relative paths are relative to the
#: CSV's folder).
PAIR_COLUMNS = ("moving", "fixed", "moving_labels", "fixed_labels")


def read_pair_csv(path):
    """Rows of a CSV of labelled pairs (:data:`PAIR_COLUMNS`), paths made absolute.

    :return: list of dicts, one per pair
    :raises InputError: no such file, or a header without the columns
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or any(c not in rows[0] for c in PAIR_COLUMNS):
        raise InputError(f"needs a header with the columns {', '.join(PAIR_COLUMNS)}", path)
    return [{c: str((path.parent / row[c]).resolve()) for c in PAIR_COLUMNS} for row in rows]


def write_pair_csv(path, rows):
    """Write rows (dicts of :data:`PAIR_COLUMNS`, paths relative to the CSV's folder) atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, PAIR_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def load_labelled_pairs(csv_path, preprocessing):
    """The pairs of a CSV (:func:`read_pair_csv`), each file prepared by ``preprocessing``
    (:class:`~dgan.data.preprocessing.Preprocessing`; label maps nearest neighbour, not scaled).

    :return: list of dicts ``moving``, ``fixed`` (X, Y, Z) float32 in [0, 1],
        ``moving_labels``, ``fixed_labels`` (X, Y, Z)
    :raises InputError: an unusable file, or a label map whose shape differs from its image's
    """
    pairs = []
    for row in read_pair_csv(csv_path):
        pair = {}
        for key in PAIR_COLUMNS:
            labels = key.endswith("_labels")
            volume = load_volume(row[key], kind="labels" if labels else "image")
            if labels:
                image = row[key[:-len("_labels")]]
                reference = load_volume(image)
                if volume.array.shape != reference.array.shape:
                    raise InputError(
                        f"label map of shape {volume.array.shape} does not match its image "
                        f"{image} of shape {reference.array.shape}", row[key])
            pair[key] = preprocessing.prepare(volume, order=0 if labels else 1,
                                              normalize=not labels).array
        pairs.append(pair)
    return pairs
