"""The step plan: the one place where training time is counted.

Inputs (SPEC §1): N images (from `modules.data.listing.list_images`, the
same files the data loader reads), repeats r, per-process batch size B,
gradient accumulation A, processes W, drop_last, and epochs E or max_steps.

    samples per epoch            S = N * r
    micro-batches per process    M = ceil(S / (B * W))   (floor with drop_last; M == 0 is an error)
    optimizer steps per epoch    U = ceil(M / A)          (the last window of an epoch may be partial)
    total optimizer steps        T = E * U, or T = max_steps when it is set

Every duration of the preset (warmup, period, timescale, decay, piecewise
boundaries, sequence phase ends, checkpoint and sample intervals) is converted to optimizer
steps here and nowhere else. The training loop takes exactly T optimizer
steps and the scheduler is built from this same object.

A plan holds at most MAX_TOTAL_STEPS optimizer steps: a longer length is a
ConfigError naming the key that set it (training.epochs or
training.max_steps), raised before anything of that size is allocated.
Checkpoint and sample steps are `IntervalSteps` (arithmetic, not stored
lists), so `checkpoint_every: 1` over the longest plan costs nothing. The
checkpoint steps always include the last step T: training writes a
checkpoint there; `checkpoint_every: null` means no periodic checkpoints,
only that final one.
LR scaling (SPEC §9) is decided here too: `lr_scale` is n or sqrt(n) for
n = B*W*A (global_batch), B*W (batch) or A (accumulation), and every
group's base LR is multiplied by it once, in `modules.schedule.lr_curve`.
"""

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from modules.data.buckets import assign_buckets, bucket_resolutions, micro_batches_per_bucket
from modules.config.preset import DEFAULT_GROUP_NAME, SCHEDULE_FREE_OPTIMIZERS, Preset
from modules.config.durations import parse_duration
from modules.data.checks import check_dataset
from modules.errors import ConfigError
from modules.data.listing import list_image_files
from modules.data.sizes import image_sizes as read_image_sizes
from modules.families.model_types import resolve_model_type, text_encoder_groups
from modules.schedule.shapes import ResolvedSchedule, cycle_starts, register_custom_values

TRANSFORMERS_DEFAULT_TIMESCALE = 10_000
MAX_TOTAL_STEPS = 10_000_000
"""The longest plan, in optimizer steps: a million-step curve takes 10-20 ms, this one ten times that."""


