"""Schedule shapes: pure, vectorised formulas for the LR multiplier f(k), one object per shape.

Every shape takes the resolved schedule (all durations already in optimizer steps, converted by
the step plan, `modules.schedule.step_plan`) and an integer array of optimizer steps k (0-based)
and returns f(k) as float64. The learning rate of parameter group g at step k is
`base_lr[g] * f(k)`. Nothing here keeps state.

Layout: `base` (ResolvedSchedule, the `Shape` base class, the shared pieces g, p and 1 - p), one
file per shape, `registry` (SHAPES: scheduler.type -> shape object), `curve` (warmup, then the
shape; `applied_multipliers`, `effective_multipliers`, `cycle_starts`) and `schedule_free` (the
effective curves of schedule-free optimizers, which apply their own warmup inside `step()`: for
them `applied_multipliers` is 1 and `effective_multipliers` is what the optimizer really uses).
"""

from modules.schedule.shapes.base import ResolvedSchedule, Shape, identity_fields
from modules.schedule.shapes.curve import applied_multipliers, cycle_starts, effective_multipliers
from modules.schedule.shapes.registry import SHAPES
from modules.schedule.shapes.schedule_free import SCHEDULE_FREE, _radam_unsettled_steps, radam_rectification

__all__ = [
    "SCHEDULE_FREE", "SHAPES", "ResolvedSchedule", "Shape", "_radam_unsettled_steps", "applied_multipliers",
    "cycle_starts", "effective_multipliers", "identity_fields", "radam_rectification",
]
