"""polynomial: (1 - p) to the power q, from 1 down to min_factor."""

import numpy as np

from modules.schedule.shapes.base import Shape, g, remaining


class Polynomial(Shape):
    """f = g((1 - p) ** q)"""

    name = "polynomial"
    reads = ("min_factor", "power")

    def multipliers(self, schedule, k):
        left = remaining(schedule, k)
        np.power(left, schedule.power, out=left)
        return g(schedule, left)
