"""The package's layers: the teaching core never imports the book's machinery, and imports transformers only
inside functions (the conversions in mmcourse.convert are where the two libraries meet)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mmcourse"
CORE = sorted(path for path in PACKAGE.glob("*.py") if path.name != "__init__.py")


def module_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.lineno, id(node) in top))
    return found


def test_the_package_map_names_every_core_module() -> None:
    """mmcourse/__init__.py's docstring lists the teaching core; every module in it exists, and every core module is
    in it."""
    import re

    import mmcourse

    core_paragraph = mmcourse.__doc__.split("**The teaching core**")[1].split("- **Conversions**")[0]
    listed = set(re.findall(r"``(\w+)``", core_paragraph))
    assert listed == {path.stem for path in CORE}


@pytest.mark.parametrize("path", CORE, ids=lambda path: path.name)
def test_the_teaching_core_never_imports_the_books_machinery(path: Path) -> None:
    machinery = [(name, line) for name, line, _ in module_imports(path) if name.startswith("mmcourse.book")]
    assert machinery == [], f"{path.name} imports the book's machinery: {machinery}"


@pytest.mark.parametrize("path", CORE, ids=lambda path: path.name)
def test_the_teaching_core_leaves_transformers_to_the_conversions(path: Path) -> None:
    top_level = [(name, line) for name, line, top in module_imports(path) if name.startswith("transformers") and top]
    assert top_level == [], f"{path.name} imports transformers at module level: {top_level}"
