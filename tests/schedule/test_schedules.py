"""Every schedule shape (SPEC §2): the points that matter, and the diffusers / transformers references.

The reference curves come from `diffusers.optimization` and
`transformers.get_inverse_sqrt_schedule`, stepped through torch's `LambdaLR`
on a dummy optimizer exactly as the diffusers example scripts use them.
"""

import math
import random

import numpy as np
import pytest

from modules.config.preset import validate_preset
from modules.schedule.shapes import applied_multipliers, effective_multipliers
from modules.schedule.step_plan import build_step_plan

# The plan of the point tests: one image, batch 1 -> one step per epoch; 110 epochs -> T = 110.
# Warmup 10 steps (D = 100), warmup_start_factor s = 0.2, min_factor m = 0.1.
TOTAL, WARMUP, START, FLOOR = 110, 10, 0.2, 0.1


def g(v):
    return FLOOR + (1 - FLOOR) * v


def plan_for(scheduler, total=TOTAL, images=1, **training):
    raw = {"data": {"path": "unused"}, "training": {"epochs": total, **training}, "scheduler": scheduler,
           "output": {"checkpoint_every": None}}
    return build_step_plan(validate_preset(raw), num_images=images)


def curve(scheduler):
    plan = plan_for({"warmup": WARMUP, "warmup_start_factor": START, "min_factor": FLOOR, **scheduler})
    return applied_multipliers(plan.schedule)


# k -> f(k), worked out by hand from SPEC §2 for T = 110, Wu = 10, s = 0.2, m = 0.1.
# Steps 0 and 5 (warmup: s, then halfway from s to 1) and 10 (end of warmup: the top) hold for every shape.
POINTS = {
    "constant": {60: 1.0, 109: 1.0},
    "linear": {60: 0.55, 109: g(0.01)},
    "cosine": {35: g(0.5 * (1 + math.cos(math.pi / 4))), 60: 0.55, 109: g(0.5 * (1 + math.cos(0.99 * math.pi)))},
    # two smooth waves over D = 100: floor at p = 0.25 and 0.75, top again at p = 0.5
    ("cosine_with_restarts", 2.0): {35: FLOOR, 60: 1.0, 85: FLOOR, 109: g(0.5 * (1 + math.cos(2 * math.pi * 1.98)))},
    # two hard cycles of 50 steps: restart at k = 60
    ("cosine_with_hard_restarts", 2.0): {59: g(0.5 * (1 + math.cos(0.98 * math.pi))), 60: 1.0, 85: 0.55,
                                         109: g(0.5 * (1 + math.cos(0.98 * math.pi)))},
    ("polynomial", 2.0): {60: g(0.25), 109: g(0.0001)},
    "rex": {60: g(0.5 / 0.55), 109: g(0.01 / 0.109)},
    # period 40: top at 10, floor exactly m at 30, top at 50, halfway at 60
    ("sine", 40): {30: FLOOR, 50: 1.0, 60: 0.55, 70: FLOOR, 109: g(0.5 * (1 + math.cos(2 * math.pi * 99 / 40)))},
    # timescale defaults to the warmup (10): 1 / sqrt((k - Wu + 10) / 10)
    "inverse_sqrt": {60: 1 / math.sqrt(6), 109: 1 / math.sqrt(10.9)},
    # decay "20%" of 110 = 22 steps, from k = 88
    ("warmup_stable_decay", "linear"): {60: 1.0, 87: 1.0, 88: 1.0, 99: 0.55, 109: g(1 / 22)},
    ("warmup_stable_decay", "cosine"): {87: 1.0, 99: 0.55, 109: g(0.5 * (1 + math.cos(math.pi * 21 / 22)))},
    ("warmup_stable_decay", "sqrt"): {87: 1.0, 99: g(1 - math.sqrt(0.5)), 109: g(1 - math.sqrt(21 / 22))},
    "piecewise_constant": {54: 1.0, 55: 0.5, 99: 0.5, 100: 0.25, 109: 0.25},
}


def scheduler_fields(case):
    kind, parameter = case if isinstance(case, tuple) else (case, None)
    fields = {"type": kind}
    if kind in ("cosine_with_restarts", "cosine_with_hard_restarts"):
        fields["cycles"] = parameter
    elif kind == "polynomial":
        fields["power"] = parameter
    elif kind == "sine":
        fields["period"] = parameter
    elif kind == "warmup_stable_decay":
        fields["decay_shape"] = parameter
    elif kind == "piecewise_constant":
        fields["steps"] = [[0, 1.0], ["50%", 0.5], [100, 0.25]]
    return fields


