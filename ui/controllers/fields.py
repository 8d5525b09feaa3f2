"""What each editable preset field is: its key, label, kind and one-line hint.

The views lay out one row per `FieldSpec`; the draft controller turns the
text typed into a row into the JSON value the preset validator receives
(`parse_text`) and back (`format_value`). Which scheduler fields a schedule
type uses is decided here (`active_scheduler_keys`), from SPEC §2.
Nothing here validates: `modules.config.preset.validate_preset` and the step plan
are the one validator.
"""

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from modules.config.preset import (
    CONCEPT_TYPES,
    DATA_LAYOUTS,
    DEFAULT_GROUP_NAME,
    GROUP_COMPONENTS,
    INHERITED_CONCEPT_KEYS,
    MODEL_CONFIGS,
    MODEL_TYPES,
    OPTIMIZER_TYPES,
    SCHEDULER_TYPES,
    TRAINING_METHODS,
)

NONE_CHOICE = "(none)"
DURATION_HINT = 'steps, "10%" of the run or "1.5 epochs"'

Kind = Literal["int", "float", "duration", "choice", "bool", "text", "folder", "json"]


@dataclass(frozen=True)
class FieldSpec:
    key: str  # dotted preset key, e.g. "scheduler.warmup"
    label: str
    kind: Kind
    hint: str = ""
    choices: tuple[str, ...] = ()
    optional: bool = False  # an empty entry (or NONE_CHOICE) means null


DATA_MODEL_FIELDS = (
    FieldSpec("data.path", "Dataset folder", "folder", "images in this folder and its subfolders"),
    FieldSpec("data.repeats", "Repeats", "int", "each image is seen this many times per epoch"),
    FieldSpec("data.layout", "Folder layout", "choice",
              "auto: subfolders all named N_name (kohya) are concepts with repeats N; flat: one folder",
              choices=DATA_LAYOUTS),
    FieldSpec("data.drop_last", "Drop last batch", "bool", "skip the last, incomplete batch of each epoch"),
    FieldSpec("data.flip", "Random flip", "bool", "mirror images at random (augmentation)"),
    FieldSpec("data.buckets", "Aspect buckets", "bool",
              "train each image near its own aspect ratio, one bucket per batch (else square crops)"),
    FieldSpec("data.bucket_step", "Bucket step", "int", "bucket sides are multiples of this (a multiple of 8)"),
    FieldSpec("data.bucket_max_aspect", "Max aspect", "float", "longest bucket side / shortest, at most"),
    FieldSpec("data.num_workers", "Data workers", "int", "processes decoding images ahead of training (0: none)"),
    FieldSpec("data.validation_split", "Validation split", "float",
              "this fraction of each train concept's images (0..0.5) is held out for the validation loss, "
              "chosen by content hash: stable across runs"),
    FieldSpec("model.type", "Model type", "choice",
              "auto reads the folder's model_index.json; SD / SDXL train on captioned images",
              choices=MODEL_TYPES),
    FieldSpec("data.cache_latents", "Cache latents", "bool",
              "SD / SDXL: encode each image with the VAE once and train from the stored latents"),
    FieldSpec("data.cache_text_embeddings", "Cache captions", "bool",
              "SD / SDXL with frozen text encoders: embed each caption once"),
    FieldSpec("data.cache_dir", "Cache folder", "folder", "where the caches live (empty: output folder/cache)",
              optional=True),
    FieldSpec("model.config", "Built-in model", "choice", "a built-in architecture, or (none) to use a folder",
              choices=(NONE_CHOICE, *MODEL_CONFIGS), optional=True),
    FieldSpec("model.path", "Model folder", "folder", "a local diffusers folder (instead of a built-in model)",
              optional=True),
    FieldSpec("model.resolution", "Resolution", "int", "training image size in pixels, a multiple of 8"),
    FieldSpec("data.caption_extension", "Caption extension", "text", "the caption of x.png is x + this, e.g. .txt"),
    FieldSpec("data.default_caption", "Default caption", "text",
              "for images without a caption file; empty: such an image is an error", optional=True),
    FieldSpec("data.caption_dropout", "Caption dropout", "float",
              "probability that a sample trains with the empty caption (0..1)"),
    FieldSpec("data.shuffle_tags", "Shuffle tags", "bool", "split captions into tags; shuffle all but the kept ones"),
    FieldSpec("data.keep_tags", "Keep tags", "int", "the first this many tags stay in place"),
    FieldSpec("data.tag_separator", "Tag separator", "text", 'what separates tags, e.g. ","'),
    FieldSpec("data.tag_dropout", "Tag dropout", "float", "probability that a tag not kept is dropped (0..1)"),
)
# The caption options of data.*: the defaults of every concept that leaves them out.
DATA_CAPTION_KEYS = ("data.caption_extension", "data.default_caption", "data.caption_dropout", "data.flip",
                     "data.shuffle_tags", "data.keep_tags", "data.tag_separator", "data.tag_dropout")

