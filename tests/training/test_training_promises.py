"""What the trainer promises where it takes effect: the LR each optimizer.step() runs with, the global
RNG streams across stop and resume, and TensorBoard's one clean curve after a crash (CPU, tiny UNet)."""

import random
from pathlib import Path

import numpy as np

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from modules.errors import ConfigError
from modules.schedule.lr_curve import build_lr_curve, read_lr_csv
from modules.schedule.preview import build_preview
from modules.schedule.step_plan import build_step_plan
from modules.training import train
from tests.training_helpers import one_thread, scalar_events, tiny_preset  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def quiet(preset, **kwargs):
    return train(preset, progress_bar=False, log=lambda message: None, **kwargs)


def stop_after_steps(steps: int):
    """should_stop for a stop once `steps` optimizer steps are done (it is polled once per step)."""
    polls = []
    return lambda: polls.append(1) or len(polls) >= steps


class StepRecorder:
    """Global optimizer-step hooks: the param-group LRs and weights as each step() begins and ends."""

    def __init__(self):
        self.lrs_at_step, self.scheduled_lrs, self.weights_moved = [], [], []
        self._before = None

    def __enter__(self):
        self._handles = [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()

    def _pre(self, optimizer, args, kwargs):
        self.lrs_at_step.append([group["lr"] for group in optimizer.param_groups])
        self._before = [parameter.detach().clone() for group in optimizer.param_groups for parameter in group["params"]]

    def _post(self, optimizer, args, kwargs):
        self.scheduled_lrs.append([group.get("scheduled_lr") for group in optimizer.param_groups])
        after = [parameter.detach() for group in optimizer.param_groups for parameter in group["params"]]
        self.weights_moved.append(any(not torch.equal(a, b) for a, b in zip(self._before, after)))


CASES = {
    "adamw": ({"type": "adamw", "weight_decay": 0.01}, {"type": "cosine", "warmup": 2}),
    "sgd": ({"type": "sgd", "momentum": 0.9}, {"type": "linear", "warmup": 3}),
    "adamw_schedule_free": ({"type": "adamw_schedule_free"}, {"type": "constant", "warmup": 4}),
    "radam_schedule_free": ({"type": "radam_schedule_free"}, {"type": "constant", "warmup": 0}),
}


@pytest.mark.parametrize("name", CASES)
def test_each_optimizer_step_runs_with_the_planned_lr(tmp_path, name):
    optimizer, scheduler = CASES[name]
    preset = tiny_preset(tmp_path, optimizer=optimizer, scheduler=scheduler)
    plan = build_step_plan(preset)
    curve = build_lr_curve(plan, preset.optimizer)

    with StepRecorder() as recorder:
        quiet(preset)

    assert len(recorder.lrs_at_step) == plan.total_steps
    # The lr each step() reads from its param groups is the plan's lr for that very step, not the one before.
    assert recorder.lrs_at_step == [curve.applied_lrs(step) for step in range(plan.total_steps)]
    if name.endswith("schedule_free"):  # the LR the optimizer derived inside step() is the previewed one
        assert recorder.scheduled_lrs == [curve.effective_lrs(step) for step in range(plan.total_steps)]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_a_zero_multiplier_step_leaves_the_weights_where_they_were(tmp_path, name):
    optimizer, _ = CASES[name]
    preset = tiny_preset(tmp_path, optimizer={**optimizer, "param_groups": []},
                         scheduler={"type": "piecewise_constant", "warmup": 0,
                                    "steps": [[0, 1.0], [3, 0.0], [4, 0.5], [6, 0.0]]})
    with StepRecorder() as recorder:
        quiet(preset)
    # Steps 3, 6 and 7 run at lr 0: nothing moves; every other step trains.
    assert recorder.weights_moved == [True, True, True, False, True, True, False, False]


def draw_global_rngs(draws: list):
    def on_step(report) -> None:
        draws.append((report.step, random.random(), float(np.random.random()), float(torch.rand(1))))
    return on_step


def seed_global_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_global_rng_streams_continue_across_stop_scramble_and_resume(tmp_path):
    straight_draws, resumed_draws = [], []
    straight = tiny_preset(tmp_path, out="straight")
    stopped = tiny_preset(tmp_path, out="stopped")
    seed_global_rngs(7)
    quiet(straight, on_step=draw_global_rngs(straight_draws))

    record = draw_global_rngs(resumed_draws)
    seed_global_rngs(7)  # both runs start from the same global state
    first = quiet(stopped, on_step=record, should_stop=lambda: len(resumed_draws) >= 3)
    assert not first.finished and first.completed_steps == 3
    seed_global_rngs(12345)  # the process did other work in between: the global states moved on
    quiet(stopped, resume=True, on_step=record)

    assert [draw[0] for draw in resumed_draws] == list(range(8))
    assert resumed_draws == straight_draws


def test_a_run_that_died_after_its_last_checkpoint_resumes_into_one_clean_curve(tmp_path):
    straight = tiny_preset(tmp_path, out="straight", output={"checkpoint_every": 4})
    crashed = tiny_preset(tmp_path, out="crashed", output={"checkpoint_every": 4})
    quiet(straight)

    def die_at_step_6(report) -> None:
        if report.step == 6:  # steps 4, 5 and 6 are logged after the checkpoint at step 4
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        quiet(crashed, on_step=die_at_step_6)
    assert [step for step, _ in scalar_events(crashed.output.dir)["loss/train"]] == list(range(7))

    quiet(crashed, resume=True)

    events, expected = scalar_events(crashed.output.dir), scalar_events(straight.output.dir)
    concept = f"data/samples/{Path(straight.data.path).name}"  # logged at each epoch's end (issue 16)
    assert set(events) == set(expected) == {"lr/attention", "lr/unet", "loss/train", concept}
    for tag in expected:
        steps = [3, 7] if tag == concept else list(range(8))  # exactly T points, each step once
        assert [step for step, _ in events[tag]] == steps, tag
        assert events[tag] == expected[tag], tag


def test_a_changed_lr_on_resume_is_refused_and_lists_each_group(tmp_path):
    preset = tiny_preset(tmp_path)
    quiet(preset, should_stop=stop_after_steps(3))
    csv_before = (tmp_path / "out" / "lr_plan.csv").read_bytes()
    changed = tiny_preset(tmp_path, optimizer={"lr": 2e-3, "param_groups": [
        {"name": "attention", "match": "attentions", "lr": 1e-4}]})

    with pytest.raises(ConfigError) as refused:
        quiet(changed, resume=True)

    message = str(refused.value)
    assert "optimizer.lr: 0.001 -> 0.002" in message and "lr of group 'attention': 0.0005 -> 0.0001" in message
    assert "--rebase-schedule" in message and "\n" not in message
    assert (tmp_path / "out" / "lr_plan.csv").read_bytes() == csv_before  # nothing overwritten


@pytest.mark.parametrize("old_csv", ["kept", "deleted"])
def test_a_rebased_run_writes_the_lr_plan_that_tensorboard_shows(tmp_path, old_csv):
    old = tiny_preset(tmp_path)
    quiet(old, should_stop=stop_after_steps(3))
    if old_csv == "deleted":  # then the old plan's rows are recomputed from the checkpoint's config
        (tmp_path / "out" / "lr_plan.csv").unlink()
    new = tiny_preset(tmp_path, training={"epochs": 3}, optimizer={"lr": 2e-3})

    quiet(new, resume=True, rebase_schedule=True)

    names, table = read_lr_csv(tmp_path / "out" / "lr_plan.csv")
    old_table = build_preview(old).curve.effective_table()
    new_table = build_preview(new).curve.effective_table()
    assert table.shape == new_table.shape
    np.testing.assert_array_equal(table[:3], old_table[:3])  # the steps trained on the old plan
    np.testing.assert_array_equal(table[3:], new_table[3:])
    events = scalar_events(new.output.dir)
    for column, name in enumerate(names):
        steps, values = zip(*events[f"lr/{name}"])
        assert list(steps) == list(range(len(table)))
        np.testing.assert_allclose(values, table[:, column], rtol=1e-6, atol=0)  # TensorBoard stores float32
