"""The preset's scheduler section resolved for one plan: every duration in optimizer steps.

The warmup is converted here; each shape converts its own durations (`Shape.resolve`) through the
plan's one converter (`StepCounts.to_steps`), so no duration is converted anywhere else.
"""

from modules.config.preset import SCHEDULE_FREE_OPTIMIZERS, Preset
from modules.errors import ConfigError
from modules.schedule.accounting import StepCounts
from modules.schedule.shapes import SHAPES, ResolvedSchedule


def resolve_schedule(preset: Preset, counts: StepCounts) -> ResolvedSchedule:
    """The schedule of `preset` over a plan of `counts.total_steps` steps (ConfigError naming the key)."""
    scheduler, total = preset.scheduler, counts.total_steps
    warmup = counts.to_steps(scheduler.warmup, "scheduler.warmup")
    if warmup >= total:
        raise ConfigError(f"warmup of {warmup} steps must be shorter than the run ({total} steps)",
                          "scheduler.warmup")
    shape_fields = SHAPES[scheduler.type].resolve(scheduler, counts.to_steps, total, warmup)
    optimizer = preset.optimizer
    return ResolvedSchedule(
        type=scheduler.type,
        total_steps=total,
        warmup_steps=warmup,
        warmup_start_factor=scheduler.warmup_start_factor,
        min_factor=scheduler.min_factor,
        cycles=float(scheduler.cycles),
        power=float(scheduler.power),
        decay_shape=scheduler.decay_shape,
        schedule_free=optimizer.type if optimizer.type in SCHEDULE_FREE_OPTIMIZERS else None,
        beta2=float(optimizer.betas[1]),
        **shape_fields,
    )
