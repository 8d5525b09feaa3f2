"""The LR range test (SPEC §9): train a throw-away copy with a rising LR and find where the loss falls fastest.

`lr_range_test(preset, min_lr, max_lr, steps)` builds the preset's model,
optimizer and data with the trainer's own functions (the model family's
`build_family`, `build_optimizer`, `build_dataset` and its micro-batch
stream, the caches of `prepare_caches`, the mixed-precision cast) and takes
up to `steps` optimizer steps with the trainer's own step
(`modules.training.step.optimizer_step`: accumulation window, autocast,
clipping at `training.max_grad_norm`) at

    lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1))       i = 0 .. steps - 1

for the group `unet` (`optimizer.lr`); every other group (named groups, the
text encoders) keeps its ratio to `optimizer.lr`. The loss of step i is the mean over its accumulation window;
the smoothed loss is its bias-corrected exponential moving average
(`SMOOTHING`). The test stops early once the smoothed loss passes
`DIVERGENCE_FACTOR` (4) times its minimum so far, or a loss is not finite.

The suggestion is the LR at the steepest descent of the smoothed loss
against log(lr), over the steps before the stop (the first tenth left out:
the average is still settling there). It is always one of the swept LRs.

The data follow the training's order from step 0 (buckets included); a sweep
longer than the plan continues into further epochs as if `training.epochs`
were larger. Nothing is written anywhere: no checkpoint, no log, nothing in
output.dir (the caches of data.cache_latents / cache_text_embeddings are
completed and used, as in training).
The test runs in one process; with `training.num_processes` > 1 it trains on
one process's share of each batch. Adaptive optimizers (prodigy,
dadapt_adam) are refused: they choose their own LR.

`loss="validation"` reads the validation loss (`modules.training.validation`:
every validation image at every `output.validation_timesteps`, fixed noise)
after each step instead of the training loss: the same weights always give the
same number, so the curve is far smoother than the training loss (whose
timesteps and noise change every step), at the cost of one validation pass per
step. It needs validation images (`data.validation_split` or a concept of type
`validation`).
"""

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from modules.config.preset import ADAPTIVE_OPTIMIZERS, Preset
from modules.errors import ConfigError
from modules.schedule.step_plan import build_step_plan
from modules.data.caches import prepare_caches
from modules.data.datasets import build_dataset
from modules.schedule.lr_curve import build_lr_curve
from modules.families.base import build_family
from modules.training.optimizers import build_optimizer
from modules.training.step import optimizer_step, seed_process_rng, window_of
from modules.training.validation import VALIDATION_TAG, ValidationSet, evaluate, validation_images

LOSSES = ("train", "validation")  # what the range test reads after each step

DEFAULT_MIN_LR = 1e-7
DEFAULT_MAX_LR = 1.0
DEFAULT_STEPS = 100
SMOOTHING = 0.9  # EMA factor of the smoothed loss (0.9: about the last ten steps)
DIVERGENCE_FACTOR = 4.0
MIN_STEPS = 5


@dataclass
class RangeTestPoint:
    step: int
    lr: float
    loss: float
    smoothed_loss: float


@dataclass
class RangeTestResult:
    points: list[RangeTestPoint] = field(default_factory=list)
    min_lr: float = DEFAULT_MIN_LR
    max_lr: float = DEFAULT_MAX_LR
    planned_steps: int = DEFAULT_STEPS
    stop_reason: str = ""  # why it ended before planned_steps ("" if it ran them all)
    suggested_lr: float | None = None
    suggested_step: int | None = None
    lr_scale: float = 1.0  # the plan's optimizer.lr_scaling factor: optimizer.lr = suggested_lr / lr_scale
    loss_kind: str = "train"  # LOSSES: the loss each point holds

    @property
    def suggested_optimizer_lr(self) -> float | None:
        """The value to put in optimizer.lr (before the plan's LR scaling) for the suggested LR."""
        return None if self.suggested_lr is None else self.suggested_lr / self.lr_scale

    def write_csv(self, path) -> None:
        """`step,lr,loss,smoothed_loss`, one row per step taken (full precision)."""
        rows = [f"{p.step},{p.lr!r},{p.loss!r},{p.smoothed_loss!r}" for p in self.points]
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write("step,lr,loss,smoothed_loss\n" + "".join(row + "\n" for row in rows))


