"""How a path from a preset reads in an error message.

Paths in a preset are used as written: a relative path is relative to the
folder the program runs in (the current working folder), and `~` is not
expanded (no shell reads the preset). `path_note(value)` says both where it
matters, so an error about a missing folder tells the user where it was
looked for: "(a relative path, looked for in '/home/me/project'; '~' is not
expanded: write '/home/me/images')".
"""

import os
from pathlib import Path


def path_note(value: str | os.PathLike) -> str:
    """' (...)' naming the folder a relative `value` was resolved against and, for '~...', that '~'
    is not expanded; '' for an absolute path."""
    text = os.fspath(value)
    if Path(text).is_absolute():
        return ""
    parts = [f"a relative path, looked for in '{Path.cwd()}'"]
    if text.startswith("~"):
        parts.append(f"'~' is not expanded: write '{Path(text).expanduser()}'")
    return f" ({'; '.join(parts)})"


def resolved(value: str | os.PathLike) -> Path:
    """The absolute path `value` names (relative to the working folder, '~' not expanded, links followed)."""
    return Path(os.path.realpath(os.fspath(value)))


def is_inside(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    """Whether `inner` is `outer` or lies below it, once both are resolved."""
    inner_path, outer_path = resolved(inner), resolved(outer)
    return inner_path == outer_path or outer_path in inner_path.parents
