"""Registering the pairs of a CSV file in one process (dgan.registration.batch, dgan-register
--batch)."""

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest

from dgan.registration import batch
from dgan.cli.register import EXIT_BAD_INPUT, EXIT_ROWS_FAILED, main
from dgan.errors import InputError
from test_register import constant_flow_net, save_model, write_scans

#: The options of every run here: T's field as it is, on the tiny model (fast).
FAST = ["--refine-steps", "0", "--affine", "off", "--start", "network"]


def write_csv(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny T at 2 mm whose flow is a constant shift."""
    folder = tmp_path_factory.mktemp("model")
    return save_model(folder / "shift", constant_flow_net([1.0, -0.5, 0.25]), 2.0)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """scans/fixed.nii.gz, two moving scans a and b (the same content) and a's labels."""
    folder = tmp_path_factory.mktemp("batch") / "scans"
    folder.mkdir()
    paths = write_scans(folder, np.random.default_rng(3))
    shutil.copy(paths["moving"], folder / "a.nii.gz")
    nib.save(nib.load(paths["moving"]), folder / "b.nii")
    shutil.copy(paths["labels"], folder / "a_aseg.nii.gz")
    return folder


# --- the CSV file and the output names
# -------------------------------------------------------------


def test_relative_paths_are_relative_to_the_csv_folder(tmp_path):
    path = tmp_path / "lists" / "pairs.csv"
    path.parent.mkdir()
    path.write_text("\ufeffmoving, fixed ,moving_labels\n"  # a BOM and spaces, as spreadsheets write
                    "scans/a.nii.gz,/data/template.nii.gz,scans/a_aseg.nii.gz\n"
                    "\n"
                    " ../b.nii , template.nii.gz,\n", encoding="utf-8")
    first, second = batch.read_pairs(path)
    assert (first.row, first.moving, first.fixed, first.moving_labels) == (
        1, "scans/a.nii.gz", "/data/template.nii.gz", "scans/a_aseg.nii.gz")
    assert first.moving_path == str(tmp_path / "lists" / "scans" / "a.nii.gz")
    assert first.fixed_path == "/data/template.nii.gz"  # absolute: as it is
    assert first.moving_labels_path == str(tmp_path / "lists" / "scans" / "a_aseg.nii.gz")
    assert (second.row, second.moving, second.moving_labels) == (2, "../b.nii", None)
    assert second.moving_path == str(tmp_path / "lists" / ".." / "b.nii")
    assert second.moving_labels_path is None and first.problem is second.problem is None


@pytest.mark.parametrize("name, stem", [("a/b/sub-01_T1w.nii.gz", "sub-01_T1w"), ("x.y.nii", "x.y"),
                                        ("scan.mgz", "scan"), ("vol.NPZ", "vol"), ("plain", "plain")])
def test_stems_drop_the_volume_ending(name, stem):
    assert batch.stem(name) == stem


def test_outputs_are_named_after_the_input_stems(tmp_path):
    pair = batch.Pair(row=1, moving="s/sub-01.nii.gz", fixed="t.nii", moving_labels="s/aseg-01.nii",
                      folder=tmp_path)
    assert batch.output_paths(pair, tmp_path / "out") == (
        str(tmp_path / "out" / "sub-01_moved.nii.gz"), str(tmp_path / "out" / "sub-01_flow.nii.gz"),
        str(tmp_path / "out" / "aseg-01_moved_labels.nii.gz"))
    assert batch.output_paths(batch.Pair(1, "m.nii", "f.nii", None, tmp_path), "o")[2] is None


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "the pairs CSV file is empty: expected the header moving,fixed"),
        (["", " , "], "the pairs CSV file is empty"),
        (["moving,target", "a.nii,b.nii"], "the header moving,target lacks the column fixed"),
        (["moving_labels", "a.nii"], "the header moving_labels lacks the columns moving and fixed"),
        (["moving,fixed,subject", "a.nii,b.nii,1"], "unknown column 'subject' in the header"),
        (["moving,fixed,fixed", "a.nii,b.nii,c.nii"], "a column is named twice"),
        (["moving,fixed"], "no pairs under the header"),
        (["moving,fixed", "one/scan.nii.gz,f.nii", "two/scan.nii,f.nii"],
         "rows 1 and 2 would both write scan_moved.nii.gz"),
        (["moving,fixed,moving_labels", "a.nii,f.nii,x/aseg.nii", "b.nii,f.nii,y/aseg.nii.gz"],
         "rows 1 and 2 would both write aseg_moved_labels.nii.gz"),
    ],
)
def test_malformed_csv_files_are_refused_in_one_line(tmp_path, lines, message):
    path = write_csv(tmp_path / "pairs.csv", lines)
    with pytest.raises(InputError) as error:
        batch.read_pairs(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


def test_a_missing_csv_file_is_named(tmp_path):
    with pytest.raises(InputError, match="pairs.csv: file not found"):
        batch.read_pairs(tmp_path / "pairs.csv")


def test_rows_with_empty_or_extra_cells_are_bad_rows_not_a_bad_file(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", ["moving,fixed", "a.nii,", "b.nii,f.nii,c.nii",
                                              "c.nii,f.nii,,", "d.nii"])
    problems = [pair.problem for pair in batch.read_pairs(path)]
    assert problems == ["no fixed path (empty cell)", "3 cells where the header has 2", None,
                        "no fixed path (empty cell)"]


