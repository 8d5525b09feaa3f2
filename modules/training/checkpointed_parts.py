"""The stateful parts of a training run that a checkpoint carries besides the weights (SPEC §6).

Shaped like accelerate's `register_for_checkpointing`: a part has a `name`,
`state_dict()` and `load_state_dict(state)`. Saving writes
`{part.name: part.state_dict()}` for every part into `optimizer.pt`
(`torch.save`, read back with `weights_only=True`: tensors and plain values
only); resuming walks the same list and hands each part the entry of its
name. A new part is one more entry in `checkpointed_parts`.

    optimizer      the optimizer's state (moments, step counts, prodigy's d)
    scaler         the GradScaler of fp16 mixed precision (only when there is one)
    train_weights  schedule-free optimizers: the train-mode weights (the checkpoint's
                   weights are the eval-mode average), so training continues bit for bit
    ema            training.ema: the EMA of the trained weights (`modules.training.ema`)
"""

from pathlib import Path

from modules.errors import ConfigError
from modules.training import paths


class OptimizerPart:
    name = "optimizer"

    def __init__(self, optimizer, optimizer_type: str):
        self.optimizer, self.optimizer_type = optimizer, optimizer_type

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict, folder: Path) -> None:
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError):
            raise ConfigError(f"'{folder / paths.OPTIMIZER_FILE}' does not fit optimizer.type "
                              f"'{self.optimizer_type}' and its param_groups (changed since the checkpoint?)",
                              "optimizer.type") from None


class GradScalerPart:
    name = "scaler"

    def __init__(self, scaler):
        self.scaler = scaler

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict, folder: Path) -> None:
        self.scaler.load_state_dict(state)


class TrainWeightsPart:
    """Schedule-free: the weights training continues from (train mode)."""

    name = "train_weights"

    def __init__(self, family):
        self.family = family

    def state_dict(self) -> dict:
        return self.family.trainable_state_dict()

    def load_state_dict(self, state: dict, folder: Path) -> None:
        load_family_weights(self.family, state, folder)


def checkpointed_parts(optimizer, optimizer_type: str, scaler, family, schedule_free: bool, ema=None) -> list:
    """The parts of this run, in the order they are restored (`ema`: the run's EmaPart, or None)."""
    parts = [OptimizerPart(optimizer, optimizer_type)]
    if scaler is not None:
        parts.append(GradScalerPart(scaler))
    if schedule_free:
        parts.append(TrainWeightsPart(family))
    if ema is not None:
        parts.append(ema)
    return parts


def parts_state(parts: list) -> dict:
    """The dict written to optimizer.pt: each part's state under its name."""
    return {part.name: part.state_dict() for part in parts}


def load_parts(parts: list, saved: dict, folder: Path) -> None:
    """Give each part its saved state; a part the checkpoint does not hold keeps its fresh state."""
    for part in parts:
        if part.name in saved:
            part.load_state_dict(saved[part.name], Path(folder))


def load_family_weights(family, weights: dict, folder: Path) -> None:
    """The family's trainable weights from a checkpoint; a mismatch is a ConfigError naming the folder."""
    try:
        family.load_trainable_state_dict(weights)
    except RuntimeError:
        raise ConfigError(f"the weights in '{folder}' do not fit the model of this preset "
                          "(model.config / model.path / model.type / training.method / lora changed since the "
                          "checkpoint)", "model") from None
