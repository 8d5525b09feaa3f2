"""inverse_sqrt: 1 / sqrt of the steps since warmup over a timescale (as transformers), floored at min_factor."""

import numpy as np

from modules.errors import ConfigError
from modules.schedule.shapes.base import Shape

TRANSFORMERS_DEFAULT_TIMESCALE = 10_000


class InverseSqrt(Shape):
    """f = max(m, 1 / sqrt((k - Wu + t) / t)), t = timescale_steps (as transformers)"""

    name = "inverse_sqrt"
    reads = ("min_factor", "timescale")

    def resolve(self, scheduler, steps, total_steps, warmup_steps):
        """t = scheduler.timescale in steps; unset: the warmup, or transformers' 10,000 without one."""
        if scheduler.timescale is None:
            return {"timescale_steps": warmup_steps or TRANSFORMERS_DEFAULT_TIMESCALE}
        timescale = steps(scheduler.timescale, "scheduler.timescale")
        if timescale < 1:
            raise ConfigError(f"must be at least 1 step, got {timescale}", "scheduler.timescale")
        return {"timescale_steps": timescale}

    def multipliers(self, schedule, k):
        timescale = float(schedule.timescale_steps)
        shift = timescale - schedule.warmup_steps
        decay = 1.0 / np.sqrt((k + shift) / timescale)
        return np.maximum(schedule.min_factor, decay)