class IntervalSteps(Sequence):
    """every, 2 * every, ... up to total (none when every is None), then total itself when `final` is set.

    Arithmetic, not a stored list: membership, length and indexing take constant time however
    long the plan. Compares equal to a tuple or list of the same steps.
    """

    def __init__(self, every: int | None, total: int, final: bool = False):
        self.every, self.total, self.final = every, total, final
        self._periodic = range(every, total + 1, every) if every else range(0)
        self._extra = 1 if final and total not in self._periodic else 0

    def __len__(self) -> int:
        return len(self._periodic) + self._extra

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("step index out of range")
        return self._periodic[index] if index < len(self._periodic) else self.total

    def __contains__(self, step) -> bool:
        return step in self._periodic or (self._extra == 1 and step == self.total)

    def __eq__(self, other) -> bool:
        if isinstance(other, IntervalSteps):
            return list(self._key()) == list(other._key())
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (self._periodic.start, self._periodic.stop, self._periodic.step, self._extra, self.total)

    def __repr__(self) -> str:
        shown = ", ".join(map(str, self[:6]))
        return f"IntervalSteps({shown}{', ...' if len(self) > 6 else ''}; {len(self)} steps)"


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
    lr_scale: float = 1.0  # every group's base LR is multiplied by this (optimizer.lr_scaling)
    lr_scale_note: str = ""  # how: "lr 1e-4 x sqrt(8) = 2.83e-4 (batch 2 x accumulation 4)"; "" when unscaled
    buckets: tuple[tuple[int, int, int], ...] = ()  # (width, height, images) of each used bucket; () without

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
        """What a resumed run must share with the run that wrote the checkpoint.

        JSON-ready (lists, not tuples), so a stored identity compares equal to a fresh one.
        """
        return json.loads(json.dumps(self._identity_fields()))

    def _identity_fields(self) -> dict:
        buckets = {"buckets": [list(bucket) for bucket in self.buckets]} if self.buckets else {}
        return {
            **buckets,
            "images": self.num_images,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_processes": self.num_processes,
            "drop_last": self.drop_last,
            "epochs": self.requested_epochs if self.max_steps is None else None,
            "max_steps": self.max_steps,
            "total_steps": self.total_steps,
            # Only when set, so plans without text-encoder training keep the identity they always had.
            **({"text_encoder_stop_steps": self.text_encoder_stop_steps}
               if self.text_encoder_stop_steps is not None else {}),
            "schedule": _schedule_identity(self.schedule),
        }

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        """One line: '7 images x 1 repeat, batch 1, accumulation 2 -> 4 steps/epoch x 3 epochs = 12 steps, warmup 0'."""
        processes = f" x {self.num_processes} processes" if self.num_processes > 1 else ""
        length = (
            f"{self.steps_per_epoch} steps/epoch x {self.num_epochs} epoch{'s' * (self.num_epochs != 1)}"
            if self.max_steps is None
            else f"{self.steps_per_epoch} steps/epoch, max_steps"
        )
        in_buckets = f" in {len(self.buckets)} bucket{'s' * (len(self.buckets) != 1)}" if self.buckets else ""
        return (
            f"{self.num_images} image{'s' * (self.num_images != 1)}{in_buckets} x {self.repeats} "
            f"repeat{'s' * (self.repeats != 1)}, batch {self.batch_size}{processes}, "
            f"accumulation {self.gradient_accumulation_steps} -> {length} = {self.total_steps} steps, "
            f"warmup {self.warmup_steps}" + (f", {self.lr_scale_note}" if self.lr_scale_note else "")
        )


# Schedule fields added after plans were first stored in checkpoints: left out of the identity
# while empty, so a checkpoint written before they existed still resumes.
_LATER_SCHEDULE_FIELDS = ("function", "function_sha256", "phases")


def _schedule_identity(schedule: ResolvedSchedule) -> dict:
    fields = asdict(schedule)
    for name in _LATER_SCHEDULE_FIELDS:
        if not fields[name]:
            del fields[name]
    return fields


