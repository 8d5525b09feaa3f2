"""Counting a dataset folder's images off the GUI thread, once per folder.

`ImageCounter.lookup(folder)` answers at once: the count (or the
ConfigError `list_images` raised) when it is known, else None after
starting a worker thread that counts with `modules.data.listing.list_images`
(the listing the data loader reads) and reads every header through the size
index (`modules.data.sizes`), so an unreadable image is the folder's error; a folder that does not exist is
answered at once with its error. The view polls `collect()` from a Tk
`after` callback; when it returns True a count arrived and the preview is
recomputed. Results are cached per folder and the folder's modification
time, so editing other fields never walks 100,000 files again; `forget`
drops a folder's entry (the "recount" button).

`lookup_sizes(folder)` is the same for the image sizes that aspect-ratio
buckets need (`modules.data.sizes.image_sizes`: the file headers, through
the size index), a list of (width, height) in listing order.

`CaptionCounter` is the same for captions: `lookup(folder, extension)`
answers a `modules.data.captions.CaptionSummary` (how many of the folder's images
have a caption file, the first without one, the empty files and the first that
is not UTF-8: `modules.data.captions.scan_captions`), read on a worker thread, cached per folder, its
modification time (a caption added or removed changes it) and the extension.
"""

import os
import threading
from pathlib import Path

from modules.data.captions import CaptionSummary, scan_captions
from modules.errors import ConfigError
from modules.data.listing import list_image_files, list_images
from modules.data.sizes import image_sizes

Result = int | list[tuple[int, int]] | CaptionSummary | ConfigError
COUNT, SIZES, CAPTIONS = "count", "sizes", "captions:"


def folder_key(folder: str, kind: str = COUNT) -> tuple[str, int | None, str]:
    path = Path(folder).expanduser().resolve()
    try:
        modified_ns = os.stat(path).st_mtime_ns
    except OSError:
        modified_ns = None
    return str(path), modified_ns, kind


class ImageCounter:
    def __init__(self, synchronous: bool = False):
        """`synchronous` counts inside `lookup` (for scripts and tests that have no event loop)."""
        self.synchronous = synchronous
        self._results: dict[tuple[str, int | None], Result] = {}
        self._running: dict[tuple[str, int | None], threading.Thread] = {}
        self._finished: list[tuple[str, int | None]] = []
        self._lock = threading.Lock()
        self.walks = 0  # how many times a folder was listed (the cache keeps this low)

    def lookup(self, folder: str) -> Result | None:
        """The count for `folder`, its error, or None while it is being counted."""
        return self._lookup(folder, COUNT)

    def lookup_sizes(self, folder: str) -> Result | None:
        """The (width, height) of every image of `folder`, its error, or None while they are read."""
        return self._lookup(folder, SIZES)

    def cached(self, folder: str, kind: str = COUNT) -> Result | None:
        """The known result for `folder`, without starting a count (None when it is not known)."""
        with self._lock:
            return self._results.get(folder_key(folder, kind))

    def _lookup(self, folder: str, kind: str) -> Result | None:
        key = folder_key(folder, kind)
        with self._lock:
            if key in self._results:
                return self._results[key]
            if key in self._running:
                return None
        if self.synchronous or key[1] is None:
            # Nothing to walk (the folder does not exist or cannot be read): answer at once.
            self._count(key, folder)
            return self._results[key]
        worker = threading.Thread(target=self._count, args=(key, folder), name="image-counter", daemon=True)
        with self._lock:
            self._running[key] = worker
        worker.start()
        return None

    def _count(self, key, folder: str) -> None:
        try:
            result: Result = self.measure(folder, key[2])
        except ConfigError as error:
            result = error
        except OSError as error:
            result = ConfigError(f"cannot read dataset folder '{folder}': {error.strerror}", "data.path")
        with self._lock:
            self.walks += 1
            self._results[key] = result
            self._running.pop(key, None)
            self._finished.append(key)

    def measure(self, folder: str, kind: str) -> Result:
        """What is counted (on the worker thread): the number of images, or their sizes. Both read every
        header (through the size index), as the step plan's dataset check does: an unreadable image is
        the folder's error."""
        paths = list_image_files(folder)
        sizes = image_sizes(folder, [path for _, path in paths], progress=False)
        return sizes if kind == SIZES else len(sizes)

    def collect(self) -> bool:
        """True if a count finished since the last call (call from the GUI thread)."""
        with self._lock:
            arrived = bool(self._finished)
            self._finished.clear()
        return arrived

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._running)

    def wait(self, timeout_seconds: float = 30.0) -> None:
        """Block until every running count is done (tests and the benchmark)."""
        with self._lock:
            workers = list(self._running.values())
        for worker in workers:
            worker.join(timeout_seconds)

    def forget(self, folder: str) -> None:
        path = str(Path(folder).expanduser().resolve())
        with self._lock:
            for key in [key for key in self._results if key[0] == path]:
                del self._results[key]


class CaptionCounter(ImageCounter):
    """How many images of a folder have a caption file; see the module docstring."""

    def lookup(self, folder: str, extension: str = ".txt") -> Result | None:
        return self._lookup(folder, CAPTIONS + extension)

    def measure(self, folder: str, kind: str) -> Result:
        return scan_captions(list_images(folder), kind.removeprefix(CAPTIONS))
