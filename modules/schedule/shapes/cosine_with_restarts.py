"""cosine_with_restarts: `scheduler.cycles` smooth cosine waves between 1 and min_factor after warmup.

OneTrainer's meaning. diffusers' `get_scheduler`, transformers and kohya sd-scripts use this name for
hard restarts (`cosine_with_hard_restarts` here), so a run that ends high (whole cycles end on a crest)
is said in the plan's warnings (SPEC §13).
"""

import numpy as np

from modules.schedule.shapes.base import Shape, g, half_cosine_wave, progress


END_HIGH_FACTOR = 0.9  # a run whose last step is above this fraction of the peak LR is warned about


class CosineWithRestarts(Shape):
    """Smooth waves: f = g(0.5 * (1 + cos(2 * pi * c * p)))"""

    name = "cosine_with_restarts"
    reads = ("min_factor", "cycles")

    def multipliers(self, schedule, k):
        return g(schedule, half_cosine_wave(progress(schedule, k), np.pi * float(schedule.cycles) * 2.0))

    def warnings(self, schedule):
        messages = super().warnings(schedule)
        decay_steps = max(1, schedule.total_steps - schedule.warmup_steps)
        if decay_steps / schedule.cycles < 2:
            messages.append(f"{schedule.cycles:g} cycles over {decay_steps} steps leaves fewer than 2 steps per cycle")
        last = float(self.multipliers(schedule, np.array([schedule.total_steps - 1], dtype=np.int64))[0])
        if last > END_HIGH_FACTOR:
            messages.append(
                f"cosine_with_restarts ends at {last:.0%} of the peak LR ({schedule.cycles:g} smooth cycles end on a "
                "crest); for waves that decay to the floor at the end use cosine_with_hard_restarts (what diffusers, "
                "transformers and kohya sd-scripts call cosine_with_restarts), or a half cycle more (e.g. cycles "
                f"{schedule.cycles + 0.5:g})")
        return messages

    def cycle_starts(self, schedule):
        """Where floor(c * p) steps up: the same expression the curve uses, so the marks fall on the jumps."""
        k = np.arange(schedule.warmup_steps, schedule.total_steps, dtype=np.int64)
        cycle_index = np.floor(float(schedule.cycles) * progress(schedule, k))
        return [int(step) for step in k[1:][np.diff(cycle_index) > 0]]
