"""f(k) over a plan: warmup, then the shape; the schedule-free optimizers' effective factor.

1. warmup, k < Wu:         s + (1 - s) * k / Wu       (s = warmup_start_factor)
2. after warmup, k >= Wu:  the shape (`SHAPES[schedule.type].multipliers`)
3. past the plan, k >= T:  f(T - 1)  (no shape rises, restarts or divides by zero there)
"""

import numpy as np

from modules.schedule.shapes.base import ResolvedSchedule
from modules.schedule.shapes.registry import SHAPES
from modules.schedule.shapes.schedule_free import SCHEDULE_FREE


def _as_steps(schedule: ResolvedSchedule, steps) -> np.ndarray:
    """Steps as int64, clipped to the plan: k >= T is read as T - 1."""
    if steps is None:
        return np.arange(schedule.total_steps, dtype=np.int64)
    k = np.asarray(steps, dtype=np.int64)
    if k.size and k.min() < 0:
        raise ValueError(f"optimizer steps are 0-based, got {int(k.min())}")
    return np.minimum(k, schedule.total_steps - 1)


def _warmup(schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
    """k < Wu: s + (1 - s) * k / Wu, s = warmup_start_factor."""
    s = schedule.warmup_start_factor
    return s + (1.0 - s) * (k.astype(np.float64) / float(max(1, schedule.warmup_steps)))


def applied_multipliers(schedule: ResolvedSchedule, steps=None) -> np.ndarray:
    """f(k): the factor written into each param group's lr before optimizer step k.

    `steps` defaults to every step of the plan, 0 .. T - 1.
    """
    k = _as_steps(schedule, steps)
    if schedule.schedule_free:
        return np.ones(k.shape, dtype=np.float64)
    shape = SHAPES[schedule.type]
    result = np.empty(k.shape, dtype=np.float64)
    warmup_steps = schedule.warmup_steps
    if steps is None:
        # The whole plan, k = 0 .. T - 1 in order: the two phases are slices (views), which
        # spares a million-step plan the masked copies of the general path below.
        result[:warmup_steps] = _warmup(schedule, k[:warmup_steps])
        result[warmup_steps:] = shape.multipliers(schedule, k[warmup_steps:])
        return result
    in_warmup = k < warmup_steps
    if in_warmup.any():
        result[in_warmup] = _warmup(schedule, k[in_warmup])
    after = ~in_warmup
    if after.any():
        result[after] = shape.multipliers(schedule, k[after])
    return result


def effective_multipliers(schedule: ResolvedSchedule, steps=None) -> np.ndarray:
    """The factor the optimizer really uses at step k: what preview and TensorBoard show.

    Equal to `applied_multipliers` except for schedule-free optimizers, whose
    own warmup (AdamW) or rectification (RAdam) is applied inside `step()`.
    """
    curve = SCHEDULE_FREE.get(schedule.schedule_free) if schedule.schedule_free else None
    if curve is None:
        return applied_multipliers(schedule, steps)  # `steps` as given: None takes the whole-plan path
    return curve.effective(schedule, _as_steps(schedule, steps))


def cycle_starts(schedule: ResolvedSchedule) -> list[int]:
    """Optimizer steps at which a new cycle (restart shapes and sine) or phase (sequence) begins; [] otherwise.

    Derived from the same expression the curve uses, so the marks in the
    preview fall exactly where the curve jumps.
    """
    if schedule.schedule_free:
        return []
    return SHAPES[schedule.type].cycle_starts(schedule)