# One concept of data.concepts (SPEC §10), edited by index in the concepts panel. `key` is the concept's own key.
# Amount: a concept gives either `repeats` or `samples`; the panel shows one entry and a switch between the two.
CONCEPT_AMOUNT_KINDS = ("repeats", "samples")
CONCEPT_FIELDS = {
    "name": FieldSpec("name", "Name", "text", "unique; empty: the folder's name", optional=True),
    "path": FieldSpec("path", "Folder", "folder", "images in this folder and its subfolders"),
    "type": FieldSpec("type", "Type", "choice", "train, regularization (class images) or validation (never trained)",
                      choices=CONCEPT_TYPES),
    "repeats": FieldSpec("repeats", "Repeats", "float",
                         "per epoch each image this many times; a fraction takes a seeded subset"),
    "samples": FieldSpec("samples", "Samples", "int", "exactly this many samples per epoch, cycling the images"),
    "loss_weight": FieldSpec("loss_weight", "Loss weight", "float",
                             "each sample's loss times this (the prior-preservation weight)"),
    "caption_extension": FieldSpec("caption_extension", "Caption extension", "text", "the caption of x.png is x + this"),
    "default_caption": FieldSpec("default_caption", "Default caption", "text",
                                 "for images without a caption file; empty: such an image is an error",
                                 optional=True),
    "caption_dropout": FieldSpec("caption_dropout", "Caption dropout", "float",
                                 "probability that a sample trains with the empty caption (0..1)"),
    "flip": FieldSpec("flip", "Random flip", "bool", "mirror this concept's images at random"),
    "shuffle_tags": FieldSpec("shuffle_tags", "Shuffle tags", "bool",
                              "split the caption into tags and shuffle all but the kept ones"),
    "keep_tags": FieldSpec("keep_tags", "Keep tags", "int", "the first this many tags stay in place"),
    "tag_separator": FieldSpec("tag_separator", "Tag separator", "text", 'what separates tags, e.g. ","'),
    "tag_dropout": FieldSpec("tag_dropout", "Tag dropout", "float", "probability that a tag not kept is dropped"),
}
# Caption options in the detail area of a concept (its compact row holds name, type, amount and loss weight).
CONCEPT_CAPTION_KEYS = ("caption_extension", "default_caption", "caption_dropout", "flip", "shuffle_tags",
                        "keep_tags", "tag_separator", "tag_dropout")
# A concept leaves these out to inherit the data.* value of the same name (SPEC §10).
CONCEPT_INHERITED_KEYS = INHERITED_CONCEPT_KEYS

# Text-to-image models (stable_diffusion, stable_diffusion_xl): how they train. The lora.* rows are
# shown only with training.method "lora" (a LoRA option with "full" is an error).
METHOD_FIELD = FieldSpec("training.method", "Method", "choice", "lora: small adapters; full: every weight",
                         choices=TRAINING_METHODS)
LORA_FIELDS = (
    FieldSpec("lora.rank", "LoRA rank", "int", "adapter rank (>= 1); larger: more capacity, bigger files"),
    FieldSpec("lora.alpha", "LoRA alpha", "float", "the adapter's scale is alpha / rank; empty: the rank",
              optional=True),
    FieldSpec("lora.dropout", "LoRA dropout", "float", "dropout inside the adapters (0..<1)"),
    FieldSpec("lora.target_modules", "Target modules", "json",
              'UNet modules that get adapters, e.g. ["to_q", "to_k", "to_v", "to_out.0"]'),
    FieldSpec("lora.plus_ratio", "LoRA+ ratio", "float",
              "LoRA+: each group's lora_B (up) matrices train as <group>_B at this x its LR "
              "(kohya's loraplus_lr_ratio, e.g. 16); empty: off", optional=True),
)

