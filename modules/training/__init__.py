"""Training: a diffusers UNet fine-tuning loop driven by the step plan.

`train(preset, ...)` is the one entry point for the CLI (`scripts/train.py`)
and the desktop app; see `modules.training.trainer` for the contract.
`StepReport`, `TrainResult` and `train` are loaded on first use, so importing
a submodule (`modules.families.unet_models`, `.data`, ...) does not pull in the
trainer's dependencies (accelerate, tensorboard).
"""

__all__ = ["StepReport", "TrainResult", "train"]


def __getattr__(name: str):
    if name in __all__:
        from modules.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'modules.training' has no attribute {name!r}")
