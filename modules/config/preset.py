"""The preset: one typed, validated configuration for GUI, CLI and trainer.

A preset is JSON, `{"version": 1, "model": {...}, "data": {...},
"training": {...}, "optimizer": {...}, "scheduler": {...}, "output": {...}}`.
Any section or key may be left out: the defaults below fill it in (defaults
are declared here and nowhere else). `load_preset` reads a file, migrates
older versions, applies `--set section.key=value` overrides and validates.

Every problem is raised as a `ConfigError` whose message is one line naming
the key and what is allowed; a misspelt key suggests the nearest valid one,
and a key in the wrong section the section it belongs to (`training.lr` ->
'optimizer.lr'). A UTF-8 byte order mark at the start of a file is accepted.
Checks that need the file system or the dataset (an optimizer for another
device, an output folder inside the dataset, unreadable images, captions)
live in `modules.data.checks`; those that need the total step count (warmup
longer than the run, a drop_last that leaves no batch) in `modules.schedule.step_plan`.

Values are taken as written, never coerced: a JSON boolean is not a number,
a string is not a number or a boolean, and NaN or infinity is no value at
all. An integer is a fine value for a float field, an integral float (1e6)
for an integer field, and a JSON list for a pair such as optimizer.betas or
an entry of scheduler.steps.
"""

import difflib
import json
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, field_validator, model_validator

from modules.config.durations import DurationValue, parse_duration
from modules.errors import ConfigError
from modules.families.model_types import check_unet_options
from modules.families.registry import FAMILY_NAMES

PRESET_VERSION = 1

SchedulerType = Literal[
    "constant",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "cosine_with_hard_restarts",
    "polynomial",
    "sine",
    "rex",
    "inverse_sqrt",
    "warmup_stable_decay",
    "piecewise_constant",
    "custom",
    "sequence",
]
OptimizerType = Literal[
    "adamw", "sgd", "adamw_schedule_free", "radam_schedule_free", "prodigy", "dadapt_adam", "adamw_8bit"
]
ModelConfigName = Literal["tiny"]
ModelType = Literal[("auto",) + FAMILY_NAMES]  # modules.families.registry: one entry per family
TrainingMethod = Literal["full", "lora"]

# The allowed values, declared once above and listed here for the GUI and the tests.
SCHEDULER_TYPES: tuple[str, ...] = get_args(SchedulerType)
OPTIMIZER_TYPES: tuple[str, ...] = get_args(OptimizerType)
MODEL_CONFIGS: tuple[str, ...] = get_args(ModelConfigName)
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)
TRAINING_METHODS: tuple[str, ...] = get_args(TrainingMethod)
DEFAULT_LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
SCHEDULE_FREE_OPTIMIZERS = ("adamw_schedule_free", "radam_schedule_free")
ADAPTIVE_OPTIMIZERS = ("prodigy", "dadapt_adam")  # they scale `lr` by their own estimate d
LR_SCALINGS = ("none", "linear", "sqrt")
LR_SCALING_BY = ("global_batch", "batch", "accumulation")
DEFAULT_GROUP_NAME = "unet"
GroupComponent = Literal["unet", "text_encoder", "text_encoder_2"]
GROUP_COMPONENTS: tuple[str, ...] = get_args(GroupComponent)  # where a named group's match is searched
DEFAULT_VALIDATION_TIMESTEPS = (100, 300, 500, 700, 900)  # output.validation_timesteps (SPEC §11)
LORA_PLUS_SUFFIX = "_B"  # lora.plus_ratio: group g's lora_B matrices train as the group g + "_B"


def _duration(value: Any, info) -> DurationValue:
    parse_duration(value, info.field_name)  # syntax only; ConfigError is a ValueError
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _optional_duration(value: Any, info) -> DurationValue | None:
    return None if value is None else _duration(value, info)


Duration = Annotated[int | str, PlainValidator(_duration)]
OptionalDuration = Annotated[int | str | None, PlainValidator(_optional_duration)]


