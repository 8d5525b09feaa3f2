"""Which model family a preset trains, read from the preset and the pipeline folder (no torch).

SPEC §7: `model.type` is `auto` | `unet` | `stable_diffusion` |
`stable_diffusion_xl`. `auto` reads `model_index.json` in `model.path`:
`StableDiffusionPipeline` -> stable_diffusion, `StableDiffusionXLPipeline` ->
stable_diffusion_xl, `DDPMPipeline` or no model_index.json (a bare UNet
folder) -> unet. A built-in `model.config` is a unet model.

The text-encoder parameter groups follow from the type: `text_encoder`
(stable_diffusion), `text_encoder` and `text_encoder_2` (stable_diffusion_xl),
present only when `optimizer.text_encoder_lr` is set. The step plan asks here,
so the preview, lr_plan.csv and the optimizer list the same groups.
"""

import json
from pathlib import Path

from modules.errors import ConfigError

UNET = "unet"
STABLE_DIFFUSION = "stable_diffusion"
STABLE_DIFFUSION_XL = "stable_diffusion_xl"
TEXT_TO_IMAGE_TYPES = (STABLE_DIFFUSION, STABLE_DIFFUSION_XL)

PIPELINE_CLASSES = {
    "DDPMPipeline": UNET,
    "StableDiffusionPipeline": STABLE_DIFFUSION,
    "StableDiffusionXLPipeline": STABLE_DIFFUSION_XL,
}
TEXT_ENCODER_GROUPS = {UNET: (), STABLE_DIFFUSION: ("text_encoder",),
                       STABLE_DIFFUSION_XL: ("text_encoder", "text_encoder_2")}
MODEL_INDEX_FILE = "model_index.json"


def read_model_index(folder: str | Path) -> dict | None:
    """model_index.json of `folder` as a dict, None when the folder has none; ConfigError if unreadable."""
    path = Path(folder) / MODEL_INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"'{path}' cannot be read: {str(error).splitlines()[0]}", "model.path") from None
    if not isinstance(index, dict):
        raise ConfigError(f"'{path}' must hold a JSON object", "model.path")
    return index


def folder_model_type(folder: str | Path) -> str:
    """The model type of a diffusers folder, from its model_index.json (none: a bare UNet folder)."""
    index = read_model_index(folder)
    if index is None:
        return UNET
    class_name = index.get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise ConfigError(
            f"'{Path(folder) / MODEL_INDEX_FILE}' is a {class_name!r}; this program trains "
            f"{', '.join(PIPELINE_CLASSES)}", "model.path")
    return PIPELINE_CLASSES[class_name]


def resolve_model_type(model_section) -> str:
    """`model.type`, with `auto` resolved from the folder (a built-in model.config is unet)."""
    if model_section.type != "auto":
        return model_section.type
    if model_section.path and Path(model_section.path).is_dir():
        return folder_model_type(model_section.path)
    return UNET


def check_unet_options(preset) -> None:
    """ConfigError for a text-to-image option on a unet model (text_encoder_lr, LoRA)."""
    for key, used in (("optimizer.text_encoder_lr", preset.optimizer.text_encoder_lr is not None),
                      ("training.method", preset.training.method == "lora")):
        if not used:
            continue
        path = preset.model.path
        if preset.model.type == "auto" and path and not Path(path).is_dir():
            raise ConfigError(f"model folder '{path}' does not exist (model.type auto reads its {MODEL_INDEX_FILE} "
                              f"to tell a text-to-image pipeline from a UNet)", "model.path")
        if key == "training.method":
            raise ConfigError("'lora' needs a stable_diffusion or stable_diffusion_xl model (model.type)", key)
        raise ConfigError("is for stable_diffusion and stable_diffusion_xl models; a unet model has no "
                          "text encoder", key)


def text_encoder_groups(preset, model_type: str | None = None) -> tuple[str, ...]:
    """The text-encoder parameter groups that train (in optimizer order); ConfigError where none can."""
    model_type = model_type or resolve_model_type(preset.model)
    if model_type == UNET:
        check_unet_options(preset)
        return ()
    return TEXT_ENCODER_GROUPS[model_type] if preset.optimizer.text_encoder_lr is not None else ()
