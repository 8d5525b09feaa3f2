"""The LR of every parameter group at every step, the CSV, and the torch adapter."""

import numpy as np
import pytest

from modules.config.preset import validate_preset
from modules.training.lr_adapter import set_learning_rates
from modules.schedule.lr_curve import build_lr_curve, read_lr_csv
from modules.schedule.preview import build_preview, envelope
from modules.schedule.step_plan import build_step_plan

GROUPS = [{"name": "attention", "match": "attn", "lr": 1e-4}, {"name": "text", "match": "^text", "lr": 2e-5}]


def make_curve(scheduler=None, optimizer=None, epochs=5):
    preset = validate_preset({
        "data": {"path": "unused"},
        "training": {"epochs": epochs, "gradient_accumulation_steps": 2},
        "optimizer": {"lr": 3e-4, "param_groups": GROUPS, **(optimizer or {})},
        "scheduler": scheduler or {"type": "cosine", "warmup": 2, "min_factor": 0.1},
        "output": {"checkpoint_every": None},
    })
    plan = build_step_plan(preset, num_images=7)
    return preset, plan, build_lr_curve(plan, preset.optimizer)


def test_every_group_is_its_base_lr_times_the_same_multiplier():
    _, plan, curve = make_curve()
    assert curve.group_names == ("attention", "text", "unet")
    table = curve.effective_table()
    assert table.shape == (plan.total_steps, 3)
    multipliers = curve.effective_multipliers
    for column, base_lr in enumerate((1e-4, 2e-5, 3e-4)):
        np.testing.assert_allclose(table[:, column], base_lr * multipliers, rtol=1e-15)
    for step in (0, 1, 2, plan.total_steps - 1):
        assert curve.applied_lrs(step) == pytest.approx(list(table[step]), rel=1e-15)


def test_steps_past_the_plan_read_the_last_step():
    _, plan, curve = make_curve()
    last = curve.applied_lrs(plan.total_steps - 1)
    assert curve.applied_lrs(plan.total_steps) == last
    assert curve.applied_lrs(plan.total_steps + 1000) == last
    assert curve.effective_lrs(10**9) == curve.effective_lrs(plan.total_steps - 1)


def test_csv_round_trip(tmp_path):
    _, plan, curve = make_curve()
    path = tmp_path / "lr.csv"
    curve.write_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "step,lr/attention,lr/text,lr/unet"
    assert len(lines) == plan.total_steps + 1
    names, table = read_lr_csv(path)
    assert names == ["attention", "text", "unet"]
    assert np.array_equal(table, curve.effective_table())


def test_csv_of_a_one_step_plan(tmp_path):
    _, plan, curve = make_curve({"type": "constant"}, epochs=1)
    preset = validate_preset({"data": {"path": "x"}, "training": {"max_steps": 1}})
    one = build_lr_curve(build_step_plan(preset, num_images=1), preset.optimizer)
    path = tmp_path / "one.csv"
    one.write_csv(path)
    names, table = read_lr_csv(path)
    assert names == ["unet"] and table.shape == (1, 1) and table[0, 0] == preset.optimizer.lr


def test_adapter_writes_base_lr_times_f_into_every_group():
    import torch

    _, plan, curve = make_curve()
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": 1.0} for p in parameters])
    seen = []
    for step in range(plan.total_steps):
        set_learning_rates(optimizer, curve, step)
        seen.append([group["lr"] for group in optimizer.param_groups])
    assert np.array_equal(np.array(seen), curve.effective_table())


def test_adapter_refuses_a_group_count_mismatch():
    import torch

    _, _, curve = make_curve()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        set_learning_rates(optimizer, curve, 0)


def test_schedule_free_writes_the_base_lr_but_shows_the_ramp():
    _, plan, curve = make_curve({"type": "constant", "warmup": "1 epochs"}, {"type": "adamw_schedule_free"})
    assert curve.applied_lrs(0) == [1e-4, 2e-5, 3e-4]
    assert curve.effective_lrs(0) == pytest.approx([1e-4 / 4, 2e-5 / 4, 3e-4 / 4])


def test_envelope_keeps_a_one_step_spike_visible():
    values = np.zeros(1_000_000)
    values[123_457] = 1.0
    starts, low, high = envelope(values, 1000)
    assert len(starts) == 1000 and high.max() == 1.0 and low.max() == 0.0
    short = np.arange(10.0)
    starts, low, high = envelope(short, 1000)
    assert np.array_equal(starts, np.arange(10)) and np.array_equal(low, short) and np.array_equal(high, short)


def test_report_lines_name_the_plan():
    preset = validate_preset({"data": {"path": "x"}, "training": {"epochs": 3, "gradient_accumulation_steps": 2},
                              "scheduler": {"type": "cosine_with_hard_restarts", "cycles": 3}})
    text = "\n".join(build_preview(preset, num_images=7).report_lines())
    assert "steps per epoch   4 (accumulation 2)" in text
    assert "total steps       12 (3 epochs)" in text
    assert "cycle boundaries  4, 8" in text


def test_text_encoder_groups_follow_unet_and_drop_to_zero_at_their_stop(tmp_path):
    """SPEC §7: groups unet, text_encoder, text_encoder_2 after the named groups; LR 0 from the stop step on."""
    import json

    from tests.conftest import make_images

    folder = tmp_path / "pipeline"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    preset = validate_preset({
        "model": {"path": str(folder)}, "data": {"path": str(make_images(tmp_path / "images", 10)), "default_caption": "a photo"},
        "optimizer": {"lr": 1e-4, "text_encoder_lr": 3e-5, "text_encoder_stop_after": "40%",
                      "param_groups": [{"name": "attention", "match": "attn", "lr": 2e-4}]},
        "scheduler": {"type": "cosine", "warmup": 2},
    })
    plan = build_step_plan(preset)
    curve = build_lr_curve(plan, preset.optimizer)
    assert plan.model_type == "stable_diffusion_xl" and plan.text_encoder_stop_steps == 4
    assert curve.group_names == ("attention", "unet", "text_encoder", "text_encoder_2")
    table = curve.effective_table()
    assert (table[4:, 2:] == 0).all() and (table[1:4, 2:] > 0).all() and (table[4:, :2] > 0).all()
    np.testing.assert_allclose(table[:4, 2], table[:4, 1] * 0.3, rtol=1e-12)  # 3e-5 vs 1e-4 * 0.3: not one computation
    for step in range(1, plan.total_steps):  # step 0 is the warmup's LR 0
        lrs = curve.applied_lrs(step)
        assert lrs[2:] == [0.0, 0.0] if step >= 4 else min(lrs) > 0
    assert plan.identity()["text_encoder_stop_steps"] == 4
    frozen = validate_preset({**preset.to_json_dict(), "optimizer": {"lr": 1e-4}})
    assert build_lr_curve(build_step_plan(frozen), frozen.optimizer).group_names == ("unet",)
    assert "text_encoder_stop_steps" not in build_step_plan(frozen).identity()
