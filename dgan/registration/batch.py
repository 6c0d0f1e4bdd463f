"""Register every pair a CSV file lists, in one process (``dgan-register --batch``, issue 30.4).

One :class:`dgan.registration.registrar.Registrar` serves every row: the model folder is loaded once
and the functions TensorFlow traces for the first pair are reused for the next ones of the same
shape.

The CSV file (:func:`read_pairs`)::

    moving,fixed,moving_labels
    sub-01_T2w.nii.gz,template_T1w.nii.gz,sub-01_aseg.nii.gz
    /data/sub-02_T2w.nii.gz,template_T1w.nii.gz,

has the header ``moving,fixed`` and optionally the column ``moving_labels`` (a row may leave it
empty); relative paths are relative to the CSV file's folder. Each row writes, in the output folder,
files named after its input files' stems (:func:`output_paths`; the stem drops the ending,
``.nii.gz`` as a whole): ``<moving stem>_moved.nii.gz``, ``<moving stem>_flow.nii.gz`` and, with
labels, ``<moving-labels stem>_moved_labels.nii.gz``, as ``dgan-register`` writes one pair
(:func:`dgan.registration.files.write_outputs`). A CSV file whose rows would write the same file
twice is refused before anything runs.

A row that cannot be registered (a missing or unreadable file, NaN voxels, a wrong
dimensionality, an empty cell, ...) is skipped and the next ones go on. ``results.csv`` in the
output folder (:data:`RESULT_COLUMNS`) says for every row done so far how long it took and
``ok`` or its one-line error; it is rewritten, atomically, after each row.
"""

import csv
import dataclasses
import time
from pathlib import Path

from ..data import io as dio
from ..errors import InputError, one_line
from .files import write_outputs

#: The columns a pairs CSV must have, and the one it may have.
REQUIRED_COLUMNS = ("moving", "fixed")
OPTIONAL_COLUMNS = ("moving_labels",)
#: The results file in the output folder, and its columns: ``row`` (1 for the first row under
#: the header), ``moving`` and ``fixed`` as the CSV writes them, ``seconds`` (reading,
#: registering and writing) and ``status``.
RESULTS_NAME = "results.csv"
RESULT_COLUMNS = ("row", "moving", "fixed", "seconds", "status")
#: ``status`` of a registered row; any other status is the row's error.
OK = "ok"
#: What each output file's name adds to its input file's stem.
MOVED_SUFFIX = "_moved.nii.gz"
FLOW_SUFFIX = "_flow.nii.gz"
LABELS_SUFFIX = "_moved_labels.nii.gz"


@dataclasses.dataclass(frozen=True)
class Pair:
    """One row of a pairs CSV file.

    :param row: 1 for the first row under the header
    :param moving: the moving scan's path as the CSV writes it
    :param fixed: the fixed scan's path as the CSV writes it
    :param moving_labels: the moving labels' path as the CSV writes it, or None
    :param folder: the CSV file's folder, that relative paths are relative to
    :param problem: why the row cannot be registered whatever its files (an empty cell, more
        cells than the header), or None
    """

    row: int
    moving: str
    fixed: str
    moving_labels: str | None
    folder: Path
    problem: str | None = None

    @property
    def moving_path(self):
        """The moving scan's path to open (a relative one below the CSV file's folder)."""
        return str(self.folder / self.moving)

    @property
    def fixed_path(self):
        return str(self.folder / self.fixed)

    @property
    def moving_labels_path(self):
        return None if self.moving_labels is None else str(self.folder / self.moving_labels)


@dataclasses.dataclass(frozen=True)
class RowResult:
    """How one row went: :data:`OK`, or its one-line error, and its wall time in seconds."""

    pair: Pair
    seconds: float
    status: str

    @property
    def ok(self):
        return self.status == OK


def stem(path):
    """A file name without its folder and its ending (``a/b.nii.gz`` -> ``b``; ``.mgz``, ...)."""
    name = Path(path).name
    suffix = dio.volume_suffix(name)
    return name[:-len(suffix)] if suffix and len(suffix) < len(name) else name


def output_paths(pair, out_dir):
    """Where a row's outputs go: (moved, flow, moved labels or None) in ``out_dir``."""
    out_dir = Path(out_dir)
    moving = stem(pair.moving)
    labels = None if pair.moving_labels is None else \
        str(out_dir / (stem(pair.moving_labels) + LABELS_SUFFIX))
    return str(out_dir / (moving + MOVED_SUFFIX)), str(out_dir / (moving + FLOW_SUFFIX)), labels


