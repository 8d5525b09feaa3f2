"""linear: from 1 down to min_factor over the steps after warmup."""

from modules.schedule.shapes.base import Shape, g, remaining


class Linear(Shape):
    """f = g(1 - p)"""

    name = "linear"
    reads = ("min_factor",)

    def multipliers(self, schedule, k):
        return g(schedule, remaining(schedule, k))
