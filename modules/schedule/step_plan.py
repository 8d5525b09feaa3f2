"""The step plan: the one object that says how long training is and how its LR moves.

`build_step_plan(preset)` counts the steps (`modules.schedule.accounting`: S, M, U, T, buckets),
resolves the schedule (`modules.schedule.resolve`, each shape from the registry in
`modules.schedule.shapes`), converts every other duration of the preset (checkpoint and sample
intervals, the text encoders' stop) with the same converter, decides the LR scaling
(`modules.schedule.lr_scaling`) and attaches the warnings (`modules.schedule.plan_warnings`).
Every duration of the preset is converted to optimizer steps there and nowhere else. The training
loop takes exactly T optimizer steps and the scheduler is built from this same object.

Checkpoint and sample steps are `IntervalSteps` (arithmetic, not stored lists), so
`checkpoint_every: 1` over the longest plan (MAX_TOTAL_STEPS) costs nothing. The checkpoint steps
always include the last step T: training writes a checkpoint there; `checkpoint_every: null` means
no periodic checkpoints, only that final one. The identity a resume must share is
`modules.schedule.identity`; the summary line is `modules.schedule.formatting`.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from modules.config.preset import DEFAULT_GROUP_NAME, Preset, lora_plus_ratio
from modules.errors import ConfigError
from modules.data.checks import check_dataset
from modules.families.model_types import lora_init_identity, resolve_model_type, text_encoder_groups
from modules.schedule.accounting import (  # noqa: F401 - re-exported: callers import them from here
    MAX_TOTAL_STEPS,
    IntervalSteps,
    StepCounts,
    count_steps,
)
from modules.data.concepts import ConceptRow, count_only, resolve_concepts, with_sizes
from modules.schedule.formatting import format_lr, plan_summary  # noqa: F401 - format_lr re-exported
from modules.schedule.identity import describe_changes, fingerprint, plan_identity  # noqa: F401
from modules.schedule.lr_scaling import lr_scaling
from modules.schedule.plan_warnings import plan_warnings
from modules.schedule.resolve import resolve_schedule
from modules.schedule.shapes import ResolvedSchedule, cycle_starts
from modules.schedule.shapes.inverse_sqrt import TRANSFORMERS_DEFAULT_TIMESCALE  # noqa: F401


@dataclass(frozen=True)
class StepPlan:
    num_images: int
    repeats: int
    batch_size: int
    gradient_accumulation_steps: int
    num_processes: int
    drop_last: bool
    requested_epochs: int | None
    max_steps: int | None
    samples_per_epoch: int
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    schedule: ResolvedSchedule
    checkpoint_steps: Sequence[int] = ()  # IntervalSteps: every checkpoint_every, and always the last step
    sample_steps: Sequence[int] = ()
    warnings: tuple[str, ...] = field(default=())
    model_type: str = "unet"                       # modules.families.model_types: the family this plan trains
    text_encoder_groups: tuple[str, ...] = ()      # the text-encoder param groups that train (SPEC §7)
    text_encoder_stop_steps: int | None = None     # from this optimizer step on they train at LR 0
    lora_plus_ratio: float | None = None          # LoRA+ (SPEC §13): groups <g>_B at this x g's LR; None: off
    lr_scale: float = 1.0  # every group's base LR is multiplied by this (optimizer.lr_scaling)
    lr_scale_note: str = ""  # how: "lr 1e-4 x sqrt(8) = 2.83e-4 (batch 2 x accumulation 4)"; "" when unscaled
    buckets: tuple[tuple[int, int, int], ...] = ()  # (width, height, images) of each used bucket; () without
    lora_init_weights: dict | None = None  # {"path", "sha256"} of lora.init_weights (SPEC §12); None without
    concepts: tuple[ConceptRow, ...] = ()  # every concept (validation ones too), in preset order
    validation_steps: Sequence[int] = ()   # IntervalSteps: every output.validate_every and the last step; () never
    ema_decay: float | None = None         # training.ema_decay when training.ema is on (SPEC §11), else None
    ema_update_every: int = 1              # training.ema_update_every

    @property
    def validation_images(self) -> int:
        """Images the validation loss is taken over: every validation concept's and every held-out one."""
        return validation_image_count(self.concepts)

    def ema_decays(self):
        """(steps k, 0-based, after which the EMA is updated; d_j of those updates) (`modules.schedule.ema_decay`)."""
        from modules.schedule.ema_decay import ema_decays

        return ema_decays(self.total_steps, self.ema_decay, self.ema_update_every)

    # --- derived views ---------------------------------------------------------

    @property
    def num_epochs(self) -> int:
        """Epochs the run touches: ceil(T / U)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def warmup_steps(self) -> int:
        return self.schedule.warmup_steps

    @property
    def epoch_starts(self) -> range:
        """The optimizer step at which each epoch begins (0, U, 2U, ...)."""
        return range(0, self.total_steps, self.steps_per_epoch)

    @property
    def cycle_starts(self) -> list[int]:
        return cycle_starts(self.schedule)

    @property
    def kohya_folders(self) -> tuple[str, ...]:
        """The folders read with the kohya layout (N_name subfolders), in order."""
        return tuple(dict.fromkeys(row.kohya_folder for row in self.concepts if row.kohya_folder))

    @property
    def samples_per_micro_batch(self) -> int:
        """Samples one micro-batch holds across all processes: B * W."""
        return self.batch_size * self.num_processes

    def position(self, global_step: int) -> tuple[int, int]:
        """(epoch, step within that epoch) of optimizer step `global_step` (0-based)."""
        return divmod(global_step, self.steps_per_epoch)

    def micro_batch_window(self, step_in_epoch: int) -> range:
        """Indices of the micro-batches (per process, within the epoch) that form one optimizer step."""
        first = step_in_epoch * self.gradient_accumulation_steps
        return range(first, min(first + self.gradient_accumulation_steps, self.micro_batches_per_epoch))

    def identity(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoint (JSON-ready)."""
        return plan_identity(self)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity())

    def summary(self) -> str:
        """One line: '7 images x 1 repeat, batch 1, accumulation 2 -> 4 steps/epoch x 3 epochs = 12 steps, warmup 0'."""
        return plan_summary(self)


