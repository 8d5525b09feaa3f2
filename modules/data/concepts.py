"""Concepts: the folders of a dataset, each with its repeats or samples, and each epoch's exact samples.

SPEC §10. `resolve_concepts(data)` turns `data.concepts` (or `data.path` alone: one train concept) into
`Concept` objects, listing each folder once (`modules.data.listing`) and, when asked, reading every
image's size (`modules.data.sizes`, through the size index). The kohya layout is read here: a concept
folder whose immediate (non-hidden) subfolders are all named `<N>_<name>` becomes one concept per
subfolder, named `<name>`, with repeats N (times the outer concept's repeats), of the outer concept's
type and settings, as kohya sd-scripts reads `train_data_dir` and `reg_data_dir`; `data.layout:
"flat"` turns this off.

Samples per epoch of a concept with N images (`Concept.samples_per_epoch`):
- `repeats` r: floor(N * r), counted exactly (r is read as the decimal it was written as, so
  100 x 0.29 is 29): every image floor(r) times plus a subset of floor(N * (r - floor(r))) images;
- `samples` K: exactly K.

The plan must hold in every epoch, so a concept's samples per bucket are fixed by construction,
not drawn (`samples_per_bucket`): with n_b of its images in bucket b, the subset of the fraction
(or the K samples) is split over the buckets by the largest-remainder rule (bucket b gets
floor(E * n_b / N), the rest go one each to the largest remainders E * n_b mod N, ties to the
earlier bucket). Only *which* images of a bucket are drawn varies:
- the fractional subset of bucket b: the first e_b of a permutation of the bucket's images drawn from
  (seed, epoch, concept index);
- `samples`: a permutation of the bucket's images drawn once from (seed, concept index, bucket),
  walked cyclically: epoch e takes positions e * k_b ... e * k_b + k_b - 1 (mod n_b), so every image
  comes round in turn and an epoch may show an image more than once when k_b > n_b.
`epoch_images(concepts, image_buckets, seed, epoch)` lists an epoch's samples as image indices: for
each concept in order, its images floor(r) times in listing order, then its subset (or its cycled
samples), bucket by bucket. A single concept with whole repeats is `tile(arange(N), r)`, the
order training always had. Validation concepts (§11) are resolved (their folder is checked) but
never train and are not in the plan. With `data.validation_split`, each train concept's held-out images
(`modules.data.validation_split`) leave its `files` for its `held_out`: the plan counts the rest.
"""

import math
import os
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property

import numpy as np

from modules.config.preset import ConceptSection
from modules.data.listing import scan_image_files, walk_folder
from modules.data.sizes import image_sizes
from modules.data.validation_split import split_files
from modules.errors import ConfigError

KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
TRAINING_TYPES = ("train", "regularization")
FRACTION_STREAM = 11  # entropy that keeps these draws apart from the epoch order's (seed, epoch)
SAMPLES_STREAM = 12


@dataclass(frozen=True)
class Concept:
    """One resolved concept: its settings (every inherited key filled), its files in listing order."""

    name: str
    type: str
    folder: str
    key: str                              # the preset key of its folder: 'data.path' or 'data.concepts.N.path'
    files: tuple[str, ...]                # listing order; () where only a count is known
    num_images: int
    repeats: float | None                 # None when `samples` is set
    samples: int | None
    settings: ConceptSection              # inherited: caption keys, flip, tag options, loss_weight
    kohya_folder: str | None = None       # the outer folder read with the kohya layout
    skipped: tuple[str, ...] = ()         # files of an unsupported image type
    sizes: tuple[tuple[int, int], ...] | None = field(default=None, compare=False)  # (width, height) per file
    held_out: tuple[str, ...] = ()        # data.validation_split: its images set aside for validation, not in files

    @cached_property
    def size_array(self) -> np.ndarray:
        """`sizes` as an int64 array (N, 2): bucket assignment and the checks read it without converting."""
        return np.asarray(self.sizes, dtype=np.int64).reshape(-1, 2)

    @property
    def trains(self) -> bool:
        return self.type in TRAINING_TYPES

    @property
    def loss_weight(self) -> float:
        return self.settings.loss_weight

    @property
    def samples_per_epoch(self) -> int:
        """floor(N * repeats), or `samples`; 0 for a validation concept."""
        if not self.trains:
            return 0
        if self.samples is not None:
            return self.samples
        return math.floor(exact(self.repeats) * self.num_images)

    @property
    def setting_key(self) -> str:
        """The key prefix of its own settings: 'data' or 'data.concepts.N'."""
        return self.key.rsplit(".", 1)[0]

    def describe_amount(self) -> str:
        """'x 2 repeats', 'x 0.5 repeats', '40 samples'."""
        if self.samples is not None:
            return f"{self.samples} samples"
        repeats = f"{self.repeats:g}"
        return f"x {repeats} repeat{'s' * (repeats != '1')}"


