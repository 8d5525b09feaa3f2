"""warmup_stable_decay: 1 until the last `scheduler.decay` of the run, then down to min_factor."""

import numpy as np

from modules.errors import ConfigError
from modules.schedule.shapes.base import Shape, g


class WarmupStableDecay(Shape):
    """1 while k < T - Dd; then q = (k - (T - Dd)) / Dd and
    linear g(1 - q), cosine g(0.5 * (1 + cos(pi * q))) or sqrt g(1 - sqrt(q))."""

    name = "warmup_stable_decay"
    reads = ("min_factor", "decay", "decay_shape")

    def resolve(self, scheduler, steps, total_steps, warmup_steps):
        decay = steps(scheduler.decay, "scheduler.decay")
        if decay > total_steps - warmup_steps:
            raise ConfigError(f"decay of {decay} steps is longer than the {total_steps - warmup_steps} steps "
                              "after warmup", "scheduler.decay")
        return {"decay_steps": decay}

    def multipliers(self, schedule, k):
        decay_steps = schedule.decay_steps
        result = np.ones(k.shape, dtype=np.float64)
        if decay_steps <= 0:
            return result
        decay_start = schedule.total_steps - decay_steps
        in_decay = k >= decay_start
        q = (k[in_decay] - decay_start).astype(np.float64) / float(decay_steps)
        if schedule.decay_shape == "linear":
            v = 1.0 - q
        elif schedule.decay_shape == "cosine":
            v = 0.5 * (1.0 + np.cos(np.pi * q))
        else:
            v = 1.0 - np.sqrt(q)
        result[in_decay] = g(schedule, v)
        return result
