"""What a run logged before: the LR and loss per optimizer step and the validation losses, read back from
TensorBoard.

After Resume the Run tab draws the steps taken before the resume point
from the run's own log, `output.dir/tensorboard` (SPEC §5), read with
TensorBoard's `EventAccumulator`. The accumulator honours the `purge_step`
a resumed writer records, so steps a killed run logged past its last
checkpoint are not read back. Values are TensorBoard's float32 scalars.
The validation losses (SPEC §11: `loss/validation`, `loss/validation/<concept>`
and with EMA `loss/validation/non_ema`) are logged at step k for the
validation taken after optimizer step k, on the same axis as the LR.
"""

from dataclasses import dataclass, field
from pathlib import Path

from modules.training import paths

LOSS_TAG = "loss/train"
LR_PREFIX = "lr/"
VALIDATION_TAG = "loss/validation"
NON_EMA_VALIDATION_TAG = "loss/validation/non_ema"


def is_validation_tag(tag: str) -> bool:
    return tag == VALIDATION_TAG or tag.startswith(VALIDATION_TAG + "/")


@dataclass(frozen=True)
class RunHistory:
    steps: list[int] = field(default_factory=list)  # 0-based optimizer steps, ascending
    lrs: dict[str, list[float]] = field(default_factory=dict)  # group -> LR used at each of `steps`
    losses: list[float] = field(default_factory=list)
    # TensorBoard tag -> (steps, values) of each validation loss the run logged (loss/validation...)
    validation: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


def read_run_history(output_dir: str | Path) -> RunHistory:
    """Every step `output_dir`'s TensorBoard log holds a loss for (empty if there is no log)."""
    folder = Path(output_dir) / paths.TENSORBOARD_DIR
    if not folder.is_dir():
        return RunHistory()
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep every point
    accumulator.Reload()
    tags = accumulator.Tags().get("scalars", [])
    if LOSS_TAG not in tags:
        return RunHistory()
    losses = {event.step: event.value for event in accumulator.Scalars(LOSS_TAG)}
    lr_by_group = {tag[len(LR_PREFIX):]: {event.step: event.value for event in accumulator.Scalars(tag)}
                   for tag in tags if tag.startswith(LR_PREFIX)}
    steps = sorted(step for step in losses if all(step in values for values in lr_by_group.values()))
    validation = {}
    for tag in filter(is_validation_tag, tags):
        events = sorted(accumulator.Scalars(tag), key=lambda event: event.step)
        validation[tag] = ([event.step for event in events], [event.value for event in events])
    return RunHistory(steps, {name: [values[step] for step in steps] for name, values in lr_by_group.items()},
                      [losses[step] for step in steps], validation)
