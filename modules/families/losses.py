"""The loss pieces every diffusion family shares; a family only predicts (model output, target).

As OneTrainer's model setups split `predict` from `calculate_loss`: a family's
loss module (`LossModule` subclass) implements `predict(batch, generator)` ->
`Prediction` (the model output, the target it is trained towards, the
timesteps and the noise scheduler they index), and the shared `forward` turns
it into the scalar loss of the micro-batch. A flow-matching family would write
another `predict` and reuse `draw_noise`, `per_sample_mse` and the weighting.

    noise        ~ N(0, 1) of the target's shape, plus noise_offset * N(0, 1) per (sample, channel)
    timesteps    uniform integers in [0, num_train_timesteps) (the validation loss: the batch's fixed ones)
    loss         mean over the micro-batch of per-sample MSE(prediction, target) * w(t) * loss_weight
    w(t)         1, or with min_snr_gamma g: min(SNR(t), g) / SNR(t) (epsilon), / (SNR(t) + 1) (v_prediction)
    loss_weight  the sample's `MicroBatch.loss_weights` entry (1.0 today)

The weighting is the one of diffusers' text-to-image scripts (`compute_snr`
from diffusers.training_utils). Draws come from the micro-batch's CPU
generator in a fixed order, so the same micro-batch always gets the same values.
With no min-SNR and every loss weight 1 the loss is `F.mse_loss` over the whole
micro-batch (the same value, bit for bit, as before per-sample weights existed).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Prediction:
    """What a family's `predict` returns for one micro-batch."""

    output: torch.Tensor          # the model's prediction (B, ...)
    target: torch.Tensor          # what it should have predicted, same shape
    timesteps: torch.Tensor       # (B,) the timestep of each sample
    noise_scheduler: object       # the DDPM scheduler `timesteps` index (for min-SNR)


def draw_noise(shape, num_train_timesteps: int, generator: torch.Generator, noise_offset: float = 0.0,
               fixed_timesteps: list[int] | None = None):
    """(noise, timesteps) on the CPU from `generator`: noise of `shape`, one timestep per sample (drawn, or
    `fixed_timesteps`: the validation loss's, `MicroBatch.fixed_timesteps`)."""
    noise = torch.randn(shape, generator=generator)
    if fixed_timesteps is not None:
        timesteps = torch.tensor([int(timestep) for timestep in fixed_timesteps], dtype=torch.int64)
    else:
        timesteps = torch.randint(0, num_train_timesteps, (shape[0],), generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise, timesteps


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) the mean squared error of each sample, in fp32."""
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return loss.mean(dim=list(range(1, loss.ndim)))


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
    """(B,) min(SNR(t), gamma) / SNR(t), or / (SNR(t) + 1) for v_prediction (diffusers' compute_snr)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.stack([snr, min_snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights / snr


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, noise_scheduler, timesteps: torch.Tensor,
                   min_snr_gamma: float | None, loss_weights=None) -> torch.Tensor:
    """The scalar loss of a micro-batch (see the module docstring); `loss_weights` one float per sample."""
    weighted = loss_weights is not None and any(float(weight) != 1.0 for weight in loss_weights)
    if min_snr_gamma is None and not weighted:
        return F.mse_loss(prediction.float(), target.float())
    loss = per_sample_mse(prediction, target)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weights(noise_scheduler, timesteps, min_snr_gamma)
    if weighted:
        loss = loss * torch.tensor([float(weight) for weight in loss_weights], dtype=loss.dtype, device=loss.device)
    return loss.mean()


class LossModule(torch.nn.Module):
    """A family's loss as one module: forward(micro_batch, generator) -> scalar fp32 loss.

    Subclasses implement `predict` and set `min_snr_gamma`; the loss itself is shared.
    """

    min_snr_gamma: float | None = None

    def predict(self, batch, generator: torch.Generator) -> Prediction:
        raise NotImplementedError

    def forward(self, batch, generator: torch.Generator) -> torch.Tensor:
        prediction = self.predict(batch, generator)
        return diffusion_loss(prediction.output, prediction.target, prediction.noise_scheduler,
                              prediction.timesteps, self.min_snr_gamma, getattr(batch, "loss_weights", None))
