"""piecewise_constant: a multiplier from each boundary of `scheduler.steps` on."""

import numpy as np

from modules.errors import ConfigError
from modules.schedule.shapes.base import Shape


class PiecewiseConstant(Shape):
    """The multiplier of the last [boundary, multiplier] entry whose boundary is <= k."""

    name = "piecewise_constant"
    reads = ("steps",)
    min_factor_applies = False

    def resolve(self, scheduler, steps, total_steps, warmup_steps):
        resolved = [(steps(boundary, "scheduler.steps"), value) for boundary, value in scheduler.steps]
        for (previous, _), (boundary, _) in zip(resolved, resolved[1:]):
            if boundary <= previous:
                raise ConfigError(f"boundaries must increase; {boundary} steps follows {previous} steps "
                                  "(after converting to steps of this plan)", "scheduler.steps")
        return {"piecewise": tuple(resolved)}

    def multipliers(self, schedule, k):
        boundaries = np.array([boundary for boundary, _ in schedule.piecewise], dtype=np.int64)
        values = np.array([value for _, value in schedule.piecewise], dtype=np.float64)
        return values[np.searchsorted(boundaries, k, side="right") - 1]

    def warnings(self, schedule):
        beyond = [(boundary, value) for boundary, value in schedule.piecewise if boundary >= schedule.total_steps]
        messages = []
        if beyond:
            boundary, value = beyond[0]
            never = "it never takes effect" if len(beyond) == 1 else f"it and {len(beyond) - 1} more never take effect"
            messages.append(f"scheduler.steps: the boundary at step {boundary} (multiplier {value:g}) is at or past "
                            f"the end of the run ({schedule.total_steps} steps): {never}")
        return messages + super().warnings(schedule)
