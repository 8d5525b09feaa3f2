"""How a plan and a learning rate read: the one-line plan summary and `format_lr`."""


def format_lr(value: float) -> str:
    """'1e-4', '2.83e-4', '0.5': three significant digits, short exponents."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def plural(count: int, word: str) -> str:
    """'1 image', '3 images'."""
    return f"{count} {word}{'s' * (count != 1)}"


def plan_summary(plan) -> str:
    """One line: '7 images x 1 repeat, batch 1, accumulation 2 -> 4 steps/epoch x 3 epochs = 12 steps, warmup 0'."""
    processes = f" x {plan.num_processes} processes" if plan.num_processes > 1 else ""
    length = (
        f"{plan.steps_per_epoch} steps/epoch x {plural(plan.num_epochs, 'epoch')}"
        if plan.max_steps is None
        else f"{plan.steps_per_epoch} steps/epoch, max_steps"
    )
    in_buckets = f" in {plural(len(plan.buckets), 'bucket')}" if plan.buckets else ""
    return (
        f"{dataset_summary(plan, in_buckets)}, "
        f"batch {plan.batch_size}{processes}, "
        f"accumulation {plan.gradient_accumulation_steps} -> {length} = {plan.total_steps} steps, "
        f"warmup {plan.warmup_steps}" + (f", {plan.lr_scale_note}" if plan.lr_scale_note else "")
    )


def dataset_summary(plan, in_buckets: str = "") -> str:
    """'7 images x 1 repeat' for one folder; '3 concepts (kohya layout of 'train'), 120 images -> 900
    samples/epoch' for several."""
    rows = [row for row in plan.concepts if row.type != "validation"]
    if len(rows) <= 1 and not plan.kohya_folders and (not rows or rows[0].key == "data.path"):
        return f"{plural(plan.num_images, 'image')}{in_buckets} x {plural(plan.repeats, 'repeat')}"
    kohya = ", ".join(f"'{folder}'" for folder in plan.kohya_folders)
    layout = f" (kohya layout of {kohya})" if kohya else ""
    return (f"{plural(len(rows), 'concept')}{layout}, {plural(plan.num_images, 'image')}{in_buckets} -> "
            f"{plan.samples_per_epoch} samples/epoch")
