"""The validation loss (SPEC §11): the same weights always give the same number.

The images: every file of the concepts of type `validation`, and the images
`data.validation_split` holds out of each train concept
(`modules.data.validation_split`), each at its training size (the square
`model.resolution`, or its aspect-ratio bucket), centre-cropped, never
flipped, with its full caption (its concept's extension and default caption;
no tag shuffling or dropout, no caption dropout) and its concept's
`loss_weight`.

At a validation step the loss of every image at every timestep of
`output.validation_timesteps` is one micro-batch of one sample through
`modules.training.step.loss_with_generator` (the training step's own loss
code, under the same autocast), with the model in eval mode (no LoRA
dropout), no gradient, and a schedule-free optimizer's eval-mode weights (the
average its checkpoints and final model hold). Its noise (and the VAE's latent sample) comes from
a generator seeded by (seed, VALIDATION_STREAM, the image's content key,
timestep): no training generator and no global RNG is touched, so a run with
validation trains exactly the weights of the same run without it.

Reported: `loss/validation` is the mean over every (image, timestep), and
`loss/validation/<concept>` the mean over that concept's images (a held-out
image counts for the train concept it came from). Several processes share
the images (image i on process i mod W); the (image, timestep) table is
summed over the processes (each entry written by one process, zeros
elsewhere) and every process takes the means in the same order.

VAE latents are encoded once when the set is prepared (before the caches may
move the VAE off the device), exactly as the latent cache encodes them; with
the text-embedding cache, the validation captions are cached with the
training captions (`captions`).
"""

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modules.data.batch import MicroBatch
from modules.data.buckets import assign_buckets, bucket_resolutions
from modules.data.captions import load_captions
from modules.data.concepts import resolve_concepts
from modules.data.datasets import SampleSpec, sample_pixels, sample_spec
from modules.data.sizes import image_sizes
from modules.data.validation_split import image_key
from modules.errors import ConfigError

VALIDATION_STREAM = 21  # keeps these draws apart from every training stream
VALIDATION_TAG = "loss/validation"
NON_EMA_TAG = "loss/validation/non_ema"


@dataclass(frozen=True)
class ValidationImage:
    spec: SampleSpec           # file, original / training / resized size, crop (never flipped)
    concept: str               # the concept it counts for
    caption: str | None        # its full caption (None for a family that takes no captions)
    loss_weight: float
    key: int                   # its content key (`image_key`): seeds its noise


def validation_images(preset, takes_captions: bool) -> list[ValidationImage]:
    """The validation images of `preset` in concept order, listing order within a concept."""
    data, resolution = preset.data, preset.model.resolution
    buckets = bucket_resolutions(resolution, data.bucket_step, data.bucket_max_aspect) if data.buckets else None
    images = []
    for concept in resolve_concepts(data):
        files = list(concept.files) if concept.type == "validation" else list(concept.held_out)
        if not files:
            continue
        sizes = image_sizes(concept.folder, files)  # (width, height), upright
        targets = ([buckets[index] for index in assign_buckets(sizes, buckets)] if buckets
                   else [(resolution, resolution)] * len(files))
        settings = concept.settings
        captions = (load_captions([Path(path) for path in files], settings.caption_extension,
                                  settings.default_caption) if takes_captions else {})
        for path, size, target in zip(files, sizes, targets):
            images.append(ValidationImage(sample_spec(path, size, target), concept.name, captions.get(Path(path)),
                                          concept.loss_weight, image_key(path)))
    return images


def validation_generator(seed: int, key: int, timestep: int) -> torch.Generator:
    """The CPU generator of one (image, timestep): seeded by (seed, VALIDATION_STREAM, key, timestep)."""
    entropy = [int(seed), VALIDATION_STREAM, key >> 32, key & 0xFFFFFFFF, int(timestep)]
    value = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)


