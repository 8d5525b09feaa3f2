"""A training owns its output.dir while it runs (SPEC §6).

`hold_output_dir(output_dir)` takes an exclusive `fcntl.flock` on
`output.dir/.training.lock` (the folder is created if needed) and writes the
holder's pid into it, for the message another run prints. The lock belongs to
the open file: it is released when the run ends, however it ends (the kernel
drops it when the process dies, so the lock of a killed run is no obstacle:
the next run takes it over; when the killed run's forked data workers still hold the
descriptor for a moment, the pid in the file names no live process and the next run
replaces the file). A second training into the same folder gets a
ConfigError at once:

    output.dir: '/path/out' is in use by another training (pid 1234); wait for it or choose another output.dir

On release the lock file is removed, and so is output.dir when this run
created it and left nothing else in it (a run refused before training leaves
no trace).
"""

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from modules.errors import ConfigError
from modules.training import paths


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _holder_is_gone(path: Path) -> bool:
    """True when the pid written in the lock file names no live process (killed, or a zombie): its
    forked DataLoader workers inherit the locked descriptor and may outlive it briefly."""
    holder = _holder(path)
    if not holder.isdigit() or int(holder) == os.getpid():
        return False
    try:
        os.kill(int(holder), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        status = Path(f"/proc/{holder}/status").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.startswith("State:") and "Z" in line.split()[1:2] for line in status.splitlines())


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _take(path: Path) -> int:
    """An open descriptor holding the lock on `path`; ConfigError when another process holds it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            if _holder_is_gone(path):  # a killed run's data workers may still hold its lock for a moment
                _remove(path)
                continue
            raise ConfigError(f"'{path.parent}' is in use by another training (pid {_holder(path)}); wait for it "
                              "or choose another output.dir", "output.dir") from None
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed while this process opened it
            return descriptor
        os.close(descriptor)


@contextmanager
def hold_output_dir(output_dir: Path, hold: bool = True):
    """Hold the lock of `output_dir` inside the block (`hold=False`: other processes of a job, a no-op)."""
    if not hold:
        yield
        return
    output_dir = Path(output_dir)
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create '{output_dir}': {error.strerror}", "output.dir") from None
    path = output_dir / paths.LOCK_FILE
    descriptor = _take(path)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
    except OSError as error:
        os.close(descriptor)
        raise ConfigError(f"cannot write into '{output_dir}': {error.strerror}", "output.dir") from None
    try:
        yield
    finally:
        try:
            path.unlink()
        except OSError:
            pass
        os.close(descriptor)
        if created:
            try:
                output_dir.rmdir()  # only when empty: a run refused before training leaves nothing
            except OSError:
                pass
