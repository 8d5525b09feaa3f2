"""Training data: the step plan's image listing, decoded once, served in the plan's micro-batches.

Contract:
- The files are `list_images(data.path)`, the listing the step plan counted.
  Every image is opened and decoded before training starts (RGB, shorter
  side resized to `model.resolution`, centre crop); an unreadable one is a
  ConfigError naming its path. Decoded images are kept in memory as uint8.
- An epoch holds S = N * repeats samples; sample i shows image i % N. Its
  order is a permutation drawn from (seed, epoch) only, so any process can
  rebuild it at any time (resume needs no saved sampler state).
- Micro-batch j of the epoch covers order positions [j*B*W, (j+1)*B*W);
  process `rank` takes the B positions starting at j*B*W + rank*B. Positions
  past S wrap to the start of the order, so every process has exactly M
  micro-batches, as the plan assumes (with drop_last, M is floored and no
  position ever wraps).
- Randomness inside a micro-batch (horizontal flips here; noise and
  timesteps in the trainer) is drawn from generators seeded with
  (seed, global micro-batch index, rank): a resumed run draws the same values.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modules.errors import ConfigError
from modules.image_listing import list_images
from modules.step_plan import StepPlan
from modules.training.batch import MicroBatch

# Different streams for the same (seed, micro-batch, rank): flips vs noise/timesteps.
FLIP_STREAM = 1
NOISE_STREAM = 2


def load_image(path: Path, resolution: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(RGB uint8 array (resolution, resolution, 3), original (height, width), crop (top, left)).

    The shorter side is resized to `resolution`, then the centre is cropped.
    """
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            scale = resolution / min(width, height)
            size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
            if size != image.size:
                image = image.resize(size, Image.Resampling.BICUBIC)
            left = (size[0] - resolution) // 2
            top = (size[1] - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
            return np.asarray(image, dtype=np.uint8).copy(), (height, width), (top, left)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"cannot read image '{path}': {reason}", "data.path") from None


def micro_batch_seed(seed: int, global_micro_batch: int, rank: int, stream: int) -> list[int]:
    """Entropy for numpy's SeedSequence: the same four numbers always give the same draws."""
    return [int(seed), int(global_micro_batch), int(rank), int(stream)]


def torch_generator(seed: int, global_micro_batch: int, rank: int, stream: int = NOISE_STREAM) -> torch.Generator:
    """A CPU torch generator seeded from (seed, micro-batch, rank)."""
    entropy = micro_batch_seed(seed, global_micro_batch, rank, stream)
    value = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)


class ImageDataset:
    """Decoded images plus the deterministic epoch order and per-process sharding."""

    def __init__(self, folder, resolution: int, repeats: int = 1, flip: bool = False):
        self.paths = list_images(folder)
        self.resolution = resolution
        self.repeats = repeats
        self.flip = flip
        loaded = [load_image(path, resolution) for path in self.paths]
        self.images = np.stack([pixels for pixels, _, _ in loaded])  # (N, R, R, 3) uint8
        self.original_sizes = [size for _, size, _ in loaded]
        self.crop_top_lefts = [crop for _, _, crop in loaded]

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @property
    def samples_per_epoch(self) -> int:
        return self.num_images * self.repeats

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """Sample indices of epoch `epoch` in training order: a permutation from (seed, epoch)."""
        return np.random.default_rng([int(seed), int(epoch)]).permutation(self.samples_per_epoch)

    def micro_batch_samples(self, order: np.ndarray, plan: StepPlan, micro_batch: int, rank: int) -> np.ndarray:
        """The sample indices process `rank` trains on in micro-batch `micro_batch` of the epoch."""
        start = micro_batch * plan.samples_per_micro_batch + rank * plan.batch_size
        positions = np.arange(start, start + plan.batch_size) % len(order)
        return order[positions]

    def micro_batch(
        self, order: np.ndarray, plan: StepPlan, micro_batch: int, rank: int, seed: int, global_micro_batch: int
    ) -> MicroBatch:
        """One process's part of one micro-batch: pixels (B, 3, R, R) in [-1, 1], files, sizes and crops."""
        samples = self.micro_batch_samples(order, plan, micro_batch, rank)
        images = [int(sample) % self.num_images for sample in samples]
        pixels = self.images[images]  # (B, R, R, 3)
        if self.flip:
            rng = np.random.default_rng(micro_batch_seed(seed, global_micro_batch, rank, FLIP_STREAM))
            flips = rng.random(len(samples)) < 0.5
            pixels = np.where(flips[:, None, None, None], pixels[:, :, ::-1, :], pixels)
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
        return MicroBatch(
            pixels=batch.div_(127.5).sub_(1.0),
            paths=[self.paths[image] for image in images],
            original_sizes=[self.original_sizes[image] for image in images],
            crop_top_lefts=[self.crop_top_lefts[image] for image in images],
            epoch=int(global_micro_batch // plan.micro_batches_per_epoch),
            index=int(micro_batch),
            global_index=int(global_micro_batch),
            rank=int(rank),
        )


def build_dataset(preset, plan: StepPlan) -> ImageDataset:
    """Decode the dataset of `preset`; ConfigError if it no longer matches the plan's count."""
    dataset = ImageDataset(preset.data.path, preset.model.resolution, preset.data.repeats, preset.data.flip)
    if dataset.num_images != plan.num_images:
        raise ConfigError(
            f"the dataset changed while starting: {dataset.num_images} images, the plan counted {plan.num_images}",
            "data.path",
        )
    return dataset
