"""The shape registry: scheduler.type -> the shape object that owns it.

Adding a shape is one file in this package (a `Shape` subclass) and one line below.
"""

from modules.schedule.shapes.base import Shape
from modules.schedule.shapes.constant import Constant
from modules.schedule.shapes.cosine import Cosine
from modules.schedule.shapes.cosine_with_hard_restarts import CosineWithHardRestarts
from modules.schedule.shapes.cosine_with_restarts import CosineWithRestarts
from modules.schedule.shapes.custom import Custom
from modules.schedule.shapes.inverse_sqrt import InverseSqrt
from modules.schedule.shapes.linear import Linear
from modules.schedule.shapes.piecewise_constant import PiecewiseConstant
from modules.schedule.shapes.polynomial import Polynomial
from modules.schedule.shapes.rex import Rex
from modules.schedule.shapes.sequence import Sequence
from modules.schedule.shapes.sine import Sine
from modules.schedule.shapes.warmup_stable_decay import WarmupStableDecay

SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Constant(),
        Linear(),
        Cosine(),
        CosineWithRestarts(),
        CosineWithHardRestarts(),
        Polynomial(),
        Sine(),
        Rex(),
        InverseSqrt(),
        WarmupStableDecay(),
        PiecewiseConstant(),
        Custom(),
        Sequence(),
    )
}