def format_lr(value: float) -> str:
    """'1e-4', '2.83e-4', '0.5': three significant digits, short exponents."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def lr_scaling(preset: Preset, batch: int, processes: int, accumulation: int) -> tuple[float, str]:
    """(factor, note) of optimizer.lr_scaling / lr_scaling_by; (1.0, "") for none."""
    optimizer = preset.optimizer
    if optimizer.lr_scaling == "none":
        return 1.0, ""
    parts = [f"batch {batch}"] + ([f"{processes} processes"] if processes > 1 else [])
    if optimizer.lr_scaling_by == "global_batch":
        n, parts = batch * processes * accumulation, parts + [f"accumulation {accumulation}"]
    elif optimizer.lr_scaling_by == "batch":
        n = batch * processes
    else:
        n, parts = accumulation, [f"accumulation {accumulation}"]
    factor = math.sqrt(n) if optimizer.lr_scaling == "sqrt" else float(n)
    shown = f"sqrt({n})" if optimizer.lr_scaling == "sqrt" else f"{n}"
    note = f"lr {format_lr(optimizer.lr)} x {shown} = {format_lr(optimizer.lr * factor)} ({' x '.join(parts)})"
    return factor, note


def _resolve_phases(preset: Preset, steps, total: int) -> tuple[tuple[str, int, float, float], ...]:
    """scheduler.phases -> (shape, end step, from, to), every `until` converted to steps of this plan."""
    resolved = []
    previous_end, previous_factor = 0, 1.0
    phases = preset.scheduler.phases
    for index, phase in enumerate(phases):
        key = f"scheduler.phases.{index}"
        end = steps(phase.until, f"{key}.until")
        if end <= previous_end:
            raise ConfigError(
                f"{phase.until!r} is {end} steps in this plan, not after the previous phase's end ({previous_end} "
                f"steps): every phase must end later than the one before", f"{key}.until")
        if end > total:
            raise ConfigError(f"{phase.until!r} is {end} steps, past the end of the run ({total} steps)",
                              f"{key}.until")
        start_factor = previous_factor if phase.start is None else phase.start
        end_factor = start_factor if phase.to is None else phase.to
        if phase.shape == "constant" and end_factor != start_factor:
            raise ConfigError(
                f"a constant phase holds its 'from' ({start_factor:g}); 'to' {end_factor:g} would be a jump "
                "at its end (give the next phase 'from' instead)", f"{key}.to")
        resolved.append((phase.shape, end, float(start_factor), float(end_factor)))
        previous_end, previous_factor = end, end_factor
    if previous_end != total:
        raise ConfigError(
            f"the last phase ends at {phases[-1].until!r} = {previous_end} steps, but the run is {total} steps: "
            'the last phase must end with the run ("100%")', f"scheduler.phases.{len(phases) - 1}.until")
    return tuple(resolved)


def describe_changes(old_identity: dict, new_identity: dict) -> list[str]:
    """Human-readable differences between two plan identities, one per changed field.

    Identities may carry "learning_rates" (group -> base LR, `LrCurve.identity`): a changed LR is a
    plan change like any other.
    """
    changes = []
    for key in sorted(set(old_identity) | set(new_identity)):
        old, new = old_identity.get(key), new_identity.get(key)
        if key == "learning_rates":
            if isinstance(old, dict) and isinstance(new, dict):  # checkpoints older than this field lack it
                for name in [*old, *(name for name in new if name not in old)]:
                    if old.get(name) != new.get(name):
                        label = "optimizer.lr" if name == DEFAULT_GROUP_NAME else f"lr of group '{name}'"
                        changes.append(f"{label}: {old.get(name)!r} -> {new.get(name)!r}")
        elif key == "schedule" and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    changes.append(f"scheduler {name}: {old.get(name)!r} -> {new.get(name)!r}")
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def count_images(preset: Preset) -> int:
    if not preset.data.path:
        raise ConfigError("is not set: choose the folder of training images", "data.path")
    return len(list_image_files(preset.data.path))


def dataset_image_sizes(preset: Preset) -> list[tuple[int, int]]:
    """(width, height) of every image of the dataset, in listing order, from the file headers."""
    if not preset.data.path:
        raise ConfigError("is not set: choose the folder of training images", "data.path")
    return read_image_sizes(preset.data.path, [path for _, path in list_image_files(preset.data.path)])


def count_buckets(preset: Preset, image_sizes: list[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """(width, height, images) of every bucket that holds images, in bucket order."""
    data = preset.data
    resolutions = bucket_resolutions(preset.model.resolution, data.bucket_step, data.bucket_max_aspect)
    counts = [int(count) for count in
              np.bincount(assign_buckets(image_sizes, resolutions), minlength=len(resolutions))]
    return tuple((width, height, count) for (width, height), count in zip(resolutions, counts) if count)


def build_step_plan(preset: Preset, num_images: int | None = None,
                    image_sizes: list[tuple[int, int]] | None = None) -> StepPlan:
    """The plan for `preset`. Counts the dataset folder unless `num_images` (or, with buckets,
    `image_sizes`: (width, height) of every image in listing order) is given."""
    data, training, scheduler = preset.data, preset.training, preset.scheduler
    dataset_warnings = check_dataset(preset) if num_images is None and image_sizes is None else []
    if data.buckets and image_sizes is None:
        image_sizes = dataset_image_sizes(preset)
    if image_sizes is not None:
        num_images = len(image_sizes)
    if num_images is None:
        num_images = count_images(preset)
    if num_images < 1:
        raise ConfigError("the dataset holds no images", "data.path")
    batch, processes, accumulation = training.batch_size, training.num_processes, training.gradient_accumulation_steps

    samples = num_images * data.repeats
    per_step = batch * processes
    buckets = count_buckets(preset, image_sizes) if data.buckets else ()
    if buckets:
        micro_batches = sum(micro_batches_per_bucket([images * data.repeats for _, _, images in buckets],
                                                     per_step, data.drop_last))
    else:
        micro_batches = samples // per_step if data.drop_last else math.ceil(samples / per_step)
    if micro_batches == 0:
        short = "every bucket holds fewer samples than" if buckets else f"{samples} samples per epoch <"
        raise ConfigError(
            f"drop_last leaves no batch: {short} batch {batch} x {processes} processes",
            "data.drop_last",
        )
    steps_per_epoch = math.ceil(micro_batches / accumulation)
    total = training.max_steps if training.max_steps is not None else training.epochs * steps_per_epoch
    if total > MAX_TOTAL_STEPS:
        if training.max_steps is not None:
            raise ConfigError(f"{total} steps is more than the {MAX_TOTAL_STEPS:,} optimizer steps a plan may hold",
                              "training.max_steps")
        raise ConfigError(
            f"{training.epochs} epochs x {steps_per_epoch} steps/epoch = {total} steps is more than the "
            f"{MAX_TOTAL_STEPS:,} optimizer steps a plan may hold", "training.epochs")

    def steps(value, key: str) -> int:
        return parse_duration(value, key).to_steps(steps_per_epoch, total)

    warmup = steps(scheduler.warmup, "scheduler.warmup")
    if warmup >= total:
        raise ConfigError(
            f"warmup of {warmup} steps must be shorter than the run ({total} steps)", "scheduler.warmup"
        )

    period = 0
    if scheduler.type == "sine":
        period = steps(scheduler.period, "scheduler.period")
        if period < 2:
            raise ConfigError(f"must be at least 2 steps, got {period} ({scheduler.period!r})", "scheduler.period")

    timescale = 0
    if scheduler.type == "inverse_sqrt":
        if scheduler.timescale is not None:
            timescale = steps(scheduler.timescale, "scheduler.timescale")
            if timescale < 1:
                raise ConfigError(f"must be at least 1 step, got {timescale}", "scheduler.timescale")
        else:
            timescale = warmup or TRANSFORMERS_DEFAULT_TIMESCALE

    decay = 0
    if scheduler.type == "warmup_stable_decay":
        decay = steps(scheduler.decay, "scheduler.decay")
        if decay > total - warmup:
            raise ConfigError(
                f"decay of {decay} steps is longer than the {total - warmup} steps after warmup",
                "scheduler.decay",
            )

    piecewise: tuple[tuple[int, float], ...] = ()
    if scheduler.type == "piecewise_constant":
        resolved = [(steps(boundary, "scheduler.steps"), value) for boundary, value in scheduler.steps]
        for (previous, _), (boundary, _) in zip(resolved, resolved[1:]):
            if boundary <= previous:
                raise ConfigError(
                    f"boundaries must increase; {boundary} steps follows {previous} steps "
                    f"(after converting to steps of this plan)",
                    "scheduler.steps",
                )
        piecewise = tuple(resolved)

    phases = _resolve_phases(preset, steps, total) if scheduler.type == "sequence" else ()
    function, function_sha256 = "", ""
    if scheduler.type == "custom":
        from modules.schedule.custom import source_digest

        function, function_sha256 = scheduler.function, source_digest(scheduler.function)

    schedule_free = preset.optimizer.type if preset.optimizer.type in SCHEDULE_FREE_OPTIMIZERS else None
    schedule = ResolvedSchedule(
        type=scheduler.type,
        total_steps=total,
        warmup_steps=warmup,
        warmup_start_factor=scheduler.warmup_start_factor,
        min_factor=scheduler.min_factor,
        cycles=float(scheduler.cycles),
        power=float(scheduler.power),
        period_steps=period,
        timescale_steps=timescale,
        decay_steps=decay,
        decay_shape=scheduler.decay_shape,
        piecewise=piecewise,
        schedule_free=schedule_free,
        beta2=float(preset.optimizer.betas[1]),
        function=function,
        function_sha256=function_sha256,
        phases=phases,
    )
    lr_scale, lr_scale_note = lr_scaling(preset, batch, processes, accumulation)

    def interval_steps(value, key: str, final: bool = False) -> IntervalSteps:
        if value is None:
            return IntervalSteps(None, total, final)
        every = steps(value, key)
        if every < 1:
            raise ConfigError(f"must be at least 1 step, got {every} ({value!r})", key)
        return IntervalSteps(every, total, final)

    model_type = resolve_model_type(preset.model)
    encoder_groups = text_encoder_groups(preset, model_type)
    text_encoder_stop = None
    if preset.optimizer.text_encoder_stop_after is not None:
        text_encoder_stop = steps(preset.optimizer.text_encoder_stop_after, "optimizer.text_encoder_stop_after")

    plan = StepPlan(
        num_images=num_images,
        repeats=data.repeats,
        batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_processes=processes,
        drop_last=data.drop_last,
        requested_epochs=training.epochs,
        max_steps=training.max_steps,
        samples_per_epoch=samples,
        micro_batches_per_epoch=micro_batches,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        schedule=schedule,
        checkpoint_steps=interval_steps(preset.output.checkpoint_every, "output.checkpoint_every", final=True),
        sample_steps=interval_steps(preset.output.sample_every, "output.sample_every"),
        model_type=model_type,
        text_encoder_groups=encoder_groups,
        text_encoder_stop_steps=text_encoder_stop,
        lr_scale=lr_scale,
        lr_scale_note=lr_scale_note,
        buckets=buckets,
    )
    plan = _with_warnings(plan, preset)
    return replace(plan, warnings=tuple(dataset_warnings) + plan.warnings) if dataset_warnings else plan


def _with_warnings(plan: StepPlan, preset: Preset) -> StepPlan:
    """Attach what a careful user wants to know before training."""
    warnings = []
    schedule = plan.schedule
    remainder = plan.micro_batches_per_epoch % plan.gradient_accumulation_steps
    if remainder:
        warnings.append(
            f"the last optimizer step of each epoch holds {remainder} of "
            f"{plan.gradient_accumulation_steps} micro-batches (its loss is averaged over {remainder})"
        )
    per_step = plan.samples_per_micro_batch
    if plan.buckets:
        warnings.extend(_bucket_warnings(plan))
    elif plan.drop_last and plan.samples_per_epoch % per_step:
        warnings.append(
            f"drop_last skips {plan.samples_per_epoch % per_step} of {plan.samples_per_epoch} samples each epoch"
        )
    elif plan.num_processes > 1 and plan.samples_per_epoch % per_step:
        warnings.append(
            f"{plan.samples_per_epoch} samples do not split evenly over batch {plan.batch_size} x "
            f"{plan.num_processes} processes: the last micro-batch of each epoch is filled with repeated samples"
        )
    if plan.max_steps is not None and plan.total_steps % plan.steps_per_epoch:
        warnings.append(
            f"max_steps {plan.max_steps} ends partway through epoch {plan.num_epochs} "
            f"({plan.total_steps % plan.steps_per_epoch} of {plan.steps_per_epoch} steps)"
        )
    if schedule.warmup_steps * 2 > plan.total_steps:
        warnings.append(f"warmup ({schedule.warmup_steps} steps) is over half the run ({plan.total_steps} steps)")
    decay_steps = max(1, plan.total_steps - schedule.warmup_steps)
    if schedule.type in ("cosine_with_restarts", "cosine_with_hard_restarts") and decay_steps / schedule.cycles < 2:
        warnings.append(
            f"{schedule.cycles:g} cycles over {decay_steps} steps leaves fewer than 2 steps per cycle"
        )
    if schedule.type == "sine":
        if schedule.period_steps > plan.total_steps - schedule.warmup_steps:
            warnings.append(
                f"the sine period ({schedule.period_steps} steps) is longer than the run after warmup "
                f"({plan.total_steps - schedule.warmup_steps} steps): not one full wave"
            )
        if schedule.period_steps % 2:
            warnings.append(
                f"the sine period ({schedule.period_steps} steps) is odd: the floor (min_factor) falls between two steps"
            )
    if schedule.type == "piecewise_constant":
        beyond = [(boundary, value) for boundary, value in schedule.piecewise if boundary >= plan.total_steps]
        if beyond:
            boundary, value = beyond[0]
            warnings.append(
                f"scheduler.steps: the boundary at step {boundary} (multiplier {value:g}) is at or past the end of "
                f"the run ({plan.total_steps} steps): "
                + ("it never takes effect" if len(beyond) == 1 else f"it and {len(beyond) - 1} more never take effect"))
    if schedule.min_factor > 0 and schedule.type in ("constant", "piecewise_constant"):
        warnings.append(f"min_factor has no effect with the {schedule.type} schedule")
    if plan.schedule.schedule_free and schedule.min_factor > 0:
        warnings.append("min_factor has no effect with a schedule-free optimizer")
    if plan.text_encoder_stop_steps is not None and plan.text_encoder_stop_steps >= plan.total_steps:
        warnings.append(f"optimizer.text_encoder_stop_after ({plan.text_encoder_stop_steps} steps) is not before "
                        f"the end of the run ({plan.total_steps} steps): the text encoders train throughout")
    if schedule.type == "custom":
        from modules.schedule.custom import multipliers

        # The one evaluation of the function (checked, cached): a bad function fails here, before training.
        values = multipliers(schedule.function, schedule.function_sha256, plan.total_steps)
        register_custom_values(schedule, values)
        peak = float(values.max())
        if peak > 1:
            warnings.append(f"the custom schedule {schedule.function!r} rises to {peak:g} x the base LR (above 1)")
    if schedule.type == "sequence":
        peak = max(max(start, end) for _, _, start, end in schedule.phases)
        if peak > 1:
            warnings.append(f"the sequence rises to {peak:g} x the base LR (above 1)")
    if (
        preset.training.max_steps is not None
        and "epochs" in preset.training.model_fields_set
        and preset.training.epochs is not None
    ):
        warnings.append(f"training.max_steps ({plan.max_steps}) overrides training.epochs ({preset.training.epochs})")
    return StepPlan(**{**plan.__dict__, "warnings": tuple(warnings)})


def _bucket_warnings(plan: StepPlan) -> list[str]:
    """Buckets smaller than one micro-batch, and what each epoch repeats or skips."""
    per_step = plan.samples_per_micro_batch
    warnings = []
    batch = f"one batch ({plan.batch_size}" + (f" x {plan.num_processes} processes" if plan.num_processes > 1
                                              else "") + ")"
    for width, height, images in plan.buckets:
        samples = images * plan.repeats
        if samples < per_step:
            fate = "skipped every epoch (drop_last)" if plan.drop_last else "its micro-batch repeats samples"
            warnings.append(f"bucket {width}x{height} holds {samples} sample{'s' * (samples != 1)}, "
                            f"fewer than {batch}: {fate}")
    short = sum((images * plan.repeats) % per_step for _, _, images in plan.buckets)
    if plan.drop_last and short:
        warnings.append(f"drop_last skips {short} of {plan.samples_per_epoch} samples each epoch "
                        "(the last, short micro-batch of each bucket)")
    elif short:
        filled = sum(-(images * plan.repeats) % per_step for _, _, images in plan.buckets)
        warnings.append(f"{filled} repeated sample{'s' * (filled != 1)} fill the last micro-batch of buckets "
                        "that do not divide into whole micro-batches")
    return warnings
