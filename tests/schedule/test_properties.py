"""Properties every schedule keeps on any valid plan (hypothesis, bounded so the suite stays fast).

For random plans (images, repeats, batch, accumulation, processes, drop_last,
epochs or max_steps, warmup, start factor, min_factor) and every shape:
0 <= f(k) <= max(1, start factor), one value per optimizer step, nothing
after the last step differs from it (no rise, no extra cycle), no NaN or inf.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules.config.preset import SCHEDULER_TYPES, validate_preset
from modules.errors import ConfigError
from modules.schedule.shapes import applied_multipliers, effective_multipliers
from modules.schedule.step_plan import build_step_plan

DURATION = st.one_of(
    st.integers(0, 400),
    st.integers(0, 400).map(lambda steps: f"{steps} steps"),
    st.integers(0, 30).map(lambda tenths: f"{tenths / 10} epochs"),
    st.integers(0, 100).map(lambda percent: f"{percent}%"),
)


@st.composite
def presets(draw, schedule_type):
    scheduler = {
        "type": schedule_type,
        "warmup": draw(st.one_of(st.just(0), DURATION)),
        "warmup_start_factor": draw(st.sampled_from([0.0, 0.0, 0.5, 1.0]) | st.floats(0, 1)),
        "min_factor": draw(st.sampled_from([0.0, 0.1]) | st.floats(0, 0.99)),
    }
    if schedule_type == "cosine_with_restarts":
        scheduler["cycles"] = draw(st.floats(0.01, 20))
    elif schedule_type == "cosine_with_hard_restarts":
        scheduler["cycles"] = draw(st.integers(1, 50))
    elif schedule_type == "polynomial":
        scheduler["power"] = draw(st.floats(0.05, 8))
    elif schedule_type == "sine":
        scheduler["period"] = draw(DURATION)
    elif schedule_type == "inverse_sqrt":
        scheduler["timescale"] = draw(st.none() | DURATION)
    elif schedule_type == "warmup_stable_decay":
        scheduler["decay"] = draw(DURATION)
        scheduler["decay_shape"] = draw(st.sampled_from(["linear", "cosine", "sqrt"]))
    elif schedule_type == "piecewise_constant":
        boundaries = sorted(draw(st.lists(st.integers(1, 500), max_size=4, unique=True)))
        values = draw(st.lists(st.floats(0, 1), min_size=len(boundaries) + 1, max_size=len(boundaries) + 1))
        scheduler["steps"] = [[0, values[0]]] + [[b, v] for b, v in zip(boundaries, values[1:])]
    use_max_steps = draw(st.booleans())
    training = {
        "batch_size": draw(st.integers(1, 8)),
        "gradient_accumulation_steps": draw(st.integers(1, 8)),
        "num_processes": draw(st.sampled_from([1, 2, 8])),
        "epochs": None if use_max_steps else draw(st.integers(1, 10)),
        "max_steps": draw(st.integers(1, 2000)) if use_max_steps else None,
    }
    raw = {"data": {"path": "unused", "repeats": draw(st.integers(1, 5)), "drop_last": draw(st.booleans())},
           "training": training, "scheduler": scheduler, "output": {"checkpoint_every": None}}
    return raw, draw(st.integers(1, 60))


def check_curve(schedule, start_factor):
    total = schedule.total_steps
    values = applied_multipliers(schedule)
    assert values.shape == (total,)
    assert np.all(np.isfinite(values))
    assert np.all(values >= 0)
    assert np.all(values <= max(1.0, start_factor) + 1e-12)
    past = applied_multipliers(schedule, np.array([total, total + 1, total + 7, 2 * total + 3, 10**12]))
    assert np.all(past == values[-1])  # the last value holds: no rise, no extra cycle past the end
    effective = effective_multipliers(schedule)
    assert effective.shape == (total,) and np.all(np.isfinite(effective))
    assert np.all((effective >= 0) & (effective <= max(1.0, start_factor) + 1e-12))
    return values


def plan_or_refusal(raw, images):
    """The plan, or None when the combination is refused with a ConfigError (never another exception)."""
    try:
        return build_step_plan(validate_preset(raw), num_images=images)
    except ConfigError as error:
        assert str(error) and "\n" not in str(error)
        return None


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_property(schedule_type):
    @SETTINGS
    @given(presets(schedule_type))
    def check(case):
        raw, images = case
        plan = plan_or_refusal(raw, images)
        if plan is None:
            return
        assert plan.total_steps >= 1 and plan.warmup_steps < plan.total_steps
        check_curve(plan.schedule, raw["scheduler"]["warmup_start_factor"])

    check.__name__ = f"test_{schedule_type}_stays_in_range_on_any_plan"
    return check


for _type in SCHEDULER_TYPES:
    globals()[f"test_{_type}_stays_in_range_on_any_plan"] = make_property(_type)


@SETTINGS
@given(presets("cosine_with_hard_restarts"))
def test_hard_restarts_restart_cycles_minus_one_times_at_most(case):
    raw, images = case
    plan = plan_or_refusal(raw, images)
    if plan is None:
        return
    values = applied_multipliers(plan.schedule)
    rises = [int(k) + 1 for k in np.nonzero(np.diff(values) > 1e-12)[0] if k + 1 > plan.warmup_steps]
    assert len(plan.cycle_starts) <= int(raw["scheduler"]["cycles"]) - 1
    # Every rise is a marked restart (a one-step cycle restarts at the top without a visible rise).
    assert set(rises) <= set(plan.cycle_starts)


@settings(max_examples=40, deadline=None)
@given(presets("constant"), st.booleans())
def test_schedule_free_effective_curve_stays_in_range(case, radam):
    raw, images = case
    raw["optimizer"] = {"type": "radam_schedule_free" if radam else "adamw_schedule_free"}
    raw["scheduler"]["warmup_start_factor"] = 0.0
    if radam:
        raw["scheduler"]["warmup"] = 0
    plan = plan_or_refusal(raw, images)
    if plan is None:
        return
    values = check_curve(plan.schedule, 0.0)
    assert np.all(values == 1.0)
