"""The shape registry (modules.schedule.shapes): one object per scheduler.type, owning its parameters,
durations, multipliers and warnings; the custom schedule carried by the plan; LR scaling by hand."""

import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modules.config.preset import SCHEDULE_FREE_OPTIMIZERS, SCHEDULER_TYPES, SchedulerSection, validate_preset
from modules.schedule import custom as custom_function
from modules.schedule.lr_curve import build_lr_curve
from modules.schedule.shapes import SCHEDULE_FREE, SHAPES, ResolvedSchedule, Shape, applied_multipliers, cycle_starts
from modules.schedule.shapes.base import g, remaining
from modules.schedule.step_plan import build_step_plan

ROOT = Path(__file__).resolve().parents[2]
SHAPES_FOLDER = ROOT / "modules" / "schedule" / "shapes"


def test_every_scheduler_type_is_one_registered_shape_and_nothing_else():
    assert sorted(SHAPES) == sorted(SCHEDULER_TYPES)
    for name, shape in SHAPES.items():
        assert isinstance(shape, Shape) and shape.name == name


def test_every_schedule_free_optimizer_has_its_effective_curve():
    assert sorted(SCHEDULE_FREE) == sorted(SCHEDULE_FREE_OPTIMIZERS)
    schedule = ResolvedSchedule(type="constant", total_steps=6, warmup_steps=3, schedule_free="adamw_schedule_free")
    assert SCHEDULE_FREE["adamw_schedule_free"].effective(schedule, np.arange(6)).tolist() == [
        1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_shape_lives_in_its_own_file_and_reads_only_scheduler_fields(name):
    shape = SHAPES[name]
    module = type(shape).__module__
    assert module.startswith("modules.schedule.shapes.")
    assert (SHAPES_FOLDER / (module.rsplit(".", 1)[1] + ".py")).is_file()
    assert set(shape.reads) <= set(SchedulerSection.model_fields), shape.reads


@pytest.mark.parametrize("scheduler, key, value", [
    ({"type": "sine", "period": "0.5 epochs"}, "period_steps", 10),
    ({"type": "inverse_sqrt", "timescale": "25%"}, "timescale_steps", 10),
    ({"type": "inverse_sqrt", "warmup": 4}, "timescale_steps", 4),
    ({"type": "warmup_stable_decay", "decay": "1 epochs"}, "decay_steps", 20),
    ({"type": "piecewise_constant", "steps": [[0, 1.0], ["50%", 0.5], ["1.5 epochs", 0.1]]}, "piecewise",
     ((0, 1.0), (20, 0.5), (30, 0.1))),
    ({"type": "sequence", "phases": [{"shape": "linear", "from": 0, "until": "1 epochs", "to": 1},
                                     {"shape": "cosine", "until": "100%", "to": 0}]}, "phases",
     (("linear", 20, 0.0, 1.0), ("cosine", 40, 1.0, 0.0))),
])
def test_a_shape_converts_its_own_durations_through_the_plans_converter(scheduler, key, value):
    """20 steps per epoch, 40 steps: epochs and percentages land on the same steps as everywhere else."""
    plan = build_step_plan(validate_preset({"training": {"epochs": 2}, "scheduler": scheduler}), num_images=20)
    assert getattr(plan.schedule, key) == value


class Halving(Shape):
    """A shape written for this test: f = 0.5 ** (k - Wu)."""

    name = "halving"

    def multipliers(self, schedule, k):
        return 0.5 ** (k - schedule.warmup_steps).astype(np.float64)

    def warnings(self, schedule):
        return ["halving is steep"]

    def cycle_starts(self, schedule):
        return [schedule.warmup_steps + 1]


def test_a_new_shape_is_one_class_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(SHAPES, "halving", Halving())
    schedule = ResolvedSchedule(type="halving", total_steps=6, warmup_steps=2)
    assert applied_multipliers(schedule).tolist() == [0.0, 0.5, 1.0, 0.5, 0.25, 0.125]
    assert applied_multipliers(schedule, [1, 4, 99]).tolist() == [0.5, 0.25, 0.125]
    assert cycle_starts(schedule) == [3]


def test_a_shape_is_still_callable_as_a_function_of_the_schedule_and_the_steps():
    schedule = ResolvedSchedule(type="linear", total_steps=10, warmup_steps=2, min_factor=0.1)
    k = np.arange(2, 10)
    np.testing.assert_array_equal(SHAPES["linear"](schedule, k), g(schedule, remaining(schedule, k)))


@pytest.mark.parametrize("scheduler, words", [
    ({"type": "constant", "min_factor": 0.1}, "min_factor has no effect with the constant schedule"),
    ({"type": "piecewise_constant", "steps": [[0, 1.0], [30, 0.5]]}, "the boundary at step 30"),
    ({"type": "sine", "period": 5}, "the sine period (5 steps) is odd"),
    ({"type": "cosine_with_restarts", "cycles": 8}, "fewer than 2 steps per cycle"),
])
def test_each_shape_says_its_own_warnings(scheduler, words):
    plan = build_step_plan(validate_preset({"training": {"max_steps": 10}, "scheduler": scheduler}), num_images=10)
    own = SHAPES[scheduler["type"]].warnings(plan.schedule)
    assert [warning for warning in own if words in warning]
    assert set(own) <= set(plan.warnings)


# --- custom: the plan carries its values ---------------------------------------------------


def custom_plan(tmp_path, steps=12):
    source = tmp_path / "mine.py"
    source.write_text("import numpy as np\n\n\ndef shape(k, total_steps):\n"
                      "    return 1.0 - k / (2 * total_steps)\n", encoding="utf-8")
    preset = validate_preset({"training": {"max_steps": steps},
                              "scheduler": {"type": "custom", "function": f"{source}:shape"}})
    return preset, build_step_plan(preset, num_images=4), source


def test_the_curve_of_a_custom_plan_needs_no_cache_and_no_file(tmp_path):
    preset, plan, source = custom_plan(tmp_path)
    custom_function._evaluate.cache_clear()
    source.unlink()
    curve = build_lr_curve(plan, preset.optimizer)
    np.testing.assert_array_equal(curve.effective_multipliers, 1.0 - np.arange(12) / 24)
    assert curve.applied_lrs(5) == [preset.optimizer.lr * (1.0 - 5 / 24)]


def test_the_curve_of_a_custom_plan_works_in_a_fresh_process(tmp_path):
    preset, plan, source = custom_plan(tmp_path)
    (tmp_path / "plan.pickle").write_bytes(pickle.dumps((plan, preset.optimizer)))
    source.unlink()
    script = ("import pickle, sys\n"
              "from modules.schedule.lr_curve import build_lr_curve\n"
              "plan, optimizer = pickle.loads(open(sys.argv[1], 'rb').read())\n"
              "print(build_lr_curve(plan, optimizer).effective_multipliers.tolist())\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "plan.pickle")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str((1.0 - np.arange(12) / 24).tolist())


def test_the_custom_values_are_not_part_of_the_identity(tmp_path):
    _, plan, _ = custom_plan(tmp_path)
    assert "custom_values" not in plan.identity()["schedule"]
    assert plan.identity()["schedule"]["function_sha256"] == custom_function.source_digest(plan.schedule.function)


# --- LR scaling (SPEC §9), by hand: batch 2 x 3 processes x accumulation 4 ------------------------


@pytest.mark.parametrize("scaling, by, factor", [
    ("linear", "global_batch", 24.0),                # 2 * 3 * 4
    ("sqrt", "global_batch", 4.898979485566356),     # sqrt(24)
    ("linear", "batch", 6.0),                        # 2 * 3
    ("sqrt", "batch", 2.449489742783178),            # sqrt(6)
    ("linear", "accumulation", 4.0),                 # 4
    ("sqrt", "accumulation", 2.0),                   # sqrt(4)
])
def test_lr_scaling_by_each_count_matches_the_hand_computed_factor(scaling, by, factor):
    preset = validate_preset({
        "training": {"epochs": 1, "batch_size": 2, "num_processes": 3, "gradient_accumulation_steps": 4},
        "optimizer": {"lr": 1e-4, "lr_scaling": scaling, "lr_scaling_by": by},
    })
    plan = build_step_plan(preset, num_images=96)
    assert plan.lr_scale == pytest.approx(factor, rel=1e-15)
    curve = build_lr_curve(plan, preset.optimizer)
    assert curve.base_lrs == (pytest.approx(1e-4 * factor, rel=1e-15),)


def test_sqrt_scaling_by_batch_is_not_linear():
    preset = validate_preset({"training": {"epochs": 1, "batch_size": 4},
                              "optimizer": {"lr": 1e-4, "lr_scaling": "sqrt", "lr_scaling_by": "batch"}})
    plan = build_step_plan(preset, num_images=8)
    assert plan.lr_scale == 2.0 and plan.lr_scale != 4.0
    assert math.isclose(build_lr_curve(plan, preset.optimizer).base_lrs[0], 2e-4)
