"""Training with aspect-ratio buckets and streamed images: steps, one bucket per micro-batch, workers, resume."""

import signal
import subprocess
from pathlib import Path

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

from modules.data.buckets import cover_and_crop
from modules.config.preset import save_preset, validate_preset
from modules.errors import ConfigError
from modules.data.sizes import header_size
from modules.schedule.step_plan import build_step_plan
from modules.training import train
from modules.data.datasets import MicroBatchStream
from tests.data.test_buckets import TABLE_SIZES, write_image
from tests.training.test_train_cli import ROOT, torchrun_launch, environment, newest_step, run, train_command, wait_for
from tests.training_helpers import assert_same_weights, final_weights, one_thread, scalar_events  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    for index, (width, height) in enumerate(TABLE_SIZES):
        write_image(folder / f"image_{index:02d}.png", width, height, seed=index)
    return folder


def bucket_preset(tmp_path, folder, out="out", data=None, training=None, output=None):
    return validate_preset({
        "model": {"config": "tiny", "resolution": 16},
        "data": {"path": str(folder), "buckets": True, "bucket_step": 8, "bucket_max_aspect": 4, "flip": True,
                 **(data or {})},
        "training": {"epochs": 2, "batch_size": 2, "gradient_accumulation_steps": 2, "device": "cpu", "seed": 3,
                     **(training or {})},
        "optimizer": {"type": "adamw", "lr": 1e-3},
        "scheduler": {"type": "cosine", "warmup": 1},
        "output": {"dir": str(tmp_path / out), "checkpoint_every": None, **(output or {})},
    })


def quiet(preset, **kwargs):
    return train(preset, progress_bar=False, log=lambda message: None, **kwargs)


@pytest.mark.parametrize("batch, accumulation, drop_last, repeats, workers", [
    (2, 2, False, 1, 2), (3, 1, True, 2, 0), (1, 3, False, 1, 1), (4, 2, False, 2, 2),
])
def test_the_trainer_takes_the_plans_steps_and_each_micro_batch_holds_one_bucket(
        tmp_path, mixed_folder, monkeypatch, batch, accumulation, drop_last, repeats, workers):
    preset = bucket_preset(tmp_path, mixed_folder, data={"drop_last": drop_last, "repeats": repeats,
                                                         "num_workers": workers},
                           training={"batch_size": batch, "gradient_accumulation_steps": accumulation})
    plan = build_step_plan(preset)
    assert len(plan.buckets) >= 4
    batches = []
    real_take = MicroBatchStream.take
    monkeypatch.setattr(MicroBatchStream, "take", lambda self, index: batches.append(real_take(self, index))
                        or batches[-1])
    steps = []
    handle = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        result = quiet(preset)
    finally:
        handle.remove()

    assert len(steps) == plan.total_steps == result.completed_steps and result.finished
    expected = [epoch * plan.micro_batches_per_epoch + index for k in range(plan.total_steps)
                for epoch, step_in_epoch in [plan.position(k)] for index in plan.micro_batch_window(step_in_epoch)]
    assert [batch.global_index for batch in batches] == expected
    buckets = {(height, width) for width, height, _ in plan.buckets}
    for micro_batch in batches:
        assert micro_batch.size == batch and micro_batch.target_size in buckets
        height, width = micro_batch.target_size
        for path, original, crop in zip(micro_batch.paths, micro_batch.original_sizes, micro_batch.crop_top_lefts):
            file_width, file_height = header_size(path)
            assert original == (file_height, file_width)  # the real size of the file, for SDXL's time ids
            assert crop == cover_and_crop((file_width, file_height), (width, height))[1]
    assert {batch.target_size for batch in batches} == buckets or drop_last  # the tiny UNet takes every shape
    assert [step for step, _ in scalar_events(preset.output.dir)["loss/train"]] == list(range(plan.total_steps))