def swept_lrs(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The geometric sweep: min_lr at step 0, max_lr at step steps - 1."""
    return min_lr * (max_lr / min_lr) ** (np.arange(steps, dtype=np.float64) / (steps - 1))


def check_arguments(min_lr: float, max_lr: float, steps: int) -> None:
    if not (math.isfinite(min_lr) and min_lr > 0):
        raise ConfigError(f"--min-lr must be a positive number, got {min_lr:g}")
    if not (math.isfinite(max_lr) and max_lr > min_lr):
        raise ConfigError(f"--max-lr must be greater than --min-lr ({min_lr:g}), got {max_lr:g}")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps must be at least {MIN_STEPS}, got {steps}")


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> int | None:
    """Index of the steepest descent of `smoothed` against log(lr), the first tenth left out; None if too short."""
    count = len(smoothed)
    if count < 3:
        return None
    skip = max(1, count // 10) if count >= MIN_STEPS else 0
    slope = np.gradient(smoothed, np.log(lrs))
    return int(skip + np.argmin(slope[skip:]))


def sweep_plan(preset: Preset, steps: int):
    """The preset's plan, with enough epochs (and no max_steps) that its stream covers `steps` optimizer steps."""
    plan = build_step_plan(preset)
    if plan.total_steps >= steps:
        return plan
    epochs = -(-steps // plan.steps_per_epoch)
    training = preset.training.model_copy(update={"epochs": epochs, "max_steps": None})
    return build_step_plan(preset.model_copy(update={"training": training}))


def sweep_validation(preset: Preset, family) -> ValidationSet:
    """The validation images of `preset` (not prepared yet); ConfigError when there are none."""
    images = validation_images(preset, family.descriptor().takes_captions)
    if not images:
        raise ConfigError("--loss validation needs validation images: set data.validation_split or add a concept "
                          "of type 'validation'", "data.validation_split")
    return ValidationSet(images, preset.output.validation_timesteps, preset.training.seed, 0, 1)


def set_up_sweep(preset: Preset, steps: int, progress_bar: bool, loss: str = "train"):
    """(plan, accelerator, model, optimizer, dataset, trained parameters, group ratios, the ValidationSet of
    `loss` "validation" or None), as the trainer builds them."""
    from modules.training.precision import release_cached_components, set_up_memory
    from modules.training.trainer import make_accelerator

    plan = sweep_plan(preset, steps)
    accelerator = make_accelerator(preset)
    curve = build_lr_curve(plan, preset.optimizer)
    dataset = build_dataset(preset, plan)
    family = build_family(preset, plan)
    set_up_memory(preset, family, accelerator)
    optimizer = build_optimizer(family.model, preset, 0, family.parameter_components(),
                                (curve.group_names, curve.base_lrs))
    model, optimizer = accelerator.prepare(family.model, optimizer)
    validation = sweep_validation(preset, family) if loss == "validation" else None
    prepare_caches(preset, family, dataset, plan, 0, 0, accelerator,
                   lambda message: None, progress_bar, validation.captions if validation else ())
    if validation is not None:  # before the caches may move the VAE off the device
        validation.prepare(family, accelerator)
    release_cached_components(preset, family, accelerator, lambda message: None)
    seed_process_rng(preset.training.seed, 0)
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    ratios = [lr / (preset.optimizer.lr * plan.lr_scale) for lr in curve.base_lrs]
    return plan, accelerator, model, optimizer, dataset, parameters, ratios, validation


def lr_range_test(preset: Preset, min_lr: float = DEFAULT_MIN_LR, max_lr: float = DEFAULT_MAX_LR,
                  steps: int = DEFAULT_STEPS, *, on_point: Callable[[RangeTestPoint], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, progress_bar: bool = False,
                  loss: str = "train") -> RangeTestResult:
    """Run the test on `preset` (see the module docstring); ConfigError on bad input."""
    check_arguments(min_lr, max_lr, steps)
    if loss not in LOSSES:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if preset.optimizer.type in ADAPTIVE_OPTIMIZERS:
        raise ConfigError(f"'{preset.optimizer.type}' sets its own LR (its d); the range test is for optimizers "
                          "with a fixed LR (prodigy and dadapt_adam usually run at lr 1.0)", "optimizer.type")
    plan, accelerator, model, optimizer, dataset, parameters, ratios, validation = set_up_sweep(
        preset, steps, progress_bar, loss)
    lrs = swept_lrs(min_lr, max_lr, steps)
    seed = preset.training.seed
    result = RangeTestResult(min_lr=min_lr, max_lr=max_lr, planned_steps=steps, lr_scale=plan.lr_scale,
                             loss_kind=loss)
    stream = dataset.stream(plan, seed, 0, 0, preset.data.num_workers)
    from tqdm.auto import tqdm

    model.train()
    try:
        with tqdm(total=steps, disable=not progress_bar, unit="step", dynamic_ncols=True) as bar:
            for index in range(steps):
                for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                    group["lr"] = float(lrs[index]) * ratio
                outcome = optimizer_step(accelerator, model, optimizer, stream, window_of(plan, index), seed=seed,
                                         rank=0, max_grad_norm=preset.training.max_grad_norm, parameters=parameters)
                value = float(outcome.loss) if validation is None else \
                    evaluate(validation, accelerator, model, optimizer=optimizer)[VALIDATION_TAG]
                result.stop_reason = _record(result, index, float(lrs[index]), value, on_point)
                bar.update(1)
                bar.set_postfix(lr=f"{lrs[index]:.2e}", loss=f"{result.points[-1].smoothed_loss:.4f}"
                                if result.points else "", refresh=False)
                if not result.stop_reason and should_stop is not None and should_stop():
                    result.stop_reason = f"stopped by the user at step {index}"
                if result.stop_reason:
                    break
    finally:
        stream.close()
    return _suggestion(result, min_lr)


def _record(result: RangeTestResult, index: int, lr: float, loss: float, on_point) -> str:
    """Add step `index`'s point (smoothed loss: bias-corrected EMA); the reason to stop there, or ""."""
    if not math.isfinite(loss):
        return f"the loss is not finite at step {index} (lr {lr:.3g})"
    previous = result.points[-1].smoothed_loss * (1 - SMOOTHING ** index) if result.points else 0.0
    average = SMOOTHING * previous + (1 - SMOOTHING) * loss
    smoothed = average / (1 - SMOOTHING ** (index + 1))
    point = RangeTestPoint(index, lr, loss, smoothed)
    result.points.append(point)
    if on_point is not None:
        on_point(point)
    best = min(p.smoothed_loss for p in result.points)
    if smoothed > DIVERGENCE_FACTOR * best:
        return f"the smoothed loss passed {DIVERGENCE_FACTOR:g}x its minimum at step {index} (lr {lr:.3g})"
    return ""


def _suggestion(result: RangeTestResult, min_lr: float) -> RangeTestResult:
    # The point that diverged is not a candidate: the suggestion comes from the descent before it.
    candidates = result.points[:-1] if result.stop_reason.startswith("the smoothed") else result.points
    chosen = suggest(np.array([p.lr for p in candidates]), np.array([p.smoothed_loss for p in candidates]))
    if chosen is None:
        raise ConfigError(f"the loss diverged after {len(result.points)} steps ({result.stop_reason}): "
                          f"no descent to read a suggestion from; lower --min-lr (now {min_lr:g})")
    result.suggested_step, result.suggested_lr = candidates[chosen].step, candidates[chosen].lr
    return result
