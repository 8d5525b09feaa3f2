"""The draft preset the app edits, and the preview it yields.

`PresetDraft` holds the preset as a raw JSON dict, edited one field at a
time (`set_text("scheduler.warmup", "10%")`). `evaluate()` runs the one
validator (`modules.config.preset.validate_preset`, then the step plan inside
`modules.schedule.preview.build_preview`) and returns a `PreviewState`: the new
preview, or the validator's message and the key to mark, together with the
last valid preview, which the view keeps showing. Images are counted by an
`ImageCounter` (off the GUI thread, cached per folder), so an edit never
walks the dataset again; for text-to-image models the images with a caption
file are counted the same way (`CaptionCounter`), and the preview does not
wait for that count. Beyond the preset model, `compute` runs the plan's
`modules.data.checks.check_preset`, and the counters read what the plan's
dataset check reads (every image header; every caption file for a
text-to-image model), so the app refuses at the field what the preview and
training refuse. Switching `training.method` to "full" sets the lora
section aside (a LoRA option with "full" is an error) and switching back to
"lora" brings it back.

Load and save use the same JSON as `scripts/train.py` (`modules.config.preset`);
the curve exports are the CLI's (`LrCurve.write_csv`, `ui.curve_plot`).
"""

import copy
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modules.config.preset import (
    ConceptSection,
    DataSection,
    Preset,
    concept_folder_name,
    migrate,
    misplaced_keys,
    read_preset_file,
    save_preset,
    suggested_keys,
    validate_preset,
)
from modules.data.captions import CaptionSummary
from modules.data.checks import check_dataset, check_preset
from modules.data.concepts import resolve_concepts
from modules.errors import ConfigError
from modules.families.model_types import TEXT_TO_IMAGE_TYPES
from modules.schedule.preview import Preview, build_preview
from ui.controllers.fields import (
    ALL_FIELDS,
    CONCEPT_CAPTION_KEYS,
    CONCEPT_FIELDS,
    CONCEPT_INHERITED_KEYS,
    PARAM_GROUP_DEFAULTS,
    PARAM_GROUP_FIELDS,
    SCHEDULER_FIELDS,
    FieldSpec,
    active_scheduler_keys,
    format_value,
    parse_text,
)
from ui.controllers.image_counter import CaptionCounter, ImageCounter, folder_key

DEFAULTS = Preset().to_json_dict()
PIECEWISE_EXAMPLE = [[0, 1.0], ["50%", 0.1]]
# A type that cannot run without a field gets a starting value when the user switches to it.
SEQUENCE_EXAMPLE = [{"shape": "linear", "from": 0, "until": "5%", "to": 1},
                    {"shape": "cosine", "until": "100%", "to": 0}]
REQUIRED_FOR_TYPE = {"sine": ("scheduler.period", "1 epochs"), "piecewise_constant": ("scheduler.steps",
                                                                                        PIECEWISE_EXAMPLE),
                     "sequence": ("scheduler.phases", SEQUENCE_EXAMPLE)}
NO_WARMUP_TYPES = ("custom", "sequence")
CONCEPT_PANEL_KEYS = ("name", "path", "type", "amount", "loss_weight", *CONCEPT_CAPTION_KEYS)
# A concept's values when it leaves a key out (declared in the preset model; the caption keys inherit data.*;
# neither repeats nor samples: repeats 1).
CONCEPT_DEFAULTS = {**{name: spec.default for name, spec in ConceptSection.model_fields.items()
                       if not spec.is_required()}, "repeats": 1}
COUNTING = CaptionSummary(0, 0)  # the caption count is still running  # their curve holds any warmup: the hidden warmup field is set to 0


