"""The resolved schedule and the base class of every schedule shape.

A shape is one object in the registry (`modules.schedule.shapes.registry`) that owns

- `reads`: the scheduler.* fields it reads (besides warmup and warmup_start_factor, which every
  shape but custom and sequence follows);
- `resolve`: its durations converted to optimizer steps, through the one converter the step plan
  hands it (`steps(value, key) -> int`; nothing here knows epochs or percentages);
- `multipliers`: f(k) after warmup, vectorised NumPy on an int64 array of steps k >= Wu;
- `warnings`: what a careful user wants to know about this shape in this plan;
- `cycle_starts`: the steps where a new cycle or phase begins (the preview's marks).

The shape keeps no state: everything it needs is in the `ResolvedSchedule` it is given.

Notation (SPEC §2): T total steps, Wu warmup steps, D = max(1, T - Wu),
p = (k - Wu) / D, m = min_factor, g(v) = m + (1 - m) * v.
Expressions are written in the same order as `diffusers.optimization` so
that, with m = 0 and s = 0, the curves agree with it to the last bit or so.
"""

from dataclasses import dataclass, field, fields

import numpy as np


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule with every duration converted to optimizer steps."""

    type: str
    total_steps: int
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    min_factor: float = 0.0
    cycles: float = 1.0
    power: float = 1.0
    period_steps: int = 0
    timescale_steps: int = 0
    decay_steps: int = 0
    decay_shape: str = "linear"
    piecewise: tuple[tuple[int, float], ...] = ()
    schedule_free: str | None = None
    beta2: float = 0.999
    function: str = ""  # custom: "file.py:name" or "module:name"
    function_sha256: str = ""  # custom: digest of the function's source file
    phases: tuple[tuple[str, int, float, float], ...] = ()  # sequence: (shape, end step, from, to)
    # custom: the checked multiplier of every step 0 .. T - 1 (read-only), computed when the plan is
    # built. Carried here so the curve needs nothing else; not part of the identity (the digest is).
    custom_values: np.ndarray | None = field(default=None, compare=False, repr=False)


def identity_fields(schedule: ResolvedSchedule) -> dict:
    """The compared fields of `schedule`, by name (the custom values are not among them)."""
    return {item.name: getattr(schedule, item.name) for item in fields(schedule) if item.compare}


class Shape:
    """One schedule shape: parameters, durations to steps, multipliers, warnings."""

    name = ""
    reads: tuple[str, ...] = ()
    min_factor_applies = True  # False: min_factor has no effect, and the plan says so

    def resolve(self, scheduler, steps, total_steps: int, warmup_steps: int) -> dict:
        """ResolvedSchedule fields of this shape from the `scheduler` section (ConfigError if impossible)."""
        return {}

    def multipliers(self, schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
        """f(k) for steps k >= Wu (int64), as float64."""
        raise NotImplementedError

    def warnings(self, schedule: ResolvedSchedule) -> list[str]:
        messages = []
        if schedule.min_factor > 0 and not self.min_factor_applies:
            messages.append(f"min_factor has no effect with the {schedule.type} schedule")
        return messages

    def cycle_starts(self, schedule: ResolvedSchedule) -> list[int]:
        return []

    def __call__(self, schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
        """The shape as a function f(schedule, k), as `SHAPES[name](schedule, k)` was."""
        return self.multipliers(schedule, k)


def g(schedule: ResolvedSchedule, v: np.ndarray) -> np.ndarray:
    """g(v) = m + (1 - m) * v: scales a 1 -> 0 shape onto 1 -> min_factor."""
    m = schedule.min_factor
    v *= 1.0 - m  # in place: every caller passes a fresh temporary (a million-step plan is 8 MB each)
    v += m
    return v


def progress(schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
    """p = (k - Wu) / D, D = max(1, T - Wu)."""
    # float(k) - Wu is exact (integers below 2**53), so this equals (k - Wu) / D with one array, not three.
    p = k.astype(np.float64)
    p -= schedule.warmup_steps
    p /= float(max(1, schedule.total_steps - schedule.warmup_steps))
    return p


def remaining(schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
    """1 - p, computed as (T - k) / D like diffusers' linear schedule."""
    left = k.astype(np.float64)
    np.subtract(float(schedule.total_steps), left, out=left)
    left /= float(max(1, schedule.total_steps - schedule.warmup_steps))
    return left


def half_cosine_wave(x: np.ndarray, scale: float) -> np.ndarray:
    """0.5 * (1 + cos(scale * x)), in place on the temporary `x` (same operations, same order)."""
    x *= scale
    np.cos(x, out=x)
    x += 1.0
    x *= 0.5
    return x
