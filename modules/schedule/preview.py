"""What a preview shows, computed from the production plan and curve.

The CLI (`scripts/preview.py`), the desktop app and the trainer's
`lr_plan.csv` all go through `build_preview`, so the preview is the
training schedule, not a copy of it. Pure NumPy: no torch, no GUI.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modules.data.captions import summarize_captions
from modules.config.preset import ADAPTIVE_OPTIMIZERS, Preset
from modules.data.concepts import resolve_concepts
from modules.data.listing import list_images
from modules.schedule.formatting import dataset_summary
from modules.families.model_types import TEXT_TO_IMAGE_TYPES
from modules.schedule.ema_decay import decay_at_update
from modules.schedule.lr_curve import LrCurve, build_lr_curve
from modules.schedule.step_plan import StepPlan, build_step_plan


@dataclass(frozen=True)
class Preview:
    preset: Preset
    plan: StepPlan
    curve: LrCurve

    @property
    def notes(self) -> list[str]:
        """What the curve cannot show (not a mistake, so not a warning)."""
        optimizer = self.preset.optimizer.type
        if optimizer in ADAPTIVE_OPTIMIZERS:
            return [f"{optimizer} multiplies this curve by its own d, learnt while training: the LR it really "
                    "applies (d x lr x f(k)) is logged as lr_effective/<group> and drawn on the app's Run tab"]
        return []

    def report_lines(self, max_listed: int = 12) -> list[str]:
        """The plan as a short readable summary (what `scripts/preview.py` prints)."""
        plan = self.plan

        def listing(steps: list[int] | tuple[int, ...]) -> str:
            if not steps:
                return "none"
            shown = ", ".join(str(step) for step in steps[:max_listed])
            return shown + (f", ... ({len(steps)} in all)" if len(steps) > max_listed else "")

        processes = f" x {plan.num_processes} processes" if plan.num_processes > 1 else ""
        drop = ", drop_last" if plan.drop_last else ""
        length = f"{plan.num_epochs} epoch{'s' * (plan.num_epochs != 1)}"
        if plan.max_steps is not None:
            length = f"max_steps; {length} touched"
        table = self.curve.effective_table()
        every = getattr(plan.checkpoint_steps, "every", None)
        checkpoint_note = f"(every {every} step{'s' * (every != 1)} and the last step)" if every else "(the last step)"
        lines = [
            plan.summary(),
            *self.dataset_lines(),
            *self.caption_lines(),
            f"  micro-batches     {plan.micro_batches_per_epoch} per epoch per process "
            f"(batch {plan.batch_size}{processes}{drop}"
            + (", one bucket each" if plan.buckets else "") + ")",
            *bucket_lines(plan, max_listed),
            f"  steps per epoch   {plan.steps_per_epoch} (accumulation {plan.gradient_accumulation_steps})",
            f"  total steps       {plan.total_steps} ({length})",
            f"  warmup steps      {plan.warmup_steps}",
            f"  schedule          {plan.schedule.type}"
            + (f" (optimizer {plan.schedule.schedule_free})" if plan.schedule.schedule_free else ""),
            f"  cycle boundaries  {listing(plan.cycle_starts)}",
            f"  checkpoints at    {listing(plan.checkpoint_steps)} {checkpoint_note}",
            *validation_lines(plan, listing),
            *ema_lines(plan),
        ]
        width = max([14, *(len(name) for name in self.curve.group_names)])  # LoRA+ names are longer
        for index, name in enumerate(self.curve.group_names):
            column = table[:, index]
            lines.append(
                f"  lr/{name:<{width}} peak {column.max():.4g}, first {column[0]:.4g}, last {column[-1]:.4g}"
            )
        lines.extend(f"note: {note}" for note in self.notes)
        if plan.warnings:
            lines.append("warnings:")
            lines.extend(f"  - {warning}" for warning in plan.warnings)
        return lines

    def dataset_lines(self) -> list[str]:
        """'images  7 x 1 repeat = 7 samples per epoch' for one folder, else the concept table."""
        plan = self.plan
        if dataset_summary(plan) == f"{plan.num_images} image{'s' * (plan.num_images != 1)} x " \
                                    f"{plan.repeats} repeat{'s' * (plan.repeats != 1)}":
            return [f"  images            {plan.num_images} x {plan.repeats} repeat{'s' * (plan.repeats != 1)} = "
                    f"{plan.samples_per_epoch} samples per epoch"]
        return concept_lines(plan)

    def caption_lines(self) -> list[str]:
        """Text-to-image models: how many images have a caption file, per concept (the plan itself
        never depends on it)."""
        if self.plan.model_type not in TEXT_TO_IMAGE_TYPES:
            return []
        data = self.preset.data
        if not data.path and not data.concepts:
            return []  # counted without a folder (num_images given): no captions to count
        if data.path and not data.concepts and not self.plan.kohya_folders:
            summary = summarize_captions(list_images(data.path), data.caption_extension)
            return [f"  captions          {summary.describe(data.default_caption)}"]
        lines = []
        for concept in resolve_concepts(data):
            settings = concept.settings
            summary = summarize_captions([Path(path) for path in concept.files], settings.caption_extension)
            described = summary.describe(settings.default_caption).replace("data.default_caption", "default_caption")
            lines.append(f"  captions          {concept.name}: {described}")
        return lines


def concept_lines(plan: StepPlan) -> list[str]:
    """Every concept: name, type, images, repeats or samples, samples per epoch, share of the epoch."""
    kohya = ", ".join(f"'{folder}'" for folder in plan.kohya_folders)
    layout = f"; kohya layout: {kohya} read as one concept per N_name subfolder (repeats N)" if kohya else ""
    lines = [f"  concepts          {len(plan.concepts)}, {plan.num_images} images -> {plan.samples_per_epoch} "
             f"samples per epoch{layout}"]
    width = max(len(row.name) for row in plan.concepts)
    width = max(width, 4)
    lines.append(f"    {'name':<{width}}  {'type':<14}  {'images':>6}  {'repeats/samples':<15}  "
                 f"{'samples/epoch':>13}  {'share':>6}  loss weight")
    for row in plan.concepts:
        share = f"{100 * row.samples_per_epoch / plan.samples_per_epoch:.1f}%" if row.type != "validation" else "-"
        per_epoch = str(row.samples_per_epoch) if row.type != "validation" else "not trained"
        held = f" (+{row.held_out} held out for validation)" if row.held_out else ""
        lines.append(f"    {row.name:<{width}}  {row.type:<14}  {row.images:>6}  {row.amount():<15}  "
                     f"{per_epoch:>13}  {share:>6}  {row.loss_weight:g}{held}")
    return lines


def validation_lines(plan: StepPlan, listing) -> list[str]:
    """'validation at 10, 20, ... (every 10 steps and the last step) over 4 images', or where images are
    held out but no validation is asked for, what is set aside (SPEC §11)."""
    images = plan.validation_images
    if not plan.validation_steps:
        return [f"  validation        none (output.validate_every is not set; {images} image"
                f"{'s' * (images != 1)} set aside)"] if images else []
    every = getattr(plan.validation_steps, "every", None)
    note = f"(every {every} step{'s' * (every != 1)} and the last step)"
    return [f"  validation at     {listing(plan.validation_steps)} {note}, over {images} image"
            f"{'s' * (images != 1)}"]


def ema_lines(plan: StepPlan) -> list[str]:
    """The EMA decay d_j (SPEC §11): where it starts, when it reaches training.ema_decay (closed form: no
    array of every update, so a 10,000,000-step plan costs nothing here)."""
    if plan.ema_decay is None:
        return []
    every, decay = plan.ema_update_every, plan.ema_decay
    updates = plan.total_steps // every
    if not updates:
        return ["  EMA               no update in this run (training.ema_update_every is longer than the run)"]
    reached = first_update_at(decay)
    when = f"reaches {decay:g} after step {reached * every}" if reached <= updates else \
        f"ends at {decay_at_update(updates, decay):.4g} (below ema_decay {decay:g}: the run is short for it)"
    return [f"  EMA               decay {decay_at_update(1, decay):.3g} at the first update, {when}; {updates} update"
            f"{'s' * (updates != 1)} (every {every} step{'s' * (every != 1)})"]


def first_update_at(decay: float) -> int:
    """The first j with d_j = min(decay, j / (9 + j)) equal to `decay`."""
    j = max(1, math.ceil(9 * decay / (1 - decay)))
    while j > 1 and decay_at_update(j - 1, decay) >= decay:
        j -= 1
    while decay_at_update(j, decay) < decay:
        j += 1
    return j


def bucket_lines(plan: StepPlan, max_listed: int = 12) -> list[str]:
    """The aspect-ratio buckets as 'WIDTHxHEIGHT x IMAGES', the fullest first (none without buckets)."""
    if not plan.buckets:
        return []
    fullest = sorted(plan.buckets, key=lambda bucket: (-bucket[2], bucket[0] / bucket[1]))
    shown = [f"{width}x{height} x {images}" for width, height, images in fullest[:max_listed]]
    more = f", ... ({len(fullest)} in all)" if len(fullest) > max_listed else ""
    return [f"  buckets           {len(plan.buckets)} (resolution x images): {', '.join(shown)}{more}"]


def build_preview(preset: Preset, num_images: int | None = None,
                  image_sizes: list[tuple[int, int]] | None = None, concepts: list | None = None) -> Preview:
    """The preview of `preset`; the counts as `build_step_plan` takes them (`concepts`: resolved by
    `modules.data.concepts.resolve_concepts`, for a caller that lists the folders itself)."""
    plan = build_step_plan(preset, num_images, image_sizes, concepts)
    return Preview(preset, plan, build_lr_curve(plan, preset.optimizer))


def envelope(values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min/max of `values` over up to `max_points` equal bins: (bin start steps, low, high).

    Long plans are drawn as this band, so a one-step restart spike in a
    million-step plan stays visible.
    """
    values = np.asarray(values, dtype=np.float64)
    count = values.shape[0]
    if count <= max_points:
        steps = np.arange(count)
        return steps, values, values
    edges = np.linspace(0, count, max_points + 1).astype(np.int64)
    starts = edges[:-1]
    return starts, np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
