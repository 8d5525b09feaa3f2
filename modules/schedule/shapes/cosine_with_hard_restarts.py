"""cosine_with_hard_restarts: `scheduler.cycles` half cosines, each jumping back to 1 (as diffusers)."""

import numpy as np

from modules.schedule.shapes.base import g, half_cosine_wave, progress
from modules.schedule.shapes.cosine_with_restarts import CosineWithRestarts


class CosineWithHardRestarts(CosineWithRestarts):
    """f = g(0.5 * (1 + cos(pi * ((c * p) mod 1))))"""

    name = "cosine_with_hard_restarts"

    def multipliers(self, schedule, k):
        phase = progress(schedule, k)
        phase *= float(schedule.cycles)
        phase -= np.floor(phase)  # (c * p) mod 1, exactly, for c * p >= 0; three times faster than np.mod
        return g(schedule, half_cosine_wave(phase, np.pi))
