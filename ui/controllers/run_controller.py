"""The Run tab's state: what a training run has reported so far.

`RunController` receives the events of `ui.training_process` (see its
docstring for their form) and keeps the progress (step/total, ETA), the
latest loss and LRs, the LR each group really used at each step (drawn over
the planned curve), the loss history, the validation losses (SPEC §11: each
TensorBoard tag's value at the steps where validation ran) and the log. It knows nothing of
processes or widgets; the view feeds it events and draws its getters.

After Resume, the steps before the resume point come from the run's
TensorBoard log (`set_history`, `ui.controllers.run_history`), so the plots
show the whole run. A start that fails before its first step keeps the
previous run's plots (`plotted`).
"""

import copy
from dataclasses import dataclass, field

from modules.schedule.preview import Preview
from ui.controllers.run_history import VALIDATION_TAG, RunHistory

MAX_LOG_LINES = 2000


def format_seconds(seconds: float | None) -> str:
    """'1:02:03', '2:03' or '--' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "--"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class RunController:
    planned: Preview | None = None  # the plan being trained (not the live draft)
    status: str = "idle"  # idle | running | stopping | finished | stopped | failed
    step: int = 0  # optimizer steps completed
    total_steps: int = 0
    epoch: int = 0  # 0-based, as the trainer reports it
    loss: float | None = None
    lrs: dict[str, float] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = None
    used_steps: list[int] = field(default_factory=list)
    used_lrs: dict[str, list[float]] = field(default_factory=dict)
    used_effective_lrs: dict[str, list[float]] = field(default_factory=dict)  # prodigy / dadapt_adam: d * lr
    losses: list[float] = field(default_factory=list)
    # TensorBoard tag (loss/validation, loss/validation/<concept>, loss/validation/non_ema) -> (steps k, values)
    validation: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    validation_loss: float | None = None  # the latest loss/validation
    log_lines: list[str] = field(default_factory=list)
    error: str | None = None
    result: dict | None = None
    new_log_lines: list[str] = field(default_factory=list)
    history: RunHistory = field(default_factory=RunHistory)  # steps logged before this run resumed
    previous: "RunController | None" = None  # the run shown before this one started
    plan_change: dict | None = None  # Resume refused for a changed plan: {checkpoint, changes, step}

    def start(self, planned: Preview, resume: bool) -> None:
        """Reset for a new run of `planned`."""
        previous = copy.copy(self) if self.planned is not None else None
        if previous is not None:
            previous.previous = None
        self.__init__(planned=planned, status="running", total_steps=planned.plan.total_steps)
        self.previous = previous
        self.log(("Resuming from the newest checkpoint: " if resume else "Starting: ") + planned.plan.summary())

    def request_stop(self) -> None:
        if self.status == "running":
            self.status = "stopping"
            self.log("Stopping: finishing the current optimizer step and writing a checkpoint ...")

    @property
    def active(self) -> bool:
        return self.status in ("running", "stopping")

    def log(self, line: str) -> None:
        self.log_lines.append(line)
        self.new_log_lines.append(line)
        del self.log_lines[:-MAX_LOG_LINES]

    def take_new_log_lines(self) -> list[str]:
        lines, self.new_log_lines = self.new_log_lines, []
        return lines

    def handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "step":
            report = event[1]
            index = int(report["step"])  # 0-based index k of the optimizer step just taken
            self.step = index + 1  # steps completed
            self.total_steps = int(report["total_steps"])
            self.epoch = int(report["epoch"])
            self.loss = float(report["loss"])
            self.lrs = {str(name): float(lr) for name, lr in report["lrs"].items()}
            self.elapsed_seconds = float(report["elapsed_seconds"])
            self.eta_seconds = report["eta_seconds"]
            self.used_steps.append(index)
            for name, lr in self.lrs.items():
                self.used_lrs.setdefault(name, []).append(lr)
            for name, lr in (report.get("effective_lrs") or {}).items():
                self.used_effective_lrs.setdefault(name, []).append(float(lr))
            self.losses.append(self.loss)
            self._add_validation(index, report.get("validation"))
        elif kind == "log":
            self.log(str(event[1]))
        elif kind == "finished":
            self.result = event[1]
            done = self.result.get("finished")
            self.status = "finished" if done else "stopped"
            self.step = int(self.result.get("completed_steps", self.step))
            if self.step > 0 and self.planned is not None:
                # The epoch of the last step taken (a resume of a finished run reports no step).
                self.epoch = min(self.planned.plan.position(self.step - 1)[0], self.planned.plan.num_epochs - 1)
            if done:
                self.log(f"Finished {self.step} steps; output in {self.result.get('output_dir')}")
            else:
                self.log(f"Stopped at step {self.step}; checkpoint {self.result.get('checkpoint')}")
                if self.result.get("resume_command"):
                    self.log(f"Resume with Resume, or: {self.result['resume_command']}")
        elif kind == "failed":
            self.status = "failed"
            self.error = str(event[1])
            info = event[3] if len(event) > 3 and isinstance(event[3], dict) else {}
            self.plan_change = info.get("plan_changed")
            if len(event) > 2 and event[2]:
                self.log(str(event[2]).rstrip())
            self.log(f"Error: {self.error}")

    def _add_validation(self, index: int, values: dict | None) -> None:
        """The validation taken after optimizer step `index` (0-based), as StepReport.validation gives it."""
        for tag, value in (values or {}).items():
            steps, losses = self.validation.setdefault(str(tag), ([], []))
            steps.append(index)
            losses.append(float(value))
        if values and VALIDATION_TAG in values:
            self.validation_loss = float(values[VALIDATION_TAG])

    # --- what the view shows -------------------------------------------------

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    def set_history(self, history: RunHistory) -> None:
        """The steps the run logged before this session (read from its TensorBoard log)."""
        self.history = history

    def plotted(self) -> "RunController":
        """The run the plots show: this one, or the previous one if this one failed before any step."""
        if self.status == "failed" and not self.used_steps and self.previous is not None:
            return self.previous
        return self

    def progress_text(self) -> str:
        if self.status == "idle":
            return "Not started"
        if self.plotted() is not self:
            return "Not started; the plots show the previous run   [failed]"
        text = f"step {self.step} / {self.total_steps}"
        if self.total_steps:
            text += f" ({100 * self.fraction:.0f}%)"
        epochs = f" / {self.planned.plan.num_epochs}" if self.planned is not None else ""
        text += f"   epoch {self.epoch + 1}{epochs}   elapsed {format_seconds(self.elapsed_seconds)}"
        if self.active:
            text += f"   ETA {format_seconds(self.eta_seconds)}"
        return f"{text}   [{self.status}]"

    def values_text(self) -> str:
        loss = "--" if self.loss is None else f"{self.loss:.4f}"
        lrs = ", ".join(f"{name} {lr:.3e}" for name, lr in self.lrs.items()) or "--"
        validation = "" if self.validation_loss is None else f"    validation loss {self.validation_loss:.4f}"
        return f"loss {loss}{validation}    LR {lrs}"

    def _series(self) -> tuple[list[int], dict[str, list[float]], list[float]]:
        """Steps, LRs and losses: the history before the first step of this session, then this session's."""
        history = self.history
        if not history.steps:
            return self.used_steps, self.used_lrs, self.losses
        first_live = self.used_steps[0] if self.used_steps else None
        keep = len(history.steps) if first_live is None else next(
            (index for index, step in enumerate(history.steps) if step >= first_live), len(history.steps))
        names = list(dict.fromkeys([*history.lrs, *self.used_lrs]))
        lrs = {name: list(history.lrs.get(name, [float("nan")] * len(history.steps))[:keep])
               + self.used_lrs.get(name, [float("nan")] * len(self.used_steps)) for name in names}
        return history.steps[:keep] + self.used_steps, lrs, history.losses[:keep] + self.losses

    def actual_lrs(self, max_points: int | None = None) -> dict[str, tuple[list[int], list[float]]]:
        """Group -> (steps, LR used): `draw_preview`'s `actual` argument.

        With `max_points`, a long run is thinned to about that many evenly spaced steps (the last
        one always kept) so that redrawing it stays quick; the full record stays here.
        """
        steps, lrs, _ = self._series()
        keep = _thinned(len(steps), max_points)
        return {name: ([steps[i] for i in keep], [values[i] for i in keep]) for name, values in lrs.items()}

    def effective_lr_points(self, max_points: int | None = None) -> dict[str, tuple[list[int], list[float]]]:
        """Group -> (steps, d * lr really applied) for adaptive optimizers; {} for the others."""
        keep = _thinned(len(self.used_steps), max_points)
        return {name: ([self.used_steps[i] for i in keep], [lrs[i] for i in keep])
                for name, lrs in self.used_effective_lrs.items() if len(lrs) == len(self.used_steps)}

    def loss_points(self, max_points: int | None = None) -> tuple[list[int], list[float]]:
        steps, _, losses = self._series()
        keep = _thinned(len(steps), max_points)
        return [steps[i] for i in keep], [losses[i] for i in keep]


    def validation_points(self, max_points: int | None = None) -> dict[str, tuple[list[int], list[float]]]:
        """TensorBoard tag -> (steps k, values) of each validation loss: the history's points before this
        session's first step, then this session's (thinned like `loss_points` beyond `max_points`)."""
        first_live = self.used_steps[0] if self.used_steps else None
        found = {}
        for tag in dict.fromkeys([*self.history.validation, *self.validation]):
            old_steps, old_values = self.history.validation.get(tag, ([], []))
            keep = [i for i, step in enumerate(old_steps) if first_live is None or step < first_live]
            live_steps, live_values = self.validation.get(tag, ([], []))
            steps = [old_steps[i] for i in keep] + live_steps
            values = [old_values[i] for i in keep] + live_values
            shown = _thinned(len(steps), max_points)
            found[tag] = ([steps[i] for i in shown], [values[i] for i in shown])
        return found


def _thinned(count: int, max_points: int | None) -> range | list[int]:
    if max_points is None or count <= max_points:
        return range(count)
    stride = -(-count // max_points)
    return [*range(0, count - 1, stride), count - 1]
