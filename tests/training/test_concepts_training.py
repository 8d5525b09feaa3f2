"""Concepts in training (SPEC §10): a 3-concept run on 2 processes (torchrun, CPU) with buckets, fractional
repeats, a regularization concept with `samples` and accumulation takes the preview's steps, logs the
preview's per-concept counts, and a stopped-and-resumed run ends bit for bit where the straight run ends."""

import pytest

from modules.config.preset import save_preset, validate_preset
from modules.schedule.preview import build_preview
from tests.data.test_buckets import write_image
from tests.training.test_train_cli import run, torchrun_launch
from tests.training_helpers import assert_same_weights, final_weights, one_thread, scalar_events  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

WIDE, SQUARE = (32, 16), (16, 16)


def folder_of(folder, sizes, seed):
    folder.mkdir(parents=True)
    for index, (width, height) in enumerate(sizes):
        write_image(folder / f"img_{index}.png", width, height, seed=seed + index)
    return str(folder)


def three_concept_preset(tmp_path, out):
    # cat: 4 images x 1.5 = 6 samples, 3 wide + 3 square (the fraction split by the largest remainder);
    # style: 2 x 1 (one wide, one square); reg: 4 samples of 6 square images at loss weight 0.5.
    # Every bucket holds a multiple of batch 1 x 2 processes, so the epoch trains each sample once.
    root = tmp_path / "data"
    concepts = [] if root.exists() else [
        folder_of(root / "cat", [WIDE, WIDE, SQUARE, SQUARE], 0), folder_of(root / "style", [WIDE, SQUARE], 10),
        folder_of(root / "reg", [SQUARE] * 6, 20)]
    cat, style, reg = concepts or [str(root / name) for name in ("cat", "style", "reg")]
    return validate_preset({
        "model": {"config": "tiny", "resolution": 16},
        "data": {"concepts": [{"path": cat, "repeats": 1.5, "flip": True}, {"path": style},
                              {"path": reg, "type": "regularization", "samples": 4, "loss_weight": 0.5}],
                 "buckets": True, "bucket_step": 8, "bucket_max_aspect": 4, "num_workers": 0},
        "training": {"epochs": 2, "batch_size": 1, "gradient_accumulation_steps": 2, "num_processes": 2,
                     "device": "cpu", "seed": 7},
        "optimizer": {"type": "adamw", "lr": 1e-3},
        "scheduler": {"type": "cosine", "warmup": 1},
        "output": {"dir": str(tmp_path / out), "checkpoint_every": None},
    })


def test_three_concepts_on_two_processes_follow_the_preview_and_resume_exactly(tmp_path):
    straight = three_concept_preset(tmp_path, "straight")
    stopped = three_concept_preset(tmp_path, "stopped")
    for preset, name in ((straight, "straight.json"), (stopped, "stopped.json")):
        save_preset(preset, tmp_path / name)
    plan = build_preview(straight).plan
    counts = {row.name: row.samples_per_epoch for row in plan.concepts}
    assert counts == {"cat": 6, "style": 2, "reg": 4} and len(plan.buckets) == 2
    assert (plan.micro_batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (6, 3, 6)

    first = run(torchrun_launch(tmp_path / "straight.json"), timeout=240)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("finished 6 steps") == 1
    events = scalar_events(tmp_path / "straight")
    assert [step for step, _ in events["lr/unet"]] == list(range(plan.total_steps))
    for name, count in counts.items():  # at the last step of each epoch: what the epoch trained
        assert events[f"data/samples/{name}"] == [(2, count), (5, count)]

    second = run(torchrun_launch(tmp_path / "stopped.json", "--stop-at-step", 2), timeout=240)
    assert second.returncode == 0, second.stderr
    third = run(torchrun_launch(tmp_path / "stopped.json", "--resume"), timeout=240)
    assert third.returncode == 0, third.stderr
    assert "at step 2 of 6" in third.stdout
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped"))
    assert scalar_events(tmp_path / "stopped") == events  # epoch 0's counts span the resume


def test_validation_and_ema_on_two_processes_resume_exactly_and_equal_one_process(tmp_path):
    """Three validation images shared by two processes (2 + 1): the logged loss is the one-process loss of the
    final (EMA) weights, and a stopped-and-resumed run logs the straight run's values."""
    from modules.families.base import build_family
    from modules.schedule.step_plan import build_step_plan
    from modules.training.trainer import make_accelerator
    from modules.training.validation import build_validation_set, evaluate

    presets = {}
    for out in ("straight", "stopped"):
        raw = three_concept_preset(tmp_path, out).to_json_dict()
        raw["data"]["concepts"].append({"path": folder_of(tmp_path / f"val_{out}", [SQUARE, WIDE, SQUARE], 40),
                                        "type": "validation", "name": "held"})
        raw["output"].update({"validate_every": 2, "validation_timesteps": [200, 800]})
        raw["training"].update({"ema": True, "ema_decay": 0.7})
        presets[out] = validate_preset(raw)
        save_preset(presets[out], tmp_path / f"{out}.json")
    assert run(torchrun_launch(tmp_path / "straight.json"), timeout=240).returncode == 0
    assert run(torchrun_launch(tmp_path / "stopped.json", "--stop-at-step", 3), timeout=240).returncode == 0
    assert run(torchrun_launch(tmp_path / "stopped.json", "--resume"), timeout=240).returncode == 0
    straight, resumed = scalar_events(tmp_path / "straight"), scalar_events(tmp_path / "stopped")
    for tag in ("loss/validation", "loss/validation/held", "loss/validation/non_ema", "ema/decay"):
        assert resumed[tag] == straight[tag], tag
    assert [step for step, _ in straight["loss/validation"]] == [1, 3, 5]
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped"))

    one = presets["straight"].model_copy(update={"training": presets["straight"].training.model_copy(
        update={"num_processes": 1})})
    plan = build_step_plan(one)
    family = build_family(one, plan)
    family.load_trainable_state_dict(final_weights(tmp_path / "straight"))
    validation = build_validation_set(one, plan, family, 0, 1)
    accelerator = make_accelerator(one)
    validation.prepare(family, accelerator)
    assert evaluate(validation, accelerator, family.model)["loss/validation"] == \
        pytest.approx(straight["loss/validation"][-1][1], rel=1e-6)
