"""sine: a full wave every `scheduler.period` after warmup, starting at the top."""

import numpy as np

from modules.errors import ConfigError
from modules.schedule.shapes.base import Shape, g, half_cosine_wave


class Sine(Shape):
    """A full wave every P steps after warmup, starting at the top, m at half period:
    f = g(0.5 * (1 + cos(2 * pi * (k - Wu) / P)))"""

    name = "sine"
    reads = ("min_factor", "period")

    def resolve(self, scheduler, steps, total_steps, warmup_steps):
        period = steps(scheduler.period, "scheduler.period")
        if period < 2:
            raise ConfigError(f"must be at least 2 steps, got {period} ({scheduler.period!r})", "scheduler.period")
        return {"period_steps": period}

    def multipliers(self, schedule, k):
        # The position in the wave is taken modulo P in integers first, so f(k + P) == f(k) exactly
        # at every k however long the run (float phases drift by ~1e-13 over a thousand waves).
        position = np.mod(k - schedule.warmup_steps, schedule.period_steps)
        phase = position.astype(np.float64)
        phase /= float(schedule.period_steps)
        return g(schedule, half_cosine_wave(phase, 2.0 * np.pi))

    def warnings(self, schedule):
        messages = super().warnings(schedule)
        after_warmup = schedule.total_steps - schedule.warmup_steps
        if schedule.period_steps > after_warmup:
            messages.append(f"the sine period ({schedule.period_steps} steps) is longer than the run after warmup "
                            f"({after_warmup} steps): not one full wave")
        if schedule.period_steps % 2:
            messages.append(f"the sine period ({schedule.period_steps} steps) is odd: the floor (min_factor) falls "
                            "between two steps")
        return messages

    def cycle_starts(self, schedule):
        return list(range(schedule.warmup_steps + schedule.period_steps, schedule.total_steps, schedule.period_steps))
