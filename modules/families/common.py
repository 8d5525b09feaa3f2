"""What every diffusion family's loss shares: the seeded draws and the (min-SNR weighted) MSE.

    noise        ~ N(0, 1) of the target's shape, plus noise_offset * N(0, 1) per (sample, channel)
    timesteps    uniform integers in [0, num_train_timesteps)
    loss         mean over the micro-batch of per-sample MSE(prediction, target) * w(t)
    w(t)         1, or with min_snr_gamma g: min(SNR(t), g) / SNR(t) (epsilon), / (SNR(t) + 1) (v_prediction)

The weighting is the one of diffusers' text-to-image scripts (`compute_snr`
from diffusers.training_utils). Draws come from the micro-batch's CPU
generator in a fixed order, so the same micro-batch always gets the same values.
"""

import torch
import torch.nn.functional as F


def draw_noise(shape, num_train_timesteps: int, generator: torch.Generator, noise_offset: float = 0.0):
    """(noise, timesteps) on the CPU from `generator`: noise of `shape`, one timestep per sample."""
    noise = torch.randn(shape, generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (shape[0],), generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise, timesteps


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, noise_scheduler, timesteps: torch.Tensor,
                   min_snr_gamma: float | None) -> torch.Tensor:
    if min_snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.stack([snr, min_snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    else:
        weights = weights / snr
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim))) * weights
    return loss.mean()
