"""What a careful user wants to know about a plan before training (the plan's `warnings`).

The step accounting's warnings (partial accumulation windows, skipped or repeated samples, buckets,
max_steps), then the schedule's: the generic ones here, the shape's own from the shape
(`Shape.warnings`) and the schedule-free optimizer's from its curve (`ScheduleFreeCurve.warnings`).
"""

from modules.schedule.formatting import plural
from modules.schedule.shapes import SCHEDULE_FREE, SHAPES


def plan_warnings(plan, preset) -> list[str]:
    """Every warning of `plan` (a StepPlan built from `preset`), in the order the preview lists them."""
    schedule = plan.schedule
    warnings = accounting_warnings(plan)
    if schedule.warmup_steps * 2 > plan.total_steps:
        warnings.append(f"warmup ({schedule.warmup_steps} steps) is over half the run ({plan.total_steps} steps)")
    warnings.extend(SHAPES[schedule.type].warnings(schedule))
    if schedule.schedule_free in SCHEDULE_FREE:
        warnings.extend(SCHEDULE_FREE[schedule.schedule_free].warnings(schedule))
    if plan.text_encoder_stop_steps is not None and plan.text_encoder_stop_steps >= plan.total_steps:
        warnings.append(f"optimizer.text_encoder_stop_after ({plan.text_encoder_stop_steps} steps) is not before "
                        f"the end of the run ({plan.total_steps} steps): the text encoders train throughout")
    training = preset.training
    if training.max_steps is not None and "epochs" in training.model_fields_set and training.epochs is not None:
        warnings.append(f"training.max_steps ({plan.max_steps}) overrides training.epochs ({training.epochs})")
    return warnings


def accounting_warnings(plan) -> list[str]:
    """Partial accumulation windows, samples skipped or repeated, buckets, a max_steps mid-epoch."""
    warnings = []
    remainder = plan.micro_batches_per_epoch % plan.gradient_accumulation_steps
    if remainder:
        warnings.append(
            f"the last optimizer step of each epoch holds {remainder} of "
            f"{plan.gradient_accumulation_steps} micro-batches (its loss is averaged over {remainder})"
        )
    per_step = plan.samples_per_micro_batch
    if plan.buckets:
        warnings.extend(bucket_warnings(plan))
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
    return warnings


def bucket_warnings(plan) -> list[str]:
    """Buckets smaller than one micro-batch, and what each epoch repeats or skips."""
    per_step = plan.samples_per_micro_batch
    warnings = []
    batch = f"one batch ({plan.batch_size}" + (f" x {plan.num_processes} processes" if plan.num_processes > 1
                                              else "") + ")"
    for width, height, images in plan.buckets:
        samples = images * plan.repeats
        if samples < per_step:
            fate = "skipped every epoch (drop_last)" if plan.drop_last else "its micro-batch repeats samples"
            warnings.append(f"bucket {width}x{height} holds {plural(samples, 'sample')}, "
                            f"fewer than {batch}: {fate}")
    short = sum((images * plan.repeats) % per_step for _, _, images in plan.buckets)
    if plan.drop_last and short:
        warnings.append(f"drop_last skips {short} of {plan.samples_per_epoch} samples each epoch "
                        "(the last, short micro-batch of each bucket)")
    elif short:
        filled = sum(-(images * plan.repeats) % per_step for _, _, images in plan.buckets)
        verb = "fills" if filled == 1 else "fill"
        warnings.append(f"{plural(filled, 'repeated sample')} {verb} the last micro-batch of buckets "
                        "that do not divide into whole micro-batches")
    return warnings
