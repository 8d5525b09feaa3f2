"""modules.training.step: one optimizer step shared by the trainer and the LR range test; the checkpointed parts;
the adaptive optimizers' effective LR measured against what the optimizer really applies."""

import pytest
import torch

from modules.training import checkpointed_parts
from modules.training.trainer import train
from modules.training.lr_range_test import lr_range_test
from modules.training.optimizers import effective_lrs
from tests.training_helpers import one_thread, tiny_preset  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("training", [{}, {"max_grad_norm": 0.01, "gradient_accumulation_steps": 3}])
def test_the_range_tests_first_step_is_the_trainers_first_step(tmp_path, training):
    lr = 1e-4
    preset = tiny_preset(tmp_path, training=training, optimizer={"lr": lr, "param_groups": []},
                         scheduler={"type": "constant", "warmup": 0})
    reports = []
    train(preset, progress_bar=False, log=lambda message: None, on_step=reports.append,
          should_stop=lambda: len(reports) >= 2)

    result = lr_range_test(preset, lr, 1.0, 5)

    assert result.points[0].lr == lr
    assert result.points[0].loss == reports[0].loss  # the same data, noise, weights and forward


@pytest.mark.slow
def test_the_range_test_clips_as_the_trainer_does(tmp_path, monkeypatch):
    clipped = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *args, **kwargs: clipped.append(args[1]) or
                        real(*args, **kwargs))
    lr_range_test(tiny_preset(tmp_path, training={"max_grad_norm": 0.5}), 1e-5, 1e-3, 5)
    assert clipped == [0.5] * 5


class Saved:
    def __init__(self, name, value):
        self.name, self.value, self.loaded = name, value, None

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state, folder):
        self.loaded = state


def test_saving_and_resuming_walk_the_list_of_parts(tmp_path):
    parts = [Saved("optimizer", 1), Saved("ema", 2)]
    state = checkpointed_parts.parts_state(parts)
    assert state == {"optimizer": {"value": 1}, "ema": {"value": 2}}
    fresh = [Saved("optimizer", 0), Saved("ema", 0), Saved("scaler", 0)]
    checkpointed_parts.load_parts(fresh, state, tmp_path)
    assert [part.loaded for part in fresh] == [{"value": 1}, {"value": 2}, None]  # a part not saved stays fresh


def _applied_lr(optimizer_type: str, betas: tuple[float, float], steps: int = 4):
    """(effective_lrs before each step, the LR the step really applied) for prodigy / dadapt_adam.

    A second parameter with zero gradient moves only by decoupled weight decay: p <- p (1 - decay * dlr),
    which reads back the dlr = d * lr * bias correction the optimizer used.
    """
    torch.manual_seed(0)
    moving = torch.nn.Parameter(torch.randn(16, dtype=torch.float64))
    still = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    decay = 0.1
    if optimizer_type == "prodigy":
        from prodigyopt import Prodigy

        optimizer = Prodigy([moving, still], lr=1.0, betas=betas, weight_decay=decay, use_bias_correction=True)
    else:
        from dadaptation import DAdaptAdam

        optimizer = DAdaptAdam([moving, still], lr=1.0, betas=betas, weight_decay=decay, decouple=True,
                               use_bias_correction=True)
    read, applied = [], []
    for _ in range(steps):
        moving.grad = moving.detach() - 3.0
        still.grad = torch.zeros_like(still)
        before = still.detach().clone()
        read.append(effective_lrs(optimizer)[0])
        optimizer.step()
        applied.append(float((1 - still.detach()[0] / before[0]) / decay))
    return read, applied


@pytest.mark.parametrize("optimizer_type", ["prodigy", "dadapt_adam"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.99)])
def test_the_effective_lr_is_what_the_adaptive_optimizer_applies_with_bias_correction(optimizer_type, betas):
    read, applied = _applied_lr(optimizer_type, betas)
    assert applied[-1] > 0
    assert read == pytest.approx(applied, rel=1e-9)
