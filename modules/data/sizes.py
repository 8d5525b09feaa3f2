"""Image sizes from file headers, remembered in a size index so a large folder is re-planned at once.

Contract:
- `header_size(path)` is the (width, height) an image has once its EXIF
  orientation is applied, read from the file header only (PIL's lazy open:
  no pixel is decoded). `orientation(image)` is the EXIF orientation the
  decoder applies, read the same way, so the size the plan counts and the
  pixels training decodes always agree. A file whose header does not read
  is a ConfigError naming its path (key `data.path`).
- `image_sizes(folder, paths)` returns the size of every path (in order),
  reading only the headers of files the index does not know or whose
  modification time or byte size changed since; files no longer listed
  are dropped from the index. This is the header check of every file
  before training: an unreadable file is found here, by path.
- The index is one JSON file per dataset folder under the user cache
  folder (`$XDG_CACHE_HOME`, else `~/.cache`, then
  `lr-scheduler-trainer/image_sizes/<hash of the folder's absolute path>.json`),
  never inside the dataset folder: a dataset may be read-only or shared,
  and a file written there would change the folder the user gave (and its
  modification time, which the app's image counter keys on). It is
  written atomically (temporary file, then rename); an index that cannot
  be read is rebuilt, one that cannot be written is skipped: the index
  only ever saves time, it never changes a result. A process keeps the parsed index of each
  folder while the index file is unchanged (its modification time and size), so a re-plan of many
  concept folders parses none of them again.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from modules.errors import ConfigError

INDEX_VERSION = 1
CACHE_FOLDER_NAME = "lr-scheduler-trainer"
EXIF_ORIENTATION_TAG = 0x0112
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transposed or rotated by 90 degrees: width and height swap
PROGRESS_MIN_FILES = 2000  # a progress bar only when reading this many headers


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_FOLDER_NAME


def index_file(folder: str | os.PathLike) -> Path:
    """Where the size index of dataset `folder` lives (see the module docstring)."""
    absolute = str(Path(folder).expanduser().resolve())
    return cache_root() / "image_sizes" / f"{hashlib.sha256(absolute.encode()).hexdigest()[:24]}.json"


def unreadable(path: Path, error: BaseException) -> ConfigError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ConfigError(f"cannot read image '{path}': {reason}", "data.path")


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened, not yet decoded image.

    PNG keeps EXIF in a chunk that may follow the pixels; only one before
    them (in `image.info`) counts, so the header alone decides, as it must
    for the plan.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of `path` as displayed (EXIF orientation applied), from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if orientation(image) in SWAPPING_ORIENTATIONS:
                width, height = height, width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise unreadable(path, error) from None
    if width < 1 or height < 1:
        raise ConfigError(f"cannot read image '{path}': it has no pixels ({width}x{height})", "data.path")
    return width, height


_PARSED: dict[str, tuple[tuple[int, int], dict]] = {}
"""index file -> ((mtime_ns, size) of the file when parsed, its files): a re-plan in the same process
(the app's, the benchmark's) parses an unchanged index once. Never mutated by the callers."""
_PARSED_MAX = 512


def _load_index(file: Path, folder: str) -> dict[str, list[int]]:
    try:
        status = os.stat(file)
        stamp = (status.st_mtime_ns, status.st_size)
        parsed = _PARSED.get(str(file))
        if parsed is not None and parsed[0] == stamp:
            return parsed[1]
        stored = json.loads(file.read_text(encoding="utf-8"))
        if stored.get("version") == INDEX_VERSION and stored.get("folder") == folder:
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[str(file)] = (stamp, stored["files"])
            return stored["files"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {}


def _save_index(file: Path, folder: str, files: dict[str, list[int]]) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump({"version": INDEX_VERSION, "folder": folder, "files": files}, stream,
                          separators=(",", ":"))
            os.replace(temporary, file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # a read-only or full cache folder only costs the next run its header reads


def image_sizes(folder: str | os.PathLike, paths: list[str | os.PathLike],
                progress: bool = True) -> list[tuple[int, int]]:
    """(width, height) of each of `paths` (files of `folder` as listed by `modules.data.listing`),
    through the size index."""
    root = Path(folder).expanduser().resolve()
    file = index_file(root)
    known = _load_index(file, str(root))
    prefix = str(Path(folder)) + os.sep
    cut = len(prefix)
    files: dict[str, list[int]] = {}
    todo: list[tuple[int, str, str, os.stat_result]] = []
    sizes: list[tuple[int, int] | None] = []
    stat, posix = os.stat, os.sep == "/"
    for position, path in enumerate(paths):
        if not isinstance(path, str):
            path = os.fspath(path)
        try:
            status = stat(path)
        except OSError as error:
            raise unreadable(Path(path), error) from None
        # The listing joins names onto the folder, so the key is the rest of the string (fast).
        if path.startswith(prefix):
            key = path[cut:] if posix else path[cut:].replace(os.sep, "/")
        else:
            key = Path(path).relative_to(folder).as_posix()
        entry = known.get(key)
        if entry is not None and entry[0] == status.st_mtime_ns and entry[1] == status.st_size:
            files[key] = entry
            sizes.append((entry[2], entry[3]))
        else:
            todo.append((position, key, path, status))
            sizes.append(None)
    if todo:
        from tqdm.auto import tqdm

        for position, key, path, status in tqdm(todo, desc="reading image sizes", unit="image", leave=False,
                                                disable=not progress or len(todo) < PROGRESS_MIN_FILES):
            width, height = header_size(Path(path))
            files[key] = [status.st_mtime_ns, status.st_size, width, height]
            sizes[position] = (width, height)
    if todo or len(files) != len(known):
        _save_index(file, str(root), files)
    return sizes  # type: ignore[return-value]
