"""The LR range test in a child process, so the Tk main loop never waits for it.

Same machinery as `ui.training_process` (spawn context, a queue of plain
tuples, a stop Event); the child calls
`modules.training.lr_range_test.lr_range_test` and reports

    ("point", {step, lr, loss, smoothed_loss})       after each optimizer step
    ("finished", {suggested_lr, suggested_optimizer_lr, stop_reason, steps})
    ("failed", message, details)

ending with exactly one "finished" or "failed". `stop()` ends the sweep
early; a suggestion is still made from the steps taken.
"""

import traceback

from ui.training_process import TrainingProcess, _plain


def run_lr_find(preset_json: dict, sweep: dict, events, stop_event) -> None:
    """The child's entry point."""
    from modules.errors import ConfigError

    try:
        from modules.config.preset import validate_preset
        from modules.training.lr_range_test import lr_range_test

        result = lr_range_test(validate_preset(preset_json), sweep["min_lr"], sweep["max_lr"], sweep["steps"],
                               on_point=lambda point: events.put(("point", _plain(point))),
                               should_stop=stop_event.is_set, loss=sweep.get("loss", "train"))
        events.put(("finished", {"suggested_lr": result.suggested_lr,
                                 "suggested_optimizer_lr": result.suggested_optimizer_lr,
                                 "stop_reason": result.stop_reason, "steps": len(result.points)}))
    except ConfigError as error:
        events.put(("failed", str(error), ""))
    except BaseException as error:  # noqa: BLE001 - every failure must reach the window
        events.put(("failed", f"{type(error).__name__}: {error}", traceback.format_exc()))


class LrFindProcess(TrainingProcess):
    def __init__(self, preset_json: dict, min_lr: float, max_lr: float, steps: int, loss: str = "train"):
        super().__init__(preset_json)
        self.sweep = {"min_lr": min_lr, "max_lr": max_lr, "steps": steps, "loss": loss}

    def start(self) -> None:
        self._process = self._context.Process(
            target=run_lr_find, args=(self.preset_json, self.sweep, self._events, self._stop_event),
            name="lr-find", daemon=True)
        self._process.start()
