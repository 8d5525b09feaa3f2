"""SPEC §13: a cosine_with_restarts run whose last step is above 90% of the peak LR is warned about."""

import pytest

from modules.config.preset import validate_preset
from modules.schedule.lr_curve import build_lr_curve
from modules.schedule.step_plan import build_step_plan

ENDS_HIGH = "cosine_with_restarts ends at"


def plan_for(scheduler: dict, max_steps: int = 100):
    preset = validate_preset({"data": {"path": "unused"}, "training": {"max_steps": max_steps},
                              "scheduler": scheduler})
    return build_step_plan(preset, num_images=10), preset


@pytest.mark.parametrize("cycles, warmup, warned", [(2, 0, True), (3, 10, True), (1.5, 0, False), (0.5, 0, False),
                                                    (2.5, 5, False)])
def test_a_run_that_ends_on_a_crest_is_warned_about(cycles, warmup, warned):
    plan, preset = plan_for({"type": "cosine_with_restarts", "cycles": cycles, "warmup": warmup})
    last = build_lr_curve(plan, preset.optimizer).applied_multipliers[-1]
    messages = [message for message in plan.warnings if message.startswith(ENDS_HIGH)]
    assert bool(last > 0.9) is warned  # the rule, on the curve training uses
    assert bool(messages) is warned
    if warned:
        assert f"{last:.0%}" in messages[0] and "cosine_with_hard_restarts" in messages[0]


def test_hard_restarts_and_cosine_never_get_it():
    for scheduler in ({"type": "cosine_with_hard_restarts", "cycles": 2}, {"type": "cosine"}):
        plan, _ = plan_for(scheduler)
        assert not [message for message in plan.warnings if message.startswith(ENDS_HIGH)]
