"""Checks that need no model: run by the step plan whenever it lists the dataset itself.

`check_dataset(preset)` raises ConfigError (one line naming the key) for what would stop training
and returns warnings for what the user should know; the plan adds them to its warnings, so the
preview, the app and the trainer say the same thing. It runs `check_preset` first.

`check_preset(preset)` holds what the preset alone cannot show but training refuses, read without
listing the dataset: an optimizer for another device, sampling without prompts, an output or cache
folder inside the dataset. The app runs it on every edit (its image count comes from its own
counter, so it does not list the dataset through the plan).

The dataset checks, concept by concept (`modules.data.concepts`), in listing order:
- every image's header reads (through the size index of `modules.data.sizes`, so a re-plan of a
  large folder reads no header again): the concepts are resolved with their sizes;
- text-to-image models: every image (held-out validation images included) has a caption file (or the
  concept's `default_caption` is set),
  and every caption file is UTF-8 (`modules.data.captions.check_captions`); an empty one is a warning;
- warnings naming the files: files of an unsupported image type (.tif, .gif, ...) skipped, images
  smaller than their training size (upscaled), two images sharing one caption stem (dup.jpg, dup.png),
  images lying directly in a folder read with the kohya layout (not read).
An output or cache folder inside any concept's folder is an error (`check_preset`).
"""

import os
from pathlib import Path

import numpy as np

from modules.config.paths import is_inside, resolved
from modules.data.buckets import assign_buckets, bucket_resolutions
from modules.data.captions import check_captions
from modules.data.concepts import resolve_concepts
from modules.data.listing import IMAGE_EXTENSIONS
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
    """An output or cache folder inside a concept's folder: the listing would take in its samples."""
    data = preset.data
    folders = [("output.dir", preset.output.dir), ("data.cache_dir", data.cache_dir)]
    for index, concept in enumerate(data.concept_list()):
        where = "data.path" if not data.concepts else f"data.concepts.{index}.path ('{concept.name}')"
        for key, folder in folders:
            if folder and is_inside(folder, concept.path) and not _hidden_below(folder, concept.path):
                place = "the dataset folder" if not data.concepts else "the concept folder"
                raise ConfigError(f"'{folder}' is inside {place} {where} '{concept.path}': training would "
                                  "read its own samples as images (choose a folder outside it)", key)


def _hidden_below(folder: str, dataset: str) -> bool:
    """Whether `folder` lies in a hidden folder of the dataset, which the listing skips."""
    return any(part.startswith(".") for part in resolved(folder).relative_to(resolved(dataset)).parts)


def check_dataset(preset, concepts: list | None = None) -> list[str]:
    """ConfigError for a dataset training would refuse; warnings (strings) otherwise. `concepts`: the
    resolved concepts with their sizes (`modules.data.concepts.resolve_concepts`), listed here if None."""
    warnings = check_preset(preset)
    if concepts is None:
        concepts = resolve_concepts(preset.data, read_sizes=True)  # every header: the check training makes
    text_to_image = resolve_model_type(preset.model) in TEXT_TO_IMAGE_TYPES
    for concept in concepts:
        if text_to_image:
            warnings += _concept_captions(concept)
        warnings += concept_warnings(preset, concept)
    warnings += kohya_warnings(concepts)
    return warnings


def _concept_captions(concept) -> list[str]:
    """The caption check of one concept, its errors naming the concept's own keys."""
    settings = concept.settings
    try:
        return check_captions([Path(path) for path in (*concept.files, *concept.held_out)],
                              settings.caption_extension, settings.default_caption)
    except ConfigError as error:
        if concept.key == "data.path":
            raise
        message = str(error.args[0]).replace("set data.default_caption", "set its default_caption")
        raise ConfigError(f"concept '{concept.name}': {message}", concept.key) from None


def concept_warnings(preset, concept) -> list[str]:
    """Files of an unsupported type skipped, images smaller than their training size, two images
    sharing one caption stem: each a warning naming the files."""
    label = f"concept '{concept.name}'"
    warnings = []
    if concept.skipped:
        warnings.append(f"{label}: {_count(len(concept.skipped), 'file')} of an unsupported image type "
                        f"skipped (convert to {', '.join(IMAGE_EXTENSIONS)}): {_named(concept.skipped)}")
    small = _smaller_than_training(preset, concept)
    if small:
        (width, height), (target_width, target_height) = small[0][1], small[0][2]
        warnings.append(f"{label}: {_count(len(small), 'image')} smaller than the training size, upscaled "
                        f"(e.g. {width}x{height} for {target_width}x{target_height}): "
                        f"{_named([path for path, _, _ in small])}")
    for stem, paths in _shared_stems(concept.files):
        extension = concept.settings.caption_extension
        warnings.append(f"{label}: {_named(paths, 6)} share the caption file '{stem}{extension}' "
                        "(rename one so each image has its own caption)")
    return warnings


def _smaller_than_training(preset, concept) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """[(path, (width, height), training (width, height))] of the images smaller than their training size."""
    if concept.sizes is None or not concept.files:
        return []
    sizes = concept.size_array
    resolution, data = preset.model.resolution, preset.data
    if data.buckets:
        resolutions = bucket_resolutions(resolution, data.bucket_step, data.bucket_max_aspect)
        targets = np.asarray(resolutions, dtype=np.int64)[assign_buckets(sizes, resolutions)]
    else:
        targets = np.full_like(sizes, resolution)
    small = np.flatnonzero((sizes < targets).any(axis=1))
    return [(concept.files[i], tuple(sizes[i].tolist()), tuple(targets[i].tolist())) for i in small]


def _shared_stems(files) -> list[tuple[str, list[str]]]:
    """[(folder/stem, [paths])] of the images that share a file name without extension."""
    stems = [path[:path.rfind(".")] for path in files]  # every listed file has an image extension
    if len(set(stems)) == len(stems):
        return []  # the usual case, checked at the speed of a set (a re-plan of 100,000 images)
    groups: dict[str, list[str]] = {}
    for stem, path in zip(stems, files):
        groups.setdefault(stem, []).append(path)
    return [(stem, paths) for stem, paths in groups.items() if len(paths) > 1]


def kohya_warnings(concepts) -> list[str]:
    """Images directly in a folder read with the kohya layout: kohya reads only its N_name subfolders."""
    warnings = []
    for folder in dict.fromkeys(concept.kohya_folder for concept in concepts if concept.kohya_folder):
        loose = sorted(entry.path for entry in os.scandir(folder)
                       if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
                       and not entry.name.startswith("."))
        if loose:
            warnings.append(f"'{folder}' is read with the kohya layout (its N_name subfolders are the concepts): "
                            f"{_count(len(loose), 'image')} directly in it are not read: {_named(loose)}")
    return warnings


def _count(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def _named(paths, limit: int = 3) -> str:
    """"'a', 'b', 'c' and 4 more"."""
    shown = ", ".join(f"'{path}'" for path in list(paths)[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
