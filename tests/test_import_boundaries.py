"""modules/ is the engine: it never imports the GUI, a toolkit or matplotlib, nor ui/ or scripts/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("ui", "scripts", "tkinter", "customtkinter", "matplotlib", "_cli")
ENGINE_FILES = sorted((ROOT / "modules").rglob("*.py"))


def imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def offending(names: set[str]) -> list[str]:
    return sorted(name for name in names if name.split(".")[0] in FORBIDDEN)


def test_there_are_engine_files():
    assert len(ENGINE_FILES) >= 10


@pytest.mark.parametrize("path", ENGINE_FILES, ids=[p.relative_to(ROOT).as_posix() for p in ENGINE_FILES])
def test_engine_module_imports_no_gui_or_script(path):
    assert offending(imported_names(path)) == []


def test_the_check_catches_each_forbidden_import(tmp_path):
    for statement in ("import tkinter", "from ui.curve_plot import draw_preview", "import matplotlib.pyplot as plt",
                      "from customtkinter import CTk", "import scripts.preview", "importlib.import_module('ui.app')"):
        sample = tmp_path / "sample.py"
        sample.write_text(f"def later():\n    {statement}\n", encoding="utf-8")
        assert offending(imported_names(sample)), statement
    clean = tmp_path / "clean.py"
    clean.write_text("import numpy\nfrom modules.schedule.shapes import SHAPES\nimport uio\n", encoding="utf-8")
    assert offending(imported_names(clean)) == []


def test_the_schedule_maths_is_numpy_and_standard_library_only():
    import sys

    allowed = {"numpy", "dataclasses", "math", "typing", "__future__"}
    names = imported_names(ROOT / "modules" / "schedule" / "shapes.py")
    assert {name.split(".")[0] for name in names} <= allowed | set(sys.stdlib_module_names)
