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


SCHEDULE_MATHS = sorted((ROOT / "modules" / "schedule" / "shapes").glob("*.py")) + [
    ROOT / "modules" / "schedule" / "custom.py"]
# The project modules the schedule maths may use: itself, the user-function loader and the error type.
# modules.config.paths: path messages only (os and pathlib), for the custom schedule file not found
SCHEDULE_MATHS_PROJECT = ("modules.schedule.shapes", "modules.schedule.custom", "modules.errors", "modules.config.paths")


def test_the_schedule_maths_files_are_there():
    names = {path.name for path in SCHEDULE_MATHS}
    assert {"base.py", "registry.py", "curve.py", "cosine.py", "custom.py", "sequence.py"} <= names


@pytest.mark.parametrize("path", SCHEDULE_MATHS, ids=[p.relative_to(ROOT).as_posix() for p in SCHEDULE_MATHS])
def test_the_schedule_maths_is_numpy_and_standard_library_only(path):
    import sys

    allowed = {"numpy", "dataclasses", "math", "typing", "__future__"}
    names = imported_names(path)
    outside = {name for name in names if not name.startswith(SCHEDULE_MATHS_PROJECT)}
    assert {name.split(".")[0] for name in outside} <= allowed | set(sys.stdlib_module_names)


def test_the_schedule_maths_rule_catches_a_config_or_torch_import(tmp_path):
    import sys

    for statement in ("import torch", "from modules.config.preset import Preset", "import pydantic"):
        sample = tmp_path / "sample.py"
        sample.write_text(statement + "\n", encoding="utf-8")
        names = {name for name in imported_names(sample) if not name.startswith(SCHEDULE_MATHS_PROJECT)}
        assert {name.split(".")[0] for name in names} - {"numpy"} - set(sys.stdlib_module_names), statement
