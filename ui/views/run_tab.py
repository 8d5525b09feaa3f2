"""The Run tab: Start / Stop / Resume a training in a child process, poll it and draw it.

`RunTab` owns the run: its `RunController`, its `TrainingProcess` (the
child trains the validated preset on screen) and the `after` loop that
drains the child's events every RUN_POLL_MS and redraws the plots at most
every RUN_PLOT_MS. It asks the injected `state_to_train()` for the
`PreviewState` Start trains (a `ConfigError` refuses the start at once) and
calls `on_ended()` once the child has ended. After Resume the steps logged
before are read from TensorBoard on a thread and handed over by the same
loop. The drawing is `RunPanel`'s. Nothing here blocks the Tk main loop.
"""

import json
import threading
import time
from collections.abc import Callable

import customtkinter as ctk

from modules.errors import ConfigError
from ui.controllers.preset_draft import PreviewState
from ui.controllers.run_controller import RunController
from ui.controllers.run_history import read_run_history
from ui.training_process import TrainingProcess
from ui.views.run_panel import RunPanel

RUN_POLL_MS = 100
RUN_PLOT_MS = 500


class RunTab(ctk.CTkFrame):
    def __init__(self, master, state_to_train: Callable[[], PreviewState], on_ended: Callable[[], None]):
        super().__init__(master, fg_color="transparent")
        self._state_to_train = state_to_train
        self._on_ended = on_ended
        self._run = RunController()
        self._training: TrainingProcess | None = None
        self._history: list = []  # (run number, history) read on a thread after Resume, handed over here
        self._history_thread: threading.Thread | None = None
        self._run_number = 0
        self._run_job = None
        self._last_plot = 0.0
        self.panel = RunPanel(self, self.start, self.stop, self.resume, self.rebase)
        self.panel.pack(fill="both", expand=True)

    @property
    def run(self) -> RunController:
        """What the current (or last) run has reported."""
        return self._run

    @property
    def training(self) -> TrainingProcess | None:
        """The child process while it runs, else None."""
        return self._training

    @property
    def training_running(self) -> bool:
        return self._training is not None and self._training.running

    # --- drawing --------------------------------------------------------------------------

    def show_plan(self, state: PreviewState | None) -> None:
        """Before the first run, the tab shows the plan Start would train."""
        if self._run.status == "idle" and state is not None and state.fresh:
            self.panel.plot_plan(state.preview)

    def redraw(self, state: PreviewState | None) -> None:
        """Redraw the plots (the appearance changed): the run, or before one the plan."""
        if self._run.planned is not None:
            self.panel.plot(self._run)
        else:
            self.show_plan(state)

    # --- the buttons ------------------------------------------------------------------------

    def _refuse_start(self, message: str) -> None:
        self._run.error = f"Not started: {message}"
        self._run.log(self._run.error)
        self.panel.show(self._run)

    def start(self, resume: bool = False, rebase_schedule: bool = False) -> None:
        if self._run.active:
            return
        try:
            state = self._state_to_train()
        except ConfigError as error:
            self._refuse_start(str(error))
            return
        if state.start_refusal is not None:
            self._refuse_start(f"{state.start_refusal[0]}: {state.start_refusal[1]}")
            return
        preview = state.preview
        # The child trains exactly this validated preset: the configuration on screen.
        preset_json = json.loads(json.dumps(preview.preset.to_json_dict()))
        self._run.start(preview, resume)
        self._run_number += 1
        if rebase_schedule:
            self._run.log("Continuing on the new plan: the weights, optimizer state and step of the checkpoint "
                          "are kept, the schedule is the one on screen")
        if resume:
            self._read_history(preview.preset.output.dir)
        self._training = TrainingProcess(preset_json, resume=True if resume else None,
                                         rebase_schedule=rebase_schedule)
        self._training.start()
        self.panel.show(self._run)
        self.panel.plot(self._run)
        self._run_job = self.after(RUN_POLL_MS, self._poll)

    def resume(self) -> None:
        self.start(resume=True)

    def rebase(self) -> None:
        """Resume although the plan changed: continue at the checkpoint's step on the plan on screen."""
        self.start(resume=True, rebase_schedule=True)

    def stop(self) -> None:
        if self._training is not None and self._run.status == "running":
            self._training.stop()
            self._run.request_stop()
            self.panel.show(self._run)

    # --- polling the child ------------------------------------------------------------------

    def _read_history(self, output_dir: str) -> None:
        """Read the steps the run logged before (TensorBoard) on a thread; `_poll` hands them over."""
        number = self._run_number

        def read():
            try:
                self._history.append((number, read_run_history(output_dir)))
            except Exception as error:  # noqa: BLE001 - an unreadable log only loses the earlier points
                self._history.append((number, f"the earlier steps could not be read from the TensorBoard "
                                              f"log: {type(error).__name__}: {error}"))

        self._history_thread = threading.Thread(target=read, name="run-history", daemon=True)
        self._history_thread.start()

    def _take_history(self) -> bool:
        """Hand the history read for this run to the controller; True if one arrived."""
        arrived = False
        while self._history:
            number, history = self._history.pop()
            if number != self._run_number:
                continue
            if isinstance(history, str):
                self._run.log(history)
            else:
                self._run.set_history(history)
            arrived = True
        return arrived

    def _poll(self) -> None:
        self._run_job = None
        if self._training is None:
            return
        events = self._training.events()
        for event in events:
            self._run.handle(event)
        if self._take_history():
            events = events or [("history",)]
        if events:
            self.panel.show(self._run)
        now = time.monotonic()
        ended = not self._training.running
        if events and (ended or now - self._last_plot >= RUN_PLOT_MS / 1000):
            self._last_plot = now
            self.panel.plot(self._run)
        reading = self._history or self._history_thread is not None and self._history_thread.is_alive()
        if ended and not reading:
            self._training.join(5)
            self._training = None
            self.panel.show(self._run)
            self._on_ended()
            return
        # Still running, or the earlier steps are still being read: show them before the polling stops.
        self._run_job = self.after(RUN_POLL_MS, self._poll)

    def destroy(self) -> None:
        if self._run_job is not None:
            self.after_cancel(self._run_job)
            self._run_job = None
        super().destroy()