@dataclass(frozen=True)
class PreviewState:
    """What the preview shows after an edit.

    `preview` is the newest valid preview (None before the first one);
    `fresh` says whether it is the preview of the draft as it is now. When
    the draft is invalid, `error` is the validator's line and `error_key`
    the dotted key to mark (None when no single field is to blame).
    """

    preview: Preview | None
    fresh: bool
    error: str | None = None
    error_key: str | None = None
    counting: str | None = None  # the folder being counted, while the preview waits for it
    image_count: int | None = None
    preset: Preset | None = None
    # Valid settings the app itself cannot train (key, message): shown at the field; Start refuses them.
    start_refusal: tuple[str, str] | None = None
    revision: int = 0  # the draft revision this state was computed from
    warnings: tuple[str, ...] = field(default=())  # the plan's warnings about fields the app shows
    # Text-to-image models: how many images have a caption file (None: not one, or still counting).
    captions: CaptionSummary | None = None
    counting_captions: bool = False
    # data.concepts: each concept's image and caption counts, in list order (empty without concepts).
    concept_counts: tuple["ConceptCount", ...] = ()


@dataclass(frozen=True)
class ConceptCount:
    """What the concepts panel shows beside one concept: its folder's images and caption files."""

    images: int | None = None  # None while counting or when the folder is unreadable
    error: str | None = None  # the folder's problem (it does not exist, an unreadable image)
    captions: CaptionSummary | None = None  # None while counting
    counting: bool = False

    def describe(self, with_captions: bool = True) -> str:
        """'12 images, 10 captioned' ('12 images' when captions are not trained on), 'counting ...', or the
        folder's problem."""
        if self.error:
            return self.error
        if self.images is None:
            return "counting ..."
        text = f"{self.images} image{'s' * (self.images != 1)}"
        if with_captions and self.captions is not None and self.captions.error is None:
            text += f", {self.captions.with_caption} captioned"
        return text


def app_start_refusal(preset: Preset) -> tuple[str, str] | None:
    """What a valid preset asks that the app's Start cannot do, as (key, message), else None.

    The app trains in one process; several processes need one launcher starting them all.
    """
    processes = preset.training.num_processes
    if processes > 1:
        return ("training.num_processes",
                f"the app trains in one process; for {processes}, save the preset and run "
                f"`torchrun --nproc_per_node {processes} scripts/train.py PRESET` on CPU or "
                f"`accelerate launch --num_processes {processes} scripts/train.py PRESET` on GPUs, or set 1 here")
    return None


def visible_warnings(warnings: tuple[str, ...], schedule_type: str) -> tuple[str, ...]:
    """The plan's warnings without those about a scheduler field the type hides in the app.

    A hidden field never shapes the curve (its value only waits there for a switch back to a type
    that uses it), so a warning that it "has no effect" names something the user cannot see or change.
    """
    shown = set(active_scheduler_keys(schedule_type))
    hidden = [spec.key.split(".", 1)[1] for spec in SCHEDULER_FIELDS if spec.key not in shown]
    return tuple(line for line in warnings if not any(f"{name} has no effect" in line for name in hidden))


@dataclass(frozen=True)
class UnknownKey:
    key: str  # dotted, e.g. "scheduler.min_facter" or "optimizer.param_groups.0.lrr"
    # What it probably meant: the nearest name in the same section ("min_factor"), or a dotted key of
    # another section ("optimizer.lr" for "training.lr"), as the validator's "did you mean" says.
    suggestion: str | None
    # The one key of another section with exactly this name ("optimizer.lr" for "training.lr"): the
    # value is misplaced, not misspelt, and `PresetDraft.move_keys` moves it there.
    belongs_at: str | None = None

    def describe(self) -> str:
        if self.belongs_at:
            return f"{self.key} (belongs in {self.belongs_at}: it can be moved there)"
        return f"{self.key} (did you mean '{self.suggestion}'?)" if self.suggestion else self.key


