"""No function in modules/ or ui/ is longer than MAX_LINES: the loop, the plan and the app read in small parts."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 80
SOURCES = sorted([*(ROOT / "modules").rglob("*.py"), *(ROOT / "ui").rglob("*.py")])


def long_functions(path: Path, limit: int = MAX_LINES) -> list[str]:
    """'name (N lines)' of every function or method in `path` whose def..last line spans more than `limit`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
            length = node.end_lineno - first + 1
            if length > limit:
                found.append(f"{node.name} ({length} lines)")
    return found


def test_the_check_finds_a_long_function(tmp_path):
    sample = tmp_path / "sample.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    sample.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}", encoding="utf-8")
    assert long_functions(sample) == [f"long ({MAX_LINES + 1} lines)"]


@pytest.mark.parametrize("path", SOURCES, ids=[p.relative_to(ROOT).as_posix() for p in SOURCES])
def test_no_function_is_longer_than_the_limit(path):
    assert long_functions(path) == []