# --- dgan-register --batch
# ---------------------------------------------------------------------------


def read_results(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_a_batch_skips_a_bad_row_and_writes_the_others_as_single_runs_do(model, scans, tmp_path, capsys):
    csv_path = write_csv(scans.parent / "pairs.csv", [
        "moving,fixed,moving_labels",
        "scans/a.nii.gz,scans/fixed.nii.gz,scans/a_aseg.nii.gz",
        "scans/missing.nii.gz,scans/fixed.nii.gz,",
        f"{scans / 'b.nii'},scans/fixed.nii.gz,",
    ])
    out = tmp_path / "out"
    assert main(["--batch", str(csv_path), "--out-dir", str(out), "--model", model, *FAST]) == EXIT_ROWS_FAILED
    captured = capsys.readouterr()
    missing = str(scans / "missing.nii.gz")
    assert f"row 2/3: failed: {missing}: file not found\n" in captured.err
    assert [line for line in captured.err.splitlines() if "row 2/3" in line] == [
        f"row 2/3: failed: {missing}: file not found"]
    assert "row 1/3: ok" in captured.err and "row 3/3: ok" in captured.err
    assert "registered 2 of 3 pairs" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "a_aseg_moved_labels.nii.gz", "a_flow.nii.gz", "a_moved.nii.gz", "b_flow.nii.gz",
        "b_moved.nii.gz", "results.csv"]
    results = read_results(out / "results.csv")
    assert [(r["row"], r["moving"], r["status"]) for r in results] == [
        ("1", "scans/a.nii.gz", "ok"),
        ("2", "scans/missing.nii.gz", f"{missing}: file not found"),
        ("3", str(scans / "b.nii"), "ok")]
    assert list(results[0]) == list(batch.RESULT_COLUMNS)
    assert all(float(r["seconds"]) >= 0 for r in results)

    single = tmp_path / "single"  # the first row as one pair: the same files
    assert main(["--moving", str(scans / "a.nii.gz"), "--fixed", str(scans / "fixed.nii.gz"),
                 "--moving-labels", str(scans / "a_aseg.nii.gz"), "--model", model, *FAST,
                 "--out-moved", str(single / "m.nii.gz"), "--out-flow", str(single / "f.nii.gz"),
                 "--out-labels", str(single / "l.nii.gz")]) == 0
    for batch_name, single_name in (("a_moved", "m"), ("a_flow", "f"), ("a_aseg_moved_labels", "l")):
        written, expected = nib.load(out / f"{batch_name}.nii.gz"), nib.load(single / f"{single_name}.nii.gz")
        np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(expected.dataobj))
        np.testing.assert_array_equal(written.affine, expected.affine)
    flow = np.asarray(nib.load(out / "b_flow.nii.gz").dataobj)
    assert np.abs(flow).max() > 0.1  # the shifting T moved b as well


@pytest.mark.parametrize("lines, message", [
    (["moving"], "the header moving lacks the column fixed"),
    (["moving,fixed", "x/a.nii,f.nii", "y/a.nii.gz,f.nii"], "rows 1 and 2 would both write a_moved.nii.gz"),
])
def test_a_refused_csv_file_writes_nothing(model, tmp_path, capsys, lines, message):
    csv_path = write_csv(tmp_path / "pairs.csv", lines)
    out = tmp_path / "out"
    assert main(["--batch", str(csv_path), "--out-dir", str(out), "--model", model, *FAST]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {csv_path}: {message}") and err.count("\n") == 1
    assert not out.exists()


def test_a_row_failing_inside_the_registrar_is_reported_and_the_batch_goes_on(tmp_path):
    class Breaking:
        """A registrar that breaks on the first pair as TensorFlow might, then fails to read."""

        calls = 0

        def register_files(self, *paths):
            Breaking.calls += 1
            if Breaking.calls == 1:
                raise RuntimeError("out of memory\n  allocating 3 GB")
            raise InputError("cannot read the file", paths[0])

    pairs = batch.read_pairs(write_csv(tmp_path / "p.csv", ["moving,fixed", "a.nii,f.nii", "b.nii,f.nii"]))
    seen = []
    results = batch.register_pairs(Breaking(), pairs, tmp_path / "out", report=seen.append)
    assert [r.status for r in results] == ["RuntimeError: out of memory allocating 3 GB",
                                           f"{tmp_path / 'b.nii'}: cannot read the file"]
    assert seen == results and not any(r.ok for r in results)
    assert [r["status"] for r in read_results(tmp_path / "out" / "results.csv")] == [r.status for r in results]
