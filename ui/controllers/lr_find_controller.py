"""The Find LR window's state: the range test's points so far, its suggestion, and applying it.

`LrFindController` receives the events of `ui.lr_find_process` and keeps
the points (step, lr, loss, smoothed loss), the status (idle | running |
stopping | finished | failed), the suggestion and a one-line message. It
knows nothing of processes or widgets. `apply(draft)` writes the suggested
value into the draft's `optimizer.lr` (already divided by the plan's LR
scaling, so the LR the test found is the one training applies).
"""

from dataclasses import dataclass, field
from types import SimpleNamespace

from modules.schedule.step_plan import format_lr
from modules.training.lr_range_test import DEFAULT_MAX_LR, DEFAULT_MIN_LR, DEFAULT_STEPS, check_arguments


@dataclass
class LrFindController:
    min_lr: float = DEFAULT_MIN_LR
    max_lr: float = DEFAULT_MAX_LR
    steps: int = DEFAULT_STEPS
    loss: str = "train"  # lr_range_test's LOSSES: the training loss, or the validation loss (smoother)
    status: str = "idle"
    points: list = field(default_factory=list)  # SimpleNamespace(step, lr, loss, smoothed_loss)
    suggested_lr: float | None = None
    suggested_optimizer_lr: float | None = None
    message: str = ""

    def start(self) -> None:
        """Reset for a new sweep; ConfigError if the sweep settings are wrong."""
        check_arguments(self.min_lr, self.max_lr, self.steps)
        which = "" if self.loss == "train" else ", reading the validation loss"
        self.__init__(min_lr=self.min_lr, max_lr=self.max_lr, steps=self.steps, loss=self.loss, status="running",
                      message=f"training a throw-away copy: lr {self.min_lr:g} -> {self.max_lr:g} over "
                              f"{self.steps} steps{which} (nothing is written to the output folder) ...")

    def request_stop(self) -> None:
        if self.status == "running":
            self.status = "stopping"
            self.message = "stopping after this step ..."

    @property
    def active(self) -> bool:
        return self.status in ("running", "stopping")

    def handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "point":
            self.points.append(SimpleNamespace(**event[1]))
        elif kind == "finished":
            found = event[1]
            self.status = "finished"
            self.suggested_lr = found["suggested_lr"]
            self.suggested_optimizer_lr = found["suggested_optimizer_lr"]
            ended = found["stop_reason"] or f"ran all {found['steps']} steps"
            self.message = f"suggested lr: {self.suggested_lr:.3g} ({found['steps']} steps; {ended})"
        elif kind == "failed":
            self.status = "failed"
            self.message = f"Error: {event[1]}"

    def apply(self, draft) -> str:
        """Set the draft's optimizer.lr to the suggestion; returns the text written."""
        if self.suggested_optimizer_lr is None:
            raise ValueError("no suggestion to apply")
        text = format_lr(self.suggested_optimizer_lr)
        draft.set_text("optimizer.lr", text)
        return text
