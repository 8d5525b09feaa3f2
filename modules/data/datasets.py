"""Training data: the step plan's image listing, read from disk as training goes, in the plan's micro-batches.

Contract:
- The files are those of the train and regularization concepts
  (`modules.data.concepts.resolve_concepts`, the listing the step plan counted), concatenated in
  concept order. Before training, the header of every file is read (`modules.data.sizes`,
  through its size index): an unreadable one is a ConfigError naming its
  path. Pixels are decoded only when their micro-batch is due (`stream`: a
  torch DataLoader with `data.num_workers` workers, prefetching), so memory
  does not grow with the number of images.
- Each image is trained at one size: (resolution, resolution), or with
  `data.buckets` its aspect-ratio bucket (`modules.data.buckets`). It is turned
  upright (EXIF orientation), converted to RGB, resized to cover that size
  (bicubic) and centre-cropped.
- An epoch holds S = the sum of the concepts' samples per epoch; which image
  each sample shows is `modules.data.concepts.epoch_images` (one concept with
  whole repeats: sample i shows image i % N), drawn from (seed, epoch, concept)
  with per-bucket counts fixed, so the plan holds in every epoch. The order is
  drawn from (seed, epoch) only, so any process can rebuild it at
  any time (resume needs no saved sampler state): a permutation, or with
  buckets `modules.data.buckets.bucketed_epoch` (shuffled within buckets, the
  micro-batches shuffled across buckets, train and regularization samples
  mixed), flattened so that the slicing below holds for both.
- Micro-batch j of the epoch covers order positions [j*B*W, (j+1)*B*W);
  process `rank` takes the B positions starting at j*B*W + rank*B. Without
  buckets, positions past S wrap to the start of the order, so every process
  has exactly M micro-batches, as the plan assumes (with drop_last, M is
  floored and no position ever wraps); with buckets every row is already
  one bucket's full micro-batch.
- Randomness inside a micro-batch (horizontal flips here; noise and
  timesteps in the trainer) is drawn from generators seeded with
  (seed, global micro-batch index, rank): a resumed run draws the same
  values, and which worker decodes a micro-batch changes nothing.
- Everything about a sample except its pixels is known before decoding
  (`sample_specs`: file, original size, training size, resized size, crop,
  flip), so a cache can be keyed on it and serve stored results instead:
  with `dataset.latent_cache` set (`modules.data.caches`), a micro-batch
  carries the stored VAE latent parameters of its samples and no pixels.
- Per-sample data travels in the micro-batch: each sample's caption (read
  once at start with `modules.data.captions`, each concept with its own extension
  and default caption, for the families of `modules.families.registry` that take
  captions; a missing or unreadable caption is a ConfigError before training),
  with its concept's tag shuffling, tag dropout and own caption dropout applied
  (`modules.data.captions.transform_caption`, drawn from (seed, global micro-batch,
  rank, CAPTION_STREAM)); its concept's name; its concept's loss weight. A flip is
  drawn for every sample and applied where its concept flips.
- `concept_counts` counts each concept's samples in an epoch's first micro-batches
  over every process: what the trainer logs as data/samples/<concept>.
"""

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modules.config.preset import ConceptSection, concept_folder_name
from modules.data.buckets import assign_buckets, bucket_resolutions, bucketed_epoch, cover_and_crop
from modules.data.captions import extra_caption_dropout, load_captions, transform_caption
from modules.data.concepts import Concept, epoch_images, resolve_concepts, training_concepts
from modules.errors import ConfigError
from modules.data.listing import list_images
from modules.data.sizes import image_sizes, orientation, unreadable
from modules.schedule.step_plan import StepPlan
from modules.data.batch import MicroBatch

# Different streams for the same (seed, micro-batch, rank): flips vs noise/timesteps.
FLIP_STREAM = 1
NOISE_STREAM = 2
CAPTION_STREAM = 3  # tag shuffling and dropout, a concept's own caption dropout
PREFETCH_MICRO_BATCHES_PER_WORKER = 4

# EXIF orientation -> the transpose that makes the image upright (as PIL.ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class SampleSpec:
    """One sample of a micro-batch, everything but its pixels. Sizes (height, width); crop (top, left)."""

    path: Path
    original_size: tuple[int, int]   # the file, upright
    target_size: tuple[int, int]     # what training sees: (resolution, resolution) or the bucket
    resized_size: tuple[int, int]    # after resizing to cover target_size
    crop_top_left: tuple[int, int]   # of the centre crop in the resized image
    flip: bool                       # mirrored left-right
    image: int = -1                  # its index into the dataset's files (not part of a cache key)