MAX_SEED = 2**64 - 1
"""The largest training.seed: torch.manual_seed takes seeds up to 2**64 - 1."""


def _as_written(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


def _check_uncoerced(value: Any, annotation: Any) -> None:
    """Raise ConfigError where pydantic would coerce `value` into `annotation` (see the module docstring)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return  # durations: parse_duration checks their type itself
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(annotation) if option is not type(None)]
        if value is not None and len(options) == 1:
            _check_uncoerced(value, options[0])
        return
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        items = get_args(annotation)
        if origin is list or (len(items) == 2 and items[1] is Ellipsis):
            items = (items[0],) * len(value)
        for item, item_type in zip(value, items):
            _check_uncoerced(item, item_type)
        return
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"must be a boolean, true or false (got {_as_written(value)})")
    if annotation in (int, float) and isinstance(value, (bool, str)):
        kind = "an integer" if annotation is int else "a number"
        raise ConfigError(f"must be {kind}, not {'a boolean' if isinstance(value, bool) else 'a string'} "
                          f"(got {_as_written(value)})")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info) -> Any:
        _check_uncoerced(value, cls.model_fields[info.field_name].annotation)
        return value


class ModelSection(Section):
    type: ModelType = "auto"
    path: str | None = None
    config: ModelConfigName | None = None
    resolution: int = Field(32, ge=8, le=4096)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    frozen_dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: the mixed precision dtype on CUDA, fp32 on CPU

    @model_validator(mode="after")
    def _one_source(self):
        if self.path and self.config:
            raise ConfigError("set either model.path or model.config, not both", "model.path")
        if self.config and self.type not in ("auto", "unet"):
            raise ConfigError(f"built-in model.config '{self.config}' is a unet model, not {self.type}", "model.type")
        if self.resolution % 8:
            raise ConfigError(f"must be a multiple of 8, got {self.resolution}", "model.resolution")
        return self

    @property
    def architecture(self) -> str:
        """The built-in architecture to use when no folder is given."""
        return self.config or ("tiny" if not self.path else "")


ConceptType = Literal["train", "regularization", "validation"]
DataLayout = Literal["auto", "flat"]
CONCEPT_TYPES: tuple[str, ...] = get_args(ConceptType)
DATA_LAYOUTS: tuple[str, ...] = get_args(DataLayout)
# The concept keys that default to the data.* key of the same name (SPEC §10).
INHERITED_CONCEPT_KEYS = ("caption_extension", "default_caption", "caption_dropout", "flip", "shuffle_tags",
                          "keep_tags", "tag_separator", "tag_dropout")


class ConceptSection(Section):
    """One folder of images ("concept", SPEC §10). A key left null takes the `data.*` value of the same
    name (`inherit`); `repeats` and `samples` are exclusive (neither: repeats 1)."""

    name: str | None = Field(None, min_length=1)  # default: the folder's name
    path: str = Field(min_length=1)
    type: ConceptType = "train"
    repeats: float | None = Field(None, ge=0)     # samples per epoch floor(N * repeats)
    samples: int | None = Field(None, ge=1)       # exactly this many per epoch, cycling a seeded order
    loss_weight: float = Field(1.0, ge=0)
    caption_extension: str | None = Field(None, min_length=1)
    default_caption: str | None = None
    caption_dropout: float | None = Field(None, ge=0, le=1)
    flip: bool | None = None
    shuffle_tags: bool | None = None
    keep_tags: int | None = Field(None, ge=0)
    tag_separator: str | None = Field(None, min_length=1)
    tag_dropout: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _repeats_or_samples(self):
        if self.repeats is not None and self.samples is not None:
            raise ConfigError("set repeats or samples, not both", "samples")
        if self.name is None and not concept_folder_name(self.path):
            raise ConfigError(f"the folder '{self.path}' has no name to name the concept after: set name", "name")
        return self

    @property
    def display_name(self) -> str:
        """`name`, or the folder's name."""
        return self.name or concept_folder_name(self.path)

    def inherit(self, data: "DataSection") -> "ConceptSection":
        """A copy with every null inherited key (INHERITED_CONCEPT_KEYS) set from `data`, and name set."""
        update = {key: getattr(data, key) for key in INHERITED_CONCEPT_KEYS if getattr(self, key) is None}
        return self.model_copy(update={**update, "name": self.display_name})


def concept_folder_name(path: str) -> str:
    """The name of the folder `path` names ('train/10_cat/' -> '10_cat'; '.' -> the working folder's)."""
    return Path(path).name or Path(os.path.abspath(path)).name


class DataSection(Section):
    path: str | None = None
    concepts: list[ConceptSection] = Field(default_factory=list)
    layout: DataLayout = "auto"  # auto: N_name subfolders are concepts with repeats N (kohya); flat: off
    repeats: int = Field(1, ge=1)
    drop_last: bool = False
    flip: bool = False
    caption_extension: str = Field(".txt", min_length=1)
    default_caption: str | None = None
    caption_dropout: float = Field(0.0, ge=0, le=1)
    shuffle_tags: bool = False
    keep_tags: int = Field(0, ge=0)
    tag_separator: str = Field(",", min_length=1)
    tag_dropout: float = Field(0.0, ge=0, le=1)
    buckets: bool = False
    bucket_step: int = Field(64, ge=8)
    bucket_max_aspect: float = Field(2.0, ge=1, le=8)
    num_workers: int = Field(2, ge=0, le=64)
    cache_latents: bool = False
    cache_dir: str | None = None  # default: output.dir/cache
    cache_text_embeddings: bool = False
    validation_split: float = Field(0.0, ge=0, le=0.5)  # of each train concept's images, held out by content hash

    @model_validator(mode="after")
    def _bucket_step(self):
        if self.bucket_step % 8:
            raise ConfigError(f"must be a multiple of 8, got {self.bucket_step}", "data.bucket_step")
        _check_concepts(self)
        return self

    def concept_list(self) -> list[ConceptSection]:
        """The concepts as written, inherited keys filled (`ConceptSection.inherit`); `data.path` alone is
        one train concept with `data.repeats`; [] when neither is set. Kohya folders are not expanded
        here (that needs the file system: `modules.data.concepts`)."""
        if self.concepts:
            return [concept.inherit(self) for concept in self.concepts]
        if self.path:
            return [ConceptSection(path=self.path, repeats=self.repeats,
                                   name=concept_folder_name(self.path) or "data").inherit(self)]
        return []


def _check_concepts(data: DataSection) -> None:
    """data.path and data.concepts both set, duplicate names, a text-embedding cache with tag shuffling."""
    if data.path and data.concepts:
        raise ConfigError("set either data.path or data.concepts, not both (data.path alone is one train "
                          "concept: move it into data.concepts)", "data.concepts")
    seen: dict[str, int] = {}
    for index, concept in enumerate(data.concepts):
        name = concept.display_name
        if name in seen:
            raise ConfigError(f"two concepts are named {name!r} (concepts {seen[name]} and {index}): give one a "
                              "distinct name", f"data.concepts.{index}.name")
        seen[name] = index
    for index, concept in enumerate(data.concepts):
        if concept.caption_dropout is not None and concept.caption_dropout < data.caption_dropout:
            raise ConfigError(f"{concept.caption_dropout:g} is below data.caption_dropout "
                              f"{data.caption_dropout:g}, which the model applies to every caption (lower "
                              "data.caption_dropout and set each concept's own)", f"data.concepts.{index}.caption_dropout")
    if data.cache_text_embeddings:
        for index, concept in enumerate(data.concept_list()):
            for key in ("shuffle_tags", "tag_dropout"):
                if getattr(concept, key):
                    where = f"data.concepts.{index}.{key}" if data.concepts else f"data.{key}"
                    raise ConfigError("cannot be used with data.cache_text_embeddings: the cache holds one "
                                      "embedding per caption, and shuffled or dropped tags make new captions "
                                      "(turn one of them off)", where)


class TrainingSection(Section):
    epochs: int | None = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_processes: int = Field(1, ge=1)
    seed: int = Field(42, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    max_grad_norm: float | None = Field(None, gt=0)
    method: TrainingMethod = "full"
    min_snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0)
    gradient_checkpointing: bool = False  # the UNet and the trained text encoders
    ema: bool = False                      # an EMA of the trained weights (SPEC §11); the final model holds it
    ema_decay: float = Field(0.999, gt=0, lt=1)
    ema_update_every: int = Field(1, ge=1)  # optimizer steps between EMA updates

    @model_validator(mode="after")
    def _has_length(self):
        if self.epochs is None and self.max_steps is None:
            raise ConfigError("set training.epochs or training.max_steps", "training.epochs")
        return self


class ParamGroup(Section):
    name: str = Field(min_length=1)
    match: str = Field(min_length=1)
    lr: float = Field(gt=0)
    component: GroupComponent = DEFAULT_GROUP_NAME  # the model part whose parameter names `match` searches

    @model_validator(mode="after")
    def _valid_regex(self):
        try:
            re.compile(self.match)
        except re.error as error:
            raise ConfigError(f"{self.match!r} is not a regular expression: {error}", "match") from None
        return self


class LoraSection(Section):
    rank: int = Field(16, ge=1)
    alpha: float | None = Field(None, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES), min_length=1)
    plus_ratio: float | None = Field(None, gt=0)  # LoRA+: each group's lora_B matrices at this times its LR
    save_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"  # of both LoRA files
    init_weights: str | None = None  # a LoRA file (ours or kohya's) to start from; must match this section

    @property
    def resolved_alpha(self) -> float:
        """lora.alpha, or the rank when it is null (scale alpha / rank = 1)."""
        return float(self.rank if self.alpha is None else self.alpha)


