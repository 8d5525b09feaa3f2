"""The one listing of a dataset folder.

The step plan counts images with `list_images` and the data loader reads
exactly the files it returns, so the two can never disagree. Contract:
files below `folder` (subfolders included) whose extension is in
`IMAGE_EXTENSIONS` (case-insensitive), skipping hidden files and hidden
folders (names starting with "."), sorted by their path relative to
`folder` in POSIX form, so the order is the same on every platform.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from modules.config.paths import path_note
from modules.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNSUPPORTED_IMAGE_EXTENSIONS = (".tif", ".tiff", ".gif", ".heic", ".heif", ".avif", ".jxl")
"""Images of a type the loader does not read: skipped, and named in a warning (`scan_image_files`)."""


def list_images(folder: str | os.PathLike, key: str = "data.path") -> list[Path]:
    """Return the image files of `folder`; ConfigError if it is missing or holds none."""
    return [Path(path) for _, path in list_image_files(folder, key)]


def list_image_files(folder: str | os.PathLike, key: str = "data.path") -> list[tuple[str, str]]:
    """The same listing as (path relative to `folder` in POSIX form, path) strings.

    Strings, not Path objects: a folder of 100,000 images is listed several times faster.
    """
    return scan_image_files(folder, key)[0]


def scan_image_files(folder: str | os.PathLike, key: str = "data.path") -> tuple[list[tuple[str, str]], list[str]]:
    """(`list_image_files(folder)`, the paths of the files it skips for an unsupported image type
    (UNSUPPORTED_IMAGE_EXTENSIONS), sorted) in one walk."""
    scan = walk_folder(folder, key)
    return scan.files, scan.skipped


@dataclass(frozen=True)
class FolderScan:
    files: list[tuple[str, str]]   # as `list_image_files`
    skipped: list[str]             # files of an unsupported image type, sorted
    subfolders: list[str]          # the names of the folder's immediate non-hidden subfolders, sorted


def walk_folder(folder: str | os.PathLike, key: str = "data.path", allow_empty: bool = False) -> FolderScan:
    """One walk of `folder`: its images, the files skipped, its immediate subfolders. ConfigError for a
    missing folder, and for one without images unless `allow_empty`."""
    root = Path(folder)
    if not root.exists():
        raise ConfigError(f"dataset folder '{root}' does not exist{path_note(folder)}", key)
    if not root.is_dir():
        raise ConfigError(f"'{root}' is not a folder{path_note(folder)}", key)
    top = str(root)
    found: list[tuple[str, str]] = []
    skipped: list[str] = []
    subfolders: list[str] = []
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        if directory == top:
            subfolders = sorted(subdirectories)
        # os.walk joins each subfolder onto `top`, so the relative part is the rest of the string.
        prefix = "" if directory == top else directory[len(top):].lstrip(os.sep).replace(os.sep, "/") + "/"
        for name in files:
            if name.startswith("."):
                continue
            lowered = name.lower()
            if lowered.endswith(IMAGE_EXTENSIONS):
                found.append((prefix + name, directory + os.sep + name))
            elif lowered.endswith(UNSUPPORTED_IMAGE_EXTENSIONS):
                skipped.append(directory + os.sep + name)
    if not found and not allow_empty:
        unsupported = f"; {len(skipped)} files of an unsupported type such as '{Path(skipped[0]).name}'" \
            if skipped else ""
        raise ConfigError(
            f"dataset folder '{root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}){unsupported}", key
        )
    found.sort(key=lambda item: item[0])
    return FolderScan(found, sorted(skipped), subfolders)
