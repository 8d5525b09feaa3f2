"""SPEC §9 in the plan, the curve and the preview CLI: LR scaling, custom and sequence schedules."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modules.config.preset import validate_preset
from modules.errors import ConfigError
from modules.schedule.lr_curve import read_lr_csv
from modules.schedule.preview import build_preview
from modules.schedule.shapes import applied_multipliers
from modules.schedule.step_plan import build_step_plan

ROOT = Path(__file__).resolve().parents[2]


def plan_for(images=100, training=None, optimizer=None, scheduler=None):
    preset = validate_preset({"training": {"epochs": 1, **(training or {})}, "optimizer": optimizer or {},
                              "scheduler": scheduler or {}})
    return build_preview(preset, num_images=images)


def preview_cli(tmp_path, *sets):
    preset = tmp_path / "preset.json"
    if not preset.exists():
        make_folder = tmp_path / "images"
        from tests.conftest import make_images

        make_images(make_folder, 10)
        preset.write_text('{"data": {"path": "%s"}, "training": {"epochs": 2}}' % make_folder.as_posix())
    command = [sys.executable, str(ROOT / "scripts" / "preview.py"), str(preset), "--csv", str(tmp_path / "lr.csv")]
    for item in sets:
        command += ["--set", item]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)


# --- LR scaling ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scaling, by, processes, factor, note",
    [
        ("sqrt", "global_batch", 1, math.sqrt(8), "lr 1e-4 x sqrt(8) = 2.83e-4 (batch 2 x accumulation 4)"),
        ("linear", "global_batch", 1, 8.0, "lr 1e-4 x 8 = 8e-4 (batch 2 x accumulation 4)"),
        ("linear", "batch", 3, 6.0, "lr 1e-4 x 6 = 6e-4 (batch 2 x 3 processes)"),
        ("sqrt", "accumulation", 1, 2.0, "lr 1e-4 x sqrt(4) = 2e-4 (accumulation 4)"),
    ],
)
def test_lr_scaling_multiplies_every_group_once_and_the_summary_says_how(scaling, by, processes, factor, note):
    optimizer = {"lr": 1e-4, "lr_scaling": scaling, "lr_scaling_by": by,
                 "param_groups": [{"name": "attention", "match": "attn", "lr": 5e-5}]}
    preview = plan_for(training={"batch_size": 2, "gradient_accumulation_steps": 4, "num_processes": processes},
                       optimizer=optimizer, scheduler={"type": "cosine", "warmup": 2})
    assert preview.plan.lr_scale == factor
    assert preview.plan.summary().endswith(", " + note)
    table = preview.curve.effective_table()
    multipliers = applied_multipliers(preview.plan.schedule)
    np.testing.assert_array_equal(table[:, 0], (5e-5 * factor) * multipliers)
    np.testing.assert_array_equal(table[:, 1], (1e-4 * factor) * multipliers)


def test_no_scaling_leaves_the_lr_and_the_summary_alone():
    preview = plan_for(training={"batch_size": 2})
    assert preview.plan.lr_scale == 1.0 and "lr " not in preview.plan.summary()
    assert preview.curve.base_lrs == (1e-4,)


def test_the_preview_csv_shows_the_scaled_lr(tmp_path):
    result = preview_cli(tmp_path, "optimizer.lr_scaling=linear", "training.batch_size=2",
                         "training.gradient_accumulation_steps=2")
    assert result.returncode == 0, result.stderr
    assert "lr 1e-4 x 4 = 4e-4 (batch 2 x accumulation 2)" in result.stdout
    names, table = read_lr_csv(tmp_path / "lr.csv")
    assert names == ["unet"] and np.all(table == 4e-4)


def test_an_unknown_scaling_is_one_line_naming_the_allowed_values(tmp_path):
    result = preview_cli(tmp_path, "optimizer.lr_scaling=square")
    assert result.returncode == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert "optimizer.lr_scaling" in result.stderr and "'sqrt'" in result.stderr


# --- sequence ---------------------------------------------------------------------------


def test_sequence_follows_the_formula_at_the_points_that_matter():
    phases = [{"shape": "linear", "from": 0, "until": 10, "to": 1}, {"shape": "constant", "until": "50%"},
              {"shape": "cosine", "until": "100%", "to": 0.1}]
    preview = plan_for(images=100, scheduler={"type": "sequence", "phases": phases})
    f = preview.curve.applied_multipliers
    assert preview.plan.total_steps == 100 and preview.plan.cycle_starts == [10, 50]
    assert f[0] == 0 and f[5] == 0.5 and f[10] == 1 and f[49] == 1 and f[50] == 1
    assert f[75] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-15)  # q = 0.5: halfway down the cosine
    assert f[99] == pytest.approx(1 + (0.1 - 1) * 0.5 * (1 - math.cos(math.pi * 49 / 50)), abs=1e-15)
    assert applied_multipliers(preview.plan.schedule, [100, 10_000]).tolist() == [f[99], f[99]]  # past the plan
    np.testing.assert_array_equal(applied_multipliers(preview.plan.schedule, [75, 5, 50, 12]), f[[75, 5, 50, 12]])


def test_sequence_phase_from_defaults_to_the_previous_end_and_to_defaults_to_from():
    phases = [{"shape": "linear", "until": "50%", "to": 0.5}, {"shape": "linear", "until": "100%"}]
    f = plan_for(images=10, scheduler={"type": "sequence", "phases": phases}).curve.applied_multipliers
    np.testing.assert_allclose(f, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5], atol=1e-15)


def test_the_xtuner_case_decays_through_all_three_epochs():
    """mmengine's phases with an end in the wrong unit stopped the cosine after one epoch of three;
    here every `until` is converted in the plan, so the cosine runs to the last step."""
    phases = [{"shape": "linear", "from": 0, "until": "0.03 epochs", "to": 1},
              {"shape": "cosine", "until": "100%", "to": 0}]
    preview = plan_for(images=1000, training={"epochs": 3}, scheduler={"type": "sequence", "phases": phases})
    plan, f = preview.plan, preview.curve.applied_multipliers
    assert plan.steps_per_epoch == 1000 and plan.total_steps == 3000 and plan.cycle_starts == [30]
    decay = f[30:]
    assert np.all(np.diff(decay) < 0)  # falls at every step to the end, never flat or rising again
    epoch_ends = [f[999], f[1999], f[2999]]
    assert epoch_ends[0] > 0.7 and 0.2 < epoch_ends[1] < 0.3 and 0 < epoch_ends[2] < 1e-5


@pytest.mark.parametrize(
    "phases, key, words",
    [
        ([{"shape": "linear", "until": "50%"}, {"shape": "cosine", "until": "40%"}], "phases.1.until", "must end later"),
        ([{"shape": "linear", "until": "0.001 epochs"}, {"shape": "cosine", "until": "100%"}], "phases.0.until",
         "0 steps"),
        ([{"shape": "linear", "until": "50%", "to": 0}], "phases.0.until", 'must end with the run ("100%")'),
        ([{"shape": "linear", "until": 500, "to": 0}], "phases.0.until", "past the end of the run"),
        ([{"shape": "constant", "until": "100%", "to": 0.5}], "phases.0.to", "holds its 'from'"),
        ([{"shape": "linear", "until": "100%", "to": -1}], "phases.0.to", "greater than or equal to 0"),
        ([{"shape": "wave", "until": "100%"}], "phases.0.shape", "'linear', 'cosine' or 'constant'"),
    ],
)
def test_bad_phases_are_one_line_naming_the_phase(phases, key, words):
    with pytest.raises(ConfigError) as error:
        plan_for(images=100, scheduler={"type": "sequence", "phases": phases})
    assert str(error.value).startswith(f"scheduler.{key}: ") and words in str(error.value)


def test_sequence_refuses_a_warmup_of_its_own():
    with pytest.raises(ConfigError, match="scheduler.warmup: must be 0 with the sequence schedule"):
        plan_for(scheduler={"type": "sequence", "warmup": 5, "phases": [{"shape": "linear", "until": "100%"}]})


# --- custom -----------------------------------------------------------------------------


def write_function(path: Path, body: str, name: str = "shape") -> str:
    path.write_text(f"import numpy as np\n\n\ndef {name}(k, total_steps):\n    {body}\n", encoding="utf-8")
    return f"{path}:{name}"


def test_a_custom_function_is_called_once_on_the_whole_plan_and_used_everywhere(tmp_path):
    calls = tmp_path / "calls.txt"
    spec = write_function(tmp_path / "mine.py", f"open({str(calls)!r}, 'a').write('x')\n"
                                                "    return 0.5 * (1 + np.cos(np.pi * k / total_steps))")
    preview = plan_for(images=40, scheduler={"type": "custom", "function": spec})
    expected = 0.5 * (1 + np.cos(np.pi * np.arange(40) / 40))
    np.testing.assert_array_equal(preview.curve.applied_multipliers, expected)
    np.testing.assert_array_equal(applied_multipliers(preview.plan.schedule, [3, 39, 90]), expected[[3, 39, 39]])
    assert calls.read_text() == "x"
    assert preview.plan.identity()["schedule"]["function"] == spec


def test_editing_a_custom_function_changes_the_plan_identity(tmp_path):
    spec = write_function(tmp_path / "mine.py", "return np.ones(len(k))")
    before = build_step_plan(validate_preset({"scheduler": {"type": "custom", "function": spec}}), 10)
    write_function(tmp_path / "mine.py", "return np.full(len(k), 0.5)")
    after = build_step_plan(validate_preset({"scheduler": {"type": "custom", "function": spec}}), 10)
    assert before.fingerprint != after.fingerprint
    assert applied_multipliers(after.schedule).tolist() == [0.5] * 10


def test_a_module_function_loads_by_import_name(tmp_path, monkeypatch):
    (tmp_path / "my_schedules").mkdir()
    (tmp_path / "my_schedules" / "__init__.py").write_text("")
    write_function(tmp_path / "my_schedules" / "shapes.py", "return 1.0 / (1 + k)", name="harmonic")
    monkeypatch.syspath_prepend(str(tmp_path))
    preview = plan_for(images=5, scheduler={"type": "custom", "function": "my_schedules.shapes:harmonic"})
    np.testing.assert_array_equal(preview.curve.applied_multipliers, 1.0 / (1 + np.arange(5)))


def test_a_custom_function_above_1_is_a_warning(tmp_path):
    spec = write_function(tmp_path / "mine.py", "return 1.0 + k / total_steps")
    preview = plan_for(images=10, scheduler={"type": "custom", "function": spec})
    assert any("rises to 1.9 x the base LR" in warning for warning in preview.plan.warnings)


@pytest.mark.parametrize(
    "body, words",
    [
        ("return np.ones(len(k) - 1)", "returned shape (19,); expected one value per step (20,)"),
        ("return np.where(k == 7, np.nan, 1.0)", "returned nan at step 7"),
        ("return np.where(k == 3, -0.5, 1.0)", "returned -0.5 at step 3: multipliers must be >= 0"),
        ("raise RuntimeError('boom')", "raised RuntimeError: boom"),
        ("return 'fast'", "not numbers"),
    ],
)
def test_a_bad_custom_function_is_one_line_naming_it_through_the_cli(tmp_path, body, words):
    spec = write_function(tmp_path / "mine.py", body)
    result = preview_cli(tmp_path, "scheduler.type=custom", f"scheduler.function={spec}")
    assert result.returncode == 2, result.stdout
    line = result.stderr.strip()
    assert line.splitlines() == [line]
    assert line.startswith(f"preview.py: error: scheduler.function: '{spec}'") and words in line


@pytest.mark.parametrize(
    "function, words",
    [
        ("missing.py:shape", "the file 'missing.py' does not exist"),
        ("mine.py:other", "'mine.py' defines no 'other'"),
        ("no_such_package.module:shape", "cannot find module 'no_such_package.module'"),
        ("mine.py", 'is not "path/to/file.py:name"'),
        ("broken.py:shape", "loading 'broken.py' failed: SyntaxError"),
    ],
)
def test_a_custom_function_that_cannot_load_is_one_line(tmp_path, function, words):
    write_function(tmp_path / "mine.py", "return np.ones(len(k))")
    (tmp_path / "broken.py").write_text("def shape(k, total_steps)\n")
    result = preview_cli(tmp_path, "scheduler.type=custom", f"scheduler.function={function}")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.splitlines() == [line] and "scheduler.function" in line and words in line