class OptimizerSection(Section):
    type: OptimizerType = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    param_groups: list[ParamGroup] = Field(default_factory=list)
    text_encoder_lr: float | None = Field(None, gt=0)
    text_encoder_stop_after: OptionalDuration = None
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_scaling_by: Literal["global_batch", "batch", "accumulation"] = "global_batch"
    # prodigy / dadapt_adam (d_coef: prodigy only)
    d_coef: float = Field(1.0, gt=0)
    safeguard_warmup: bool = False
    use_bias_correction: bool = False

    @model_validator(mode="after")
    def _groups(self):
        names = [group.name for group in self.param_groups]
        if DEFAULT_GROUP_NAME in names:
            raise ConfigError(
                f"the name '{DEFAULT_GROUP_NAME}' is reserved for the "
                "parameters no group matches; use optimizer.lr for them",
                "optimizer.param_groups",
            )
        for reserved in GROUP_COMPONENTS[1:]:
            if reserved in names:
                raise ConfigError(f"the name '{reserved}' is reserved for the text encoder's parameters no group "
                                  "matches; use optimizer.text_encoder_lr for them", "optimizer.param_groups")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"duplicate group name {duplicates[0]!r}", "optimizer.param_groups")
        for beta in self.betas:
            if not 0 <= beta < 1:
                raise ConfigError(f"must lie in [0, 1), got {list(self.betas)}", "optimizer.betas")
        if self.type == "dadapt_adam" and self.safeguard_warmup:
            raise ConfigError("is not an option of dadapt_adam (prodigy has it)", "optimizer.safeguard_warmup")
        return self

    @property
    def group_names(self) -> list[str]:
        """Parameter-group names in optimizer order: the named groups, then 'unet'."""
        return [group.name for group in self.param_groups] + [DEFAULT_GROUP_NAME]

    @property
    def base_lrs(self) -> list[float]:
        return [group.lr for group in self.param_groups] + [self.lr]