def sample_spec(path: Path, size: tuple[int, int], target: tuple[int, int], flip: bool = False,
                image: int = -1) -> SampleSpec:
    """The spec of `path` trained at `target`; `size` and `target` are (width, height), as the size index and
    the buckets give them: resized to cover the target, centre-cropped."""
    (width, height), (target_width, target_height) = size, target
    (resized_width, resized_height), crop = cover_and_crop((width, height), (target_width, target_height))
    return SampleSpec(Path(path), (height, width), (target_height, target_width), (resized_height, resized_width),
                      crop, flip, image)


def decode(path: Path, target_size: tuple[int, int],
           expected_size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(RGB uint8 array (height, width, 3) of `target_size`, original (height, width), crop (top, left)).

    `expected_size` (height, width), when given, is what the header said: a file that decodes to
    another size changed after the plan was made, a ConfigError.
    """
    target_height, target_width = target_size
    try:
        with Image.open(path) as image:
            turn = UPRIGHT.get(orientation(image))
            image = image.convert("RGB")
            if turn is not None:
                image = image.transpose(turn)
            width, height = image.size
            if expected_size is not None and (height, width) != tuple(expected_size):
                raise ConfigError(f"image '{path}' changed after the plan was made: {width}x{height}, was "
                                  f"{expected_size[1]}x{expected_size[0]} (start the run again)", "data.path")
            size, (top, left) = cover_and_crop((width, height), (target_width, target_height))
            if size != image.size:
                image = image.resize(size, Image.Resampling.BICUBIC)
            image = image.crop((left, top, left + target_width, top + target_height))
            return np.asarray(image, dtype=np.uint8).copy(), (height, width), (top, left)
    except ConfigError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise unreadable(path, error) from None


def sample_pixels(specs: list[SampleSpec]) -> torch.Tensor:
    """The samples decoded, flipped where their spec says: (B, 3, H, W) float32 in [-1, 1]."""
    pixels = []
    for spec in specs:
        image = decode(spec.path, spec.target_size, spec.original_size)[0]
        pixels.append(image[:, ::-1, :] if spec.flip else image)
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(pixels))).permute(0, 3, 1, 2).float()
    return batch.div_(127.5).sub_(1.0)


def load_image(path: Path, resolution: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """`decode` at (resolution, resolution): the shorter side resized to `resolution`, the centre cropped."""
    return decode(path, (resolution, resolution))


def micro_batch_seed(seed: int, global_micro_batch: int, rank: int, stream: int) -> list[int]:
    """Entropy for numpy's SeedSequence: the same four numbers always give the same draws."""
    return [int(seed), int(global_micro_batch), int(rank), int(stream)]


def torch_generator(seed: int, global_micro_batch: int, rank: int, stream: int = NOISE_STREAM) -> torch.Generator:
    """A CPU torch generator seeded from (seed, micro-batch, rank)."""
    entropy = micro_batch_seed(seed, global_micro_batch, rank, stream)
    value = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)


