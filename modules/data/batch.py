"""One process's part of one micro-batch: what the data side hands the training loop.

The data side (`modules.data.datasets`) builds it; the model family turns it
into a loss. Sizes are (height, width) in pixels; the crop is the (top, left)
corner of the training crop in the resized image, as SDXL's `add_time_ids`
expect (the diffusers SDXL training scripts compute them the same way).
Every random draw for this micro-batch is keyed to (seed, global_index, rank).
With the latent cache the pixels are not decoded: `latent_parameters` holds
what the VAE made of them (`modules.data.caches`).

Per-sample data travels with the batch, in sample order: `captions` (read by
the data side from the caption files, its concept's caption options applied;
None for a family that takes no captions), `concepts` (the name of the concept
each sample comes from, `modules.data.concepts`) and `loss_weights` (the factor
of each sample's loss in the micro-batch's mean: its concept's `loss_weight`). The family reads them
here: it never lists the dataset.
"""

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class MicroBatch:
    pixels: torch.Tensor | None                # (B, 3, H, W) float32 in [-1, 1]; None when served from the latent cache
    paths: list[Path]                          # the image file of each sample
    original_sizes: list[tuple[int, int]]      # (height, width) of each image file
    crop_top_lefts: list[tuple[int, int]]      # (top, left) of the crop in the resized image
    epoch: int                                 # 0-based epoch
    index: int                                 # micro-batch index within the epoch (per process)
    global_index: int                          # epoch * micro_batches_per_epoch + index
    rank: int                                  # the process that trains it
    # With data.cache_latents: the VAE's latent distribution parameters (B, 2 * latent channels, h, w), as
    # `latent_dist.parameters` (mean and log-variance), and the training size the pixels would have had.
    latent_parameters: torch.Tensor | None = None
    pixel_size: tuple[int, int] | None = None
    captions: list[str] | None = None          # each sample's caption (before caption dropout)
    concepts: list[str] | None = None          # the concept name of each sample
    loss_weights: list[float] | None = None    # each sample's loss weight; None: all 1.0
    # A validation batch (modules.training.validation): each sample's timestep, not drawn; full captions.
    fixed_timesteps: list[int] | None = None

    @property
    def size(self) -> int:
        return len(self.paths)

    @property
    def target_size(self) -> tuple[int, int]:
        """(height, width) of the training images."""
        if self.pixels is None:
            return self.pixel_size
        return int(self.pixels.shape[2]), int(self.pixels.shape[3])
