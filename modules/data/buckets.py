"""Aspect-ratio buckets: which bucket each image trains in, and the bucketed order of an epoch.

Pure NumPy, shared by the step plan (which counts) and the data loader
(which reads), so the two cannot disagree. Sizes are (width, height) in
pixels unless a name says otherwise.

- `bucket_resolutions(resolution, step, max_aspect)`: every (width, height)
  with both sides multiples of `step`, width x height <= resolution², each
  as large as that allows for its width (as kohya sd-scripts' bucket
  manager builds them) and the same turned by 90 degrees, long side /
  short side <= max_aspect, plus the square floor(resolution / step) *
  step. Sorted by aspect ratio w / h.
- `assign_buckets(sizes, buckets)`: each image goes to the bucket nearest
  its aspect ratio, |log(w/h) - log(bw/bh)| smallest (ties: the narrower
  bucket).
- `cover_and_crop(size, target)`: the image is resized so that it covers the
  target (scale = max(tw / w, th / h), each side rounded and at least the
  target's) and the target is cut from its centre; returns the resized
  (width, height) and the crop's (top, left).
- `bucketed_epoch(seed, epoch, sample_buckets, per_micro_batch, drop_last)`:
  the samples of epoch `epoch` as a matrix (M, B*W) of sample indices, one
  row per micro-batch, all of one bucket. From one generator seeded with
  (seed, epoch): the samples of each bucket (in bucket order) are shuffled,
  cut into rows of B*W (the last, short row of a bucket is completed with
  that bucket's first samples again, or dropped with drop_last), and then
  the rows of all buckets are shuffled together.
  So M = sum over buckets of ceil(S_b / (B*W)) (floor with drop_last).
"""

import math

import numpy as np


def bucket_resolutions(resolution: int, step: int, max_aspect: float) -> list[tuple[int, int]]:
    area = resolution * resolution
    found = set()
    side = (resolution // step) * step
    if side >= step:
        found.add((side, side))
    width = step
    widest = int(resolution * math.sqrt(max_aspect)) + step  # wider buckets are flatter than max_aspect
    while width <= widest:
        height = (area // width) // step * step
        if height >= step and max(width, height) / min(width, height) <= max_aspect:
            found.update({(width, height), (height, width)})  # portrait and landscape alike
        width += step
    return sorted(found, key=lambda size: (size[0] / size[1], size[0]))


def assign_buckets(sizes: "list[tuple[int, int]] | np.ndarray", buckets: list[tuple[int, int]]) -> np.ndarray:
    """The index into `buckets` of each image's bucket (int64, one per size)."""
    if len(sizes) == 0:
        return np.zeros(0, dtype=np.int64)
    dimensions = np.asarray(sizes, dtype=np.float64)
    image_aspects = np.log(dimensions[:, 0] / dimensions[:, 1])
    bucket_aspects = np.log(np.asarray([w / h for w, h in buckets], dtype=np.float64))
    return np.abs(image_aspects[:, None] - bucket_aspects[None, :]).argmin(axis=1).astype(np.int64)


def cover_and_crop(size: tuple[int, int], target: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized (width, height), crop (top, left)) of an image of `size` trained at `target`."""
    width, height = size
    target_width, target_height = target
    scale = max(target_width / width, target_height / height)
    resized = (max(target_width, round(width * scale)), max(target_height, round(height * scale)))
    return resized, ((resized[1] - target_height) // 2, (resized[0] - target_width) // 2)


def micro_batches_per_bucket(samples_per_bucket: list[int], per_micro_batch: int, drop_last: bool) -> list[int]:
    """Rows each bucket contributes to an epoch: ceil(S_b / (B*W)), or floor with drop_last."""
    if drop_last:
        return [samples // per_micro_batch for samples in samples_per_bucket]
    return [math.ceil(samples / per_micro_batch) for samples in samples_per_bucket]


def sample_buckets(image_buckets: np.ndarray, repeats: int) -> np.ndarray:
    """The bucket of each sample of an epoch: sample i shows image i % N."""
    return np.tile(image_buckets, repeats)


def bucketed_epoch(seed: int, epoch: int, buckets_of_samples: np.ndarray, per_micro_batch: int,
                   drop_last: bool) -> np.ndarray:
    """The epoch's micro-batches as sample indices, shape (M, per_micro_batch); see the module docstring."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    rows = []
    for bucket in np.unique(buckets_of_samples):
        members = np.flatnonzero(buckets_of_samples == bucket)
        members = members[rng.permutation(len(members))]
        count = len(members) // per_micro_batch if drop_last else math.ceil(len(members) / per_micro_batch)
        if count:
            positions = np.arange(count * per_micro_batch) % len(members)
            rows.append(members[positions].reshape(count, per_micro_batch))
    if not rows:
        return np.zeros((0, per_micro_batch), dtype=np.int64)
    table = np.concatenate(rows)
    return table[rng.permutation(len(table))]
