"""The README's layout table names every module of the package, and the scripts are shims."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_layout_table_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(dgan/[\w/]+(?:\.py)?)`", table))
    modules = {f"dgan/{p.name}" for p in (ROOT / "dgan").glob("*.py") if p.name != "__init__.py"}
    packages = {f"dgan/{p.name}/" for p in (ROOT / "dgan").iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert named == modules | packages


def test_scripts_are_thin_shims_without_path_tricks():
    for script in [ROOT / "train" / "train_dgan.py", *sorted((ROOT / "eval").glob("*.py"))]:
        text = script.read_text(encoding="utf-8")
        assert "sys.path" not in text and "from dgan.cli." in text, script
        assert len(text.splitlines()) < 20, script
    for module in (ROOT / "dgan").rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        assert "sys.path.insert" not in text, module
        assert "matplotlib.use(" not in text, module


def test_figures_leave_matplotlib_backend_alone_and_still_write_png(tmp_path):
    import importlib

    import matplotlib

    from dgan import figures

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        importlib.reload(figures)  # what importing dgan does to a program that chose a backend
        fig, ax = figures.new_figure(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        figures.save_figure(fig, tmp_path / "line.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
    assert (tmp_path / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