@pytest.mark.parametrize("case", list(POINTS), ids=[str(case) for case in POINTS])
def test_shape_at_the_points_that_matter(case):
    fields = scheduler_fields(case)
    values = curve(fields)
    assert values.shape == (TOTAL,)
    assert values[0] == pytest.approx(START, abs=1e-15)  # step 0: the warmup start factor
    assert values[5] == pytest.approx(0.6, rel=1e-12)  # halfway through warmup
    assert values[WARMUP] == pytest.approx(1.0, rel=1e-12)  # end of warmup: the peak
    for step, expected in POINTS[case].items():
        assert values[step] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
    # past the end: the last value, for any step
    plan = plan_for({"warmup": WARMUP, "warmup_start_factor": START, "min_factor": FLOOR, **fields})
    past = applied_multipliers(plan.schedule, [TOTAL - 1, TOTAL, TOTAL + 1, 10 * TOTAL, 10**9])
    assert np.all(past == values[-1])


def test_warmup_is_linear_from_the_start_factor():
    values = curve({"type": "constant"})
    expected = [START + (1 - START) * step / WARMUP for step in range(WARMUP)]
    np.testing.assert_allclose(values[:WARMUP], expected, rtol=1e-12)
    assert np.all(values[WARMUP:] == 1.0)


def test_negative_steps_are_refused():
    plan = plan_for({"type": "linear"})
    with pytest.raises(ValueError, match="0-based"):
        applied_multipliers(plan.schedule, [-1])


# --- the diffusers / transformers references ---------------------------------------------------------------------

def reference_lrs(make_scheduler, total, base_lr):
    """Step a LambdaLR scheduler `total` times on a dummy optimizer; the LR in effect at each step."""
    import torch

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


def random_plans(seed, count):
    """Random (images, batch, accumulation, epochs, warmup fraction) plans, reproducible."""
    rng = random.Random(seed)
    for _ in range(count):
        yield {
            "images": rng.randint(1, 40),
            "batch": rng.randint(1, 4),
            "accumulation": rng.randint(1, 4),
            "epochs": rng.randint(1, 6),
            "warmup_fraction": rng.choice([0.0, 0.0, rng.random() * 0.9]),
            "cycles": rng.randint(1, 5),
            "smooth_cycles": rng.choice([0.5, 1.0, 1.5, 2.0, 3.0, rng.uniform(0.2, 4.0)]),
            "power": rng.choice([1.0, 2.0, 0.5, rng.uniform(0.3, 3.0)]),
            "base_lr": rng.choice([1e-4, 3e-4, 1.0, rng.uniform(1e-6, 1e-2)]),
        }


def diffusers_case(kind, spec, total, warmup):
    from diffusers import optimization

    if kind == "linear":
        return {}, lambda opt: optimization.get_linear_schedule_with_warmup(opt, warmup, total)
    if kind == "cosine":
        return {}, lambda opt: optimization.get_cosine_schedule_with_warmup(opt, warmup, total)
    if kind == "cosine_with_restarts":
        cycles = spec["smooth_cycles"]
        return {"cycles": cycles}, lambda opt: optimization.get_cosine_schedule_with_warmup(
            opt, warmup, total, num_cycles=cycles)
    if kind == "cosine_with_hard_restarts":
        cycles = spec["cycles"]
        return {"cycles": cycles}, lambda opt: optimization.get_cosine_with_hard_restarts_schedule_with_warmup(
            opt, warmup, total, num_cycles=cycles)
    if kind == "polynomial":
        power = spec["power"]
        return {"power": power}, lambda opt: optimization.get_polynomial_decay_schedule_with_warmup(
            opt, warmup, total, lr_end=0.0, power=power)
    if kind == "constant":
        return {}, lambda opt: optimization.get_constant_schedule_with_warmup(opt, warmup)
    if kind == "inverse_sqrt":
        from transformers import get_inverse_sqrt_schedule

        return {}, lambda opt: get_inverse_sqrt_schedule(opt, warmup)
    raise AssertionError(kind)


REFERENCE_KINDS = ["linear", "cosine", "cosine_with_restarts", "cosine_with_hard_restarts", "polynomial",
                   "constant", "inverse_sqrt"]


