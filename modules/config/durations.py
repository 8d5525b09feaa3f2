"""Duration values: how long a warmup, a cycle or an interval lasts.

A duration is written as an integer (optimizer steps) or a string:
`"120"`, `"120 steps"`, `"1.5 epochs"` (times steps per epoch) or `"10%"`
(of the plan's total steps). `parse_duration` only checks the syntax (the
config validator calls it, so a typo is caught before any plan exists);
`Duration.to_steps` converts to optimizer steps and is called by the step
plan alone. Rounding is to the nearest step, halves up, once.
"""

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from modules.errors import ConfigError

DurationValue = int | str

_PATTERN = re.compile(
    r"^\s*(?P<amount>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>steps?|epochs?|%)?\s*$", re.IGNORECASE
)
DURATION_HELP = 'an integer number of steps, or a string like "200", "200 steps", "1.5 epochs" or "10%"'


@dataclass(frozen=True)
class Duration:
    amount: float
    unit: Literal["steps", "epochs", "percent"]
    written: Fraction | None = field(default=None, compare=False)
    """The amount exactly as written (a decimal string or an integer); None: take the float's shortest decimal."""

    def to_steps(self, steps_per_epoch: int, total_steps: int) -> int:
        """Optimizer steps, rounded to the nearest integer (halves up).

        The product is computed exactly on the decimal the user wrote
        ("29%" of 50 steps is 14.5, so 15), never in binary floating point,
        where 0.29 * 50 falls just below the half.
        """
        # The decimal as written ("0.50000000000000000001 epochs" is just past the half); a float given
        # as such (not as text) by its shortest decimal, the one that reads back as that float.
        amount = self.written if self.written is not None else Fraction(repr(self.amount))
        if self.unit == "steps":
            exact = amount
        elif self.unit == "epochs":
            exact = amount * steps_per_epoch
        else:
            exact = amount * total_steps / 100
        return math.floor(exact + Fraction(1, 2))

    def __str__(self) -> str:
        amount = f"{self.amount:g}"
        return {"steps": f"{amount} steps", "epochs": f"{amount} epochs", "percent": f"{amount}%"}[
            self.unit
        ]


def parse_duration(value: DurationValue, key: str) -> Duration:
    """Parse a duration; ConfigError naming `key` if it is not one."""
    if isinstance(value, bool):
        raise ConfigError(f"expected {DURATION_HELP}, got {value!r}", key)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"must not be negative, got {value}", key)
        return Duration(float(value), "steps", Fraction(value))
    if isinstance(value, float):
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"must be a non-negative number of steps, got {value}", key)
        return Duration(value, "steps")
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            written = Fraction(match.group("amount"))
            amount = float(written)
            unit = (match.group("unit") or "steps").lower()
            if unit == "%":
                if written > 100:
                    raise ConfigError(f"a percentage must be at most 100%, got {value!r}", key)
                return Duration(amount, "percent", written)
            return Duration(amount, "epochs" if unit.startswith("epoch") else "steps", written)
    raise ConfigError(f"expected {DURATION_HELP}, got {value!r}", key)