def _resolve_one_concept(concept: ConceptSection, index: int, layout: str, validation_split: float = 0.0) -> list:
    """Concept `index` resolved alone (its kohya subfolders too, with every image size, its held-out
    validation images split off), its keys and errors naming `data.concepts.<index>`."""
    try:
        found = resolve_concepts(DataSection(concepts=[concept], layout=layout, validation_split=validation_split),
                                 read_sizes=True)
    except ConfigError as error:
        key = (error.key or "").replace("data.concepts.0", f"data.concepts.{index}", 1) or None
        raise ConfigError(error.args[0], key) from None
    return [replace(item, key=item.key.replace("data.concepts.0", f"data.concepts.{index}", 1)) for item in found]


def concept_error_target(key: str | None) -> tuple[int, str | None] | None:
    """The concept and the panel input a validator key names: "data.concepts.2.samples" -> (2, "amount")
    (repeats and samples share the amount entry), "data.concepts.2" -> (2, None); else None."""
    parts = (key or "").split(".")
    if parts[:2] != ["data", "concepts"] or len(parts) < 3 or not parts[2].isdigit():
        return None
    field = parts[3] if len(parts) > 3 else None
    return int(parts[2]), "amount" if field in ("repeats", "samples") else field


def unknown_keys(raw: dict) -> list[UnknownKey]:
    """Every key of `raw` that no preset field has (all of them, not only the first)."""
    try:
        Preset.model_validate(migrate(raw))
    except (ValidationError, ConfigError) as error:
        errors = error.errors() if isinstance(error, ValidationError) else []
    else:
        return []
    found = []
    for item in errors:
        if item["type"] != "extra_forbidden":
            continue
        loc = tuple(item["loc"])
        near, elsewhere = suggested_keys(loc), misplaced_keys(loc)
        found.append(UnknownKey(".".join(str(part) for part in loc), " or ".join(near) or None,
                                elsewhere[0] if len(elsewhere) == 1 else None))
    return found


def _required_but_empty(raw: dict) -> str | None:
    """The first field that must have a value but was emptied in its entry."""
    for key, spec in ALL_FIELDS.items():
        if not spec.optional and spec.kind not in ("bool", "choice") and _get(raw, key) == "":
            return key
    return None