TRAINING_FIELDS = (
    FieldSpec("training.epochs", "Epochs", "int", "passes over the dataset (empty: use max steps)", optional=True),
    FieldSpec("training.max_steps", "Max steps", "int", "stop after this many optimizer steps (overrides epochs)",
              optional=True),
    FieldSpec("training.batch_size", "Batch size", "int", "images per micro-batch, per process"),
    FieldSpec("training.gradient_accumulation_steps", "Accumulation", "int",
              "micro-batches per optimizer step"),
    FieldSpec("training.num_processes", "Processes", "int", "data-parallel processes (accelerate)"),
    FieldSpec("training.seed", "Seed", "int", "same seed, same data order and noise"),
    FieldSpec("training.device", "Device", "choice", "auto picks cuda when available", choices=("auto", "cpu", "cuda")),
    FieldSpec("training.mixed_precision", "Mixed precision", "choice", "lower-precision maths on GPU",
              choices=("no", "fp16", "bf16", "auto")),
    FieldSpec("training.ema", "EMA", "bool",
              "keep an exponential moving average of the weights: samples, validation and the final model use it"),
    FieldSpec("training.ema_decay", "EMA decay", "float",
              "the EMA's decay (0..1, e.g. 0.999); its j-th update uses min(decay, j / (9 + j))"),
    FieldSpec("training.ema_update_every", "EMA update every", "int", "optimizer steps between EMA updates (>= 1)"),
    FieldSpec("optimizer.type", "Optimizer", "choice", "schedule-free ones need the constant schedule",
              choices=OPTIMIZER_TYPES),
    FieldSpec("optimizer.lr", "Learning rate", "float", "peak LR of the parameters no group matches (group unet)"),
    FieldSpec("optimizer.weight_decay", "Weight decay", "float", "decoupled weight decay"),
    FieldSpec("optimizer.lr_scaling", "LR scaling", "choice", "multiply every LR by n or sqrt(n) (n below)",
              choices=("none", "linear", "sqrt")),
    FieldSpec("optimizer.lr_scaling_by", "Scale by", "choice", "n: batch x processes x accumulation, or a part",
              choices=("global_batch", "batch", "accumulation")),
    FieldSpec("optimizer.d_coef", "d coefficient", "float", "prodigy: scales its LR estimate d"),
    FieldSpec("optimizer.safeguard_warmup", "Safeguard warmup", "bool", "prodigy: steadier d during warmup"),
    FieldSpec("optimizer.use_bias_correction", "Bias correction", "bool", "prodigy / dadapt_adam: Adam's correction"),
    FieldSpec("optimizer.text_encoder_lr", "Text encoder LR", "float",
              "SD / SDXL: peak LR of the text encoder(s); empty: they stay frozen", optional=True),
    FieldSpec("optimizer.text_encoder_stop_after", "Text encoder stop", "duration",
              "text encoders train at LR 0 from then on: " + DURATION_HINT + "; empty: never", optional=True),
)

OUTPUT_FIELDS = (
    FieldSpec("output.dir", "Output folder", "folder", "checkpoints, TensorBoard logs and the final model"),
    FieldSpec("output.checkpoint_every", "Checkpoint every", "duration", DURATION_HINT + "; empty: only at the end",
              optional=True),
    FieldSpec("output.keep_checkpoints", "Keep checkpoints", "int", "older checkpoints are deleted"),
    FieldSpec("output.sample_every", "Sample every", "duration", DURATION_HINT + "; empty: never", optional=True),
    FieldSpec("output.sample_prompts", "Sample prompts", "json",
              'SD / SDXL: the prompts sampled, e.g. ["a photo of a cat"]'),
    FieldSpec("output.validate_every", "Validate every", "duration",
              "the validation loss (and at the last step): " + DURATION_HINT + "; empty: never. Needs a "
              "validation concept or a validation split", optional=True),
    FieldSpec("output.validation_timesteps", "Validation timesteps", "json",
              "the validation loss is the mean over these noise timesteps, e.g. [100, 300, 500, 700, 900]"),
)

# SPEC §13: the same name means another curve in diffusers, transformers and kohya sd-scripts.
RESTARTS_NAMING_NOTE = ("cosine_with_restarts here is OneTrainer's smooth waves; diffusers, transformers and kohya "
                        "use that name for jumps back to the peak: cosine_with_hard_restarts here")
SCHEDULER_TYPE_FIELD = FieldSpec("scheduler.type", "Schedule", "choice",
                                 "the shape of the LR over the run. " + RESTARTS_NAMING_NOTE, choices=SCHEDULER_TYPES)