class ValidationSet:
    """The validation images of one run, this process's share of them prepared as micro-batches."""

    def __init__(self, images: list[ValidationImage], timesteps: list[int], seed: int, rank: int, world: int):
        self.images, self.timesteps, self.seed = images, [int(t) for t in timesteps], seed
        self.rank, self.world = rank, world
        self.concepts = list(dict.fromkeys(image.concept for image in images))
        self._inputs: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    @property
    def own(self) -> range:
        """The indices of the images this process evaluates."""
        return range(self.rank, len(self.images), self.world)

    @property
    def captions(self) -> list[str]:
        return [image.caption for image in self.images if image.caption is not None]

    def check_timesteps(self, num_train_timesteps: int) -> None:
        for index, timestep in enumerate(self.timesteps):
            if timestep >= num_train_timesteps:
                raise ConfigError(f"{timestep} is not a timestep of this model (it has {num_train_timesteps}: "
                                  f"0 to {num_train_timesteps - 1})", f"output.validation_timesteps.{index}")

    def prepare(self, family, accelerator) -> None:
        """Decode this process's images; for a family with a VAE, encode them once (as the latent cache)."""
        encode = family.descriptor().has_vae
        for index in self.own:
            pixels = sample_pixels([self.images[index].spec])
            if encode:
                with torch.no_grad(), accelerator.autocast():
                    self._inputs[index] = (None, family.encode_latents(pixels).detach())
            else:
                self._inputs[index] = (pixels, None)

    def batch(self, index: int, timestep: int) -> MicroBatch:
        image = self.images[index]
        pixels, latents = self._inputs[index]
        spec = image.spec
        return MicroBatch(pixels=pixels, paths=[spec.path], original_sizes=[spec.original_size],
                          crop_top_lefts=[spec.crop_top_left], epoch=0, index=index, global_index=index,
                          rank=self.rank, latent_parameters=latents, pixel_size=spec.target_size,
                          captions=None if image.caption is None else [image.caption],
                          concepts=[image.concept], loss_weights=[image.loss_weight], fixed_timesteps=[timestep])

    def loss_table(self, accelerator, loss_model) -> torch.Tensor:
        """(images, timesteps) float64: the loss of every pair, the same on every process."""
        from modules.training.step import loss_with_generator

        table = torch.zeros(len(self.images), len(self.timesteps), dtype=torch.float64)
        with torch.no_grad():
            for index in self.own:
                for column, timestep in enumerate(self.timesteps):
                    generator = validation_generator(self.seed, self.images[index].key, timestep)
                    loss = loss_with_generator(accelerator, loss_model, self.batch(index, timestep), generator)
                    table[index, column] = float(loss)
        if self.world > 1:
            table = accelerator.reduce(table.to(accelerator.device), reduction="sum").cpu()
        return table

    def means(self, table: torch.Tensor, prefix: str = VALIDATION_TAG) -> dict[str, float]:
        """{prefix: the mean over every pair, prefix/<concept>: over that concept's images}."""
        values = table.numpy()
        result = {prefix: float(values.mean())}
        if prefix == VALIDATION_TAG:
            for concept in self.concepts:
                rows = [index for index, image in enumerate(self.images) if image.concept == concept]
                result[f"{prefix}/{concept}"] = float(values[rows].mean())
        return result


def build_validation_set(preset, plan, family, rank: int, world: int) -> ValidationSet | None:
    """The run's ValidationSet (None when output.validate_every is not set)."""
    if not plan.validation_steps:
        return None
    images = validation_images(preset, family.descriptor().takes_captions)
    validation = ValidationSet(images, preset.output.validation_timesteps, preset.training.seed, rank, world)
    scheduler = getattr(family, "noise_scheduler", None)
    if scheduler is not None:
        validation.check_timesteps(scheduler.config.num_train_timesteps)
    return validation


def evaluate(validation: ValidationSet, accelerator, model, ema=None, optimizer=None) -> dict[str, float]:
    """The validation losses of the model as it is now: with an EMA, of the EMA weights (and the trained
    weights' as NON_EMA_TAG); with a schedule-free `optimizer`, of its eval-mode weights (the averaged x,
    what its checkpoints and final model hold). The model goes back to train mode after, its weights
    bit for bit."""
    from modules.training.optimizers import schedule_free_eval

    loss_model = accelerator.unwrap_model(model)
    try:
        with schedule_free_eval(optimizer, loss_model) if optimizer is not None else nullcontext():
            loss_model.eval()
            if ema is None:
                return validation.means(validation.loss_table(accelerator, loss_model))
            trained = validation.loss_table(accelerator, loss_model)
            with ema.applied():
                result = validation.means(validation.loss_table(accelerator, loss_model))
            result.update(validation.means(trained, NON_EMA_TAG))
            return result
    finally:
        loss_model.train()