def test_the_number_of_workers_changes_no_bit(tmp_path, mixed_folder):
    runs = {}
    for workers in (0, 2):
        preset = bucket_preset(tmp_path, mixed_folder, out=f"workers_{workers}", data={"num_workers": workers})
        quiet(preset)
        runs[workers] = final_weights(preset.output.dir)
    assert_same_weights(runs[0], runs[2])


def test_stop_and_resume_with_buckets_and_two_workers_equals_a_straight_run(tmp_path, mixed_folder):
    straight = bucket_preset(tmp_path, mixed_folder, out="straight", training={"epochs": 3})
    stopped = bucket_preset(tmp_path, mixed_folder, out="stopped", training={"epochs": 3})
    total = build_step_plan(straight).total_steps
    quiet(straight)
    reports = []
    first = quiet(stopped, on_step=reports.append, should_stop=lambda: len(reports) >= 4)
    assert not first.finished and first.completed_steps == 4 < total
    quiet(stopped, resume=True)
    assert_same_weights(final_weights(straight.output.dir), final_weights(stopped.output.dir))
    assert scalar_events(stopped.output.dir)["loss/train"] == scalar_events(straight.output.dir)["loss/train"]


def test_sigkill_with_buckets_and_two_workers_then_resume_equals_a_straight_run(tmp_path, mixed_folder):
    sections = {"training": {"epochs": 4}, "output": {"checkpoint_every": 1, "keep_checkpoints": 2}}
    straight = bucket_preset(tmp_path, mixed_folder, out="straight", **sections)
    quiet(straight)
    preset = tmp_path / "preset.json"
    save_preset(bucket_preset(tmp_path, mixed_folder, **sections), preset)
    output = tmp_path / "out"
    total = build_step_plan(straight).total_steps

    process = subprocess.Popen(train_command(preset), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=environment(), cwd=ROOT)
    wait_for(lambda: newest_step(output) >= 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = newest_step(output)
    assert 3 <= killed_at < total

    result = run(train_command(preset, "--resume"))
    assert result.returncode == 0, result.stderr
    assert_same_weights(final_weights(straight.output.dir), final_weights(output))
    assert scalar_events(output)["lr/unet"] == scalar_events(straight.output.dir)["lr/unet"]


def test_two_cpu_processes_take_the_bucketed_plans_steps(tmp_path, mixed_folder):
    preset = bucket_preset(tmp_path, mixed_folder, training={"num_processes": 2})
    plan = build_step_plan(preset)
    path = tmp_path / "preset.json"
    save_preset(preset, path)
    result = run(torchrun_launch(path), timeout=180)
    assert result.returncode == 0, result.stderr
    assert "processes: 2" in result.stdout and f"finished {plan.total_steps} steps" in result.stdout
    assert [step for step, _ in scalar_events(preset.output.dir)["loss/train"]] == list(range(plan.total_steps))


def test_a_file_broken_after_its_header_is_named_by_path_during_training(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        write_image(folder / f"{index}.png", 32, 16, seed=index)
    broken = folder / "2.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header survives, the pixels do not
    preset = bucket_preset(tmp_path, folder, data={"num_workers": 2})
    with pytest.raises(ConfigError) as error:
        quiet(preset)
    assert str(broken) in str(error.value) and "\n" not in str(error.value)


def test_buckets_with_a_model_that_cannot_take_them_are_one_line_and_exit_2(tmp_path, mixed_folder):
    from diffusers import UNet2DModel

    # Four halvings: every side must be a multiple of 16, and the 8-pixel buckets are not.
    UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8, 8),
                layers_per_block=1, down_block_types=("DownBlock2D",) * 5, up_block_types=("UpBlock2D",) * 5,
                norm_num_groups=8).save_pretrained(tmp_path / "deep_unet")
    raw = bucket_preset(tmp_path, mixed_folder).to_json_dict()
    raw["model"] = {"path": str(tmp_path / "deep_unet"), "resolution": 16}
    preset = tmp_path / "preset.json"
    save_preset(validate_preset(raw), preset)
    result = run(train_command(preset))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.bucket_step" in lines[0] and "multiples of 16" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
