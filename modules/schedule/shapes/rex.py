"""rex: the REX schedule, from 1 down to min_factor."""

from modules.schedule.shapes.base import Shape, g, remaining


class Rex(Shape):
    """f = g((1 - p) / (0.1 + 0.9 * (1 - p)))"""

    name = "rex"
    reads = ("min_factor",)

    def multipliers(self, schedule, k):
        left = remaining(schedule, k)
        return g(schedule, left / (0.1 + 0.9 * left))
