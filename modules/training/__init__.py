"""Training: a diffusers UNet fine-tuning loop driven by the step plan (imports torch).

`train(preset, ...)` is the one entry point for the CLI (`scripts/train.py`)
and the desktop app; see `modules.training.trainer` for the contract.
"""

from modules.training.trainer import StepReport, TrainResult, train

__all__ = ["StepReport", "TrainResult", "train"]
