"""A user's own schedule: `scheduler.type "custom"` with `scheduler.function`.

`scheduler.function` is `"path/to/file.py:name"` (a path relative to the
working directory, or absolute) or `"package.module:name"` (importable).
The function is called once on the whole plan,

    multipliers = name(k, total_steps)      k = np.arange(T) (int64), total_steps = T

and must return T finite values >= 0 (a list or an array; a scalar is
broadcast). It owns the whole curve: warmup and min_factor do not apply.

`source_digest` is the SHA-256 of the file the function lives in: it is part
of the step plan's identity, so a resume refuses an edited function.
`multipliers` loads, calls and checks once per (function, digest, T) and
keeps the result (read-only) for plans built again from the same preset. The
step plan puts the values in its resolved schedule
(`ResolvedSchedule.custom_values`, by `modules.schedule.shapes.custom`), so the
curve of a plan needs neither this cache nor the file. Every failure is a ConfigError naming the function and the
problem, keyed `scheduler.function`.
"""

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from modules.config.paths import path_note
from modules.errors import ConfigError

KEY = "scheduler.function"
HELP = '"path/to/file.py:name" or "package.module:name"'


def _split(spec: str) -> tuple[str, str]:
    location, colon, name = spec.rpartition(":")
    if not colon or not location or not name.isidentifier():
        raise ConfigError(f"{spec!r} is not {HELP}", KEY)
    return location, name


def _is_file(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def _read_source(spec: str) -> tuple[str, str]:
    """(source text, where it came from) of the file holding the function."""
    location, _ = _split(spec)
    if _is_file(location):
        path = Path(location)
        try:
            return path.read_text(encoding="utf-8"), str(path.resolve())
        except FileNotFoundError:
            raise ConfigError(f"{spec!r}: the file '{location}' does not exist{path_note(location)}", KEY) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{spec!r}: cannot read '{location}': {error}", KEY) from None
    try:
        found = importlib.util.find_spec(location)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"{spec!r}: cannot find module '{location}': {error}", KEY) from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise ConfigError(f"{spec!r}: no module named '{location}'", KEY)
    return Path(found.origin).read_text(encoding="utf-8"), found.origin


def source_digest(spec: str) -> str:
    """SHA-256 (hex) of the source file of `spec`'s function."""
    source, _ = _read_source(spec)
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _load(spec: str, source: str, origin: str):
    location, name = _split(spec)
    namespace: dict = {"__name__": f"custom_schedule_{hashlib.sha256(origin.encode()).hexdigest()[:12]}",
                       "__file__": origin}
    try:
        # Executed from the text just read (and hashed), so the digest names exactly the code that runs.
        exec(compile(source, origin, "exec"), namespace)  # noqa: S102 - the user's own schedule file
    except Exception as error:  # noqa: BLE001 - any failure in the user's file is bad input
        raise ConfigError(f"{spec!r}: loading '{location}' failed: {type(error).__name__}: {error}", KEY) from None
    function = namespace.get(name)
    if function is None:
        raise ConfigError(f"{spec!r}: '{location}' defines no '{name}'", KEY)
    if not callable(function):
        raise ConfigError(f"{spec!r}: '{name}' is not a function", KEY)
    return function


@lru_cache(maxsize=8)
def _evaluate(spec: str, digest: str, total_steps: int) -> np.ndarray:
    source, origin = _read_source(spec)
    if hashlib.sha256(source.encode("utf-8")).hexdigest() != digest:
        raise ConfigError(f"{spec!r}: the file changed while the plan was being built; try again", KEY)
    function = _load(spec, source, origin)
    steps = np.arange(total_steps, dtype=np.int64)
    steps.setflags(write=False)  # the function cannot change the steps it is given
    try:
        returned = function(steps, total_steps)
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"{spec!r} raised {type(error).__name__}: {error}", KEY) from None
    try:
        values = np.array(returned, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{spec!r} returned {type(returned).__name__}, not numbers: {error}", KEY) from None
    if values.ndim == 0:
        values = np.full(total_steps, float(values))
    if values.shape != (total_steps,):
        raise ConfigError(f"{spec!r} returned shape {values.shape}; expected one value per step ({total_steps},)",
                          KEY)
    bad = ~np.isfinite(values)
    if bad.any():
        step = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{spec!r} returned {values[step]} at step {step} ({int(bad.sum())} values not finite)",
                          KEY)
    if (values < 0).any():
        step = int(np.flatnonzero(values < 0)[0])
        raise ConfigError(f"{spec!r} returned {values[step]:g} at step {step}: multipliers must be >= 0", KEY)
    values.setflags(write=False)
    return values


def multipliers(spec: str, digest: str, total_steps: int) -> np.ndarray:
    """f(k) for k = 0 .. T - 1, checked; read-only and shared (do not modify)."""
    return _evaluate(spec, digest, total_steps)

