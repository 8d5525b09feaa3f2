"""The training loop: step count, logged LR, exact resume, refusals (CPU, tiny UNet at 8x8)."""

import json
import shutil

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from modules.errors import ConfigError
from modules.schedule.lr_curve import read_lr_csv
from modules.schedule.preview import build_preview
from modules.schedule.step_plan import build_step_plan
from modules.training import StepReport, train
from tests.training_helpers import assert_same_weights, final_weights, one_thread, scalar_events, tiny_preset  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]



def quiet(preset, **kwargs):
    return train(preset, progress_bar=False, log=lambda message: None, **kwargs)


def stop_after(steps: int):
    """should_stop that asks for a stop once `steps` optimizer steps are done."""
    reports = []

    def should_stop():
        return len(reports) >= steps

    return reports.append, should_stop


@pytest.fixture
def count_optimizer_steps():
    counted = []
    handle = register_optimizer_step_post_hook(lambda *args: counted.append(1))
    yield counted
    handle.remove()


@pytest.mark.parametrize(
    "images, accumulation, epochs, extra",
    [
        (5, 1, 1, {}), (5, 2, 2, {}), (5, 3, 3, {}), (7, 1, 3, {}), (7, 2, 1, {}), (7, 3, 2, {}),
        (9, 2, 3, {"batch_size": 2}),
        (7, 2, None, {"max_steps": 6}),  # ends mid-epoch 2
    ],
)
def test_optimizer_steps_equal_the_plan(tmp_path, count_optimizer_steps, monkeypatch, images, accumulation,
                                        epochs, extra):
    preset = tiny_preset(tmp_path, images=images, training={"gradient_accumulation_steps": accumulation,
                                                            "epochs": epochs, **extra})
    plan = build_step_plan(preset)
    micro_batches = []
    import modules.families.unet as unet_family

    real_target = unet_family.training_target
    monkeypatch.setattr(unet_family, "training_target", lambda *args: micro_batches.append(1) or real_target(*args))
    reports: list[StepReport] = []

    result = quiet(preset, on_step=reports.append)

    assert len(count_optimizer_steps) == plan.total_steps == result.completed_steps
    assert result.finished and result.total_steps == plan.total_steps
    assert [report.step for report in reports] == list(range(plan.total_steps))
    assert [report.epoch for report in reports] == [plan.position(k)[0] for k in range(plan.total_steps)]
    # Every micro-batch of the steps taken is trained on exactly once: partial windows are flushed.
    expected = sum(len(plan.micro_batch_window(plan.position(k)[1])) for k in range(plan.total_steps))
    assert len(micro_batches) == expected
    assert reports[-1].eta_seconds == 0


@pytest.mark.parametrize(
    "optimizer, scheduler",
    [
        ({"type": "adamw"}, {"type": "cosine_with_hard_restarts", "warmup": 3, "cycles": 2, "min_factor": 0.1}),
        ({"type": "sgd", "momentum": 0.9}, {"type": "linear", "warmup": "0.5 epochs"}),
        ({"type": "adamw_schedule_free"}, {"type": "constant", "warmup": 4}),
        ({"type": "radam_schedule_free"}, {"type": "constant", "warmup": 0}),
    ],
    ids=["adamw", "sgd", "adamw_schedule_free", "radam_schedule_free"],
)
def test_tensorboard_lr_equals_plan_csv_and_preview(tmp_path, optimizer, scheduler):
    preset = tiny_preset(tmp_path, optimizer=optimizer, scheduler=scheduler, training={"epochs": 3})
    preview = build_preview(preset)
    total = preview.plan.total_steps

    quiet(preset)

    events = scalar_events(preset.output.dir)
    names, csv_table = read_lr_csv(tmp_path / "out" / "lr_plan.csv")
    assert names == ["attention", "unet"]
    preview_table = preview.curve.effective_table()
    np.testing.assert_array_equal(csv_table, preview_table)
    for column, name in enumerate(names):
        steps, values = zip(*events[f"lr/{name}"])
        assert list(steps) == list(range(total))
        # TensorBoard stores float32: equal to the plan up to that rounding.
        np.testing.assert_allclose(values, preview_table[:, column], rtol=1e-6, atol=0)
    assert [step for step, _ in events["loss/train"]] == list(range(total))
    assert all(np.isfinite(value) for _, value in events["loss/train"])


