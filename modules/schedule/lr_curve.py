"""The learning rate of every parameter group at every optimizer step.

`LrCurve` joins a step plan with the optimizer's base LRs:

    applied_lr[g][k]   = base_lr[g] * applied_multipliers(k)    written into param group g before step k
    effective_lr[g][k] = base_lr[g] * effective_multipliers(k)  what the optimizer really uses (preview, TensorBoard)

The two differ only for schedule-free optimizers (see `modules.schedule.shapes`).
`base_lr[g]` is the preset's LR of group g times `plan.lr_scale` (SPEC §9).
Steps past the plan read the last step's value. A group with a stop step
(the text encoders with `optimizer.text_encoder_stop_after`, SPEC §7) has
LR 0 from that step on, in both.
"""

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from modules.config.preset import DEFAULT_GROUP_NAME, LORA_PLUS_SUFFIX, OptimizerSection
from modules.errors import ConfigError
from modules.schedule.shapes import applied_multipliers, effective_multipliers
from modules.schedule.step_plan import StepPlan


CSV_BLOCK_ROWS = 100_000


@dataclass(frozen=True)
class LrCurve:
    plan: StepPlan
    group_names: tuple[str, ...]
    base_lrs: tuple[float, ...]
    stop_steps: tuple[int | None, ...] = ()   # per group: LR 0 from this step on (None: never); () = none

    def _stopped(self, step: int) -> list[bool]:
        stops = self.stop_steps or (None,) * len(self.base_lrs)
        return [stop is not None and step >= stop for stop in stops]

    @cached_property
    def applied_multipliers(self) -> np.ndarray:
        return applied_multipliers(self.plan.schedule)

    @cached_property
    def effective_multipliers(self) -> np.ndarray:
        return effective_multipliers(self.plan.schedule)

    def applied_lrs(self, step: int) -> list[float]:
        """The lr to write into each param group before optimizer step `step`."""
        factor = float(self.applied_multipliers[min(step, self.plan.total_steps - 1)])
        return [0.0 if stopped else base * factor for base, stopped in zip(self.base_lrs, self._stopped(step))]

    def effective_lrs(self, step: int) -> list[float]:
        factor = float(self.effective_multipliers[min(step, self.plan.total_steps - 1)])
        return [0.0 if stopped else base * factor for base, stopped in zip(self.base_lrs, self._stopped(step))]

    def effective_table(self) -> np.ndarray:
        """Shape (T, groups): the effective LR of each group at each step."""
        table = np.outer(self.effective_multipliers, np.asarray(self.base_lrs, dtype=np.float64))
        for column, stop in enumerate(self.stop_steps):
            if stop is not None:
                table[stop:, column] = 0.0
        return table

    def identity(self) -> dict:
        """The plan's identity and each group's base LR: what a resumed run must share (JSON-ready)."""
        return {**self.plan.identity(), "learning_rates": dict(zip(self.group_names, self.base_lrs))}

    @property
    def csv_header(self) -> str:
        return "step," + ",".join(f"lr/{name}" for name in self.group_names)

    def csv_blocks(self, start: int = 0, stop: int | None = None):
        """The CSV text of rows start..stop-1 (default: to T - 1), in blocks of whole lines."""
        table = self.effective_table()
        stop = table.shape[0] if stop is None else min(stop, table.shape[0])
        # Column-wise repr (the shortest text that reads back as the same float): about a third
        # faster than formatting row by row. In blocks, so a ten-million-step plan never holds
        # its whole text (or ten million Python floats) in memory at once.
        for first in range(start, stop, CSV_BLOCK_ROWS):
            block = table[first:min(first + CSV_BLOCK_ROWS, stop)]
            columns = [map(repr, column) for column in block.T.tolist()]
            rows = map(",".join, zip(map(str, range(first, first + block.shape[0])), *columns))
            yield "\n".join(rows) + "\n"

    def write_csv(self, path, from_step: int = 0, earlier=()) -> None:
        """`step,lr/<group>...`, one row per optimizer step 0..T-1 (the effective LR, full precision).

        Rows before `from_step` are the text blocks `earlier` (another plan's rows, e.g. the plan a
        rebased run followed until then); this curve's rows follow from `from_step` on. Written to a
        temporary file and renamed, so `earlier` may read the file being replaced.
        """
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(self.csv_header + "\n")
            if from_step:
                handle.writelines(earlier)
            handle.writelines(self.csv_blocks(from_step))
        os.replace(temporary, path)


def build_lr_curve(plan: StepPlan, optimizer: OptimizerSection) -> LrCurve:
    """The curve of `plan` for `optimizer`'s groups; base LRs times the plan's `lr_scale` (optimizer.lr_scaling).

    Group order (SPEC §7, §13): the named regex groups (in the preset's order, whatever their component),
    'unet', then the text encoders that train, at text_encoder_lr. A group searching a text encoder
    (`component`) stops with the text encoders (optimizer.text_encoder_stop_after). With LoRA+
    (`plan.lora_plus_ratio`) each group g is followed by g + '_B', its lora_B matrices, at
    lora_plus_ratio x g's LR, with g's schedule and stop.
    """
    plus_ratio = plan.lora_plus_ratio
    groups = [(group.name, group.lr, group.component != DEFAULT_GROUP_NAME) for group in optimizer.param_groups]
    groups.append((DEFAULT_GROUP_NAME, optimizer.lr, False))
    groups.extend((name, optimizer.text_encoder_lr, True) for name in plan.text_encoder_groups)
    if plus_ratio is not None:
        groups = [split for name, lr, encoder in groups
                  for split in ((name, lr, encoder), (name + LORA_PLUS_SUFFIX, lr * plus_ratio, encoder))]
    names = tuple(name for name, _, _ in groups)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"the group name {duplicates[0]!r} is taken twice (lora.plus_ratio names each group's "
                          f"lora_B matrices <group>{LORA_PLUS_SUFFIX}): rename the group", "optimizer.param_groups")
    stops = tuple(plan.text_encoder_stop_steps if encoder else None for _, _, encoder in groups)
    return LrCurve(plan, names, tuple(lr * plan.lr_scale for _, lr, _ in groups), stops)


def read_lr_csv(path) -> tuple[list[str], np.ndarray]:
    """Read a curve CSV back: (group names, array of shape (T, groups))."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    names = [column.removeprefix("lr/") for column in header[1:]]
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return names, data[:, 1:]