class Phase(Section):
    """One phase of a `sequence` schedule: from the previous phase's end to `until`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              serialize_by_alias=True)
    shape: Literal["linear", "cosine", "constant"]
    until: Duration
    to: float | None = Field(None, ge=0)
    start: float | None = Field(None, ge=0, alias="from")


class SchedulerSection(Section):
    type: SchedulerType = "constant"
    warmup: Duration = 0
    warmup_start_factor: float = Field(0.0, ge=0, le=1)
    min_factor: float = Field(0.0, ge=0, lt=1)
    cycles: float = Field(1.0, gt=0)
    power: float = Field(1.0, gt=0)
    period: OptionalDuration = None
    timescale: OptionalDuration = None
    decay: Duration = "20%"
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    steps: list[tuple[Duration, float]] | None = None
    function: str | None = None
    phases: list[Phase] | None = None

    @model_validator(mode="after")
    def _shape_fields(self):
        if self.type == "custom" and not self.function:
            raise ConfigError('is required for custom: "path/to/file.py:name" or "package.module:name"',
                              "scheduler.function")
        if self.type == "sequence" and not self.phases:
            raise ConfigError(
                'is required for sequence: a list of {"shape", "until", "to"}, e.g. '
                '[{"shape": "linear", "from": 0, "until": "5%", "to": 1}, {"shape": "cosine", "until": "100%", "to": 0}]',
                "scheduler.phases",
            )
        if self.type in ("custom", "sequence") and parse_duration(self.warmup, "scheduler.warmup").amount != 0:
            hint = "write the warmup as the first phase" if self.type == "sequence" else "the function gives every step"
            raise ConfigError(f"must be 0 with the {self.type} schedule ({hint})", "scheduler.warmup")
        if self.type == "cosine_with_hard_restarts" and (
            self.cycles < 1 or not float(self.cycles).is_integer()
        ):
            raise ConfigError(
                f"must be a whole number >= 1 for cosine_with_hard_restarts, got {self.cycles:g}",
                "scheduler.cycles",
            )
        if self.type == "sine" and self.period is None:
            raise ConfigError('is required for sine (a duration such as 200 or "0.5 epochs")', "scheduler.period")
        if self.type == "piecewise_constant":
            if not self.steps:
                raise ConfigError(
                    "is required for piecewise_constant: a list of [duration, multiplier], "
                    'e.g. [[0, 1.0], ["50%", 0.1]]',
                    "scheduler.steps",
                )
            if parse_duration(self.steps[0][0], "scheduler.steps").amount != 0:
                raise ConfigError(f"the first boundary must be 0, got {self.steps[0][0]!r}", "scheduler.steps")
            for boundary, multiplier in self.steps:
                if not 0 <= multiplier <= 1:
                    raise ConfigError(
                        f"multiplier {multiplier:g} at {boundary!r} must lie in [0, 1] "
                        "(it scales optimizer.lr; raise optimizer.lr for a higher peak)",
                        "scheduler.steps",
                    )
        return self


class OutputSection(Section):
    dir: str = "output"
    checkpoint_every: OptionalDuration = "1 epochs"
    keep_checkpoints: int = Field(3, ge=1)
    sample_every: OptionalDuration = None
    sample_prompts: list[str] = Field(default_factory=list)
    validate_every: OptionalDuration = None  # the validation loss (SPEC §11); None: never
    validation_timesteps: list[int] = Field(default_factory=lambda: list(DEFAULT_VALIDATION_TIMESTEPS), min_length=1)
    single_file: bool = True  # full fine-tunes of SD / SDXL also write model/model.safetensors (original layout)


class Preset(Section):
    version: int = PRESET_VERSION
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _combinations(self):
        """Settings that are valid alone but not together; each check names the key to change."""
        for check in (_check_lora_options, _check_text_encoders, _check_adaptive_optimizer, _check_buckets,
                      _check_schedule_free, _check_frozen_dtype, _check_ema):
            check(self)
        return self

    def to_json_dict(self) -> dict:
        """The fully resolved preset, as it would be written to a JSON file."""
        return self.model_dump(mode="json")


def _check_lora_options(preset: "Preset") -> None:
    # A resolved preset holds the lora section's defaults, so only values other than the defaults count.
    changed = [key for key in LoraSection.model_fields if getattr(preset.lora, key) != getattr(LoraSection(), key)]
    if preset.training.method == "full" and changed:
        raise ConfigError("is a LoRA option, but training.method is 'full' (set training.method to 'lora' "
                          "or remove the lora section)", f"lora.{changed[0]}")


def lora_plus_ratio(preset: "Preset") -> float | None:
    """LoRA+ (SPEC §13): the ratio of each group's `<group>_B` (lora_B matrices) LR to its own; None when off."""
    return preset.lora.plus_ratio if preset.training.method == "lora" else None