@pytest.mark.parametrize("optimizer_type", ["adamw", "adamw_schedule_free"])
def test_stop_and_resume_equals_a_straight_run(tmp_path, optimizer_type):
    scheduler = {"type": "cosine", "warmup": 2} if optimizer_type == "adamw" else {"type": "constant", "warmup": 3}
    straight = tiny_preset(tmp_path, out="straight", optimizer={"type": optimizer_type}, scheduler=scheduler)
    stopped = tiny_preset(tmp_path, out="stopped", optimizer={"type": optimizer_type}, scheduler=scheduler)
    quiet(straight)

    on_step, should_stop = stop_after(3)
    first = quiet(stopped, on_step=on_step, should_stop=should_stop)
    assert not first.finished and first.completed_steps == 3
    assert first.checkpoint.name == "step-00000003" and "--resume" in first.resume_command
    state = json.loads((first.checkpoint / "training_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["step_in_epoch"], state["micro_batch_in_epoch"]) == (3, 0, 3, 6)
    assert state["seed"] == 3 and state["plan_fingerprint"] == build_step_plan(stopped).fingerprint

    second = quiet(stopped, resume=True)

    assert second.finished and second.completed_steps == 8
    assert_same_weights(final_weights(straight.output.dir), final_weights(stopped.output.dir))
    straight_events, resumed_events = scalar_events(straight.output.dir), scalar_events(stopped.output.dir)
    for tag in ("lr/unet", "lr/attention", "loss/train"):
        assert resumed_events[tag] == straight_events[tag], tag


def test_changed_plan_is_refused_with_every_change_listed_and_rebase_continues(tmp_path):
    preset = tiny_preset(tmp_path)
    on_step, should_stop = stop_after(3)
    stopped = quiet(preset, on_step=on_step, should_stop=should_stop)
    longer = tiny_preset(tmp_path, training={"epochs": 3, "batch_size": 2})

    with pytest.raises(ConfigError) as refused:
        quiet(longer, resume=True)
    message = str(refused.value)
    assert "epochs: 2 -> 3" in message and "batch_size: 1 -> 2" in message and "total_steps: 8 -> 8" not in message
    assert "--rebase-schedule" in message and "\n" not in message
    assert stopped.checkpoint.is_dir()

    reports = []
    result = quiet(longer, resume=True, rebase_schedule=True, on_step=reports.append)
    plan = build_step_plan(longer)
    assert result.finished and result.completed_steps == plan.total_steps
    assert [report.step for report in reports] == list(range(3, plan.total_steps))
    steps = [step for step, _ in scalar_events(longer.output.dir)["lr/unet"]]
    assert steps == list(range(plan.total_steps))


@pytest.mark.parametrize("damaged", ["optimizer.pt", "unet/diffusion_pytorch_model.safetensors", "rng_state_0.pt"])
@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_damaged_checkpoint_is_named_and_nothing_is_deleted(tmp_path, damaged, how):
    preset = tiny_preset(tmp_path)
    on_step, should_stop = stop_after(2)
    checkpoint = quiet(preset, on_step=on_step, should_stop=should_stop).checkpoint
    target = checkpoint / damaged
    if how == "truncated":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    else:
        target.unlink()
    files_before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))

    with pytest.raises(ConfigError) as error:
        quiet(preset, resume=True)

    assert str(target) in str(error.value) and ("missing" in str(error.value)) == (how == "missing")
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == files_before


def test_resuming_a_finished_run_says_so_and_trains_nothing(tmp_path, count_optimizer_steps):
    preset = tiny_preset(tmp_path)
    quiet(preset)
    steps_taken = len(count_optimizer_steps)
    messages = []

    result = train(preset, resume=True, progress_bar=False, log=messages.append)

    assert result.finished and result.completed_steps == 8 and result.resume_command is None
    assert len(count_optimizer_steps) == steps_taken
    assert any("already finished" in message for message in messages)


