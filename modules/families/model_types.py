"""Which model family a preset trains, read from the preset and the pipeline folder (no torch).

SPEC §7: `model.type` is `auto` or a family of `modules.families.registry`
(`unet`, `stable_diffusion`, `stable_diffusion_xl`). `auto` reads
`model_index.json` in `model.path`: its `_class_name` picks the family that
recognises it (`StableDiffusionPipeline` -> stable_diffusion,
`StableDiffusionXLPipeline` -> stable_diffusion_xl, `DDPMPipeline` -> unet);
no model_index.json (a bare UNet folder) and a built-in `model.config` are unet.
A single-file checkpoint (`model.path` a `.safetensors` file, SPEC §12) is the
family of its layout, read from the file's header (`modules.families.single_file`,
no torch, no weights); a `.ckpt` is refused there.

The text-encoder parameter groups are the family's (`text_encoder` for
stable_diffusion; `text_encoder`, `text_encoder_2` for stable_diffusion_xl),
present only when `optimizer.text_encoder_lr` is set. The step plan asks here,
so the preview, lr_plan.csv and the optimizer list the same groups.
"""

import json
from pathlib import Path

from modules.errors import ConfigError
from modules.families.single_file import detect_layout, is_single_file
from modules.families.registry import (DEFAULT_FAMILY, FAMILIES, descriptor, descriptor_of_index_class,
                                       known_index_classes)

UNET = "unet"
STABLE_DIFFUSION = "stable_diffusion"
STABLE_DIFFUSION_XL = "stable_diffusion_xl"
# The families that train on captions (text-to-image), in registry order.
TEXT_TO_IMAGE_TYPES = tuple(family.name for family in FAMILIES if family.takes_captions)
LORA_TYPES = tuple(family.name for family in FAMILIES if family.supports_lora)
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
        return DEFAULT_FAMILY
    class_name = index.get("_class_name")
    family = descriptor_of_index_class(class_name)
    if family is None:
        raise ConfigError(
            f"'{Path(folder) / MODEL_INDEX_FILE}' is a {class_name!r}; this program trains "
            f"{', '.join(known_index_classes())}", "model.path")
    return family.name


def resolve_model_type(model_section) -> str:
    """`model.type`, with `auto` resolved from the folder (a built-in model.config is unet)."""
    if model_section.type != "auto":
        return model_section.type
    if is_single_file(model_section.path):
        return detect_layout(model_section.path, model_section.prediction_type).model_type
    if model_section.path and Path(model_section.path).is_dir():
        return folder_model_type(model_section.path)
    return DEFAULT_FAMILY


def _names(types: tuple[str, ...], last: str = "or") -> str:
    return types[0] if len(types) == 1 else f"{', '.join(types[:-1])} {last} {types[-1]}"


def check_unet_options(preset, model_type: str = DEFAULT_FAMILY) -> None:
    """ConfigError for a text-to-image option (text_encoder_lr, LoRA) that family `model_type` cannot train."""
    family = descriptor(model_type)
    for key, used, able in (("optimizer.text_encoder_lr", preset.optimizer.text_encoder_lr is not None,
                             family.takes_captions),
                            ("training.method", preset.training.method == "lora", family.supports_lora)):
        if not used or able:
            continue
        path = preset.model.path
        if preset.model.type == "auto" and path and not Path(path).is_dir():
            raise ConfigError(f"model folder '{path}' does not exist (model.type auto reads its {MODEL_INDEX_FILE} "
                              f"to tell a text-to-image pipeline from a UNet)", "model.path")
        if key == "training.method":
            raise ConfigError(f"'lora' needs a {_names(LORA_TYPES)} model (model.type)", key)
        raise ConfigError(f"is for {_names(TEXT_TO_IMAGE_TYPES, 'and')} models; a {family.name} model has no "
                          "text encoder", key)


def text_encoder_groups(preset, model_type: str | None = None) -> tuple[str, ...]:
    """The text-encoder parameter groups that train (in optimizer order); ConfigError where none can."""
    model_type = model_type or resolve_model_type(preset.model)
    check_unet_options(preset, model_type)
    return descriptor(model_type).text_encoder_groups if preset.optimizer.text_encoder_lr is not None else ()


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256, so a preview hashes a file once


def lora_init_identity(preset) -> dict | None:
    """{"path", "sha256"} of `lora.init_weights` for the plan identity (SPEC §12), None when unset;
    ConfigError (lora.init_weights) when the file is missing or not a .safetensors file."""
    import hashlib

    init = preset.lora.init_weights
    if not init or preset.training.method != "lora":
        return None
    path = Path(init)
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"'{path}' is not a .safetensors LoRA file (a .ckpt / .pt is a pickle: convert it to "
                          "safetensors)", "lora.init_weights")
    if not path.is_file():
        raise ConfigError(f"LoRA file '{path}' does not exist", "lora.init_weights")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return {"path": key[0], "sha256": _HASHES[key]}
