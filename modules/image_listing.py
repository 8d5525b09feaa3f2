"""The one listing of a dataset folder.

The step plan counts images with `list_images` and the data loader reads
exactly the files it returns, so the two can never disagree. Contract:
files below `folder` (subfolders included) whose extension is in
`IMAGE_EXTENSIONS` (case-insensitive), skipping hidden files and hidden
folders (names starting with "."), sorted by their path relative to
`folder` in POSIX form, so the order is the same on every platform.
"""

import os
from pathlib import Path

from modules.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str | os.PathLike, key: str = "data.path") -> list[Path]:
    """Return the image files of `folder`; ConfigError if it is missing or holds none."""
    root = Path(folder)
    if not root.exists():
        raise ConfigError(f"dataset folder '{root}' does not exist", key)
    if not root.is_dir():
        raise ConfigError(f"'{root}' is not a folder", key)
    found: list[tuple[str, Path]] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(directory, name)
            found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise ConfigError(
            f"dataset folder '{root}' holds no images ({', '.join(IMAGE_EXTENSIONS)})", key
        )
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]
