"""Training in a child process, so the Tk main loop never waits for it.

`TrainingProcess(preset_json, resume, rebase_schedule).start()` spawns a child (the
multiprocessing "spawn" context: no inherited Tk state, the same on every
platform) that validates the preset with the one validator and calls
`modules.training.train`. The child reports on a multiprocessing Queue as
plain tuples (nothing but builtins crosses the process boundary):

    ("step", {step, total_steps, epoch, loss, lrs, elapsed_seconds, eta_seconds})  after each optimizer step
    ("log", line)                                                                  a line of the trainer's log
    ("finished", {output_dir, completed_steps, total_steps, finished, checkpoint, resume_command})
    ("failed", message, details, info)   a ConfigError (details "") or an unexpected error (details: the
                                         traceback); info {"key": ...} and, when Resume found a checkpoint
                                         of a different plan, {"plan_changed": {checkpoint, changes, step}}

Messages are worded for the app (its Start, Resume and "Continue on the new
plan" buttons), not for the command line's flags. The child ends with
exactly one "finished" or "failed". `stop()` sets a multiprocessing Event the trainer polls after each optimizer step
(`should_stop`): it writes a checkpoint and returns, which is reported as
"finished" with `finished` False. `events()` drains the queue without
blocking (the Run tab, `ui.views.run_tab`, calls it from `after`); if the child dies without a final
event, a "failed" event saying so is synthesised.
"""

import multiprocessing
import queue as queue_module
import traceback
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """Builtins only: Paths become strings, dataclasses dicts."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return float(value)  # numpy and torch scalars
    except (TypeError, ValueError):
        return str(value)


def check_output_dir(preset, resume: bool | str | None) -> None:
    """The trainer's output-folder refusals, worded for the app's buttons (ConfigError keyed output.dir)."""
    from modules.errors import ConfigError
    from modules.training import checkpoints, paths

    output_dir = Path(preset.output.dir)
    if resume:
        if resume is True and checkpoints.newest_checkpoint(output_dir) is None:
            raise ConfigError(f"no complete checkpoint in '{paths.checkpoints_dir(output_dir)}' to resume from: "
                              "press Start for a fresh run", "output.dir")
        return
    existing = checkpoints.complete_checkpoints(output_dir)
    if existing:
        raise ConfigError(f"'{output_dir}' already holds checkpoints of a run (newest: step {existing[-1][0]}): "
                          "press Resume to continue it, or choose another output folder", "output.dir")
    if (output_dir / paths.FINAL_MODEL_DIR).exists():
        raise ConfigError(f"'{output_dir}' already holds a trained model: choose another output folder "
                          "(or delete that folder)", "output.dir")


def plan_changed_message(checkpoint: str, changes: list[str], step: int) -> str:
    return (f"Resume refused: the checkpoint at step {step} ('{checkpoint}') was written for a different plan: "
            f"{'; '.join(changes)}. Press \"Continue on the new plan\" to resume at step {step} with the "
            "settings on screen, or undo the changes and press Resume.")


def run_training(preset_json: dict, resume: bool | str | None, events, stop_event,
                 rebase_schedule: bool = False) -> None:
    """The child's entry point: train `preset_json`, reporting on `events`."""
    from modules.errors import ConfigError, PlanChangedError

    try:
        from modules.config.preset import validate_preset
        from modules.training import train

        preset = validate_preset(preset_json)
        check_output_dir(preset, resume)
        result = train(
            preset,
            resume=resume,
            rebase_schedule=rebase_schedule,
            on_step=lambda report: events.put(("step", _plain(report))),
            should_stop=stop_event.is_set,
            log=lambda *parts: events.put(("log", " ".join(str(part) for part in parts))),
            progress_bar=False,
        )
        events.put(("finished", _plain(result)))
    except PlanChangedError as error:
        events.put(("failed", plan_changed_message(error.checkpoint, error.changes, error.step), "",
                    {"key": None, "plan_changed": {"checkpoint": error.checkpoint, "changes": error.changes,
                                                   "step": error.step}}))
    except ConfigError as error:
        events.put(("failed", str(error), "", {"key": error.key}))
    except BaseException as error:  # noqa: BLE001 - every failure must reach the window, not a lost stderr
        events.put(("failed", f"{type(error).__name__}: {error}", traceback.format_exc(), {}))


class TrainingProcess:
    def __init__(self, preset_json: dict, resume: bool | str | None = None, rebase_schedule: bool = False):
        self.preset_json = preset_json
        self.resume = resume
        self.rebase_schedule = rebase_schedule
        self._context = multiprocessing.get_context("spawn")
        self._events = self._context.Queue()
        self._stop_event = self._context.Event()
        self._process = None
        self._ended = False

    def start(self) -> None:
        self._process = self._context.Process(
            target=run_training,
            args=(self.preset_json, self.resume, self._events, self._stop_event, self.rebase_schedule),
            name="training",
            # Not daemonic: the trainer's data-loader workers are its own child processes, which a
            # daemonic process may not have. The app stops training (a checkpoint) before it closes.
            daemon=False,
        )
        self._process.start()

    def stop(self) -> None:
        """Ask the trainer to finish its optimizer step, write a checkpoint and return."""
        self._stop_event.set()

    @property
    def running(self) -> bool:
        return self._process is not None and not self._ended

    def events(self, max_events: int = 1000) -> list[tuple]:
        """The events that arrived since the last call (never blocks)."""
        found: list[tuple] = []
        if self._process is None or self._ended:
            return found
        while len(found) < max_events:
            try:
                event = self._events.get_nowait()
            except queue_module.Empty:
                break
            found.append(event)
            if event[0] in ("finished", "failed"):
                self._ended = True
                return found
        if not found and not self._process.is_alive():
            # The child may have put its last event just before exiting: look once more.
            try:
                event = self._events.get(timeout=0.5)
                found.append(event)
                self._ended = event[0] in ("finished", "failed")
            except queue_module.Empty:
                pass
            if not self._ended:
                self._ended = True
                found.append(("failed", f"the training process ended unexpectedly (exit code "
                                        f"{self._process.exitcode})", "", {}))
        return found

    def join(self, timeout_seconds: float | None = None) -> None:
        if self._process is not None:
            self._process.join(timeout_seconds)

    def kill(self) -> None:
        """Last resort when the window closes while training runs."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