class ImageDataset:
    """The training concepts' files, every file's size (headers only), the epoch order and per-process sharding.

    `concepts`: the resolved train and regularization concepts (`modules.data.concepts`), their files
    concatenated in concept order; without it, the one concept of `folder` with `repeats` and `flip`
    (listed flat). `bucket_step` set: aspect-ratio buckets of that step and `bucket_max_aspect`.
    `caption_extension` set (or `read_captions` with concepts): every image's caption is read now
    (`modules.data.captions.load_captions`, with each concept's extension and default caption).
    """

    def __init__(self, folder, resolution: int, repeats: int = 1, flip: bool = False,
                 bucket_step: int | None = None, bucket_max_aspect: float = 2.0,
                 caption_extension: str | None = None, default_caption: str | None = None,
                 concepts: list[Concept] | None = None, read_captions: bool | None = None,
                 data_caption_dropout: float = 0.0):
        if concepts is None:
            concepts = [folder_concept(folder, repeats, flip, caption_extension or ".txt", default_caption)]
            read_captions = caption_extension is not None
        self.concepts = training_concepts(concepts)
        self.paths = [Path(path) for concept in self.concepts for path in concept.files]
        self.image_concept = np.repeat(np.arange(len(self.concepts)), [c.num_images for c in self.concepts])
        self.concept = self.concepts[0].name
        self.captions = self._read_captions(data_caption_dropout) if read_captions else None
        self.data_caption_dropout = data_caption_dropout
        self.resolution = resolution
        self.repeats = repeats
        self.flip = any(concept.settings.flip for concept in self.concepts)
        self.sizes = [size for concept in self.concepts for size in  # (width, height): the header check
                      (concept.sizes if concept.sizes is not None else image_sizes(concept.folder, concept.files))]
        self.bucketed = bucket_step is not None
        self.latent_cache = None  # set by modules.data.caches with data.cache_latents
        if self.bucketed:
            self.bucket_sizes = bucket_resolutions(resolution, bucket_step, bucket_max_aspect)  # (width, height)
            self.image_buckets = assign_buckets(self.sizes, self.bucket_sizes)
        else:
            self.bucket_sizes = [(resolution, resolution)]
            self.image_buckets = np.zeros(len(self.paths), dtype=np.int64)
        self._epoch_images: tuple[tuple[int, int], np.ndarray] | None = None

    def _read_captions(self, data_caption_dropout: float) -> dict:
        """image index -> caption, each read with its concept's extension and default caption. When a
        concept drops captions beyond data.caption_dropout, '' is one of the values too (key EMPTY_CAPTION),
        so the text-embedding cache, which embeds `captions.values()`, holds it."""
        captions: dict = {}
        for concept in self.concepts:
            settings, offset = concept.settings, len(captions)
            read = load_captions([Path(path) for path in concept.files], settings.caption_extension,
                                 settings.default_caption)
            captions.update({offset + index: read[Path(path)] for index, path in enumerate(concept.files)})
        if any(extra_caption_dropout(concept.settings.caption_dropout, data_caption_dropout)
               for concept in self.concepts):
            captions[EMPTY_CAPTION] = ""
        return captions

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @property
    def samples_per_epoch(self) -> int:
        return sum(concept.samples_per_epoch for concept in self.concepts)

    def bucket_counts(self) -> tuple[tuple[int, int, int], ...]:
        """(width, height, images) of every bucket that holds images, as `StepPlan.buckets`."""
        counts = np.bincount(self.image_buckets, minlength=len(self.bucket_sizes))
        return tuple((width, height, int(count)) for (width, height), count in zip(self.bucket_sizes, counts)
                     if count)

    def epoch_images(self, seed: int, epoch: int) -> np.ndarray:
        """The image of each sample of epoch `epoch` (`modules.data.concepts.epoch_images`; one concept
        with whole repeats: sample i shows image i % N)."""
        key = (int(seed), int(epoch))
        if self._epoch_images is None or self._epoch_images[0] != key:
            images = epoch_images(self.concepts, self.image_buckets, len(self.bucket_sizes), seed, epoch)
            self._epoch_images = (key, images)
        return self._epoch_images[1]

    def epoch_order(self, seed: int, epoch: int, plan: StepPlan | None = None) -> np.ndarray:
        """Sample indices of epoch `epoch` in training order, drawn from (seed, epoch) only.

        With buckets the order depends on the micro-batch size and drop_last, so `plan` is required.
        """
        if not self.bucketed:
            return np.random.default_rng([int(seed), int(epoch)]).permutation(self.samples_per_epoch)
        table = bucketed_epoch(seed, epoch, self.image_buckets[self.epoch_images(seed, epoch)],
                               plan.samples_per_micro_batch, plan.drop_last)
        return table.reshape(-1)

    def micro_batch_samples(self, order: np.ndarray, plan: StepPlan, micro_batch: int, rank: int) -> np.ndarray:
        """The sample indices process `rank` trains on in micro-batch `micro_batch` of the epoch."""
        start = micro_batch * plan.samples_per_micro_batch + rank * plan.batch_size
        positions = np.arange(start, start + plan.batch_size) % len(order)
        return order[positions]

    def sample_specs(self, order: np.ndarray, plan: StepPlan, micro_batch: int, rank: int, seed: int,
                     global_micro_batch: int) -> list[SampleSpec]:
        """Everything about the samples of one process's micro-batch except their pixels."""
        epoch = int(global_micro_batch // plan.micro_batches_per_epoch)
        samples = self.micro_batch_samples(order, plan, micro_batch, rank)
        images = [int(image) for image in self.epoch_images(seed, epoch)[samples]]
        flips = [False] * len(images)
        if self.flip:
            rng = np.random.default_rng(micro_batch_seed(seed, global_micro_batch, rank, FLIP_STREAM))
            flips = [bool(draw < 0.5) and self.concepts[self.image_concept[image]].settings.flip
                     for image, draw in zip(images, rng.random(len(images)))]
        return [sample_spec(self.paths[image], self.sizes[image], self.bucket_sizes[self.image_buckets[image]],
                            bool(flip), image) for image, flip in zip(images, flips)]

    def sample_captions(self, specs: list[SampleSpec], seed: int, global_micro_batch: int, rank: int) -> list[str]:
        """Each sample's caption, its concept's caption options applied (`transform_caption`), drawn
        from (seed, global micro-batch, rank)."""
        rng = np.random.default_rng(micro_batch_seed(seed, global_micro_batch, rank, CAPTION_STREAM))
        return [transform_caption(self.captions[spec.image], self.concepts[self.image_concept[spec.image]].settings,
                                  self.data_caption_dropout, rng) for spec in specs]

    def micro_batch(
        self, order: np.ndarray, plan: StepPlan, micro_batch: int, rank: int, seed: int, global_micro_batch: int
    ) -> MicroBatch:
        """One process's part of one micro-batch: pixels (B, 3, H, W) in [-1, 1], files, sizes and crops,
        and each sample's caption, concept and loss weight."""
        specs = self.sample_specs(order, plan, micro_batch, rank, seed, global_micro_batch)
        targets = {spec.target_size for spec in specs}
        if len(targets) != 1:  # the order guarantees it; a mixed batch could not be stacked anyway
            raise RuntimeError(f"micro-batch {global_micro_batch} mixes training sizes {sorted(targets)}")
        pixels = parameters = None
        if self.latent_cache is not None:  # the VAE's output, stored: no pixel is decoded
            parameters = self.latent_cache.latent_parameters(specs)
        else:
            pixels = sample_pixels(specs)
        concepts = [self.concepts[self.image_concept[spec.image]] for spec in specs]
        return MicroBatch(
            pixels=pixels,
            paths=[spec.path for spec in specs],
            original_sizes=[spec.original_size for spec in specs],
            crop_top_lefts=[spec.crop_top_left for spec in specs],
            epoch=int(global_micro_batch // plan.micro_batches_per_epoch),
            index=int(micro_batch),
            global_index=int(global_micro_batch),
            rank=int(rank),
            latent_parameters=parameters,
            pixel_size=specs[0].target_size,
            captions=None if self.captions is None else self.sample_captions(specs, seed, global_micro_batch, rank),
            concepts=[concept.name for concept in concepts],
            loss_weights=[concept.loss_weight for concept in concepts],
        )

    def concept_counts(self, plan: StepPlan, seed: int, epoch: int, micro_batches: int | None = None) -> dict[str, int]:
        """Samples of each concept that micro-batches 0 .. `micro_batches` - 1 (default: all M) of epoch
        `epoch` hold over every process: what the trainer logs as data/samples/<concept>. Counted from
        the epoch's order, the same slices the processes take (wrapped and repeated samples included)."""
        count = plan.micro_batches_per_epoch if micro_batches is None else micro_batches
        order = self.epoch_order(seed, epoch, plan)
        positions = np.arange(count * plan.samples_per_micro_batch) % len(order)
        images = self.epoch_images(seed, epoch)[order[positions]]
        totals = np.bincount(self.image_concept[images], minlength=len(self.concepts))
        return {concept.name: int(total) for concept, total in zip(self.concepts, totals)}

    def stream(self, plan: StepPlan, seed: int, rank: int, start_step: int, num_workers: int) -> "MicroBatchStream":
        """This process's micro-batches from optimizer step `start_step` to the end of the plan, in order."""
        return MicroBatchStream(self, plan, seed, rank, start_step, num_workers)


EMPTY_CAPTION = "dropped"
"""The key of the '' caption in `ImageDataset.captions` (see `_read_captions`)."""


def folder_concept(folder, repeats: float = 1, flip: bool = False, caption_extension: str = ".txt",
                   default_caption: str | None = None) -> Concept:
    """One train concept of every image under `folder` (listed flat)."""
    settings = ConceptSection(path=str(folder), name=concept_folder_name(str(folder)) or "data", repeats=repeats,
                              flip=flip, caption_extension=caption_extension, default_caption=default_caption,
                              caption_dropout=0.0, shuffle_tags=False, keep_tags=0, tag_separator=",",
                              tag_dropout=0.0)
    files = tuple(str(path) for path in list_images(folder))
    return Concept(settings.name, "train", str(folder), "data.path", files, len(files), repeats, None, settings)


def micro_batch_range(plan: StepPlan, start_step: int) -> range:
    """Global micro-batch indices (epoch * M + index) that optimizer steps start_step .. T-1 train on.

    The windows of consecutive steps are contiguous and never span an epoch, so this is one range.
    """
    if start_step >= plan.total_steps:
        return range(0)

    def first(step: int) -> int:
        epoch, step_in_epoch = plan.position(step)
        return epoch * plan.micro_batches_per_epoch + plan.micro_batch_window(step_in_epoch).start

    last_epoch, last_step_in_epoch = plan.position(plan.total_steps - 1)
    end = last_epoch * plan.micro_batches_per_epoch + plan.micro_batch_window(last_step_in_epoch).stop
    return range(first(start_step), end)


@dataclass(frozen=True)
class _Failure:
    """A user error raised in a worker, carried to the training process as one line."""

    message: str
    key: str | None


def _keep(item):
    return item


class _MicroBatchSource(torch.utils.data.Dataset):
    """Map-style dataset: global micro-batch index -> this process's MicroBatch (the epoch order cached)."""

    def __init__(self, dataset: ImageDataset, plan: StepPlan, seed: int, rank: int, length: int):
        self.dataset, self.plan, self.seed, self.rank, self.length = dataset, plan, seed, rank, length
        self._epoch, self._order = None, None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, global_micro_batch: int):
        epoch, micro_batch = divmod(int(global_micro_batch), self.plan.micro_batches_per_epoch)
        if self._epoch != epoch:
            self._epoch, self._order = epoch, self.dataset.epoch_order(self.seed, epoch, self.plan)
        try:
            return self.dataset.micro_batch(self._order, self.plan, micro_batch, self.rank, self.seed,
                                            global_micro_batch)
        except ConfigError as error:
            return _Failure(str(error.args[0]), error.key)


class MicroBatchStream:
    """The micro-batches one process trains on, decoded ahead by a torch DataLoader.

    `num_workers` 0 decodes in the training process. Each item depends only on its global index
    (see the module docstring), so the number of workers changes no bit of any batch.
    """

    def __init__(self, dataset: ImageDataset, plan: StepPlan, seed: int, rank: int, start_step: int,
                 num_workers: int):
        self.indices = micro_batch_range(plan, start_step)
        self._next = self.indices.start
        if multiprocessing.current_process().daemon:
            num_workers = 0  # a daemonic process may not start workers; the batches are the same without

        source = _MicroBatchSource(dataset, plan, seed, rank, self.indices.stop)
        self._loader = torch.utils.data.DataLoader(
            source, batch_size=None, sampler=self.indices, num_workers=num_workers, collate_fn=_keep,
            prefetch_factor=PREFETCH_MICRO_BATCHES_PER_WORKER if num_workers else None,
            # Its own generator: the loader draws worker seeds, never from the global torch RNG.
            generator=torch.Generator().manual_seed(int(seed)),
        )
        self._iterator = None

    def take(self, global_micro_batch: int) -> MicroBatch:
        """The next micro-batch, which must be `global_micro_batch` (the trainer's own count)."""
        if global_micro_batch != self._next:
            raise RuntimeError(f"the training loop asked for micro-batch {global_micro_batch}, "
                               f"the data stream is at {self._next}")
        if self._iterator is None:
            self._iterator = iter(self._loader)
        item = next(self._iterator)
        if isinstance(item, _Failure):
            self.close()
            raise ConfigError(item.message, item.key)
        self._next += 1
        return item

    def close(self) -> None:
        """Stop the workers (a stopped or failed run)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def build_dataset(preset, plan: StepPlan) -> ImageDataset:
    """The dataset of `preset`: its train and regularization concepts (headers read, and the captions
    where the model family takes captions); ConfigError if it no longer matches the plan's count."""
    from modules.families.model_types import resolve_model_type
    from modules.families.registry import descriptor

    data = preset.data
    takes_captions = descriptor(resolve_model_type(preset.model)).takes_captions
    concepts = resolve_concepts(data)
    dataset = ImageDataset(None, preset.model.resolution, data.repeats,
                           bucket_step=data.bucket_step if data.buckets else None,
                           bucket_max_aspect=data.bucket_max_aspect, concepts=concepts,
                           read_captions=takes_captions, data_caption_dropout=data.caption_dropout)
    if dataset.num_images != plan.num_images or \
            [concept.samples_per_epoch for concept in concepts] != [row.samples_per_epoch for row in plan.concepts]:
        raise ConfigError(
            f"the dataset changed while starting: {dataset.num_images} images, the plan counted {plan.num_images}",
            "data.path",
        )
    if dataset.bucketed and dataset.bucket_counts() != plan.buckets:
        raise ConfigError("the dataset changed while starting: its images fall into other buckets than the "
                          "plan counted (start the run again)", "data.path")
    return dataset


def training_sizes(dataset: ImageDataset) -> list[tuple[int, int]]:
    """(height, width) of every size the model will be trained at."""
    return [(height, width) for width, height, _ in dataset.bucket_counts()] if dataset.bucketed else \
        [(dataset.resolution, dataset.resolution)]