def read_pairs(csv_path):
    """The rows of a pairs CSV file (see the module docstring), checked as a whole.

    :return: list of :class:`Pair`, in the file's order
    :raises InputError: (naming the file) a missing or unreadable file, no header or a header
        without ``moving`` and ``fixed`` or with other columns, no rows, or two rows that would
        write the same output file
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except FileNotFoundError:
        raise InputError("file not found", csv_path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the pairs CSV file ({one_line(error)})", csv_path) from None
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise InputError("the pairs CSV file is empty: expected the header "
                         f"{','.join(REQUIRED_COLUMNS)}", csv_path)
    header = [cell.strip() for cell in lines[0]]
    _check_header(header, csv_path)
    if len(lines) == 1:
        raise InputError("no pairs under the header", csv_path)
    folder = Path(csv_path).parent
    pairs = [_pair(number, header, cells, folder) for number, cells in enumerate(lines[1:], 1)]
    _check_distinct_outputs(pairs, csv_path)
    return pairs


def _check_header(header, csv_path):
    expected = f"expected {','.join(REQUIRED_COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}]"
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        columns = "columns" if len(missing) > 1 else "column"
        raise InputError(f"the header {','.join(header)} lacks the {columns} "
                         f"{' and '.join(missing)}: {expected}", csv_path)
    unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise InputError(f"unknown column {', '.join(map(repr, unknown))} in the header: "
                         f"{expected}", csv_path)
    if len(set(header)) != len(header):
        raise InputError(f"a column is named twice in the header {','.join(header)}", csv_path)


def _pair(number, header, cells, folder):
    """A :class:`Pair` from a row's cells (missing cells are empty; extra empty cells ignored)."""
    cells = [cell.strip() for cell in cells]
    values = dict(zip(header, cells))
    empty = [name for name in REQUIRED_COLUMNS if not values.get(name)]
    problem = None
    if any(cells[len(header):]):
        problem = f"{len(cells)} cells where the header has {len(header)}"
    elif empty:
        problem = f"no {' and no '.join(empty)} path (empty cell)"
    return Pair(row=number, moving=values.get("moving", ""), fixed=values.get("fixed", ""),
                moving_labels=values.get("moving_labels") or None, folder=folder,
                problem=problem)


def _check_distinct_outputs(pairs, csv_path):
    """Two rows must not write the same file (nor one row the same file twice)."""
    writer = {}  # output file name -> the row that writes it
    for pair in pairs:
        if pair.problem is not None:
            continue
        for path in output_paths(pair, ""):
            if path is None:
                continue
            if path in writer:
                raise InputError(f"rows {writer[path]} and {pair.row} would both write "
                                 f"{path}: the moving (and labels) file names must differ",
                                 csv_path)
            writer[path] = pair.row


def register_pairs(registrar, pairs, out_dir, moving_mask=None, fixed_mask=None, report=None):
    """Register every row with one registrar; write each row's outputs and ``results.csv``.

    :param registrar: :class:`dgan.registration.registrar.Registrar`, used for every row
    :param pairs: list of :class:`Pair` (:func:`read_pairs`)
    :param out_dir: the output folder (created if missing)
    :param moving_mask: a mask file for every row's moving scan, or None
    :param fixed_mask: a mask file for every row's fixed scan, or None
    :param report: called with each :class:`RowResult` as the row ends, or None
    :return: list of :class:`RowResult`, one per row
    :raises InputError: the output folder cannot be created, or ``results.csv`` not written
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the output folder ({error.strerror or error})",
                         out_dir) from None
    results = []
    for pair in pairs:
        started = time.perf_counter()
        status = _register_row(registrar, pair, out_dir, moving_mask, fixed_mask)
        results.append(RowResult(pair, time.perf_counter() - started, status))
        write_results(results, out_dir / RESULTS_NAME)
        if report is not None:
            report(results[-1])
    return results


def _register_row(registrar, pair, out_dir, moving_mask, fixed_mask):
    """One row: :data:`OK`, or what went wrong in one line."""
    try:
        if pair.problem is not None:
            raise InputError(pair.problem)
        result = registrar.register_files(pair.moving_path, pair.fixed_path,
                                          pair.moving_labels_path, moving_mask, fixed_mask)
        write_outputs(result, *output_paths(pair, out_dir))
    except InputError as error:
        return one_line(error)
    except Exception as error:  # noqa: BLE001  (whatever breaks on one pair, the others go on)
        return one_line(f"{type(error).__name__}: {error}")
    return OK


def write_results(results, path):
    """Write :data:`RESULT_COLUMNS` for each :class:`RowResult`, all at once (temp, rename)."""
    try:
        with dio.atomic_write(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(RESULT_COLUMNS)
                for result in results:
                    writer.writerow([result.pair.row, result.pair.moving, result.pair.fixed,
                                     f"{result.seconds:.2f}", result.status])
    except OSError as error:
        raise InputError(f"cannot write the file ({error.strerror or error})", path) from None