def build_step_plan(preset: Preset, num_images: int | None = None,
                    image_sizes: list[tuple[int, int]] | None = None, concepts: list | None = None) -> StepPlan:
    """The plan for `preset`. Lists the concepts' folders (`modules.data.concepts.resolve_concepts`)
    and runs the dataset checks, unless the caller measured the dataset itself: `concepts` (resolved,
    as the app's counter gives them), or for the one concept of `data.path`, `num_images` (or, with
    buckets, `image_sizes`: (width, height) of every image in listing order). A count that cannot
    describe the dataset (several concepts, a kohya folder) is set aside and the folders are listed."""
    data, training = preset.data, preset.training
    dataset_warnings: list[str] = []
    if concepts is None and (num_images is not None or image_sizes is not None):
        concepts = count_only(data, num_images, image_sizes)
    if concepts is None:
        concepts = resolve_concepts(data, read_sizes=True)  # every header: the check training makes
        dataset_warnings = check_dataset(preset, concepts)
    elif data.buckets:
        concepts = [with_sizes(concept) if concept.trains and concept.files else concept for concept in concepts]
    counts = count_steps(preset, list(concepts))
    plan = StepPlan(
        num_images=counts.num_images,
        repeats=data.repeats,
        batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        num_processes=training.num_processes,
        drop_last=data.drop_last,
        requested_epochs=training.epochs,
        max_steps=training.max_steps,
        samples_per_epoch=counts.samples_per_epoch,
        micro_batches_per_epoch=counts.micro_batches_per_epoch,
        steps_per_epoch=counts.steps_per_epoch,
        total_steps=counts.total_steps,
        schedule=resolve_schedule(preset, counts),
        buckets=counts.buckets,
        concepts=counts.concepts,
        **_plan_extras(preset, counts),
    )
    return replace(plan, warnings=tuple(dataset_warnings) + tuple(plan_warnings(plan, preset)))


def _plan_extras(preset: Preset, counts: StepCounts) -> dict:
    """Checkpoint and sample steps, the text encoders and their stop step, the LR scaling."""
    training, output = preset.training, preset.output
    lr_scale, lr_scale_note = lr_scaling(preset, training.batch_size, training.num_processes,
                                         training.gradient_accumulation_steps)
    model_type = resolve_model_type(preset.model)
    stop_after = preset.optimizer.text_encoder_stop_after
    encoders = text_encoder_groups(preset, model_type)
    check_group_components(preset, model_type, encoders)
    return {
        "checkpoint_steps": counts.interval_steps(output.checkpoint_every, "output.checkpoint_every", final=True),
        "sample_steps": counts.interval_steps(output.sample_every, "output.sample_every"),
        "validation_steps": validation_steps(preset, counts),
        "ema_decay": training.ema_decay if training.ema else None,
        "ema_update_every": training.ema_update_every,
        "model_type": model_type,
        "text_encoder_groups": encoders,
        "lora_plus_ratio": lora_plus_ratio(preset),
        "text_encoder_stop_steps": (None if stop_after is None
                                    else counts.to_steps(stop_after, "optimizer.text_encoder_stop_after")),
        "lr_scale": lr_scale,
        "lr_scale_note": lr_scale_note,
        "lora_init_weights": lora_init_identity(preset),
    }


def validation_image_count(rows) -> int:
    """Every validation concept's images and every image held out of a train concept (ConceptRows)."""
    return sum(row.images if row.type == "validation" else row.held_out for row in rows)


def validation_steps(preset: Preset, counts: StepCounts):
    """Every output.validate_every and the last step; () when it is not set. ConfigError when it is set but
    no image is held out for validation."""
    every = preset.output.validate_every
    if every is None:
        return ()
    if validation_image_count(counts.concepts) == 0:
        raise ConfigError("is set, but there is no validation image: add a concept of type 'validation' or set "
                          "data.validation_split", "output.validate_every")
    return counts.interval_steps(every, "output.validate_every", final=True)


def check_group_components(preset: Preset, model_type: str, encoders: tuple[str, ...]) -> None:
    """ConfigError for a named group whose `component` this model does not train (SPEC §13)."""
    for index, group in enumerate(preset.optimizer.param_groups):
        if group.component != DEFAULT_GROUP_NAME and group.component not in encoders:
            has = ", ".join((DEFAULT_GROUP_NAME, *encoders))
            raise ConfigError(f"'{group.component}' is not a part of this {model_type} model that trains "
                              f"(it trains: {has})", f"optimizer.param_groups.{index}.component")
