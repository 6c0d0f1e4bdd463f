"""The package's layout: subpackages by job, imports in one direction, the README's table names
every module, the scripts are shims."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dgan"

#: What each part of dgan may import of dgan (besides itself and the top-level modules
#: dgan.compat, dgan.errors and dgan's __version__): the layers, bottom to top.
MAY_IMPORT = {
    "data": set(),
    "core": {"data"},
    "registration": {"core", "data"},
    "evaluation": {"core", "data", "registration"},
    "training": {"core", "data", "registration", "evaluation"},
    "cli": {"core", "data", "registration", "evaluation", "training"},
    "bench": {"core", "data", "registration", "evaluation", "training"},
}
#: At most this many modules directly in dgan/ (__init__.py included).
MAX_TOP_LEVEL_MODULES = 8


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, module_level_only=False):
    """Every dgan module ``path`` imports, at module level or (unless ``module_level_only``)
    inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    modules = {f"dgan.{p}" for p in PARTS} | {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules}


PARTS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())


def part_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else None


def test_the_parts_are_the_layers_the_test_knows():
    assert set(PARTS) == set(MAY_IMPORT)


@pytest.mark.parametrize("part", PARTS)
def test_each_part_imports_only_the_layers_below_it(part):
    allowed = MAY_IMPORT[part] | {part, None}
    for path in sorted((PACKAGE / part).rglob("*.py")):
        wrong = sorted(m for m in imported_modules(path) if part_of(m) not in allowed)
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_nothing_outside_the_benchmarks_imports_them_and_core_no_upper_layer():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = {part_of(m) for m in imported_modules(path)}
        if part_of(module_name(path)) != "bench":
            assert "bench" not in parts, path
        if part_of(module_name(path)) == "core":
            assert not parts & {"training", "registration", "evaluation", "bench", "cli"}, path


def test_no_module_imports_itself_back_at_module_level():
    graph = {module_name(p): imported_modules(p, module_level_only=True) - {module_name(p)}
             for p in PACKAGE.rglob("*.py")}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(module):])}")
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_top_level_modules_import_no_part_and_are_few():
    top = sorted(PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, [p.name for p in top]
    for path in top:
        # dgan/__init__.py names its public API as strings and imports it on first use
        assert not {part_of(m) for m in imported_modules(path)} - {None}, path


def test_the_readme_layout_table_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in table.splitlines():
        cells = row.split("|")
        if len(cells) < 3:
            continue
        package = re.findall(r"`(dgan/(?:\w+/)?)`", cells[1])
        names = re.findall(r"`([\w/]+\.py)`", cells[2])
        named.update(n if n.startswith("dgan/") else package[0] + n for n in names if package)
        named.update(re.findall(r"`(dgan/\w+\.py)`", row))
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" or p.parent == PACKAGE}
    assert named == modules


def test_scripts_are_thin_shims_without_path_tricks():
    for script in [ROOT / "train" / "train_dgan.py", *sorted((ROOT / "eval").glob("*.py"))]:
        text = script.read_text(encoding="utf-8")
        assert "sys.path" not in text
        assert "from dgan.cli." in text or "from dgan.bench." in text, script
        assert len(text.splitlines()) < 20, script
    for module in PACKAGE.rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        assert "sys.path.insert" not in text, module
        assert "matplotlib.use(" not in text, module


def test_figures_leave_matplotlib_backend_alone_and_still_write_png(tmp_path):
    import importlib

    import matplotlib

    from dgan.evaluation import figures

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
