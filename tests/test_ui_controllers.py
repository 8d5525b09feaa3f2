"""The app's controllers without a display: edits -> the one validator -> preview data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_images

from modules.config import apply_overrides, load_preset, validate_preset
from modules.errors import ConfigError
from modules.lr_curve import read_lr_csv
from ui.controllers.fields import ALL_FIELDS, SCHEDULER_FIELDS, active_scheduler_keys, parse_text
from ui.controllers.image_counter import ImageCounter
from ui.controllers.preset_draft import PresetDraft
from ui.controllers.run_controller import RunController


def make_draft(folder: Path, **sections) -> PresetDraft:
    raw = {
        "version": 1,
        "data": {"path": str(folder)},
        "training": {"epochs": 3, "batch_size": 1, "gradient_accumulation_steps": 1},
        "optimizer": {"lr": 1e-3},
        "scheduler": {"type": "cosine", "warmup": 2},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return PresetDraft(raw, ImageCounter(synchronous=True))


def test_an_edit_yields_a_new_preview(image_folder):
    draft = make_draft(image_folder)
    before = draft.evaluate()
    assert before.fresh and before.error is None
    draft.set_text("training.batch_size", "2")
    after = draft.evaluate()
    assert after.fresh and after.error is None
    assert after.preview.plan.batch_size == 2
    assert after.preview.plan.steps_per_epoch == 4  # ceil(7 / 2)
    assert after.preview.plan.total_steps < before.preview.plan.total_steps


def test_seven_images_batch_1_accumulation_2_gives_4_steps_per_epoch(image_folder):
    draft = make_draft(image_folder)
    draft.set_text("training.gradient_accumulation_steps", "2")
    plan = draft.evaluate().preview.plan
    assert plan.num_images == 7
    assert plan.steps_per_epoch == 4
    assert plan.summary().startswith("7 images x 1 repeat, batch 1, accumulation 2 -> 4 steps/epoch x 3 epochs")


def test_accumulation_1_to_2_halves_the_steps(tmp_path):
    draft = make_draft(make_images(tmp_path / "eight", 8))
    one = draft.evaluate().preview.plan.total_steps
    draft.set_text("training.gradient_accumulation_steps", "2")
    two = draft.evaluate().preview.plan.total_steps
    assert one == 24 and two == 12


@pytest.mark.parametrize(
    "key, text",
    [("training.batch_size", "2x"), ("scheduler.warmup", "10 epocs"), ("optimizer.lr", "-1"),
     ("scheduler.min_factor", "1.5"), ("model.resolution", "30")],
)
def test_a_typo_gives_the_validators_message_and_key(image_folder, key, text):
    draft = make_draft(image_folder)
    draft.set_text(key, text)
    state = draft.evaluate()
    with pytest.raises(ConfigError) as expected:
        validate_preset(apply_overrides(draft.raw, []))
    assert state.error == str(expected.value)
    assert state.error_key == expected.value.key == key
    assert not state.fresh


def test_plan_errors_come_from_the_step_plan_with_their_key(image_folder):
    draft = make_draft(image_folder)
    draft.set_text("scheduler.warmup", "100%")
    state = draft.evaluate()
    assert state.error_key == "scheduler.warmup"
    assert "shorter than the run" in state.error


def test_the_last_valid_preview_stays_while_a_field_is_invalid(image_folder):
    draft = make_draft(image_folder)
    valid = draft.evaluate().preview
    draft.set_text("scheduler.cycles", "two")
    draft.set_text("scheduler.type", "cosine_with_restarts")
    state = draft.evaluate()
    assert state.error_key == "scheduler.cycles"
    assert state.preview is valid and not state.fresh
    draft.set_text("scheduler.cycles", "2")
    fixed = draft.evaluate()
    assert fixed.fresh and fixed.preview is not valid
    assert fixed.preview.plan.cycle_starts != valid.plan.cycle_starts


def test_a_missing_dataset_folder_names_data_path(tmp_path):
    draft = make_draft(tmp_path / "nowhere")
    state = draft.evaluate()
    assert state.error_key == "data.path" and "does not exist" in state.error


# --- which fields a schedule type uses -------------------------------------------

PERTURBED = {
    "scheduler.warmup": "9",
    "scheduler.warmup_start_factor": "0.5",
    "scheduler.min_factor": "0.3",
    "scheduler.cycles": "3",
    "scheduler.power": "2.5",
    "scheduler.period": "10",
    "scheduler.timescale": "7",
    "scheduler.decay": "40%",
    "scheduler.decay_shape": "cosine",
    "scheduler.steps": '[[0, 1.0], ["30%", 0.2]]',
}
BASE_SCHEDULER = {"warmup": 4, "cycles": 2, "power": 1.0, "period": 20, "timescale": 3, "decay": "20%",
                  "steps": [[0, 1.0], ["60%", 0.5]]}


@pytest.mark.parametrize("schedule_type", ALL_FIELDS["scheduler.type"].choices)
def test_the_active_fields_are_exactly_those_that_shape_the_curve(image_folder, schedule_type):
    """Editing a field the type shows changes the curve; editing a hidden one never does."""
    def multipliers(edit=None):
        draft = make_draft(image_folder, training={"epochs": None, "max_steps": 100},
                           scheduler={**BASE_SCHEDULER, "type": schedule_type})
        if edit:
            draft.set_text(edit, PERTURBED[edit])
        state = draft.evaluate()
        assert state.error is None, state.error
        return state.preview.curve.effective_multipliers

    base = multipliers()
    active = active_scheduler_keys(schedule_type)
    assert "scheduler.warmup" in active
    for spec in SCHEDULER_FIELDS:
        changed = not np.array_equal(multipliers(spec.key), base)
        assert changed == (spec.key in active), f"{schedule_type}: {spec.key}"


def test_switching_the_type_changes_the_active_fields_and_fills_a_required_one(image_folder):
    draft = make_draft(image_folder)
    assert "scheduler.cycles" not in active_scheduler_keys(draft.schedule_type)
    draft.set_text("scheduler.type", "cosine_with_hard_restarts")
    assert "scheduler.cycles" in active_scheduler_keys(draft.schedule_type)
    assert "scheduler.period" not in active_scheduler_keys(draft.schedule_type)
    draft.set_text("scheduler.type", "piecewise_constant")
    assert active_scheduler_keys(draft.schedule_type) == (
        "scheduler.warmup", "scheduler.warmup_start_factor", "scheduler.steps")
    # Piecewise needs steps; switching to it gives an example instead of an error.
    state = draft.evaluate()
    assert state.error is None and state.preview.plan.schedule.type == "piecewise_constant"


def test_duration_fields_accept_steps_percent_and_epochs(image_folder):
    spec = ALL_FIELDS["scheduler.warmup"]
    assert parse_text(spec, "200") == 200
    assert parse_text(spec, " 10% ") == "10%"
    assert parse_text(spec, "1.5 epochs") == "1.5 epochs"
    draft = make_draft(image_folder, training={"gradient_accumulation_steps": 2})  # 4 steps/epoch, 12 steps
    for text, steps in (("3", 3), ("25%", 3), ("1.5 epochs", 6)):
        draft.set_text("scheduler.warmup", text)
        assert draft.evaluate().preview.plan.warmup_steps == steps
    draft.set_text("training.max_steps", "")
    assert draft.raw["training"]["max_steps"] is None


def test_parameter_groups_are_edited_by_index(image_folder):
    draft = make_draft(image_folder)
    draft.add_group()
    assert draft.groups()[0]["name"] == "group1"
    draft.set_group_text(0, "lr", "0.0005")
    preview = draft.evaluate().preview
    assert preview.curve.group_names == ("group1", "unet")
    assert preview.curve.base_lrs == (0.0005, 1e-3)
    draft.set_group_text(0, "match", "(")
    state = draft.evaluate()
    assert state.error_key == "optimizer.param_groups.0.match"
    draft.remove_group(0)
    assert draft.evaluate().preview.curve.group_names == ("unet",)


# --- the same curve as the command line ---------------------------------------------

def test_the_preview_equals_the_preview_commands_csv(image_folder, tmp_path):
    draft = make_draft(image_folder, scheduler={"type": "cosine_with_hard_restarts", "cycles": 2, "min_factor": 0.1})
    draft.set_text("scheduler.warmup", "0.5 epochs")
    draft.set_text("training.gradient_accumulation_steps", "2")
    draft.add_group()
    draft.set_group_text(0, "lr", "0.0002")
    preset_path = tmp_path / "edited.json"
    draft.save(preset_path)
    cli_csv = tmp_path / "cli.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "preview.py"), str(preset_path), "--csv", str(cli_csv)],
                   check=True, capture_output=True, cwd=tmp_path)
    names, table = read_lr_csv(cli_csv)
    preview = draft.evaluate().preview
    assert tuple(names) == preview.curve.group_names
    np.testing.assert_array_equal(table, preview.curve.effective_table())
    gui_csv = tmp_path / "gui.csv"
    draft.export_csv(gui_csv)
    assert gui_csv.read_bytes() == cli_csv.read_bytes()


def test_export_png_writes_a_picture(image_folder, tmp_path):
    draft = make_draft(image_folder)
    draft.export_png(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- presets --------------------------------------------------------------------------

def test_loading_and_saving_a_preset_round_trips(tmp_path):
    draft = PresetDraft(counter=ImageCounter(synchronous=True))
    draft.load(ROOT / "training_presets" / "demo.json")
    draft.set_value("data.path", str(ROOT / "training_presets" / "demo_images"))
    draft.set_text("scheduler.min_factor", "0.2")
    saved = tmp_path / "saved.json"
    draft.save(saved)

    again = PresetDraft(counter=ImageCounter(synchronous=True))
    again.load(saved)
    assert again.text("scheduler.min_factor") == "0.2"
    for key in ALL_FIELDS:
        assert again.text(key) == draft.text(key), key
    assert again.groups() == draft.groups()
    assert load_preset(saved) == validate_preset(draft.raw)  # what scripts/train.py reads
    np.testing.assert_array_equal(again.evaluate().preview.curve.effective_table(),
                                  draft.evaluate().preview.curve.effective_table())
    again.save(tmp_path / "twice.json")
    assert json.loads((tmp_path / "twice.json").read_text()) == json.loads(saved.read_text())


def test_an_invalid_draft_is_not_saved(image_folder, tmp_path):
    draft = make_draft(image_folder)
    draft.set_text("training.batch_size", "0")
    with pytest.raises(ConfigError) as error:
        draft.save(tmp_path / "bad.json")
    assert error.value.key == "training.batch_size"
    assert not (tmp_path / "bad.json").exists()


def test_loading_a_file_that_is_not_json_keeps_the_draft(image_folder, tmp_path):
    draft = make_draft(image_folder)
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        draft.load(tmp_path / "broken.json")
    assert draft.evaluate().fresh


# --- image counting -----------------------------------------------------------------

def test_images_are_counted_off_the_caller_thread_once_per_folder(image_folder):
    counter = ImageCounter()
    draft = PresetDraft({"data": {"path": str(image_folder)}}, counter)
    first = draft.evaluate()
    assert first.counting == str(image_folder) and first.preview is None
    counter.wait()
    assert counter.collect() is True
    assert draft.evaluate().image_count == 7
    for batch in range(1, 6):
        draft.set_text("training.batch_size", str(batch))
        assert draft.evaluate().fresh
    assert counter.walks == 1


def test_a_changed_folder_is_counted_again(image_folder):
    counter = ImageCounter(synchronous=True)
    assert counter.lookup(str(image_folder)) == 7
    make_images(image_folder, 9)  # adds image_0007 and image_0008
    assert counter.lookup(str(image_folder)) == 9
    counter.forget(str(image_folder))
    assert counter.lookup(str(image_folder)) == 9
    assert counter.walks == 3


# --- the Run tab's state ----------------------------------------------------------------

def test_run_controller_tracks_progress_and_the_lr_used(image_folder):
    preview = make_draft(image_folder).evaluate().preview
    run = RunController()
    run.start(preview, resume=False)
    for k in range(3):
        run.handle(("step", {"step": k, "total_steps": 21, "epoch": 0, "loss": 1.0 - k / 10,
                             "lrs": {"unet": preview.curve.effective_lrs(k)[0]}, "elapsed_seconds": k + 1.0,
                             "eta_seconds": 18.0 - k}))
    assert run.step == 3 and run.fraction == pytest.approx(3 / 21)
    assert run.progress_text().startswith("step 3 / 21 (14%)")
    assert "ETA 0:16" in run.progress_text()
    steps, lrs = run.actual_lrs()["unet"]
    assert steps == [0, 1, 2]
    assert lrs == [preview.curve.effective_lrs(k)[0] for k in range(3)]
    run.handle(("failed", "RuntimeError: out of memory", "Traceback ..."))
    assert run.status == "failed" and not run.active
    assert run.error == "RuntimeError: out of memory"
    assert run.log_lines[-1] == "Error: RuntimeError: out of memory"


def test_a_long_run_is_thinned_for_the_plot_but_kept_whole(image_folder):
    run = RunController()
    run.start(make_draft(image_folder).evaluate().preview, resume=False)
    for k in range(10_001):
        run.handle(("step", {"step": k, "total_steps": 20_000, "epoch": 0, "loss": float(k), "lrs": {"unet": k * 1e-6},
                             "elapsed_seconds": 1.0, "eta_seconds": 1.0}))
    steps, lrs = run.actual_lrs(max_points=1000)["unet"]
    assert 900 <= len(steps) <= 1001 and steps[0] == 0 and steps[-1] == 10_000
    assert lrs == [step * 1e-6 for step in steps]
    assert run.loss_points(1000) == (steps, [float(step) for step in steps])
    assert len(run.actual_lrs()["unet"][0]) == 10_001


def test_with_buckets_the_app_plans_from_the_image_sizes_and_lists_the_buckets(tmp_path):
    from PIL import Image

    from modules.preview import bucket_lines
    from modules.step_plan import build_step_plan

    folder = tmp_path / "mixed"
    folder.mkdir()
    for index, (width, height) in enumerate([(16, 16), (32, 16), (16, 32), (32, 8), (17, 16)]):
        Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    counter = ImageCounter(synchronous=True)
    draft = PresetDraft({"model": {"resolution": 16}, "data": {"path": str(folder)},
                         "training": {"batch_size": 2}}, counter)
    for key, text in (("data.buckets", True), ("data.bucket_step", "8"), ("data.bucket_max_aspect", "4"),
                      ("data.num_workers", "0")):
        draft.set_text(key, text)
    state = draft.wait_for_images()
    assert state.error is None and state.image_count == 5
    plan = state.preview.plan
    assert plan == build_step_plan(state.preset)  # the trainer's plan, counted from the same headers
    assert [(w, h, n) for w, h, n in plan.buckets] == [(8, 24, 1), (16, 16, 2), (24, 8, 1), (32, 8, 1)]
    assert "16x16 x 2" in bucket_lines(plan)[0]
    assert any("bucket 8x24 holds 1 sample, fewer than one batch" in warning for warning in plan.warnings)
    draft.set_text("data.bucket_step", "12")
    state = draft.evaluate()
    assert state.error_key == "data.bucket_step" and "multiple of 8" in state.error
