"""The app's training child process, run without a display."""

import time

import pytest
from tests.conftest import make_images

from modules.config.preset import validate_preset
from modules.schedule.preview import build_preview
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


def test_stop_writes_a_checkpoint_and_resume_finishes_the_planned_lr_sequence(tmp_path):
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
    assert resumed.result["completed_steps"] == 8 and (tmp_path / "out" / "model").is_dir()

    # Both parts together used the planned LR of every group at every step, each step once.
    planned = build_preview(validate_preset(preset_json))
    assert run.used_steps + resumed.used_steps == list(range(8))
    for index, name in enumerate(planned.curve.group_names):
        used = run.used_lrs[name] + resumed.used_lrs[name]
        assert used == [planned.curve.effective_lrs(k)[index] for k in range(8)]


def test_a_trainer_error_reaches_the_app_as_one_line(tmp_path):
    preset_json = tiny_preset(tmp_path)
    preset_json["data"]["path"] = str(tmp_path / "missing")
    run = RunController()
    process = TrainingProcess(preset_json)
    process.start()
    drain(process, run)
    assert run.status == "failed"
    assert run.error.startswith("data.path:") and "does not exist" in run.error


def test_resume_on_a_changed_plan_is_refused_for_the_app_and_continues_on_the_new_plan(tmp_path):
    from modules.errors import ConfigError
    from ui.controllers.run_history import read_run_history
    from ui.training_process import check_output_dir

    preset_json = tiny_preset(tmp_path, epochs=3)
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
    stopped_at = run.step

    # Start on that folder again: the app's words, not the command line's flags.
    with pytest.raises(ConfigError) as refused:
        check_output_dir(validate_preset(preset_json), None)
    assert "press Resume" in str(refused.value) and "--" not in str(refused.value)

    longer = tiny_preset(tmp_path, epochs=4)
    refused_run = RunController()
    refused_run.start(build_preview(validate_preset(longer)), resume=True)
    process = TrainingProcess(longer, resume=True)
    process.start()
    drain(process, refused_run)
    assert refused_run.status == "failed"
    assert refused_run.plan_change["step"] == stopped_at
    assert any("epochs: 3 -> 4" in change for change in refused_run.plan_change["changes"])
    assert "Continue on the new plan" in refused_run.error and "--rebase-schedule" not in refused_run.error

    # "Continue on the new plan": resume with rebase_schedule on the settings on screen.
    rebased = RunController()
    planned = build_preview(validate_preset(longer))
    rebased.start(planned, resume=True)
    process = TrainingProcess(longer, resume=True, rebase_schedule=True)
    process.start()
    drain(process, rebased)
    assert rebased.status == "finished", rebased.log_lines
    assert rebased.used_steps == list(range(stopped_at, planned.plan.total_steps))

    # The Run tab reads the steps before the resume point back from the run's TensorBoard log.
    history = read_run_history(tmp_path / "out")
    assert history.steps == list(range(planned.plan.total_steps))
    for name in planned.curve.group_names:
        logged = run.used_lrs[name][:stopped_at] + rebased.used_lrs[name]
        assert history.lrs[name] == pytest.approx(logged, rel=1e-6)  # float32 in the log


def test_the_run_tab_receives_the_validation_losses_training_logs(tmp_path):
    """A real run in the app's child process with validation and EMA: the Run tab's validation series are
    TensorBoard's, step for step."""
    from tests.training_helpers import scalar_events

    preset_json = tiny_preset(tmp_path, epochs=3, ema=True, ema_decay=0.9)
    make_images(tmp_path / "held", 2, seed=5)
    preset_json["data"] = {"concepts": [{"path": preset_json["data"]["path"]},
                                        {"path": str(tmp_path / "held"), "type": "validation"}]}
    preset_json["output"].update({"validate_every": 2, "validation_timesteps": [100, 900]})
    run = RunController()
    run.start(build_preview(validate_preset(preset_json)), resume=False)
    process = TrainingProcess(preset_json)
    process.start()
    drain(process, run)
    assert run.status == "finished", run.log_lines
    events = scalar_events(tmp_path / "out")
    for tag in ("loss/validation", "loss/validation/held", "loss/validation/non_ema"):
        steps, values = run.validation[tag]
        assert steps == [step for step, _ in events[tag]] == [1, 3, 5], tag
        assert values == pytest.approx([value for _, value in events[tag]], rel=1e-6)
    assert run.validation_loss == pytest.approx(events["loss/validation"][-1][1], rel=1e-6)
