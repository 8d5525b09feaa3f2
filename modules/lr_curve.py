"""The learning rate of every parameter group at every optimizer step.

`LrCurve` joins a step plan with the optimizer's base LRs:

    applied_lr[g][k]   = base_lr[g] * applied_multipliers(k)    written into param group g before step k
    effective_lr[g][k] = base_lr[g] * effective_multipliers(k)  what the optimizer really uses (preview, TensorBoard)

The two differ only for schedule-free optimizers (see `modules.schedules`).
`base_lr[g]` is the preset's LR of group g times `plan.lr_scale` (SPEC §9).
Steps past the plan read the last step's value.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from modules.config import OptimizerSection
from modules.schedules import applied_multipliers, effective_multipliers
from modules.step_plan import StepPlan


@dataclass(frozen=True)
class LrCurve:
    plan: StepPlan
    group_names: tuple[str, ...]
    base_lrs: tuple[float, ...]

    @cached_property
    def applied_multipliers(self) -> np.ndarray:
        return applied_multipliers(self.plan.schedule)

    @cached_property
    def effective_multipliers(self) -> np.ndarray:
        return effective_multipliers(self.plan.schedule)

    def applied_lrs(self, step: int) -> list[float]:
        """The lr to write into each param group before optimizer step `step`."""
        factor = float(self.applied_multipliers[min(step, self.plan.total_steps - 1)])
        return [base * factor for base in self.base_lrs]

    def effective_lrs(self, step: int) -> list[float]:
        factor = float(self.effective_multipliers[min(step, self.plan.total_steps - 1)])
        return [base * factor for base in self.base_lrs]

    def effective_table(self) -> np.ndarray:
        """Shape (T, groups): the effective LR of each group at each step."""
        return np.outer(self.effective_multipliers, np.asarray(self.base_lrs, dtype=np.float64))

    def write_csv(self, path) -> None:
        """`step,lr/<group>...`, one row per optimizer step 0..T-1 (the effective LR, full precision)."""
        table = self.effective_table()
        header = "step," + ",".join(f"lr/{name}" for name in self.group_names)
        # Column-wise repr (the shortest text that reads back as the same float): about a third
        # faster than formatting row by row, which matters for a million-step plan.
        columns = [map(repr, column) for column in table.T.tolist()]
        rows = map(",".join, zip(map(str, range(table.shape[0])), *columns))
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(header + "\n")
            handle.write("\n".join(rows) + "\n")


def build_lr_curve(plan: StepPlan, optimizer: OptimizerSection) -> LrCurve:
    """The curve of `plan` for `optimizer`'s groups; base LRs times the plan's `lr_scale` (optimizer.lr_scaling)."""
    return LrCurve(plan, tuple(optimizer.group_names), tuple(lr * plan.lr_scale for lr in optimizer.base_lrs))


def read_lr_csv(path) -> tuple[list[str], np.ndarray]:
    """Read a curve CSV back: (group names, array of shape (T, groups))."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    names = [column.removeprefix("lr/") for column in header[1:]]
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return names, data[:, 1:]