def exact(value: float) -> Fraction:
    """The decimal `value` was written as, exactly: 0.29 is 29/100, not the float below it."""
    return Fraction(repr(float(value)))


# --- resolving ----------------------------------------------------------------------------------

def resolve_concepts(data, read_sizes: bool = False) -> list[Concept]:
    """The concepts of a DataSection (see the module docstring), validation ones included.
    ConfigError naming the key for a missing folder, a folder without images, two concepts of one name."""
    written = data.concept_list()
    if not written:
        raise ConfigError("is not set: choose the folder of training images (or list data.concepts)", "data.path")
    concepts: list[Concept] = []
    for index, concept in enumerate(written):
        key = "data.path" if not data.concepts else f"data.concepts.{index}.path"
        concepts.extend(_resolve_one(concept, key, data.layout, read_sizes, data.validation_split))
    _check_unique(concepts)
    return concepts


def kohya_subfolders(folder: str) -> list[tuple[int, str, str]] | None:
    """[(repeats, name, path)] of a folder whose immediate subfolders are all `<N>_<name>`, else None."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder)
                       if not entry.name.startswith(".") and entry.is_dir())
    except OSError:
        return None
    return _kohya_names(folder, names)


def _kohya_names(folder: str, names: list[str]) -> list[tuple[int, str, str]] | None:
    matches = [(KOHYA_FOLDER.match(name), name) for name in names]
    if not matches or not all(match for match, _ in matches):
        return None
    return [(int(match.group(1)), match.group(2), os.path.join(folder, name)) for match, name in matches]


def _resolve_one(concept: ConceptSection, key: str, layout: str, read_sizes: bool, split: float) -> list[Concept]:
    # One walk of the folder serves both readings: a kohya folder's listing is split by subfolder.
    scan = walk_folder(concept.path, key, allow_empty=layout == "auto")
    files, skipped = scan.files, scan.skipped
    subfolders = _kohya_names(concept.path, scan.subfolders) if layout == "auto" else None
    if subfolders is None:
        if not files:
            scan_image_files(concept.path, key)  # the error of a folder without images
        return [_listed(concept, concept.path, key, concept.display_name, concept.repeats, None, read_sizes,
                        files, skipped, split)]
    if concept.samples is not None:
        raise ConfigError(f"'{concept.path}' is read with the kohya layout (one concept per N_name subfolder), "
                          "which gives repeats, not samples: set repeats, or data.layout to 'flat'",
                          key.rsplit(".", 1)[0] + ".samples")
    outer = 1 if concept.repeats is None else concept.repeats
    resolved = []
    for repeats, name, path in subfolders:
        prefix = os.path.basename(path) + "/"
        own = [(relative[len(prefix):], full) for relative, full in files if relative.startswith(prefix)]
        own_skipped = [full for full in skipped if full.startswith(path + os.sep)]
        if not own:
            scan_image_files(path, key)  # the error of a subfolder without images
        resolved.append(_listed(concept, path, key, name, repeats * outer, concept.path, read_sizes, own,
                                own_skipped, split))
    return resolved


def _listed(concept: ConceptSection, folder: str, key: str, name: str, repeats, kohya_folder, read_sizes,
            files, skipped, split: float = 0.0) -> Concept:
    paths = tuple(path for _, path in files)
    held_out: tuple[str, ...] = ()
    if concept.type == "train" and split > 0:
        kept, held = split_files(list(paths), split)
        paths, held_out = tuple(paths[index] for index in kept), tuple(paths[index] for index in held)
    if concept.samples is None and repeats is None:
        repeats = 1
    sizes = tuple(image_sizes(folder, list(paths))) if read_sizes else None
    return Concept(name, concept.type, str(folder), key, paths, len(paths), repeats, concept.samples, concept,
                   kohya_folder, tuple(skipped), sizes, held_out)


def _check_unique(concepts: list[Concept]) -> None:
    seen: dict[str, Concept] = {}
    for concept in concepts:
        other = seen.get(concept.name)
        if other is not None:
            raise ConfigError(f"two concepts are named {concept.name!r} ('{other.folder}' and '{concept.folder}'): "
                              "rename a folder or set a concept's name", concept.key)
        seen[concept.name] = concept


def count_only(data, num_images: int | None, sizes: list[tuple[int, int]] | None) -> list[Concept] | None:
    """The one concept of `data.path` with a count (and sizes) measured elsewhere (the app's counter),
    without listing; None where that does not describe the dataset (several concepts, a kohya folder)."""
    written = data.concept_list()
    if data.validation_split > 0:
        return None  # which images are held out needs the files
    if data.buckets and sizes is None:
        return None  # buckets need every image's size: the folder is listed
    if not written and not data.concepts:  # counted without a folder (the gallery, the benchmarks)
        written = [ConceptSection(path=".", name="data", repeats=data.repeats).inherit(data)]
    elif len(written) != 1 or data.concepts:
        return None
    elif data.layout == "auto" and kohya_subfolders(written[0].path) is not None:
        return None
    concept = written[0]
    count = len(sizes) if sizes is not None else num_images
    return [Concept(concept.display_name, concept.type, concept.path, "data.path", (), count, concept.repeats, None,
                    concept, sizes=None if sizes is None else tuple(sizes))]


def training_concepts(concepts: list[Concept]) -> list[Concept]:
    return [concept for concept in concepts if concept.trains]


def with_sizes(concept: Concept) -> Concept:
    """The concept with every image's size read (headers, through the size index)."""
    if concept.sizes is not None:
        return concept
    return replace(concept, sizes=tuple(image_sizes(concept.folder, list(concept.files))))


# --- the samples of an epoch -------------------------------------------------------------------

def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers >= 0 summing to `total`, proportional to the integer `weights` (largest remainder;
    ties to the earlier index). Exact integer arithmetic."""
    weights = np.asarray(weights, dtype=np.int64)
    whole = int(weights.sum())
    if whole == 0 or total == 0:
        return np.zeros(len(weights), dtype=np.int64)
    scaled = weights.astype(object) * int(total)  # object: no overflow for large totals
    shares = np.array([int(value) // whole for value in scaled], dtype=np.int64)
    remainders = np.array([int(value) % whole for value in scaled], dtype=np.int64)
    left = int(total) - int(shares.sum())
    shares[np.argsort(-remainders, kind="stable")[:left]] += 1
    return shares


def samples_per_bucket(concept: Concept, buckets_of_images: np.ndarray, num_buckets: int) -> np.ndarray:
    """How many samples of the concept each bucket holds in every epoch (see the module docstring)."""
    images = np.bincount(buckets_of_images, minlength=num_buckets).astype(np.int64)
    if not concept.trains:
        return np.zeros(num_buckets, dtype=np.int64)
    if concept.samples is not None:
        return apportion(concept.samples, images)
    whole = math.floor(exact(concept.repeats))
    return whole * images + apportion(concept.samples_per_epoch - whole * concept.num_images, images)


def concept_epoch_images(concept: Concept, index: int, buckets_of_images: np.ndarray, num_buckets: int,
                         seed: int, epoch: int) -> np.ndarray:
    """The concept's samples of epoch `epoch` as indices into its own files (see the module docstring)."""
    counts = samples_per_bucket(concept, buckets_of_images, num_buckets)
    if concept.samples is not None:
        parts = []
        for bucket in np.flatnonzero(counts):
            members = np.flatnonzero(buckets_of_images == bucket)
            order = members[np.random.default_rng([int(seed), SAMPLES_STREAM, index, int(bucket)])
                            .permutation(len(members))]
            parts.append(order[(int(epoch) * int(counts[bucket]) + np.arange(counts[bucket])) % len(members)])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    whole = math.floor(exact(concept.repeats))
    parts = [np.tile(np.arange(concept.num_images, dtype=np.int64), whole)]
    extra = counts - whole * np.bincount(buckets_of_images, minlength=num_buckets)
    if extra.any():
        rng = np.random.default_rng([int(seed), int(epoch), FRACTION_STREAM, index])
        for bucket in np.flatnonzero(extra):
            members = np.flatnonzero(buckets_of_images == bucket)
            parts.append(np.sort(members[rng.permutation(len(members))[:extra[bucket]]]))
    return np.concatenate(parts)


def epoch_images(concepts: list[Concept], image_buckets: np.ndarray, num_buckets: int, seed: int,
                 epoch: int) -> np.ndarray:
    """The samples of epoch `epoch` of the training `concepts` (files concatenated in concept order,
    `image_buckets` the bucket of each) as indices into those files."""
    parts, offset = [], 0
    for index, concept in enumerate(concepts):
        own = image_buckets[offset:offset + concept.num_images]
        parts.append(concept_epoch_images(concept, index, own, num_buckets, seed, epoch) + offset)
        offset += concept.num_images
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ConceptRow:
    """What the plan, the preview and the app show of one concept."""

    name: str
    type: str
    images: int
    repeats: float | None
    samples: int | None
    samples_per_epoch: int
    loss_weight: float
    folder: str
    key: str
    kohya_folder: str | None = None
    held_out: int = 0                 # images set aside for validation by data.validation_split

    def amount(self) -> str:
        if self.samples is not None:
            return f"{self.samples} samples"
        return f"x {self.repeats:g}"


def concept_rows(concepts: list[Concept]) -> tuple[ConceptRow, ...]:
    return tuple(ConceptRow(concept.name, concept.type, concept.num_images, concept.repeats, concept.samples,
                            concept.samples_per_epoch, concept.loss_weight, concept.folder, concept.key,
                            concept.kohya_folder, len(concept.held_out)) for concept in concepts)
