"""Checks that need no model: run by the step plan whenever it lists the dataset itself.

`check_dataset(preset)` raises ConfigError (one line naming the key) for what would stop training
and returns warnings for what the user should know; the plan adds them to its warnings, so the
preview, the app and the trainer say the same thing. It runs `check_preset` first.

`check_preset(preset)` holds what the preset alone cannot show but training refuses, read without
listing the dataset: an optimizer for another device, sampling without prompts, an output or cache
folder inside the dataset. The app runs it on every edit (its image count comes from its own
counter, so it does not list the dataset through the plan).

The dataset checks, in listing order:
- every image's header reads (through the size index of `modules.data.sizes`, so a re-plan of a
  large folder reads no header again); with `data.buckets` the plan reads them itself;
- text-to-image models: every image has a caption file (or `data.default_caption` is set), and
  every caption file is UTF-8 (`modules.data.captions.check_captions`); an empty one is a warning.
"""

from pathlib import Path

from modules.config.paths import is_inside, resolved
from modules.data.captions import check_captions
from modules.data.listing import list_image_files
from modules.data.sizes import image_sizes
from modules.errors import ConfigError
from modules.families.model_types import TEXT_TO_IMAGE_TYPES, resolve_model_type

CPU_ONLY_REFUSED = {"adamw_8bit": "'adamw_8bit' needs a CUDA device (bitsandbytes' 8-bit optimizer does not run "
                                  "on CPU); use 'adamw' here"}


def check_preset(preset) -> list[str]:
    """ConfigError for a setting training refuses that needs no dataset listing; warnings otherwise."""
    if preset.training.device == "cpu" and preset.optimizer.type in CPU_ONLY_REFUSED:
        raise ConfigError(CPU_ONLY_REFUSED[preset.optimizer.type], "optimizer.type")
    if preset.output.sample_every is not None and not preset.output.sample_prompts \
            and resolve_model_type(preset.model) in TEXT_TO_IMAGE_TYPES:
        raise ConfigError("is set, but a text-to-image model samples output.sample_prompts, which is empty",
                          "output.sample_every")
    _check_outside_dataset(preset)
    return []


def _check_outside_dataset(preset) -> None:
    """An output or cache folder inside the dataset folder: the listing would take in its samples."""
    dataset = preset.data.path
    if not dataset:
        return
    folders = [("output.dir", preset.output.dir), ("data.cache_dir", preset.data.cache_dir)]
    for key, folder in folders:
        if folder and is_inside(folder, dataset) and not _hidden_below(folder, dataset):
            raise ConfigError(f"'{folder}' is inside the dataset folder data.path '{dataset}': training would "
                              "read its own samples as images (choose a folder outside it)", key)


def _hidden_below(folder: str, dataset: str) -> bool:
    """Whether `folder` lies in a hidden folder of the dataset, which the listing skips."""
    return any(part.startswith(".") for part in resolved(folder).relative_to(resolved(dataset)).parts)


def check_dataset(preset) -> list[str]:
    """ConfigError for a dataset training would refuse; warnings (strings) otherwise."""
    warnings = check_preset(preset)
    data = preset.data
    if not data.path:
        return warnings  # the plan says "data.path: is not set"
    text_to_image = resolve_model_type(preset.model) in TEXT_TO_IMAGE_TYPES
    if data.buckets and not text_to_image:
        return warnings  # the plan reads every header for the buckets; nothing else to list
    files = [path for _, path in list_image_files(data.path)]
    if not data.buckets:
        image_sizes(data.path, files)  # the header check of every file, as training's loader does it
    if text_to_image:
        warnings += check_captions([Path(path) for path in files], data.caption_extension, data.default_caption)
    return warnings
