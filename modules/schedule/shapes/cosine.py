"""cosine: half a cosine wave from 1 down to min_factor over the steps after warmup."""

import numpy as np

from modules.schedule.shapes.base import Shape, g, half_cosine_wave, progress


class Cosine(Shape):
    """f = g(0.5 * (1 + cos(pi * p)))"""

    name = "cosine"
    reads = ("min_factor",)

    def multipliers(self, schedule, k):
        return g(schedule, half_cosine_wave(progress(schedule, k), np.pi * 0.5 * 2.0))