@pytest.mark.parametrize("kind", REFERENCE_KINDS)
def test_equals_the_reference_at_every_step_for_random_plans(kind):
    checked = 0
    for index, spec in enumerate(random_plans(seed=1000 + REFERENCE_KINDS.index(kind), count=25)):
        steps_per_epoch = math.ceil(math.ceil(spec["images"] / spec["batch"]) / spec["accumulation"])
        total = spec["epochs"] * steps_per_epoch
        warmup = int(spec["warmup_fraction"] * total)
        if warmup >= total:
            warmup = 0
        fields, make = diffusers_case(kind, spec, total, warmup)
        plan = plan_for({"type": kind, "warmup": warmup, **fields}, total=spec["epochs"], images=spec["images"],
                        batch_size=spec["batch"], gradient_accumulation_steps=spec["accumulation"])
        assert plan.total_steps == total and plan.warmup_steps == warmup
        ours = spec["base_lr"] * applied_multipliers(plan.schedule)
        reference = reference_lrs(make, total, spec["base_lr"])
        # Not exact by construction: NumPy's SIMD cos/power (AVX-512) may differ from math.cos/** by a few
        # ulp. Measured worst relative difference over these plans: 0 for the cosine shapes, 8e-16 for
        # polynomial (AVX-512, NumPy 2); rtol 1e-12 leaves three orders of magnitude for other CPUs.
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-18,
                                   err_msg=f"{kind} plan {index}: {spec} T={total} Wu={warmup}")
        checked += total
    assert checked > 200


@pytest.mark.parametrize("kind", ["linear", "cosine", "cosine_with_hard_restarts", "polynomial"])
def test_equals_the_reference_on_a_long_plan_with_warmup(kind):
    spec = {"cycles": 4, "smooth_cycles": 4, "power": 2.0}
    total, warmup = 1000, 100
    fields, make = diffusers_case(kind, spec, total, warmup)
    plan = plan_for({"type": kind, "warmup": warmup, **fields}, total=total)
    np.testing.assert_allclose(3e-4 * applied_multipliers(plan.schedule), reference_lrs(make, total, 3e-4),
                               rtol=1e-12, atol=1e-18)


def test_cosine_with_restarts_is_diffusers_cosine_with_num_cycles():
    spec = {"smooth_cycles": 2.5}
    fields, make = diffusers_case("cosine_with_restarts", spec, 300, 30)
    plan = plan_for({"type": "cosine_with_restarts", "warmup": 30, **fields}, total=300)
    np.testing.assert_allclose(applied_multipliers(plan.schedule), reference_lrs(make, 300, 1.0), rtol=1e-12,
                               atol=1e-18)


@pytest.mark.parametrize("min_factor,power", [(0.1, 1.0), (0.05, 2.0), (0.3, 0.5)])
def test_polynomial_floor_is_diffusers_lr_end(min_factor, power):
    from diffusers import optimization

    base_lr, total, warmup = 2e-4, 150, 15
    plan = plan_for({"type": "polynomial", "warmup": warmup, "min_factor": min_factor, "power": power}, total=total)
    reference = reference_lrs(lambda opt: optimization.get_polynomial_decay_schedule_with_warmup(
        opt, warmup, total, lr_end=min_factor * base_lr, power=power), total, base_lr)
    np.testing.assert_allclose(base_lr * applied_multipliers(plan.schedule), reference, rtol=1e-12)


def test_inverse_sqrt_without_warmup_uses_the_transformers_timescale():
    from transformers import get_inverse_sqrt_schedule

    plan = plan_for({"type": "inverse_sqrt"}, total=500)
    assert plan.schedule.timescale_steps == 10_000
    reference = reference_lrs(lambda opt: get_inverse_sqrt_schedule(opt, 0), 500, 1.0)
    np.testing.assert_allclose(applied_multipliers(plan.schedule), reference, rtol=1e-12)


def test_inverse_sqrt_with_an_explicit_timescale():
    from transformers import get_inverse_sqrt_schedule

    plan = plan_for({"type": "inverse_sqrt", "warmup": 20, "timescale": 50}, total=400)
    reference = reference_lrs(lambda opt: get_inverse_sqrt_schedule(opt, 20, timescale=50), 400, 1.0)
    np.testing.assert_allclose(applied_multipliers(plan.schedule), reference, rtol=1e-12)


def test_effective_equals_applied_without_a_schedule_free_optimizer():
    plan = plan_for({"type": "cosine", "warmup": 10, "min_factor": 0.1})
    assert np.array_equal(effective_multipliers(plan.schedule), applied_multipliers(plan.schedule))