def _check_text_encoders(preset: "Preset") -> None:
    for index, group in enumerate(preset.optimizer.param_groups):
        if group.component != DEFAULT_GROUP_NAME and preset.optimizer.text_encoder_lr is None:
            raise ConfigError(f"'{group.component}' needs optimizer.text_encoder_lr (the text encoders are frozen "
                              "without it)", f"optimizer.param_groups.{index}.component")
    if preset.optimizer.text_encoder_stop_after is not None and preset.optimizer.text_encoder_lr is None:
        raise ConfigError("needs optimizer.text_encoder_lr (the text encoders are frozen without it)",
                          "optimizer.text_encoder_stop_after")
    if preset.model.type == "unet" or preset.model.config:
        check_unet_options(preset)
        for key in ("cache_latents", "cache_text_embeddings"):
            if getattr(preset.data, key):
                raise ConfigError("is for stable_diffusion and stable_diffusion_xl models; a unet model has no "
                                  "VAE or text encoder to cache", f"data.{key}")
    if preset.data.cache_text_embeddings and preset.optimizer.text_encoder_lr is not None:
        raise ConfigError("needs frozen text encoders, but optimizer.text_encoder_lr trains them (unset it, or "
                          "set data.cache_text_embeddings to false)", "data.cache_text_embeddings")


