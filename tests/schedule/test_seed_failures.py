"""The four failures this project exists to prevent, each reproduced as it was reported.

1. OneTrainer: cosine with hard restarts, batch 1, accumulation 2, an odd image
   count, 4 cycles restarted a fifth time near the end (cycle length counted in
   micro-batches, the run in optimizer steps).
2. SimpleTuner: the sine schedule's floor was lr/2 whatever min_factor said, and
   its position in the wave drifted after a resume.
3. XTuner: a cosine over 3 epochs reached its floor after epoch 1 and stayed
   flat, with the warmup given in epochs.
4. schedule-free: the warmup was counted in micro-batches, not optimizer steps,
   and the preview showed a flat line instead of the optimizer's own ramp.
"""

import numpy as np
import pytest

from modules.config.preset import validate_preset
from modules.errors import ConfigError
from modules.schedule.lr_curve import build_lr_curve
from modules.schedule.shapes import applied_multipliers, effective_multipliers
from modules.schedule.step_plan import build_step_plan


def build(images=7, **sections):
    raw = {"data": {"path": "unused"}, "output": {"checkpoint_every": None}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    preset = validate_preset(raw)
    return preset, build_step_plan(preset, num_images=images)


def rises(values):
    """Indices k where f(k) > f(k - 1): a restart."""
    return [int(k) for k in np.nonzero(np.diff(values) > 1e-12)[0] + 1]


# --- 1. OneTrainer: hard restarts -----------------------------------------------------------------------------------

def hard_restarts_plan(accumulation, epochs=4, warmup=0):
    return build(
        images=7,
        training={"epochs": epochs, "batch_size": 1, "gradient_accumulation_steps": accumulation},
        scheduler={"type": "cosine_with_hard_restarts", "cycles": 4, "warmup": warmup},
    )[1]


def test_onetrainer_hard_restarts_restart_exactly_three_times():
    plan = hard_restarts_plan(accumulation=2)
    # 7 micro-batches per epoch, accumulation 2 -> 4 optimizer steps per epoch; 4 epochs -> T = 16.
    assert plan.steps_per_epoch == 4 and plan.total_steps == 16
    values = applied_multipliers(plan.schedule)
    restarts = rises(values)
    assert len(restarts) == 3
    assert restarts == plan.cycle_starts  # the preview marks fall where the curve jumps
    # Nothing rises after the last cycle begins, nor past the end of the plan.
    last_cycle = values[restarts[-1]:]
    assert np.all(np.diff(last_cycle) < 0)
    past = applied_multipliers(plan.schedule, np.arange(plan.total_steps - 1, plan.total_steps + 50))
    assert np.all(past == values[-1])
    assert values[-1] < values[restarts[-1]]


@pytest.mark.parametrize("warmup", [0, 1, "0.5 epochs"])
def test_onetrainer_same_restarts_with_accumulation_1_2_and_4(warmup):
    counts = {}
    for accumulation in (1, 2, 4):
        plan = hard_restarts_plan(accumulation, epochs=5, warmup=warmup)
        values = applied_multipliers(plan.schedule)
        counts[accumulation] = len(rises(values[plan.warmup_steps:]))
        assert np.all(applied_multipliers(plan.schedule, [plan.total_steps + 3]) == values[-1])
    assert counts == {1: 3, 2: 3, 4: 3}


def test_onetrainer_each_cycle_reaches_near_the_floor_before_restarting():
    plan = build(
        images=7,
        training={"epochs": 6, "gradient_accumulation_steps": 2},
        scheduler={"type": "cosine_with_hard_restarts", "cycles": 4, "min_factor": 0.05},
    )[1]
    values = applied_multipliers(plan.schedule)
    for restart in rises(values):
        assert values[restart] == pytest.approx(1.0)
        assert values[restart - 1] < 0.3
    assert values.min() >= 0.05


# --- 2. SimpleTuner: sine -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("min_factor", [0.0, 0.1, 0.37])
@pytest.mark.parametrize("period", [8, 20])
def test_simpletuner_sine_floor_is_min_factor_times_lr(min_factor, period):
    base_lr, warmup = 4e-4, 6
    preset, plan = build(
        images=1,
        training={"epochs": 100},
        optimizer={"lr": base_lr},
        scheduler={"type": "sine", "period": period, "min_factor": min_factor, "warmup": warmup},
    )
    lrs = build_lr_curve(plan, preset.optimizer).effective_table()[:, 0]
    after = lrs[warmup:]
    assert after.min() == pytest.approx(min_factor * base_lr, abs=1e-18)
    assert after.max() == pytest.approx(base_lr)
    if min_factor == 0.0:
        assert after.min() < base_lr / 2 * 0.01  # not lr / 2
    # The floor sits exactly at half period, the top at every whole period.
    for wave in range(3):
        start = warmup + wave * period
        assert lrs[start] == pytest.approx(base_lr)
        assert lrs[start + period // 2] == pytest.approx(min_factor * base_lr, abs=1e-18)
    # One full wave takes exactly `period` steps: the curve repeats with that period and no shorter one.
    np.testing.assert_allclose(after[period:], after[:-period], rtol=1e-9, atol=1e-18)
    for shorter in range(1, period):
        assert not np.allclose(after[shorter:], after[:-shorter], rtol=1e-9, atol=1e-18)


def test_simpletuner_sine_period_in_epochs_is_optimizer_steps():
    _, plan = build(
        images=7,
        training={"epochs": 6, "gradient_accumulation_steps": 2},
        scheduler={"type": "sine", "period": "1 epochs", "min_factor": 0.2},
    )
    assert plan.schedule.period_steps == plan.steps_per_epoch == 4
    values = applied_multipliers(plan.schedule)
    assert [k for k in range(plan.total_steps) if values[k] == pytest.approx(1.0)] == [0, 4, 8, 12, 16, 20]


@pytest.mark.parametrize("resume_at", [1, 7, 13, 50, 99])
def test_simpletuner_sine_position_cannot_drift_on_resume(resume_at):
    _, plan = build(images=1, training={"epochs": 100},
                    scheduler={"type": "sine", "period": 14, "min_factor": 0.1, "warmup": 5})
    full = applied_multipliers(plan.schedule)
    # A resumed run evaluates only steps k..T-1, from the step counter alone.
    resumed = applied_multipliers(plan.schedule, np.arange(resume_at, plan.total_steps))
    assert np.array_equal(resumed, full[resume_at:])
    end = min(resume_at + 20, plan.total_steps)
    one_by_one = [float(applied_multipliers(plan.schedule, [step])[0]) for step in range(resume_at, end)]
    assert one_by_one == list(full[resume_at:end])


def test_simpletuner_sine_waves_are_bit_identical_over_a_long_run():
    # 300,000 steps of 14-step waves: every wave must equal the first one exactly (not within 1e-9),
    # and every trough must be exactly min_factor, however far the run has gone.
    period, warmup, min_factor = 14, 5, 0.1
    _, plan = build(images=1, training={"max_steps": 300_000},
                    scheduler={"type": "sine", "period": period, "min_factor": min_factor, "warmup": warmup})
    after = applied_multipliers(plan.schedule)[warmup:]
    waves = after[: len(after) // period * period].reshape(-1, period)
    assert np.array_equal(waves, np.broadcast_to(waves[0], waves.shape))
    assert np.all(waves[:, 0] == 1.0) and np.all(waves[:, period // 2] == min_factor)


# --- 3. XTuner: cosine over several epochs --------------------------------------------------------------------------

@pytest.mark.parametrize("accumulation", [1, 2])
def test_xtuner_cosine_keeps_decaying_through_every_epoch(accumulation):
    _, plan = build(
        images=7,
        training={"epochs": 3, "gradient_accumulation_steps": accumulation},
        scheduler={"type": "cosine", "warmup": "0.5 epochs", "min_factor": 0.1},
    )
    assert plan.warmup_steps == (plan.steps_per_epoch + 1) // 2  # half an epoch, rounded half up
    values = applied_multipliers(plan.schedule)
    decay = values[plan.warmup_steps:]
    assert np.all(np.diff(decay) < 0)  # strictly decreasing after warmup
    epoch_2, epoch_3 = plan.epoch_starts[1], plan.epoch_starts[2]
    assert values[epoch_2] < values[epoch_2 - 1] and values[epoch_3] < values[epoch_3 - 1]
    assert values[epoch_3] > 0.1 + 0.01  # not on the floor yet when epoch 3 begins
    # The floor only at the very end: the last step is the lowest, within 5% of the range above the floor.
    assert np.all(values[plan.warmup_steps:-1] > values[-1])
    assert 0.1 <= values[-1] < 0.1 + 0.05 * (1 - 0.1)
    assert np.all(np.diff(values[:plan.warmup_steps + 1]) > 0)  # warmup rises to the peak


# --- 4. schedule-free ----------------------------------------------------------------------------------------------

def schedule_free_plan(optimizer_type, warmup, accumulation=2, epochs=3, betas=(0.9, 0.999)):
    return build(
        images=7,
        training={"epochs": epochs, "gradient_accumulation_steps": accumulation},
        optimizer={"type": optimizer_type, "lr": 2e-3, "betas": list(betas)},
        scheduler={"type": "constant", "warmup": warmup},
    )


def test_schedule_free_warmup_is_counted_in_optimizer_steps():
    _, plan = schedule_free_plan("adamw_schedule_free", "1 epochs", accumulation=2)
    # 7 micro-batches per epoch -> 4 optimizer steps: the warmup is 4 steps, not 7 micro-batches.
    assert plan.micro_batches_per_epoch == 7
    assert plan.warmup_steps == plan.steps_per_epoch == 4


def step_schedule_free(optimizer_class, preset, plan, **kwargs):
    """Step a real schedulefree optimizer T times on a tiny parameter; the `scheduled_lr` of each step."""
    import torch

    from modules.training.lr_adapter import set_learning_rates

    torch.manual_seed(0)
    parameter = torch.nn.Parameter(torch.randn(3))
    optimizer = optimizer_class([parameter], lr=preset.optimizer.lr, betas=preset.optimizer.betas, **kwargs)
    optimizer.train()
    curve = build_lr_curve(plan, preset.optimizer)
    reported = []
    for step in range(plan.total_steps):
        set_learning_rates(optimizer, curve, step)
        assert optimizer.param_groups[0]["lr"] == preset.optimizer.lr  # the schedule writes the base LR
        optimizer.zero_grad()
        (parameter**2).sum().backward()
        optimizer.step()
        reported.append(optimizer.param_groups[0]["scheduled_lr"])
    return curve, np.array(reported)


@pytest.mark.parametrize("warmup", ["1 epochs", 0, 5])
def test_schedule_free_adamw_preview_is_the_scheduled_lr(warmup):
    import schedulefree

    preset, plan = schedule_free_plan("adamw_schedule_free", warmup)
    curve, reported = step_schedule_free(schedulefree.AdamWScheduleFree, preset, plan,
                                         warmup_steps=plan.warmup_steps)
    np.testing.assert_allclose(curve.effective_table()[:, 0], reported, rtol=1e-12)
    if plan.warmup_steps:
        assert reported[0] < reported[plan.warmup_steps]  # the ramp is shown, not a flat line


@pytest.mark.parametrize("beta2", [0.999, 0.99])
def test_schedule_free_radam_preview_is_the_scheduled_lr(beta2):
    import schedulefree

    preset, plan = schedule_free_plan("radam_schedule_free", 0, accumulation=1, epochs=3, betas=(0.9, beta2))
    curve, reported = step_schedule_free(schedulefree.RAdamScheduleFree, preset, plan)
    # Exact on every CPU: the preview takes its powers with Python's `**` (C pow), as the optimizer does.
    np.testing.assert_array_equal(curve.effective_table()[:, 0], reported)
    assert reported[0] == 0.0 and reported[-1] > 0  # RAdam's silent first steps, then its rectified LR


def test_schedule_free_applied_lr_is_the_base_lr():
    _, plan = schedule_free_plan("adamw_schedule_free", "1 epochs")
    assert np.all(applied_multipliers(plan.schedule) == 1.0)
    effective = effective_multipliers(plan.schedule)
    np.testing.assert_allclose(effective[:4], [0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("optimizer_type", ["adamw_schedule_free", "radam_schedule_free"])
@pytest.mark.parametrize("scheduler_type", ["cosine", "linear", "cosine_with_hard_restarts"])
def test_schedule_free_refuses_a_non_constant_schedule(optimizer_type, scheduler_type):
    with pytest.raises(ConfigError) as raised:
        validate_preset({"optimizer": {"type": optimizer_type}, "scheduler": {"type": scheduler_type}})
    assert raised.value.key == "scheduler.type"
    assert "constant" in str(raised.value)


@pytest.mark.parametrize("beta2", [0.999, 0.99, 0.9999, 0.5])
def test_schedule_free_radam_factor_is_the_optimizers_at_any_step_of_a_long_run(beta2):
    """Bit for bit at the steps where rho_t still moves, where it settles, and far beyond."""
    import torch
    import schedulefree

    from modules.schedule.shapes import _radam_unsettled_steps, radam_rectification

    settle = _radam_unsettled_steps(beta2, 2 / (1 - beta2) - 1, 10**7)
    steps = sorted({*range(0, 40), *range(max(0, settle - 30), settle + 30), settle * 2, 10**6, 10**7 - 1})
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = schedulefree.RAdamScheduleFree([parameter], lr=1.0, betas=(0.9, beta2))
    optimizer.train()
    reported = []
    for k in steps:
        optimizer.param_groups[0]["k"] = k  # the optimizer's step counter: step() uses k + 1
        parameter.grad = torch.ones(2)
        optimizer.step()
        reported.append(optimizer.param_groups[0]["scheduled_lr"])
    np.testing.assert_array_equal(radam_rectification(np.array(steps), beta2), reported)
    settled = 1.0 if 2 / (1 - beta2) - 1 > 4 else 0.0  # beta2 = 0.5: rho_inf = 3, the SGD phase never ends
    assert reported[-1] == settled and radam_rectification(np.arange(10**6), beta2)[-1] == settled
