"""Step accounting: the one place where training time is counted (SPEC §1).

Inputs: the concepts (`modules.data.concepts`: the same files the data loader reads, each with
its repeats r_c or samples K_c), per-process batch size B, gradient accumulation A, processes W,
drop_last, and epochs E or max_steps.

    samples per epoch            S = sum over train and regularization concepts c of S_c,
                                 S_c = floor(N_c * r_c), or K_c  (one concept: S = N * r)
    micro-batches per process    M = ceil(S / (B * W))   (floor with drop_last; M == 0 is an error)
                                 with buckets: sum over buckets b of ceil(S_b / (B * W)), where S_b,
                                 the samples of bucket b, is the same in every epoch by construction
    optimizer steps per epoch    U = ceil(M / A)          (the last window of an epoch may be partial)
    total optimizer steps        T = E * U, or T = max_steps when it is set

A plan holds at most MAX_TOTAL_STEPS optimizer steps: a longer length is a ConfigError naming the
key that set it (training.epochs or training.max_steps), raised before anything of that size is
allocated. `StepCounts.to_steps` is the one converter from a preset duration to optimizer steps.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modules.config.durations import parse_duration
from modules.config.preset import Preset
from modules.data.buckets import assign_buckets, bucket_resolutions, micro_batches_per_bucket
from modules.data.concepts import Concept, ConceptRow, concept_rows, resolve_concepts, samples_per_bucket, \
    training_concepts
from modules.errors import ConfigError

MAX_TOTAL_STEPS = 10_000_000
"""The longest plan, in optimizer steps: a million-step curve takes 10-20 ms, this one ten times that."""


@dataclass(frozen=True)
class StepCounts:
    """S, M, U and T of one preset and dataset, and the buckets and concepts they were counted over."""

    num_images: int
    samples_per_epoch: int
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    buckets: tuple[tuple[int, int, int], ...] = ()
    concepts: tuple[ConceptRow, ...] = ()

    def to_steps(self, value, key: str) -> int:
        """A preset duration (steps, "N epochs", "P%") in optimizer steps of this plan; ConfigError names `key`."""
        return parse_duration(value, key).to_steps(self.steps_per_epoch, self.total_steps)

    def interval_steps(self, value, key: str, final: bool = False) -> "IntervalSteps":
        """Every `value` (a duration, or None for never) up to T, and T itself when `final` is set."""
        if value is None:
            return IntervalSteps(None, self.total_steps, final)
        every = self.to_steps(value, key)
        if every < 1:
            raise ConfigError(f"must be at least 1 step, got {every} ({value!r})", key)
        return IntervalSteps(every, self.total_steps, final)


def count_steps(preset: Preset, concepts: list[Concept]) -> StepCounts:
    """S, M, U, T of `preset` over the resolved `concepts` (`modules.data.concepts`; with data.buckets
    each training concept's `sizes` are needed). S sums the train and regularization concepts."""
    data, training = preset.data, preset.training
    trained = training_concepts(concepts)
    if not trained:
        raise ConfigError("holds no train or regularization concept (validation concepts never train)",
                          "data.concepts")
    num_images = sum(concept.num_images for concept in trained)
    if num_images < 1:
        raise ConfigError("the dataset holds no images", "data.path")
    batch, processes = training.batch_size, training.num_processes
    samples = sum(concept.samples_per_epoch for concept in trained)
    if samples < 1:
        raise ConfigError("every concept has 0 samples per epoch (raise a concept's repeats)", "data.concepts")
    per_step = batch * processes
    buckets = ()
    if data.buckets:
        buckets, bucket_samples = count_bucket_samples(preset, trained)
        micro_batches = sum(micro_batches_per_bucket(bucket_samples, per_step, data.drop_last))
    else:
        micro_batches = samples // per_step if data.drop_last else math.ceil(samples / per_step)
    if micro_batches == 0:
        short = "every bucket holds fewer samples than" if buckets else f"{samples} samples per epoch <"
        raise ConfigError(f"drop_last leaves no batch: {short} batch {batch} x {processes} processes",
                          "data.drop_last")
    steps_per_epoch = math.ceil(micro_batches / training.gradient_accumulation_steps)
    total = training.max_steps if training.max_steps is not None else training.epochs * steps_per_epoch
    _check_length(preset, total, steps_per_epoch)
    return StepCounts(num_images, samples, micro_batches, steps_per_epoch, total, buckets, concept_rows(concepts))


def _check_length(preset: Preset, total: int, steps_per_epoch: int) -> None:
    training = preset.training
    if total <= MAX_TOTAL_STEPS:
        return
    if training.max_steps is not None:
        raise ConfigError(f"{total} steps is more than the {MAX_TOTAL_STEPS:,} optimizer steps a plan may hold",
                          "training.max_steps")
    raise ConfigError(
        f"{training.epochs} epochs x {steps_per_epoch} steps/epoch = {total} steps is more than the "
        f"{MAX_TOTAL_STEPS:,} optimizer steps a plan may hold", "training.epochs")


def count_bucket_samples(preset: Preset, trained: list[Concept]) -> tuple[tuple[tuple[int, int, int], ...], list[int]]:
    """((width, height, images) of every bucket that holds images, in bucket order; the samples each of
    those buckets holds per epoch, S_b, fixed by construction (`modules.data.concepts.samples_per_bucket`))."""
    data = preset.data
    resolutions = bucket_resolutions(preset.model.resolution, data.bucket_step, data.bucket_max_aspect)
    images = np.zeros(len(resolutions), dtype=np.int64)
    samples = np.zeros(len(resolutions), dtype=np.int64)
    for concept in trained:
        assigned = assign_buckets(concept.size_array, resolutions)
        images += np.bincount(assigned, minlength=len(resolutions))
        samples += samples_per_bucket(concept, assigned, len(resolutions))
    used = np.flatnonzero(images)
    buckets = tuple((resolutions[b][0], resolutions[b][1], int(images[b])) for b in used)
    return buckets, [int(samples[b]) for b in used]


def list_concepts(preset: Preset, read_sizes: bool) -> list[Concept]:
    """The preset's concepts, listed (and every image's size read, through the size index, when asked)."""
    return resolve_concepts(preset.data, read_sizes)


class IntervalSteps(Sequence):
    """every, 2 * every, ... up to total (none when every is None), then total itself when `final` is set.

    Arithmetic, not a stored list: membership, length and indexing take constant time however
    long the plan. Compares equal to a tuple or list of the same steps.
    """

    def __init__(self, every: int | None, total: int, final: bool = False):
        self.every, self.total, self.final = every, total, final
        self._periodic = range(every, total + 1, every) if every else range(0)
        self._extra = 1 if final and total not in self._periodic else 0

    def __len__(self) -> int:
        return len(self._periodic) + self._extra

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("step index out of range")
        return self._periodic[index] if index < len(self._periodic) else self.total

    def __contains__(self, step) -> bool:
        return step in self._periodic or (self._extra == 1 and step == self.total)

    def __eq__(self, other) -> bool:
        if isinstance(other, IntervalSteps):
            return list(self._key()) == list(other._key())
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (self._periodic.start, self._periodic.stop, self._periodic.step, self._extra, self.total)

    def __repr__(self) -> str:
        shown = ", ".join(map(str, self[:6]))
        return f"IntervalSteps({shown}{', ...' if len(self) > 6 else ''}; {len(self)} steps)"
