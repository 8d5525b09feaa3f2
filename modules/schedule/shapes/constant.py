"""constant: f = 1 after warmup."""

import numpy as np

from modules.schedule.shapes.base import Shape


class Constant(Shape):
    """f = 1"""

    name = "constant"
    min_factor_applies = False

    def multipliers(self, schedule, k):
        return np.ones(k.shape, dtype=np.float64)