def _check_adaptive_optimizer(preset: "Preset") -> None:
    optimizer = preset.optimizer
    if optimizer.type not in ADAPTIVE_OPTIMIZERS:
        return
    if preset.lora.plus_ratio is not None:
        raise ConfigError(
            f"cannot give the lora_B matrices another LR with {optimizer.type}: it trains every group at one LR "
            "(optimizer.lr; its d adapts it): remove lora.plus_ratio or use adamw", "lora.plus_ratio")
    for index, group in enumerate(optimizer.param_groups):
        if group.lr != optimizer.lr:
            raise ConfigError(
                f"is {group.lr:g} but {optimizer.type} trains every group at one LR (optimizer.lr "
                f"{optimizer.lr:g}; its d adapts it): set it equal or remove the group",
                f"optimizer.param_groups.{index}.lr")
    if optimizer.text_encoder_lr is not None and optimizer.text_encoder_lr != optimizer.lr:
        raise ConfigError(
            f"is {optimizer.text_encoder_lr:g} but {optimizer.type} trains every group at one LR "
            f"(optimizer.lr {optimizer.lr:g}; its d adapts it): set it equal", "optimizer.text_encoder_lr")
    if optimizer.text_encoder_stop_after is not None:
        raise ConfigError(
            f"cannot stop the text encoders with {optimizer.type}: it applies one d * lr to every group, "
            "so a group at LR 0 still moves (use adamw, or leave the text encoders frozen)",
            "optimizer.text_encoder_stop_after")


def _check_buckets(preset: "Preset") -> None:
    if preset.data.buckets and preset.data.bucket_step > preset.model.resolution:
        raise ConfigError(
            f"{preset.data.bucket_step} is larger than model.resolution {preset.model.resolution}: "
            "no bucket fits (lower data.bucket_step)", "data.bucket_step")


