"""The LR features in real training (SPEC §9): scaled LRs, prodigy / dadapt_adam and their effective LR,
custom and sequence schedules, adamw_8bit's error (CPU, tiny UNet at 8x8)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

from modules.config.preset import save_preset
from modules.errors import ConfigError
from modules.schedule.preview import build_preview
from modules.training import train
from tests.training_helpers import assert_same_weights, final_weights, one_thread, scalar_events, tiny_preset  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SEQUENCE = {"type": "sequence", "warmup": 0, "phases": [{"shape": "linear", "from": 0.1, "until": "0.5 epochs", "to": 1},
                                           {"shape": "constant", "until": "50%"},
                                           {"shape": "cosine", "until": "100%", "to": 0.05}]}


def quiet(preset, **kwargs):
    return train(preset, progress_bar=False, log=lambda message: None, **kwargs)


def write_custom(path: Path, body: str = "return 1.0 - 0.5 * k / total_steps") -> str:
    path.write_text(f"import numpy as np\n\n\ndef shape(k, total_steps):\n    {body}\n", encoding="utf-8")
    return f"{path}:shape"


@pytest.fixture
def applied_before_each_step():
    """Per optimizer step: (lrs of the groups, d of the first group or None) read just before step()."""
    seen = []

    def record(optimizer, args, kwargs):
        groups = optimizer.param_groups
        seen.append(([group["lr"] for group in groups], groups[0].get("d")))

    handle = register_optimizer_step_pre_hook(record)
    yield seen
    handle.remove()


@pytest.mark.parametrize(
    "optimizer, scheduler, training",
    [
        ({"type": "adamw", "lr_scaling": "sqrt"}, {"type": "cosine", "warmup": 2}, {"batch_size": 2}),
        ({"type": "adamw", "lr_scaling": "linear", "lr_scaling_by": "accumulation"}, {"type": "linear"}, {}),
        ({"type": "adamw"}, SEQUENCE, {}),
        ({"type": "prodigy", "lr": 1.0, "param_groups": []}, {"type": "cosine", "warmup": 2}, {}),
        ({"type": "dadapt_adam", "lr": 1.0, "param_groups": []}, {"type": "linear"}, {}),
    ],
    ids=["sqrt-scaling", "linear-scaling-by-accumulation", "sequence", "prodigy", "dadapt_adam"],
)
def test_the_lr_each_step_runs_with_equals_the_preview(tmp_path, applied_before_each_step, optimizer, scheduler,
                                                       training):
    preset = tiny_preset(tmp_path, optimizer=optimizer, scheduler=scheduler, training={"epochs": 3, **training})
    preview = build_preview(preset)
    table = preview.curve.effective_table()

    quiet(preset)

    applied = np.array([lrs for lrs, _ in applied_before_each_step])
    np.testing.assert_array_equal(applied, table)  # the same float64 products, written before each step
    events = scalar_events(preset.output.dir)
    for column, name in enumerate(preview.curve.group_names):
        steps, values = zip(*events[f"lr/{name}"])
        assert list(steps) == list(range(preview.plan.total_steps))
        np.testing.assert_allclose(values, table[:, column], rtol=1e-6, atol=0)  # TensorBoard stores float32
    if optimizer.get("lr_scaling", "none") != "none":
        assert preview.plan.lr_scale > 1
        assert preview.curve.base_lrs == tuple(lr * preview.plan.lr_scale for lr in preset.optimizer.base_lrs)


@pytest.mark.parametrize("optimizer_type", ["prodigy", "dadapt_adam"])
def test_lr_effective_is_d_times_the_scheduled_lr_read_from_the_optimizer(tmp_path, applied_before_each_step,
                                                                        optimizer_type):
    preset = tiny_preset(tmp_path, optimizer={"type": optimizer_type, "lr": 1.0, "param_groups": []},
                         scheduler={"type": "cosine", "warmup": 2}, training={"epochs": 3})
    multipliers = build_preview(preset).curve.effective_multipliers

    quiet(preset)

    events = scalar_events(preset.output.dir)
    d_values = np.array([d for _, d in applied_before_each_step])
    expected = d_values * 1.0 * multipliers
    steps, logged = zip(*events["lr_effective/unet"])
    assert list(steps) == list(range(len(multipliers)))
    np.testing.assert_allclose(logged, expected, rtol=1e-6, atol=0)  # float32 in TensorBoard
    assert d_values[-1] > d_values[0]  # d really adapts: the effective LR is not lr * f(k)
    assert "lr_effective/unet" not in scalar_events(quiet_adamw(tmp_path).output.dir)


def quiet_adamw(tmp_path):
    preset = tiny_preset(tmp_path, out="adamw", training={"epochs": 1})
    quiet(preset)
    return preset


def test_prodigy_stop_and_resume_equals_a_straight_run(tmp_path):
    optimizer = {"type": "prodigy", "lr": 1.0, "use_bias_correction": True, "safeguard_warmup": True,
                 "param_groups": [{"name": "attention", "match": "attentions", "lr": 1.0}]}
    straight = tiny_preset(tmp_path, out="straight", optimizer=optimizer)
    stopped = tiny_preset(tmp_path, out="stopped", optimizer=optimizer)
    quiet(straight)
    reports = []
    first = quiet(stopped, on_step=reports.append, should_stop=lambda: len(reports) >= 3)
    assert not first.finished and first.completed_steps == 3

    quiet(stopped, resume=True)

    assert_same_weights(final_weights(straight.output.dir), final_weights(stopped.output.dir))
    straight_events, resumed_events = scalar_events(straight.output.dir), scalar_events(stopped.output.dir)
    for tag in ("lr_effective/unet", "lr_effective/attention", "loss/train"):
        assert resumed_events[tag] == straight_events[tag], tag  # d came back exactly


def test_a_custom_function_edited_between_stop_and_resume_is_refused(tmp_path):
    function = write_custom(tmp_path / "my_schedule.py")
    preset = tiny_preset(tmp_path, scheduler={"type": "custom", "function": function, "warmup": 0})
    reports = []
    first = quiet(preset, on_step=reports.append, should_stop=lambda: len(reports) >= 3)
    write_custom(tmp_path / "my_schedule.py", "return 1.0 - 0.9 * k / total_steps")

    with pytest.raises(ConfigError, match="scheduler function_sha256"):
        quiet(preset, resume=True)
    assert sorted(path.name for path in (tmp_path / "out" / "checkpoints").iterdir()) == [first.checkpoint.name]
    write_custom(tmp_path / "my_schedule.py")  # the original function again: the resume goes through
    assert quiet(preset, resume=True).finished


def test_adamw_8bit_without_cuda_is_one_line_exit_2(tmp_path):
    path = tmp_path / "preset.json"
    save_preset(tiny_preset(tmp_path, optimizer={"type": "adamw_8bit"}), path)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), str(path), "--no-progress"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("train.py: error: optimizer.type: 'adamw_8bit' needs")
    assert not (tmp_path / "out").exists()