def test_unreadable_image_is_reported_by_path_before_training(tmp_path):
    preset = tiny_preset(tmp_path)
    broken = tmp_path / "images_7" / "image_0003.png"
    broken.write_bytes(b"not a png")

    with pytest.raises(ConfigError) as error:
        quiet(preset)

    assert str(broken) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_final_model_is_a_ddpm_pipeline_that_diffusers_loads_with_the_trained_weights(tmp_path):
    from diffusers import DDPMPipeline

    preset = tiny_preset(tmp_path, model={"prediction_type": "v_prediction"})
    quiet(preset)

    pipeline = DDPMPipeline.from_pretrained(tmp_path / "out" / "model")
    state = {name: value for name, value in pipeline.unet.state_dict().items()}
    assert_same_weights(state, final_weights(tmp_path / "out"))
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    images = pipeline(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (1, 8, 8, 3)


def test_world_size_different_from_num_processes_stops_before_training(tmp_path):
    preset = tiny_preset(tmp_path, training={"num_processes": 2})
    with pytest.raises(ConfigError) as error:
        quiet(preset)
    assert error.value.key == "training.num_processes"
    assert "set training.num_processes=1" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_checkpoints_keep_the_newest_and_ignore_unfinished_folders(tmp_path):
    preset = tiny_preset(tmp_path, output={"checkpoint_every": 1, "keep_checkpoints": 2})
    on_step, should_stop = stop_after(5)
    result = quiet(preset, on_step=on_step, should_stop=should_stop)
    folder = tmp_path / "out" / "checkpoints"
    assert sorted(path.name for path in folder.iterdir()) == ["step-00000004", "step-00000005"]
    # A folder a killed run left half-written, with a higher step, is never resumed from.
    unfinished = folder / ".step-00000007.tmp"
    shutil.copytree(result.checkpoint, unfinished)
    state = json.loads((unfinished / "training_state.json").read_text())
    (unfinished / "training_state.json").write_text(json.dumps({**state, "global_step": 7}))
    reports = []

    quiet(preset, resume=True, on_step=reports.append)

    assert reports[0].step == 5
    assert not unfinished.exists()
    assert sorted(path.name for path in folder.iterdir()) == ["step-00000007", "step-00000008"]


def test_sampling_writes_images_and_does_not_change_schedule_free_training(tmp_path):
    common = {"optimizer": {"type": "adamw_schedule_free"}, "scheduler": {"type": "constant", "warmup": 2}}
    plain = tiny_preset(tmp_path, out="plain", **common)
    sampled = tiny_preset(tmp_path, out="sampled", **common)
    sampled = sampled.model_copy(update={"output": sampled.output.model_copy(update={"sample_every": 3})})
    quiet(plain)
    quiet(sampled)
    samples = sorted(path.name for path in (tmp_path / "sampled" / "samples").iterdir())
    assert samples == [f"step-{step:08d}-{index}.png" for step in (3, 6) for index in range(4)]
    assert_same_weights(final_weights(plain.output.dir), final_weights(sampled.output.dir))


def test_model_folder_with_a_v_prediction_scheduler(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from modules.families.unet_models import tiny_unet

    torch.manual_seed(0)
    pipeline_folder = tmp_path / "pipeline"
    DDPMPipeline(unet=tiny_unet(8), scheduler=DDPMScheduler(num_train_timesteps=100,
                                                            prediction_type="v_prediction")).save_pretrained(
        pipeline_folder)
    preset = tiny_preset(tmp_path, model={"config": None, "path": str(pipeline_folder)},
                         training={"max_grad_norm": 1.0})
    from modules.families.unet_models import build_noise_scheduler

    assert build_noise_scheduler(preset).config.prediction_type == "v_prediction"
    assert build_noise_scheduler(preset).config.num_train_timesteps == 100
    result = quiet(preset)
    assert result.finished
    trained = UNet2DModel.from_pretrained(tmp_path / "out" / "model", subfolder="unet")
    original = UNet2DModel.from_pretrained(pipeline_folder / "unet")
    assert not torch.equal(trained.conv_in.weight, original.conv_in.weight)

    bare = tiny_preset(tmp_path, out="bare", model={"config": None, "path": str(pipeline_folder / "unet"),
                                                       "prediction_type": "epsilon"})
    assert build_noise_scheduler(bare).config.prediction_type == "epsilon"
    assert quiet(bare).finished


def test_each_window_is_normalised_by_the_micro_batches_it_really_holds(tmp_path, monkeypatch):
    """7 images, accumulation 3: windows of 3, 3 and 1 micro-batches; each loss is divided by its window."""
    import torch.nn.functional as F
    from accelerate import Accelerator

    losses, backward_losses = [], []
    real_mse, real_backward = F.mse_loss, Accelerator.backward

    def mse_loss(*args, **kwargs):
        value = real_mse(*args, **kwargs)
        losses.append(value.item())
        return value

    def backward(self, loss, **kwargs):
        backward_losses.append(loss.item())
        return real_backward(self, loss, **kwargs)

    monkeypatch.setattr(F, "mse_loss", mse_loss)
    monkeypatch.setattr(Accelerator, "backward", backward)
    reports = []
    quiet(tiny_preset(tmp_path, training={"gradient_accumulation_steps": 3, "epochs": 2}), on_step=reports.append)

    windows = [3, 3, 1] * 2
    divisors = [size for size in windows for _ in range(size)]
    assert len(losses) == len(backward_losses) == sum(windows)
    np.testing.assert_allclose(np.array(backward_losses) * divisors, losses, rtol=1e-6)
    starts = np.cumsum([0] + windows[:-1])
    expected = [np.mean(losses[start:start + size]) for start, size in zip(starts, windows)]
    np.testing.assert_allclose([report.loss for report in reports], expected, rtol=1e-6)


def test_a_fresh_run_never_overwrites_another_runs_checkpoints_or_model(tmp_path):
    preset = tiny_preset(tmp_path)
    on_step, should_stop = stop_after(2)
    quiet(preset, on_step=on_step, should_stop=should_stop)
    with pytest.raises(ConfigError) as error:
        quiet(preset)
    assert error.value.key == "output.dir" and "--resume" in str(error.value)
    quiet(preset, resume=True)
    shutil.rmtree(tmp_path / "out" / "checkpoints")  # the final model alone is still protected
    with pytest.raises(ConfigError, match="already holds a trained model"):
        quiet(preset)


def test_resuming_with_another_model_is_an_error_not_a_traceback(tmp_path):
    preset = tiny_preset(tmp_path)
    on_step, should_stop = stop_after(2)
    quiet(preset, on_step=on_step, should_stop=should_stop)
    bigger = tiny_preset(tmp_path, model={"resolution": 16})  # same plan, other sample_size is fine ...
    quiet(bigger, resume=True)  # ... the tiny UNet's weights do not depend on the resolution
    from diffusers import UNet2DModel

    other = tmp_path / "other_unet"
    UNet2DModel(sample_size=8, block_out_channels=(32, 32), norm_num_groups=8, layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(other)
    changed = tiny_preset(tmp_path, model={"config": None, "path": str(other)}, training={"epochs": 2})
    shutil.rmtree(tmp_path / "out" / "model")
    checkpoint = sorted((tmp_path / "out" / "checkpoints").iterdir())[0]
    with pytest.raises(ConfigError, match="do not fit the model"):
        quiet(changed, resume=checkpoint)


def test_schedule_free_weights_are_saved_in_eval_mode_and_training_resumes_in_train_mode(tmp_path, monkeypatch):
    """kohya's failure: schedule-free weights saved in train mode (y, not the averaged x)."""
    from diffusers import UNet2DModel

    optimizers, modes_at_step, modes_at_save = [], [], []

    def on_step(optimizer, *args):
        if not optimizers:
            optimizers.append(optimizer)
        modes_at_step.append(all(group["train_mode"] for group in optimizer.param_groups))

    real_save = UNet2DModel.save_pretrained

    def recording_save(self, *args, **kwargs):
        modes_at_save.append(all(group["train_mode"] for group in optimizers[0].param_groups))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "save_pretrained", recording_save)
    handle = register_optimizer_step_post_hook(on_step)
    try:
        preset = tiny_preset(tmp_path, optimizer={"type": "adamw_schedule_free"},
                             scheduler={"type": "constant", "warmup": 2}, output={"checkpoint_every": 2})
        result = quiet(preset)
    finally:
        handle.remove()
    plan = build_step_plan(preset)
    assert result.finished and len(modes_at_step) == plan.total_steps
    assert all(modes_at_step), "every optimizer step must run in train mode, also after a checkpoint"
    # Checkpoints at 2, 4, ... and the final model: every save_pretrained ran in eval mode.
    assert len(modes_at_save) >= len(plan.checkpoint_steps) + 1
    assert not any(modes_at_save)