def _check_ema(preset: "Preset") -> None:
    if preset.training.ema and preset.optimizer.type in SCHEDULE_FREE_OPTIMIZERS:
        raise ConfigError(f"cannot be used with {preset.optimizer.type}: a schedule-free optimizer already "
                          "averages the weights it is evaluated with (turn training.ema off, or use adamw)",
                          "training.ema")
    for index, timestep in enumerate(preset.output.validation_timesteps):
        if timestep < 0:  # the model's own count (num_train_timesteps) is checked when it is loaded
            raise ConfigError(f"{timestep} is not a timestep (they count from 0)", f"output.validation_timesteps.{index}")


def _check_frozen_dtype(preset: "Preset") -> None:
    frozen = preset.model.frozen_dtype
    if frozen in ("fp16", "bf16") and preset.training.mixed_precision == "no":
        raise ConfigError(f"'{frozen}' needs mixed precision (autocast): set training.mixed_precision to bf16 "
                          "(or fp16 / auto on CUDA), or model.frozen_dtype to auto or fp32", "model.frozen_dtype")


def _check_schedule_free(preset: "Preset") -> None:
    optimizer, scheduler = preset.optimizer.type, preset.scheduler
    if optimizer not in SCHEDULE_FREE_OPTIMIZERS:
        return
    if scheduler.type != "constant":
        raise ConfigError(
            f"must be 'constant' with optimizer.type '{optimizer}' "
            f"(a schedule-free optimizer replaces the schedule), got '{scheduler.type}'",
            "scheduler.type",
        )
    if scheduler.warmup_start_factor != 0:
        raise ConfigError(
            "must be 0 with a schedule-free optimizer (its own warmup starts at lr/warmup)",
            "scheduler.warmup_start_factor",
        )
    if optimizer == "radam_schedule_free" and parse_duration(scheduler.warmup, "scheduler.warmup").amount != 0:
        raise ConfigError(
            "must be 0 with radam_schedule_free (RAdam's rectification is its warmup)",
            "scheduler.warmup",
        )


# --- loading -----------------------------------------------------------------

MIGRATIONS: dict[int, Any] = {}
"""version -> function(dict) -> dict that upgrades a preset by one version."""


def _field_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Preset
    list_item: type[BaseModel] | None = None  # set when the previous part named a list of sections
    for part in loc:
        if list_item is not None and isinstance(part, int):
            model, list_item = list_item, None
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        list_item = _list_item_model(annotation)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _list_item_model(annotation) -> type[BaseModel] | None:
    """The section model of a `list[Section]` or `list[Section] | None` annotation, else None."""
    for option in (annotation, *get_args(annotation)):
        args = get_args(option)
        if getattr(option, "__origin__", None) is list and args and isinstance(args[0], type) \
                and issubclass(args[0], BaseModel):
            return args[0]
    return None


def _sections() -> dict[str, type[BaseModel]]:
    """The preset's sections by name: model, data, training, ..."""
    return {name: field.annotation for name, field in Preset.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}


def misplaced_keys(loc: tuple) -> list[str]:
    """The dotted keys of other sections named like the unknown key at `loc` (a top-level key or a
    section's key): ("training", "lr") -> ["optimizer.lr"]; [] for a name no section has."""
    if not 1 <= len(loc) <= 2:
        return []
    name, own = str(loc[-1]), loc[0] if len(loc) == 2 else None
    return [f"{section}.{name}" for section, model in _sections().items()
            if section != own and name in _field_names(model)]


def suggested_keys(loc: tuple) -> list[str]:
    """What the unknown key at `loc` probably meant: the same name in another section (dotted, e.g.
    'optimizer.lr'), else the nearest name of its own section ('batch_size'), else the nearest name
    of another section (dotted); [] when nothing is close."""
    moved = misplaced_keys(loc)
    if moved:
        return moved
    name, parent = str(loc[-1]), _model_at(loc[:-1])
    near = difflib.get_close_matches(name, _field_names(parent) if parent else [], n=1, cutoff=0.6)
    if near or not 1 <= len(loc) <= 2:
        return near
    elsewhere = {f"{section}.{field}": field for section, model in _sections().items() if section != loc[0]
                 for field in _field_names(model)}
    close = difflib.get_close_matches(name, list(elsewhere.values()), n=1, cutoff=0.8)
    return [key for key, field in elsewhere.items() if close and field == close[0]][:1]


