"""The torch side of the schedule: two lines, no state.

Before optimizer step k the training loop calls `set_learning_rates(optimizer,
curve, k)`; the step counter is the caller's (the loop's `global_step`),
so there is nothing to save or restore beyond that counter.
"""

from modules.schedule.lr_curve import LrCurve


def set_learning_rates(optimizer, curve: LrCurve, step: int) -> None:
    """param_groups[g]["lr"] = base_lr[g] * f(step), for every group g."""
    for group, lr in zip(optimizer.param_groups, curve.applied_lrs(step), strict=True):
        group["lr"] = lr
