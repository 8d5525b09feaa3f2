"""One optimizer step: the accumulation window of the step plan, shared by the trainer and the LR range test.

Contract (SPEC §1, §9):
- Optimizer step k of epoch e, step-in-epoch u trains on the micro-batches
  `plan.micro_batch_window(u)`, by global index e * M + index (`window_of`).
- Each micro-batch's loss is `micro_batch_loss`: the family's loss model on
  the batch, with the generator seeded from (seed, global micro-batch, rank),
  under the accelerator's autocast. The validation loss (`modules.training.validation`)
  calls the same `loss_with_generator` under `torch.no_grad()`, with its own generator.
- The loss is divided by the number of micro-batches the window really holds
  (the last window of an epoch may be partial), gradients are synchronised
  between processes only on the window's last micro-batch (`no_sync` before),
  then clipped to `max_grad_norm` (when set), then the adaptive optimizers'
  effective LR is read (before `step()`: the d this step applies), then
  `optimizer.step()` and `zero_grad`.
- The caller sets the LRs before and reads the logged LRs after; nothing here
  knows the schedule.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from modules.data.datasets import torch_generator
from modules.training.optimizers import effective_lrs


@dataclass
class StepOutcome:
    loss: torch.Tensor                 # mean loss over the window on this process (detached, 0-dim)
    effective_lrs: list[float] | None  # prodigy / dadapt_adam: d * lr applied by this step, per group


def window_of(plan, global_step: int) -> range:
    """Global micro-batch indices (epoch * M + index) that optimizer step `global_step` trains on."""
    epoch, step_in_epoch = plan.position(global_step)
    first = epoch * plan.micro_batches_per_epoch
    window = plan.micro_batch_window(step_in_epoch)
    return range(first + window.start, first + window.stop)


def micro_batch_loss(accelerator, model, batch, seed: int, global_micro_batch: int, rank: int) -> torch.Tensor:
    """The family's loss of one micro-batch, its noise drawn from (seed, global micro-batch, rank)."""
    return loss_with_generator(accelerator, model, batch, torch_generator(seed, global_micro_batch, rank))


def loss_with_generator(accelerator, model, batch, generator: torch.Generator) -> torch.Tensor:
    """The family's loss of one micro-batch under the accelerator's autocast, every draw from `generator`
    (the training step's seeded one, or the validation loss's)."""
    with accelerator.autocast():
        return model(batch, generator)


def optimizer_step(accelerator, model, optimizer, stream, window: range, *, seed: int, rank: int,
                   max_grad_norm: float | None, parameters) -> StepOutcome:
    """Accumulate the window's gradients, clip, step; the window's micro-batches come from `stream.take`."""
    in_window = len(window)
    loss_sum = torch.zeros((), device=accelerator.device)
    for position, global_micro_batch in enumerate(window):
        batch = stream.take(global_micro_batch)
        last = position == in_window - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = micro_batch_loss(accelerator, model, batch, seed, global_micro_batch, rank)
            accelerator.backward(loss / in_window)
        loss_sum += loss.detach().float()
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_(parameters, max_grad_norm)
    adaptive = effective_lrs(optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss_sum / in_window, adaptive)


def seed_process_rng(seed: int, rank: int) -> None:
    """A fresh run's global torch RNG (LoRA dropout draws from it) starts from (seed, rank)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1))
