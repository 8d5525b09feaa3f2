"""The app's training child process, run without a display."""

import time

import pytest
from conftest import make_images

from modules.config import validate_preset
from modules.preview import build_preview
from ui.controllers.run_controller import RunController
from ui.training_process import TrainingProcess

pytestmark = pytest.mark.slow
TIMEOUT_SECONDS = 180


def tiny_preset(tmp_path, **training) -> dict:
    return {
        "version": 1,
        "model": {"config": "tiny", "resolution": 16},
        "data": {"path": str(make_images(tmp_path / "images", 4))},
        "training": {"epochs": 2, "batch_size": 2, "device": "cpu", **training},
        "optimizer": {"lr": 1e-3, "param_groups": [{"name": "attention", "match": "attentions", "lr": 5e-4}]},
        "scheduler": {"type": "linear", "warmup": 1},
        "output": {"dir": str(tmp_path / "out"), "checkpoint_every": None},
    }


def drain(process: TrainingProcess, run: RunController, on_event=None) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while process.running:
        assert time.monotonic() < deadline, "training did not end in time"
        for event in process.events():
            run.handle(event)
            if on_event:
                on_event(event)
        time.sleep(0.02)
    process.join(10)


def test_the_child_trains_the_preset_and_reports_the_planned_lr_at_every_step(tmp_path):
    preset_json = tiny_preset(tmp_path)
    planned = build_preview(validate_preset(preset_json))
    run = RunController()
    run.start(planned, resume=False)
    process = TrainingProcess(preset_json)
    process.start()
    drain(process, run)
    assert run.status == "finished", run.log_lines
    assert run.used_steps == list(range(planned.plan.total_steps))
    for index, name in enumerate(planned.curve.group_names):
        assert run.used_lrs[name] == [planned.curve.effective_lrs(k)[index] for k in run.used_steps]
    assert run.result["completed_steps"] == planned.plan.total_steps
    assert (tmp_path / "out" / "model").is_dir()


def test_stop_writes_a_checkpoint_and_reports_how_to_resume(tmp_path):
    preset_json = tiny_preset(tmp_path, epochs=4)
    run = RunController()
    run.start(build_preview(validate_preset(preset_json)), resume=False)
    process = TrainingProcess(preset_json)
    process.start()

    def stop_after_first_step(event):
        if event[0] == "step" and run.status == "running":
            process.stop()
            run.request_stop()

    drain(process, run, stop_after_first_step)
    assert run.status == "stopped", run.log_lines
    assert 1 <= run.step < 8
    checkpoint = run.result["checkpoint"]
    assert checkpoint and (tmp_path / "out" / "checkpoints").is_dir()
    assert checkpoint.endswith(f"step-{run.step:08d}")
    assert run.result["resume_command"]

    # Resume (the Run tab's button) continues from that checkpoint to the end of the plan.
    stopped_at = run.step
    resumed = RunController()
    resumed.start(build_preview(validate_preset(preset_json)), resume=True)
    process = TrainingProcess(preset_json, resume=True)
    process.start()
    drain(process, resumed)
    assert resumed.status == "finished", resumed.log_lines
    assert resumed.used_steps == list(range(stopped_at, 8))


def test_a_trainer_error_reaches_the_app_as_one_line(tmp_path):
    preset_json = tiny_preset(tmp_path)
    preset_json["data"]["path"] = str(tmp_path / "missing")
    run = RunController()
    process = TrainingProcess(preset_json)
    process.start()
    drain(process, run)
    assert run.status == "failed"
    assert run.error.startswith("data.path:") and "does not exist" in run.error
