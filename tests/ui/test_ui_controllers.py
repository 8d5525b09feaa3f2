"""The app's controllers without a display: edits -> the one validator -> preview data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import ROOT, make_images

from modules.config.preset import apply_overrides, load_preset, validate_preset
from modules.errors import ConfigError
from modules.schedule.lr_curve import read_lr_csv
from ui.controllers.fields import ALL_FIELDS, SCHEDULER_FIELDS, active_scheduler_keys, parse_text
from ui.controllers.image_counter import ImageCounter
from ui.controllers.preset_draft import PresetDraft, scaled_lr_note
from ui.controllers.preview_worker import PreviewWorker
from ui.controllers.run_controller import RunController
from ui.controllers.run_history import read_run_history


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
    "scheduler.function": "FOLDER/other_shape.py:shape",
    "scheduler.phases": '[{"shape": "cosine", "until": "100%", "to": 0.2}]',
}
NO_WARMUP_TYPES = ("custom", "sequence")
BASE_SCHEDULER = {"warmup": 4, "cycles": 2, "power": 1.0, "period": 20, "timescale": 3, "decay": "20%",
                  "steps": [[0, 1.0], ["60%", 0.5]]}


@pytest.mark.parametrize("schedule_type", ALL_FIELDS["scheduler.type"].choices)
def test_the_active_fields_are_exactly_those_that_shape_the_curve(image_folder, schedule_type):
    """Editing a field the type shows changes the curve; editing a hidden one never does."""
    folder = image_folder.parent
    for name, body in (("shape", "1.0 - 0.5 * k / total_steps"), ("other_shape", "1.0 - 0.9 * k / total_steps")):
        (folder / f"{name}.py").write_text(f"def shape(k, total_steps):\n    return {body}\n")
    own = {"warmup": 0, "function": f"{folder}/shape.py:shape",
           "phases": [{"shape": "linear", "until": "100%", "to": 0.1}]} if schedule_type in NO_WARMUP_TYPES else {}

    def multipliers(edit=None):
        draft = make_draft(image_folder, training={"epochs": None, "max_steps": 100},
                           scheduler={**BASE_SCHEDULER, **own, "type": schedule_type})
        if edit:
            draft.set_text(edit, PERTURBED[edit].replace("FOLDER", str(folder)))
        state = draft.evaluate()
        assert state.error is None, state.error
        return state.preview.curve.effective_multipliers

    base = multipliers()
    active = active_scheduler_keys(schedule_type)
    assert ("scheduler.warmup" in active) == (schedule_type not in NO_WARMUP_TYPES)
    for spec in SCHEDULER_FIELDS:
        if spec.key == "scheduler.warmup" and schedule_type in NO_WARMUP_TYPES:
            continue  # must stay 0 for them (a validation error otherwise; switching to them sets it)
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


def test_switching_to_sequence_gives_example_phases_and_drops_the_warmup(image_folder):
    draft = make_draft(image_folder)  # cosine with warmup 2
    draft.set_text("scheduler.type", "sequence")
    state = draft.evaluate()
    assert state.error is None and draft.value("scheduler.warmup") == 0
    assert state.preview.plan.cycle_starts == [1]  # the example's warmup phase ends at 5% of 21 steps
    draft.set_text("scheduler.type", "custom")
    assert draft.evaluate().error_key == "scheduler.function"


@pytest.mark.parametrize("scaling, note", [("none", ""), ("linear", "x 4 = 4e-3"), ("sqrt", "x sqrt(4) = 2e-3")])
def test_the_scaled_lr_is_shown_beside_the_lr_field(image_folder, scaling, note):
    draft = make_draft(image_folder, training={"batch_size": 2, "gradient_accumulation_steps": 2})
    draft.set_text("optimizer.lr_scaling", scaling)
    state = draft.evaluate()
    assert scaled_lr_note(state.preview) == note
    assert state.preview.curve.base_lrs[-1] == pytest.approx(1e-3 * {"none": 1, "linear": 4, "sqrt": 2}[scaling],
                                                             rel=1e-15)


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


# --- a preset with keys no field has ---------------------------------------------------

def test_a_loaded_presets_unknown_keys_are_listed_and_can_be_dropped(image_folder, tmp_path):
    preset = {"version": 1, "data": {"path": str(image_folder)}, "training": {"epochs": 2, "epoks": 3},
              "scheduler": {"type": "cosine", "min_facter": 0.1},
              "optimizer": {"param_groups": [{"name": "attention", "match": "attentions", "lr": 1e-4, "lrr": 1}]}}
    path = tmp_path / "misspelt.json"
    path.write_text(json.dumps(preset))
    draft = PresetDraft(counter=ImageCounter(synchronous=True))
    draft.load(path)
    unknown = draft.unknown_keys()
    assert [item.key for item in unknown] == ["training.epoks", "optimizer.param_groups.0.lrr",
                                              "scheduler.min_facter"]
    assert [item.suggestion for item in unknown] == ["epochs", "lr", "min_factor"]
    assert "did you mean 'min_factor'" in unknown[2].describe()
    with pytest.raises(ConfigError, match="unknown key"):
        draft.save(tmp_path / "refused.json")

    draft.drop_keys([item.key for item in unknown])
    assert draft.unknown_keys() == [] and draft.evaluate().fresh
    draft.save(tmp_path / "fixed.json")
    saved = load_preset(tmp_path / "fixed.json")
    assert saved.training.epochs == 2 and saved.optimizer.param_groups[0].lr == 1e-4  # the known keys stay


def test_a_key_in_the_wrong_section_says_where_it_belongs_and_is_moved_there(image_folder, tmp_path):
    preset = {"version": 1, "data": {"path": str(image_folder)},
              "training": {"epochs": 2, "lr": 3e-4, "warmup": 2}, "scheduler": {"warmup": 1}}
    path = tmp_path / "misplaced.json"
    path.write_text(json.dumps(preset))
    draft = PresetDraft(counter=ImageCounter(synchronous=True))
    draft.load(path)
    unknown = {item.key: item for item in draft.unknown_keys()}
    assert unknown["training.lr"].belongs_at == "optimizer.lr"
    assert "belongs in optimizer.lr" in unknown["training.lr"].describe()
    assert unknown["training.warmup"].belongs_at == "scheduler.warmup"

    assert draft.move_keys() == ["training.lr"]  # scheduler.warmup holds a value already: the user chooses
    assert draft.value("optimizer.lr") == 3e-4 and "lr" not in draft.raw["training"]
    assert [item.key for item in draft.unknown_keys()] == ["training.warmup"]
    draft.drop_keys(["training.warmup"])
    assert draft.evaluate().fresh and draft.value("scheduler.warmup") == 1


def test_the_app_refuses_at_the_field_what_training_refuses(tmp_path, image_folder):
    draft = make_draft(image_folder)
    draft.set_value("output.dir", str(image_folder / "out"))
    assert draft.evaluate().error_key == "output.dir"
    draft.set_value("output.dir", str(tmp_path / "out"))
    draft.set_value("optimizer.type", "adamw_8bit")
    draft.set_value("training.device", "cpu")
    state = draft.evaluate()
    assert state.error_key == "optimizer.type" and "needs a CUDA device" in state.error

    broken = make_images(tmp_path / "broken", 2)
    (broken / "image_0001.png").write_bytes(b"not a png")
    draft = make_draft(broken)
    state = draft.wait_for_images()
    assert state.error_key == "data.path" and "cannot read image" in state.error


def test_the_app_checks_captions_as_training_does(tmp_path):
    model = tmp_path / "sd_model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    images = make_images(tmp_path / "images", 3, size=8)
    (images / "image_0000.txt").write_text("a cat")
    (images / "image_0002.txt").write_text(" ")
    draft = make_draft(images)
    draft.set_value("model.path", str(model))
    state = draft.wait_for_images()
    assert state.error_key == "data.path" and "1 of 3 images have no caption file" in state.error
    draft.set_value("data.default_caption", "a thing")
    state = draft.wait_for_images()
    assert state.fresh and any(f"caption file '{images / 'image_0002.txt'}' is empty" in line
                               for line in state.warnings)
    (images / "image_0001.txt").write_bytes(b"caf\xe9")
    draft.caption_counter.forget(str(images))
    state = draft.wait_for_images()
    assert state.error_key == "data.path" and "not UTF-8" in state.error


def test_a_valid_preset_has_no_unknown_keys():
    draft = PresetDraft(counter=ImageCounter(synchronous=True))
    draft.load(ROOT / "training_presets" / "demo.json")
    assert draft.unknown_keys() == []


# --- what the app's Start cannot do ----------------------------------------------------

def test_several_processes_are_refused_at_the_field_with_the_launch_command(image_folder, tmp_path):
    draft = make_draft(image_folder)
    draft.set_text("training.num_processes", "2")
    state = draft.evaluate()
    assert state.fresh and state.preview.plan.num_processes == 2  # the preview shows what the launch trains
    key, message = state.start_refusal
    assert key == "training.num_processes"
    assert "accelerate launch --num_processes 2 scripts/train.py" in message
    assert "torchrun --nproc_per_node 2 scripts/train.py" in message and "--cpu" not in message
    draft.save(tmp_path / "two.json")  # saving the preset for the launcher is the way
    assert load_preset(tmp_path / "two.json").training.num_processes == 2
    draft.set_text("training.num_processes", "1")
    assert draft.evaluate().start_refusal is None


# --- fields --------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["training.batch_size", "optimizer.lr", "scheduler.min_factor", "scheduler.warmup",
                                 "output.dir"])
def test_an_emptied_required_field_says_required(image_folder, key):
    draft = make_draft(image_folder)
    draft.set_text(key, "")
    state = draft.evaluate()
    assert state.error_key == key
    assert state.error == f"{key}: required (enter a value)"


def test_no_warning_about_a_field_the_schedule_type_hides(image_folder):
    draft = make_draft(image_folder, scheduler={"type": "piecewise_constant", "min_factor": 0.1, "warmup": 12,
                                                "steps": [[0, 1.0], ["50%", 0.1]]})
    state = draft.evaluate()
    assert "scheduler.min_factor" not in active_scheduler_keys("piecewise_constant")
    assert any("min_factor has no effect" in line for line in state.preview.plan.warnings)  # the CLI says it
    assert not any("min_factor" in line for line in state.warnings)
    assert any("over half the run" in line for line in state.warnings)  # warmup is shown: its warning stays
    draft.set_text("scheduler.type", "cosine")
    state = draft.evaluate()
    assert state.warnings == state.preview.plan.warnings


def test_a_folder_that_does_not_exist_is_answered_at_once_off_the_event_loop(tmp_path):
    counter = ImageCounter()  # the app's: counting runs on a thread
    found = counter.lookup(str(tmp_path / "nowhere"))
    assert isinstance(found, ConfigError) and "does not exist" in str(found)
    draft = PresetDraft({"data": {"path": str(tmp_path / "nowhere")}, "training": {"epochs": 1}}, counter)
    state = draft.evaluate()
    assert state.counting is None and state.error_key == "data.path" and "does not exist" in state.error


def test_the_modified_mark_follows_edits_and_clears_on_save_and_load(image_folder, tmp_path):
    draft = make_draft(image_folder)
    draft.save(tmp_path / "a.json")
    assert not draft.modified
    draft.set_text("scheduler.warmup", "3")
    assert draft.modified
    draft.set_text("scheduler.warmup", "2")
    assert not draft.modified  # typed back to what was saved
    draft.add_group()
    assert draft.modified
    draft.save(tmp_path / "b.json")
    assert not draft.modified
    draft.set_text("training.epochs", "5")
    draft.load(tmp_path / "a.json")
    assert not draft.modified


# --- the preview is computed off the GUI thread -----------------------------------------

TRAINING_EDITS = {
    "training.epochs": ("5", lambda plan: plan.num_epochs == 5),
    "training.max_steps": ("9", lambda plan: plan.total_steps == 9),
    "training.batch_size": ("2", lambda plan: plan.batch_size == 2),
    "training.gradient_accumulation_steps": ("3", lambda plan: plan.gradient_accumulation_steps == 3),
    "training.num_processes": ("2", lambda plan: plan.num_processes == 2),
}


@pytest.mark.parametrize("key", sorted(TRAINING_EDITS))
def test_a_training_edit_refreshes_the_preview(image_folder, key):
    """What the app does after an edit: the worker computes the draft as edited."""
    draft = make_draft(image_folder)
    worker = PreviewWorker(draft)
    worker.request()
    assert worker.wait()
    before = worker.collect()
    assert before.fresh and not TRAINING_EDITS[key][1](before.preview.plan)
    text, holds = TRAINING_EDITS[key]
    draft.set_text(key, text)
    worker.request()
    assert worker.wait()
    after = worker.collect()
    assert after is not None and after.fresh and after.revision == draft.revision
    assert holds(after.preview.plan)
    assert after.preview.preset.to_json_dict()["training"][key.split(".")[1]] == int(text)


def test_the_worker_computes_off_the_callers_thread_and_drops_a_stale_result(image_folder, monkeypatch):
    import threading

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import modules.schedule.lr_curve as lr_curve
    import ui.controllers.preset_draft as preset_draft
    from ui.curve_plot import PreviewPlot

    threads = []

    def recording(function):
        def record(*args):
            threads.append((function.__name__, threading.current_thread()))
            return function(*args)
        return record

    # The plan and the whole-plan curve (computed on first use) are the slow parts of a long plan.
    monkeypatch.setattr(preset_draft, "build_preview", recording(preset_draft.build_preview))
    monkeypatch.setattr(lr_curve, "applied_multipliers", recording(lr_curve.applied_multipliers))
    monkeypatch.setattr(lr_curve, "effective_multipliers", recording(lr_curve.effective_multipliers))
    draft = make_draft(image_folder)
    worker = PreviewWorker(draft)
    worker.request()
    assert worker.wait()
    figure = Figure()
    FigureCanvasAgg(figure)
    first = worker.collect().preview
    PreviewPlot(figure).update(first)  # what the view draws on the GUI thread
    assert {name for name, _ in threads} == {"build_preview", "applied_multipliers", "effective_multipliers"}
    assert all(thread is not threading.main_thread() for _, thread in threads), threads

    worker.request()
    assert worker.wait()
    draft.set_text("training.batch_size", "2")  # an edit after that request: its result is stale
    assert worker.collect() is None and worker.dropped == 1
    assert draft.last_valid is first  # a stale result never reaches the screen
    worker.request()
    assert worker.wait()
    state = worker.collect()
    assert state.fresh and state.preview.plan.batch_size == 2 and draft.last_valid is state.preview


def test_a_refused_length_marks_its_field_and_keeps_the_last_curve(image_folder):
    draft = make_draft(image_folder)
    worker = PreviewWorker(draft)
    worker.request()
    worker.wait()
    valid = worker.collect().preview
    for key, text in (("training.epochs", "1000000000000"), ("training.max_steps", str(10 ** 13))):
        draft.set_text(key, text)
        worker.request()
        assert worker.wait()
        state = worker.collect()
        assert state.error_key == key and state.error.startswith(key) and not state.fresh
        assert state.preview is valid
        draft.set_text(key, "")
    draft.set_text("training.epochs", "1")
    draft.set_text("scheduler.warmup", "20")  # a plan the step plan refuses today: warmup past the end
    worker.request()
    worker.wait()
    state = worker.collect()
    assert state.error_key == "scheduler.warmup" and state.preview is valid


# --- the Run tab: history, failed starts, the last epoch -----------------------------------

def test_after_resume_the_earlier_steps_come_from_the_tensorboard_log(image_folder, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    log_dir = tmp_path / "out" / "tensorboard"
    first = SummaryWriter(log_dir=str(log_dir))
    for step in range(6):  # a run killed after step 5, its last checkpoint at step 3
        first.add_scalar("lr/unet", 1e-3 * (step + 1), step)
        first.add_scalar("loss/train", 1.0 / (step + 1), step)
    first.close()
    resumed = SummaryWriter(log_dir=str(log_dir), purge_step=3)  # what the trainer opens on resume
    resumed.add_scalar("lr/unet", 0.5, 3)
    resumed.add_scalar("loss/train", 0.25, 3)
    resumed.close()

    history = read_run_history(tmp_path / "out")
    assert history.steps == [0, 1, 2, 3]
    np.testing.assert_allclose(history.lrs["unet"], [1e-3, 2e-3, 3e-3, 0.5], rtol=1e-6)  # float32 in the log
    assert read_run_history(tmp_path / "empty").steps == []

    run = RunController()
    run.start(make_draft(image_folder).evaluate().preview, resume=True)
    run.set_history(history)
    for step in (3, 4):
        run.handle(("step", {"step": step, "total_steps": 21, "epoch": 0, "loss": 0.1, "lrs": {"unet": 0.25},
                             "elapsed_seconds": 1.0, "eta_seconds": 1.0}))
    steps, lrs = run.actual_lrs()["unet"]
    assert steps == [0, 1, 2, 3, 4]
    assert lrs[3:] == [0.25, 0.25]  # from this session's steps, not the log
    loss_steps, losses = run.loss_points()
    assert loss_steps == steps and losses[3:] == [0.1, 0.1]


def test_a_start_that_fails_before_its_first_step_keeps_the_previous_runs_plots(image_folder):
    preview = make_draft(image_folder).evaluate().preview
    run = RunController()
    run.start(preview, resume=False)
    for step in range(3):
        run.handle(("step", {"step": step, "total_steps": 21, "epoch": 0, "loss": 1.0, "lrs": {"unet": 1e-3},
                             "elapsed_seconds": 1.0, "eta_seconds": 1.0}))
    run.handle(("finished", {"finished": False, "completed_steps": 3, "checkpoint": "c"}))
    run.start(preview, resume=False)
    run.handle(("failed", "output.dir: 'out' already holds checkpoints", "", {"key": "output.dir"}))
    assert run.error.startswith("output.dir")
    assert run.plotted() is not run and run.plotted().loss_points() == ([0, 1, 2], [1.0, 1.0, 1.0])
    assert "previous run" in run.progress_text()
    run.start(preview, resume=False)  # a start that trains shows its own steps
    run.handle(("step", {"step": 0, "total_steps": 21, "epoch": 0, "loss": 2.0, "lrs": {"unet": 1e-3},
                         "elapsed_seconds": 1.0, "eta_seconds": 1.0}))
    assert run.plotted() is run and run.loss_points() == ([0], [2.0])


def test_a_finished_run_reads_its_last_epoch(image_folder):
    preview = make_draft(image_folder).evaluate().preview  # 7 steps/epoch x 3 epochs
    run = RunController()
    run.start(preview, resume=True)  # Resume of a run that had already finished reports no step
    run.handle(("finished", {"finished": True, "completed_steps": 21, "output_dir": "out"}))
    assert "epoch 3 / 3" in run.progress_text()


def test_a_plan_change_refusal_offers_to_continue_on_the_new_plan(image_folder):
    from ui.training_process import plan_changed_message

    message = plan_changed_message("out/checkpoints/step-00000003", ["epochs: 2 -> 3"], 3)
    assert "--" not in message and "Continue on the new plan" in message and "step 3" in message
    run = RunController()
    run.start(make_draft(image_folder).evaluate().preview, resume=True)
    run.handle(("failed", message, "", {"key": None, "plan_changed": {"checkpoint": "c", "changes": ["x"],
                                                                       "step": 3}}))
    assert run.plan_change["step"] == 3
    run.start(make_draft(image_folder).evaluate().preview, resume=True)
    assert run.plan_change is None


def test_lr_ticks_read_as_learning_rates_and_step_ticks_are_whole_steps(image_folder):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ui.curve_plot import draw_preview

    draft = make_draft(image_folder, optimizer={"lr": 3e-4}, training={"epochs": 1, "max_steps": 3})
    figure = Figure()
    FigureCanvasAgg(figure)
    axes = draw_preview(figure, draft.evaluate().preview)
    figure.canvas.draw()
    y_labels = [label.get_text() for label in axes.get_yticklabels()]
    x_labels = [label.get_text() for label in axes.get_xticklabels()]
    assert "3e-4" in y_labels and "1e-4" in y_labels and not any("µ" in label for label in y_labels)
    assert x_labels and all(label.lstrip("−-").isdigit() for label in x_labels), x_labels


def test_the_run_tab_keeps_the_effective_lr_of_adaptive_optimizers():
    run = RunController()
    for step, d in enumerate((1e-6, 2e-6, 5e-6)):
        run.handle(("step", {"step": step, "total_steps": 3, "epoch": 0, "loss": 0.5, "lrs": {"unet": 1.0},
                             "elapsed_seconds": 1.0, "eta_seconds": 1.0, "effective_lrs": {"unet": d}}))
    assert run.effective_lr_points() == {"unet": ([0, 1, 2], [1e-6, 2e-6, 5e-6])}
    plain = RunController()
    plain.handle(("step", {"step": 0, "total_steps": 3, "epoch": 0, "loss": 0.5, "lrs": {"unet": 1e-4},
                           "elapsed_seconds": 1.0, "eta_seconds": 1.0, "effective_lrs": None}))
    assert plain.effective_lr_points() == {}


def test_the_preview_says_it_cannot_know_d(image_folder):
    draft = make_draft(image_folder, optimizer={"type": "prodigy", "lr": 1.0})
    preview = draft.evaluate().preview
    assert any("lr_effective/<group>" in note for note in preview.notes)
    assert any(line.startswith("note: prodigy multiplies this curve by its own d") for line in preview.report_lines())
    assert make_draft(image_folder).evaluate().preview.notes == []


def test_find_lr_applies_the_suggestion_divided_by_the_lr_scaling(image_folder):
    from ui.controllers.lr_find_controller import LrFindController

    draft = make_draft(image_folder, optimizer={"lr_scaling": "linear"}, training={"batch_size": 2})
    finder = LrFindController(min_lr=1e-6, max_lr=1e-1, steps=20)
    finder.start()
    assert finder.active
    finder.handle(("point", {"step": 0, "lr": 1e-6, "loss": 1.0, "smoothed_loss": 1.0}))
    finder.handle(("finished", {"suggested_lr": 4e-3, "suggested_optimizer_lr": 2e-3, "stop_reason": "", "steps": 20}))
    assert finder.status == "finished" and finder.message.startswith("suggested lr: 0.004")
    assert finder.apply(draft) == "2e-3"
    assert draft.evaluate().preview.curve.base_lrs == (4e-3,)
    finder.min_lr = 0
    with pytest.raises(ConfigError, match="--min-lr must be a positive number"):
        finder.start()


def test_with_buckets_the_app_plans_from_the_image_sizes_and_lists_the_buckets(tmp_path):
    from PIL import Image

    from modules.schedule.preview import bucket_lines
    from modules.schedule.step_plan import build_step_plan

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