SCHEDULER_FIELDS = (
    FieldSpec("scheduler.warmup", "Warmup", "duration", "linear ramp at the start: " + DURATION_HINT),
    FieldSpec("scheduler.warmup_start_factor", "Warmup start", "float", "LR factor at step 0 of the warmup (0..1)"),
    FieldSpec("scheduler.min_factor", "Min factor", "float", "the floor the schedule decays to, times the LR (0..<1)"),
    FieldSpec("scheduler.cycles", "Cycles", "float", "number of cosine waves after warmup"),
    FieldSpec("scheduler.power", "Power", "float", "polynomial exponent: 1 is linear, 2 drops faster"),
    FieldSpec("scheduler.period", "Period", "duration", "one full sine wave every: " + DURATION_HINT, optional=True),
    FieldSpec("scheduler.timescale", "Timescale", "duration",
              "inverse sqrt scale; empty: the warmup (or 10000 steps)", optional=True),
    FieldSpec("scheduler.decay", "Decay", "duration", "length of the final decay: " + DURATION_HINT),
    FieldSpec("scheduler.decay_shape", "Decay shape", "choice", "how the final decay falls",
              choices=("linear", "cosine", "sqrt")),
    FieldSpec("scheduler.steps", "Steps", "json", 'list of [start, factor], e.g. [[0, 1.0], ["50%", 0.1]]',
              optional=True),
    FieldSpec("scheduler.function", "Function", "text", '"my_schedule.py:name": name(k, total_steps) -> f(k)',
              optional=True),
    FieldSpec("scheduler.phases", "Phases", "json", 'list of {"shape", "until", "to"}; the last until "100%"',
              optional=True),
)

ALL_FIELDS = {spec.key: spec for spec in (*DATA_MODEL_FIELDS, METHOD_FIELD, *LORA_FIELDS, *TRAINING_FIELDS,
                                          *OUTPUT_FIELDS, SCHEDULER_TYPE_FIELD, *SCHEDULER_FIELDS)}

PARAM_GROUP_FIELDS = {
    "name": FieldSpec("name", "Name", "text"),
    "match": FieldSpec("match", "Match", "text", "regular expression searched in parameter names"),
    "lr": FieldSpec("lr", "LR", "float"),
    "component": FieldSpec("component", "Component", "choice", "the model part whose parameter names match searches",
                           choices=GROUP_COMPONENTS),
}
# What a group's field shows when the preset leaves it out (name, match and lr are required).
PARAM_GROUP_DEFAULTS = {"component": DEFAULT_GROUP_NAME}

_WARMUP = ("scheduler.warmup", "scheduler.warmup_start_factor")
_DECAYING = ("scheduler.min_factor",)
SCHEDULER_KEYS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "constant": _WARMUP,
    "linear": _WARMUP + _DECAYING,
    "cosine": _WARMUP + _DECAYING,
    "cosine_with_restarts": _WARMUP + _DECAYING + ("scheduler.cycles",),
    "cosine_with_hard_restarts": _WARMUP + _DECAYING + ("scheduler.cycles",),
    "polynomial": _WARMUP + _DECAYING + ("scheduler.power",),
    "sine": _WARMUP + _DECAYING + ("scheduler.period",),
    "rex": _WARMUP + _DECAYING,
    "inverse_sqrt": _WARMUP + _DECAYING + ("scheduler.timescale",),
    "warmup_stable_decay": _WARMUP + _DECAYING + ("scheduler.decay", "scheduler.decay_shape"),
    "piecewise_constant": _WARMUP + ("scheduler.steps",),
    "custom": ("scheduler.function",),  # the function is the whole curve: no warmup of its own
    "sequence": ("scheduler.phases",),  # a warmup is its first phase
}
assert set(SCHEDULER_KEYS_BY_TYPE) == set(SCHEDULER_TYPES)


def active_scheduler_keys(schedule_type: str) -> tuple[str, ...]:
    """The scheduler fields `schedule_type` uses, in display order (unknown type: warmup only)."""
    used = SCHEDULER_KEYS_BY_TYPE.get(schedule_type, _WARMUP)
    return tuple(spec.key for spec in SCHEDULER_FIELDS if spec.key in used)


def parse_text(spec: FieldSpec, text: Any) -> Any:
    """The JSON value for what the user entered. Text that is not of the field's kind is passed
    through unchanged, so the validator (not this function) names the problem."""
    if spec.kind == "bool":
        return bool(text)
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if spec.optional and stripped in ("", NONE_CHOICE):
        return None
    if spec.kind == "int":
        try:
            return int(stripped)
        except ValueError:
            return stripped
    if spec.kind == "float":
        try:
            value = float(stripped)
        except ValueError:
            return stripped
        return value if math.isfinite(value) else stripped
    if spec.kind == "duration":
        return int(stripped) if stripped.isdigit() else stripped
    if spec.kind == "text" and spec.optional and not stripped:
        return None
    if spec.kind == "json":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return stripped
    return stripped if spec.kind == "choice" else text


def format_value(spec: FieldSpec, value: Any) -> Any:
    """What an entry shows for a preset value (a bool for check boxes)."""
    if spec.kind == "bool":
        return bool(value)
    if value is None:
        return NONE_CHOICE if spec.kind == "choice" else ""
    if spec.kind == "json" and not isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        # "3" rather than "3.0": the same text whether the preset file wrote 3 or 3.0.
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)