def _split(key: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def _get(tree: Any, key: str, default: Any = None) -> Any:
    node = tree
    for part in _split(key):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return default
    return node


class PresetDraft:
    def __init__(self, raw: dict | None = None, counter: ImageCounter | None = None,
                 caption_counter: CaptionCounter | None = None):
        self.counter = counter or ImageCounter()
        self.caption_counter = caption_counter or CaptionCounter(synchronous=self.counter.synchronous)
        self._set_aside_lora: dict | None = None  # the lora section while training.method is "full"
        self.raw: dict = migrate(copy.deepcopy(raw)) if raw is not None else {"version": 1}
        self.path: Path | None = None
        self.last_valid: Preview | None = None
        self.revision = 0
        self._clean_raw = copy.deepcopy(self.raw)  # the draft as last loaded or saved
        self._resolved: dict[tuple, list] = {}  # each concept's resolved folder (`_resolved_concepts`)
        self._resolved_lock = threading.Lock()

    @property
    def modified(self) -> bool:
        """Whether the draft differs from the preset as it was last loaded or saved."""
        return self.raw != self._clean_raw

    # --- reading -----------------------------------------------------------

    def value(self, key: str) -> Any:
        """The draft's value for `key`, or the default when the preset leaves it out."""
        missing = object()
        found = _get(self.raw, key, missing)
        return _get(DEFAULTS, key) if found is missing else found

    def text(self, key: str) -> Any:
        """What the field `key` shows (a bool for check boxes)."""
        return format_value(ALL_FIELDS[key], self.value(key))

    @property
    def schedule_type(self) -> str:
        return str(self.value("scheduler.type"))

    def groups(self) -> list[dict]:
        """The named parameter groups as the editor shows them: name, match and lr texts."""
        groups = self.value("optimizer.param_groups") or []
        return [
            {field: format_value(spec, group.get(field, PARAM_GROUP_DEFAULTS.get(field)) if isinstance(group, dict)
                                 else None)
             for field, spec in PARAM_GROUP_FIELDS.items()}
            for group in groups
        ]

    # --- editing -----------------------------------------------------------

    def set_value(self, key: str, value: Any) -> None:
        """Set a JSON value at a dotted key (sections and list items are created as needed)."""
        parts = _split(key)
        node = self.raw
        for part, following in zip(parts[:-1], parts[1:]):
            child = node[part] if (isinstance(node, list) or part in node) else None
            if child is None:
                child = [] if isinstance(following, int) else {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        self.revision += 1

    def set_text(self, key: str, text: Any) -> None:
        """Record what the user typed into field `key` (validated by `evaluate`)."""
        spec: FieldSpec = ALL_FIELDS[key]
        self.set_value(key, parse_text(spec, text))
        if key == "training.method":
            if text == "full" and isinstance(self.raw.get("lora"), dict):
                self._set_aside_lora = self.raw.pop("lora")
            elif text == "lora" and self._set_aside_lora is not None and "lora" not in self.raw:
                self.raw["lora"] = self._set_aside_lora
                self._set_aside_lora = None
        if key == "scheduler.type" and text in REQUIRED_FOR_TYPE:
            required, example = REQUIRED_FOR_TYPE[text]
            if self.value(required) is None:
                self.set_value(required, copy.deepcopy(example))
        if key == "scheduler.type" and text in NO_WARMUP_TYPES:
            self.set_value("scheduler.warmup", 0)

    def _groups_raw(self) -> list:
        groups = self.value("optimizer.param_groups")
        groups = copy.deepcopy(groups) if isinstance(groups, list) else []
        self.set_value("optimizer.param_groups", groups)
        return groups

    def set_group_text(self, index: int, field: str, text: str) -> None:
        self._groups_raw()
        self.set_value(f"optimizer.param_groups.{index}.{field}", parse_text(PARAM_GROUP_FIELDS[field], text))

    def add_group(self) -> None:
        groups = self._groups_raw()
        names = {group.get("name") for group in groups if isinstance(group, dict)}
        number = 1
        while f"group{number}" in names:
            number += 1
        groups.append({"name": f"group{number}", "match": "attentions", "lr": self.value("optimizer.lr")})
        self.revision += 1

    def remove_group(self, index: int) -> None:
        groups = self._groups_raw()
        del groups[index]
        self.revision += 1

    # --- data.concepts (the concepts panel) -----------------------------------------

    def concepts(self) -> list[dict]:
        """The raw concepts of the draft (a list of dicts; empty when it has none)."""
        concepts = _get(self.raw, "data.concepts")
        return concepts if isinstance(concepts, list) else []

    def concept_value(self, index: int, key: str) -> Any:
        """Concept `index`'s value for `key`, or what it inherits: data.* for the caption keys and flip,
        the folder's name for `name`, else the preset model's default."""
        concept = self.concepts()[index]
        concept = concept if isinstance(concept, dict) else {}
        if key in concept:
            return concept[key]
        if key in CONCEPT_INHERITED_KEYS:
            return self.value(f"data.{key}")
        if key == "name":
            return concept_folder_name(concept["path"]) if concept.get("path") else None
        return CONCEPT_DEFAULTS.get(key)

    def concept_amount_kind(self, index: int) -> str:
        """"samples" when concept `index` gives samples per epoch, else "repeats"."""
        concept = self.concepts()[index]
        return "samples" if isinstance(concept, dict) and "samples" in concept else "repeats"

    def concept_text(self, index: int, key: str) -> Any:
        """What the concepts panel shows for `key` of concept `index` (a bool for check boxes);
        key "amount" is the repeats or the samples, whichever the concept gives."""
        if key == "amount":
            key = self.concept_amount_kind(index)
        return format_value(CONCEPT_FIELDS[key], self.concept_value(index, key))

    def concept_texts(self, index: int) -> dict[str, Any]:
        """Everything the concepts panel shows of concept `index`: its row and its detail area."""
        texts = {key: self.concept_text(index, key) for key in CONCEPT_PANEL_KEYS}
        texts["amount_kind"] = self.concept_amount_kind(index)
        return texts

    def _concepts_raw(self) -> list:
        concepts = copy.deepcopy(self.concepts())
        self.set_value("data.concepts", concepts)
        return concepts

    def set_concept_text(self, index: int, key: str, text: Any) -> None:
        """Record what the user entered for `key` of concept `index` ("amount": its repeats or samples;
        "amount_kind": switch between "repeats" and "samples")."""
        if key == "amount_kind":
            self.set_concept_amount_kind(index, text)
            return
        if key == "amount":
            key = self.concept_amount_kind(index)
        concept = self._concepts_raw()[index]
        value = parse_text(CONCEPT_FIELDS[key], text)
        if value is None and key in ("name", "default_caption"):
            concept.pop(key, None)  # empty: the folder's name / the data.* default again
        else:
            concept[key] = value
        self.revision += 1

    def set_concept_amount_kind(self, index: int, kind: str) -> None:
        """Switch concept `index` between `repeats` and `samples` (one of them, never both). Switching to
        samples starts from the samples per epoch it gives now (its images x repeats, when counted)."""
        concept = self._concepts_raw()[index]
        if kind == self.concept_amount_kind(index):
            return
        if kind == "samples":
            repeats = concept.pop("repeats", 1)
            images = self.counter.cached(str(concept.get("path") or ""))
            per_epoch = int(images * repeats) if isinstance(images, int) and isinstance(repeats, (int, float)) else 1
            concept["samples"] = max(1, per_epoch)
        else:
            concept.pop("samples", None)
            concept["repeats"] = 1
        self.revision += 1

    def add_concept(self, path: str) -> int:
        """Add a concept for folder `path` (type train, named after the folder, unique); returns its index.
        A draft with data.path alone first turns that folder into concept 0 (both set is an error)."""
        concepts = self._concepts_raw()
        data = self.raw["data"]
        if not concepts and data.get("path"):
            first = {"name": concept_folder_name(str(data["path"])) or "concept", "path": data.pop("path")}
            repeats = data.pop("repeats", 1)
            if repeats != 1:
                first["repeats"] = repeats
            concepts.append(first)
        names = {concept.get("name") for concept in concepts if isinstance(concept, dict)}
        base = concept_folder_name(path) or "concept"
        name, number = base, 2
        while name in names:
            name, number = f"{base}_{number}", number + 1
        concepts.append({"name": name, "path": path})
        self.revision += 1
        return len(concepts) - 1

    def remove_concept(self, index: int) -> None:
        """Remove concept `index`; removing the last one leaves a draft with no data.concepts key."""
        concepts = self._concepts_raw()
        del concepts[index]
        if not concepts:
            del self.raw["data"]["concepts"]
        self.revision += 1

    def concept_counts(self, raw: dict) -> tuple[ConceptCount, ...]:
        """Each concept's image and caption counts (thread-safe: counting starts on the counters' workers
        and reads None until it is done)."""
        concepts = _get(raw, "data.concepts")
        if not isinstance(concepts, list):
            return ()
        data = raw.get("data", {})
        counts = []
        for concept in concepts:
            path = concept.get("path") if isinstance(concept, dict) else None
            if not isinstance(path, str) or not path:
                counts.append(ConceptCount(error="no folder"))
                continue
            extension = concept.get("caption_extension", data.get("caption_extension", DEFAULTS["data"][
                "caption_extension"]))
            images = self.counter.lookup(path)
            extension = extension if isinstance(extension, str) else ""
            captions = self.caption_counter.lookup(path, extension) if extension else None
            counts.append(ConceptCount(images if isinstance(images, int) else None,
                                       images.args[0] if isinstance(images, ConfigError) else None,
                                       captions if isinstance(captions, CaptionSummary) else None,
                                       counting=images is None or (extension and captions is None)))
        return tuple(counts)

    def unknown_keys(self) -> list[UnknownKey]:
        return unknown_keys(self.raw)

    def move_keys(self, keys=None) -> list[str]:
        """Move each misplaced key (an `UnknownKey` with `belongs_at`; of `keys` when given) to the key it
        belongs at, unless that key already holds a value; returns the keys moved. The rest stay unknown."""
        moved = []
        for item in self.unknown_keys():
            if item.belongs_at is None or (keys is not None and item.key not in keys):
                continue
            missing = object()
            if _get(self.raw, item.belongs_at, missing) is not missing:
                continue  # both set: the user chooses (the app offers to drop the misplaced one)
            self.set_value(item.belongs_at, _get(self.raw, item.key))
            self.drop_keys([item.key])
            moved.append(item.key)
        return moved

    def drop_keys(self, keys) -> None:
        """Remove the dotted `keys` from the draft (the unknown keys of a loaded preset)."""
        for key in keys:
            *parents, last = _split(key)
            node = _get(self.raw, ".".join(str(part) for part in parents)) if parents else self.raw
            if isinstance(node, dict):
                node.pop(last, None)
        self.revision += 1

    # --- the one validator ---------------------------------------------------

    def evaluate(self) -> PreviewState:
        """Validate the draft and build its preview; keep the last valid preview on error."""
        return self.accept(self.compute(self.raw, self.revision))

    def snapshot(self) -> tuple[dict, int]:
        """A copy of the draft and its revision, for `compute` on another thread."""
        return copy.deepcopy(self.raw), self.revision

    def compute(self, raw: dict, revision: int = 0) -> PreviewState:
        """The preview of `raw`, or what is wrong with it. Reads nothing of the draft but its image
        counters (thread-safe), so it may run off the GUI thread; `accept` merges the result.
        Each concept's counts come with every state, valid or not (the panel shows them while the
        user fixes another field); while one still runs, the state says so and the counters are polled."""
        counts = self.concept_counts(raw)
        state = self._compute(raw, revision)
        if not counts:
            return state
        return replace(state, concept_counts=counts,
                       counting_captions=state.counting_captions or any(count.counting for count in counts))

    def _compute(self, raw: dict, revision: int) -> PreviewState:
        empty = _required_but_empty(raw)
        if empty is not None:
            return PreviewState(None, False, f"{empty}: required (enter a value)", empty, revision=revision)
        try:
            preset = validate_preset(raw)
            check_preset(preset)  # what training refuses beyond the preset model (the plan runs it too)
        except ConfigError as error:
            return PreviewState(None, False, str(error), error.key, revision=revision)
        count, sizes = None, None
        waiting = self._concepts_counted(preset, revision)
        if waiting is not None:
            return waiting
        if preset.data.path:
            lookup = self.counter.lookup_sizes if preset.data.buckets else self.counter.lookup
            found = lookup(preset.data.path)
            if found is None:
                return PreviewState(None, False, counting=preset.data.path, preset=preset, revision=revision)
            if isinstance(found, ConfigError):
                return PreviewState(None, False, str(found), found.key, preset=preset, revision=revision)
            if isinstance(found, list):  # buckets: every image's size
                count, sizes = len(found), found
            else:
                count = found
        try:
            # num_images None with no data.path: the plan raises "data.path: is not set".
            preview, dataset_warnings = self._build_preview(preset, count, sizes)
            # The curve is computed on first use: here, so that the caller's thread pays for it.
            preview.curve.applied_multipliers, preview.curve.effective_multipliers  # noqa: B018
        except ConfigError as error:
            return PreviewState(None, False, str(error), error.key, image_count=count, preset=preset,
                                revision=revision)
        except MemoryError:
            key = "training.max_steps" if preset.training.max_steps is not None else "training.epochs"
            return PreviewState(None, False, f"{key}: the plan is too long to compute in memory", key,
                                image_count=count, preset=preset, revision=revision)
        try:
            captions, caption_warnings = self._captions(preset, preview)
        except ConfigError as error:
            return PreviewState(None, False, str(error), error.key, image_count=count, preset=preset,
                                revision=revision)
        return PreviewState(preview, True, image_count=count, preset=preset,
                            start_refusal=app_start_refusal(preset), revision=revision,
                            warnings=visible_warnings(preview.plan.warnings, preset.scheduler.type) + caption_warnings
                            + dataset_warnings,
                            captions=None if captions is COUNTING else captions,
                            counting_captions=captions is COUNTING)

    def _build_preview(self, preset: Preset, count: int | None, sizes) -> tuple[Preview, tuple[str, ...]]:
        """The preview, and with data.concepts the dataset checks' warnings (per concept: skipped files,
        small images, shared caption stems). The concepts are resolved through `_resolved_concepts`."""
        if not preset.data.concepts:
            return build_preview(preset, count, sizes), ()
        concepts = self._resolved_concepts(preset)
        return build_preview(preset, concepts=concepts), tuple(check_dataset(preset, concepts))

    def _resolved_concepts(self, preset: Preset) -> list:
        """`modules.data.concepts.resolve_concepts` of the preset, one concept at a time, each cached by its
        settings, index, layout, validation split and folder (its modification time): an edit of one concept lists only its
        folder again, an edit elsewhere none (the counter has read every header into the size index).
        The cache keeps only the entries of the newest preset, so typing never piles up listings."""
        data, resolved, used = preset.data, [], {}
        for index, concept in enumerate(data.concept_list()):
            cache_key = (index, concept.model_dump_json(), data.layout, data.validation_split,
                         folder_key(concept.path))
            with self._resolved_lock:
                found = self._resolved.get(cache_key)
            if found is None:
                found = _resolve_one_concept(concept, index, data.layout, data.validation_split)
            used[cache_key] = found
            resolved.extend(found)
        with self._resolved_lock:
            self._resolved = used
        if len({concept.name for concept in resolved}) < len(resolved):
            resolve_concepts(data)  # a kohya subfolder named like another concept: the engine's own error
        return resolved

    def forget_concepts(self) -> None:
        """Drop the resolved concepts (the "count again" button)."""
        with self._resolved_lock:
            self._resolved.clear()

    def _concepts_counted(self, preset: Preset, revision: int) -> PreviewState | None:
        """With data.concepts: a state that waits while a concept's folder is still counted (the count
        reads every header into the size index, so the plan then lists the concepts from it quickly),
        or names a folder's problem at its concept; None when every folder is counted."""
        for index, concept in enumerate(preset.data.concepts):
            found = self.counter.lookup(concept.path)
            if found is None:
                return PreviewState(None, False, counting=concept.path, preset=preset, revision=revision)
            if isinstance(found, ConfigError):
                key = f"data.concepts.{index}.path"
                return PreviewState(None, False, f"{key}: {found.args[0]}", key, preset=preset, revision=revision)
        return None

    def _captions(self, preset: Preset, preview: Preview) -> tuple[CaptionSummary | None, tuple[str, ...]]:
        """Text-to-image models: the caption count (COUNTING while it runs) and its warnings;
        ConfigError for what training refuses (a missing caption without a default, a file not UTF-8)."""
        if preview.plan.model_type not in TEXT_TO_IMAGE_TYPES or not preset.data.path:
            return None, ()
        data = preset.data
        found = self.caption_counter.lookup(data.path, data.caption_extension)
        if found is None:
            return COUNTING, ()
        if isinstance(found, ConfigError):
            raise found
        return found, tuple(found.check(data.default_caption, data.caption_extension))

    def accept(self, state: PreviewState) -> PreviewState:
        """Merge a computed state: a fresh preview becomes the last valid one; an error keeps it."""
        if state.fresh:
            self.last_valid = state.preview
            return state
        return replace(state, preview=self.last_valid)

    def wait_for_images(self) -> PreviewState:
        """Evaluate, waiting for a running image count first (scripts and tests)."""
        state = self.evaluate()
        while state.counting or state.counting_captions:
            self.counter.wait()
            self.caption_counter.wait()
            state = self.evaluate()
        return state

    def current_preview(self) -> Preview:
        """The preview of the draft exactly as it is, or ConfigError naming what is wrong."""
        state = self.wait_for_images()
        if state.error:
            raise ConfigError(state.error, state.error_key)
        return state.preview

    # --- files ---------------------------------------------------------------

    def load(self, path: str | Path) -> None:
        """Replace the draft with a preset file (the same JSON `scripts/train.py` reads).

        A file that is not a preset raises ConfigError and leaves the draft as it was;
        a preset with a bad value is loaded and its problem shown like any edit's.
        """
        raw = migrate(read_preset_file(path))
        self.raw = raw
        self._set_aside_lora = None
        self.path = Path(path)
        self.revision += 1
        self._clean_raw = copy.deepcopy(raw)

    def save(self, path: str | Path) -> None:
        """Write the draft as a full, validated preset (refused with the validator's line if invalid)."""
        preview = self.current_preview()
        save_preset(preview.preset, path)
        self.path = Path(path)
        self._clean_raw = copy.deepcopy(self.raw)

    def export_csv(self, path: str | Path) -> None:
        """The curve as `step,lr/<group>...`, exactly what `scripts/preview.py --csv` writes."""
        self.current_preview().curve.write_csv(path)

    def export_png(self, path: str | Path, dark: bool = False) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ui.curve_plot import draw_preview

        preview = self.current_preview()
        figure = Figure(figsize=(10, 4.8), dpi=110, layout="constrained")
        FigureCanvasAgg(figure)
        draw_preview(figure, preview, dark=dark)
        if preview.plan.warnings:
            figure.supxlabel("warnings: " + "; ".join(preview.plan.warnings), fontsize="x-small",
                             color="#a04000", wrap=True)
        figure.savefig(path)


def scaled_lr_note(preview: Preview | None) -> str:
    """Beside the LR field: "x sqrt(8) = 2.83e-4" when optimizer.lr_scaling changes it, else ""."""
    if preview is None or not preview.plan.lr_scale_note:
        return ""
    return preview.plan.lr_scale_note.split(" (")[0].split(" ", 2)[2]



def trains_on_captions(preview: Preview | None) -> bool:
    """Whether the (last valid) preview's model reads captions: text-to-image models; True before any."""
    return preview is None or preview.plan.model_type in TEXT_TO_IMAGE_TYPES


def concept_lines(preview: Preview | None) -> list[str]:
    """Under the preview, the CLI's concept table (`Preview.dataset_lines`: every concept's name, type,
    images, repeats or samples, samples per epoch and share of the epoch); [] for one plain folder."""
    if preview is None:
        return []
    lines = preview.dataset_lines()
    return [line[2:] for line in lines] if len(lines) > 1 else []


def validation_ema_lines(preview: Preview | None, max_listed: int = 8) -> list[str]:
    """Under the plan's summary, the CLI's validation and EMA lines (SPEC §11): "validation at 7, 14, 21
    (every 7 steps and the last step), over 3 images" and the EMA decay's start and end; [] when both are off."""
    from modules.schedule.preview import ema_lines, validation_lines

    if preview is None:
        return []

    def listing(steps) -> str:
        shown = ", ".join(str(step) for step in steps[:max_listed])
        return shown + (f", ... ({len(steps)} in all)" if len(steps) > max_listed else "")

    plan = preview.plan
    return [" ".join(line.split()) for line in (*validation_lines(plan, listing), *ema_lines(plan))]