def _error_line(error: ValidationError) -> ConfigError:
    errors = error.errors()
    # A misspelt key is the cause of the "field required" next to it: name the misspelling.
    first = next((item for item in errors if item["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    key = ".".join(str(part) for part in loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = _field_names(parent) if parent else []
        near = suggested_keys(loc)
        hint = f"; did you mean {' or '.join(repr(name) for name in near)}?" if near else ""
        return ConfigError(f"unknown key{hint} (allowed: {', '.join(allowed)})", key)
    message = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    cause = first.get("ctx", {}).get("error")
    if kind == "value_error" and isinstance(cause, ConfigError):
        # Cross-field checks name their own key: absolute ("scheduler.cycles") or,
        # inside a list item, relative to it ("match" in optimizer.param_groups.0).
        own = cause.key or ""
        if loc and own == str(loc[-1]):
            own = ""  # a field validator named its own field, which the location already holds
        full = own if "." in own or not key else f"{key}.{own}" if own else key
        return ConfigError(cause.args[0], full or None)
    if kind == "literal_error":
        message = "must be one of " + first["ctx"]["expected"]
        allowed = re.findall(r"'([^']*)'", first["ctx"]["expected"])
        near = difflib.get_close_matches(str(first.get("input")), allowed, n=1, cutoff=0.6)
        if near:
            return ConfigError(f"{first.get('input')!r} is not allowed; did you mean '{near[0]}'? ({message})", key)
    elif message.startswith("Input should be"):
        message = "must be" + message[len("Input should be") :]
    got = first.get("input")
    if kind not in ("missing", "model_attributes_type") and not isinstance(got, dict):
        message += f" (got {json.dumps(got) if _jsonable(got) else repr(got)})"
    return ConfigError(message[0].lower() + message[1:], key or None)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def validate_preset(raw: dict) -> Preset:
    """Validate a preset dict (partial or full); ConfigError on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError("a preset must be a JSON object with sections model, data, training, ...")
    raw = migrate(raw)
    try:
        return Preset.model_validate(raw)
    except ValidationError as error:
        raise _error_line(error) from None


def migrate(raw: dict) -> dict:
    """Upgrade an older preset to PRESET_VERSION, one version at a time."""
    version = raw.get("version", PRESET_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"must be a positive integer, got {version!r}", "version")
    if version > PRESET_VERSION:
        raise ConfigError(
            f"preset version {version} is newer than this program supports ({PRESET_VERSION})", "version"
        )
    while version < PRESET_VERSION:
        raw = MIGRATIONS[version](raw)
        version += 1
    return {**raw, "version": PRESET_VERSION}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is JSON if it parses, else a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE such as training.batch_size=2, got {text!r}")
    key, value_text = text.split("=", 1)
    path = [part for part in key.strip().split(".")]
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set key must be section.key such as scheduler.type, got {key.strip()!r}")
    try:
        value = json.loads(value_text)
    except json.JSONDecodeError:
        value = value_text
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with each `section.key=value` override set."""
    result = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return result


def read_preset_file(path: str | Path) -> dict:
    """The raw JSON dict of a preset file; ConfigError if it is missing or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 byte order mark, as some editors write, is no content
    except FileNotFoundError:
        raise ConfigError(f"preset file '{path}' does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read preset file '{path}': {error.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"preset file '{path}' is not valid JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"preset file '{path}' must hold a JSON object")
    return raw


def load_preset(path: str | Path, overrides: list[str] | None = None) -> Preset:
    """Read, migrate, override and validate a preset file."""
    raw = migrate(read_preset_file(path))
    return validate_preset(apply_overrides(raw, overrides or []))


def save_preset(preset: Preset, path: str | Path) -> None:
    """Write the resolved preset as JSON (atomically: a temporary file, then rename)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(preset.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
