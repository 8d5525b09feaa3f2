"""LR scaling (SPEC §9): `optimizer.lr_scaling` by `optimizer.lr_scaling_by`, decided once in the plan.

    n = B * W * A (global_batch), B * W (batch) or A (accumulation)
    lr_scale = n (linear), sqrt(n) (sqrt), 1 (none)

Every group's base LR is multiplied by `lr_scale` once, in `modules.schedule.lr_curve`.
"""

import math

from modules.schedule.formatting import format_lr


def lr_scaling(preset, batch: int, processes: int, accumulation: int) -> tuple[float, str]:
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
