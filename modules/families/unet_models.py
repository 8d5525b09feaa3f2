"""The model and its noise scheduler, built from the preset; nothing is fetched from a hub.

- `model.config: "tiny"`: a small `diffusers.UNet2DModel` (about 0.7 M
  parameters; one attention down block and one attention up block, so a
  param group matching "attentions" has members) with a default
  `DDPMScheduler(num_train_timesteps=1000)`.
- `model.path`: a local folder, either a `DDPMPipeline` folder (`unet/`,
  optional `scheduler/`) or a bare UNet folder, loaded with
  `from_pretrained(local_files_only=True)`. The folder's `DDPMScheduler` is used
  when present, else the default one.
- The prediction type is `model.prediction_type` when set, else the
  scheduler config's (epsilon or v_prediction).
"""

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from modules.errors import ConfigError

DEFAULT_TRAIN_TIMESTEPS = 1000


def tiny_unet(resolution: int) -> UNet2DModel:
    return UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )


def _load_unet(folder: Path) -> UNet2DModel:
    try:
        if (folder / "unet").is_dir():
            return UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        return UNet2DModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"cannot load a UNet2DModel from '{folder}': {reason}", "model.path") from None


def build_model(preset, seed: int | None = None) -> UNet2DModel:
    """The UNet to train. A built-in architecture is initialised from `seed` (training.seed)."""
    model_section = preset.model
    if model_section.path:
        folder = Path(model_section.path)
        if not folder.is_dir():
            raise ConfigError(f"model folder '{folder}' does not exist", "model.path")
        return _load_unet(folder)
    if model_section.architecture == "tiny":
        # Initialise from a private generator so the global torch RNG is left alone.
        state = torch.random.get_rng_state()
        torch.manual_seed(preset.training.seed if seed is None else seed)
        try:
            return tiny_unet(model_section.resolution)
        finally:
            torch.random.set_rng_state(state)
    raise ConfigError(f"unknown architecture {model_section.architecture!r} (allowed: tiny)", "model.config")


def size_multiple(model) -> int | None:
    """The multiple of which a model's input height and width must be, or None if it takes only its own size.

    A UNet2DModel (and a UNet2DConditionModel, on latents) halves its input in every down block
    but the last and concatenates the skip connections on the way up, so any height and width
    divisible by 2 ** (halvings) fit.
    """
    if hasattr(model, "down_blocks"):
        return 2 ** sum(1 for block in model.down_blocks if getattr(block, "downsamplers", None))
    return None


def check_training_sizes(multiple: int | None, model_name: str, sizes: list[tuple[int, int]],
                         resolution: int) -> None:
    """ConfigError unless every (height, width) of `sizes` (the aspect-ratio buckets) is a multiple of
    `multiple`, the pixel multiple the model takes (None: only square `resolution` input)."""
    if all(size == (resolution, resolution) for size in sizes):
        return
    if multiple is None:
        raise ConfigError(f"{model_name} takes only square {resolution}x{resolution} input: "
                          "set data.buckets to false", "data.buckets")
    misfits = [f"{width}x{height}" for height, width in sizes if height % multiple or width % multiple]
    if misfits:
        raise ConfigError(f"the model halves its input {multiple.bit_length() - 1} times, so bucket sides must be "
                          f"multiples of {multiple}; bucket {misfits[0]} is not (set data.bucket_step to a "
                          f"multiple of {multiple})", "data.bucket_step")


def build_noise_scheduler(preset) -> DDPMScheduler:
    scheduler = None
    if preset.model.path:
        folder = Path(preset.model.path) / "scheduler"
        if folder.is_dir():
            try:
                scheduler = DDPMScheduler.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError) as error:
                raise ConfigError(f"cannot load the DDPMScheduler in '{folder}': {error}", "model.path") from None
    if scheduler is None:
        scheduler = DDPMScheduler(num_train_timesteps=DEFAULT_TRAIN_TIMESTEPS)
    if preset.model.prediction_type and preset.model.prediction_type != scheduler.config.prediction_type:
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=preset.model.prediction_type)
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(
            f"prediction type {scheduler.config.prediction_type!r} is not supported (allowed: epsilon, v_prediction)",
            "model.prediction_type",
        )
    return scheduler


def training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet learns to predict: the noise (epsilon) or the velocity (v_prediction)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return noise
