"""Captions of a text-to-image dataset (SPEC §7); plain Python, no torch.

The caption of image `x.png` is the file `x` + `data.caption_extension`
(default `.txt`) in the same folder, read as UTF-8 and stripped. Where none
exists, `data.default_caption` serves; when that is null, a missing caption
is a ConfigError saying how many images lack one and naming the first. A
caption file that is not UTF-8 (or cannot be read) is a ConfigError naming it.
`check_captions` finds all of these before training (the step plan's dataset
check runs it, so the preview refuses what training would) and warns about an
empty caption file, which trains like a dropped caption. The step plan does
not depend on captions. Caption dropout (`data.caption_dropout`,
the probability that a sample trains with the empty caption) is drawn by the
model family from the micro-batch's seeded generator, so a resume repeats it.
"""

from dataclasses import dataclass
from pathlib import Path

from modules.errors import ConfigError


def caption_file(image: Path, extension: str) -> Path:
    """`x` + extension beside `x.png`."""
    image = Path(image)
    return image.parent / (image.stem + extension)


def read_caption(path: Path) -> str:
    try:
        return _decoded(path, Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(f"caption file '{path}' cannot be read: {error.strerror}", "data.path") from None


@dataclass(frozen=True)
class CaptionSummary:
    images: int
    with_caption: int
    # Filled by `scan_captions` (which reads the files); `summarize_captions` only counts them.
    first_missing: Path | None = None  # the first image without a caption file
    empty: tuple[Path, ...] = ()       # caption files that hold nothing but white space
    error: ConfigError | None = None   # the first caption file that is not UTF-8 or does not read

    @property
    def without_caption(self) -> int:
        return self.images - self.with_caption

    def describe(self, default_caption: str | None) -> str:
        """'5 of 7 images have a caption file (2 use data.default_caption)'."""
        text = f"{self.with_caption} of {self.images} image{'s' * (self.images != 1)} have a caption file"
        if self.without_caption and default_caption is not None:
            text += f" ({self.without_caption} use data.default_caption)"
        elif self.without_caption:
            text += f" ({self.without_caption} lack one and data.default_caption is null: training refuses)"
        return text

    def check(self, default_caption: str | None, extension: str) -> list[str]:
        """What `load_captions` refuses, as its ConfigError; else a warning naming the first empty file."""
        if self.error is not None:
            raise self.error
        if self.first_missing is not None and default_caption is None:
            raise missing_captions(self.first_missing, self.without_caption, self.images, extension)
        if not self.empty:
            return []
        more = f" ({len(self.empty)} in all)" if len(self.empty) > 1 else ""
        return [f"caption file '{self.empty[0]}' is empty{more}: its image trains with the empty caption, "
                "as a dropped caption does"]


def summarize_captions(images: list[Path], extension: str) -> CaptionSummary:
    """How many of `images` have a caption file (nothing is read)."""
    return CaptionSummary(len(images), sum(caption_file(image, extension).is_file() for image in images))


def load_captions(images: list[Path], extension: str, default_caption: str | None) -> dict[Path, str]:
    """image -> caption for every image; ConfigError for a missing caption without a default, or a bad file."""
    captions: dict[Path, str] = {}
    missing: list[Path] = []
    for image in images:
        path = caption_file(image, extension)
        if path.is_file():
            captions[Path(image)] = read_caption(path)
        elif default_caption is not None:
            captions[Path(image)] = default_caption.strip()
        else:
            missing.append(Path(image))
    if missing:
        raise missing_captions(missing[0], len(missing), len(images), extension)
    return captions


def missing_captions(first: Path, missing: int, images: int, extension: str) -> ConfigError:
    """'2 of 5 images have no caption file, e.g. ...' (SPEC §7)."""
    return ConfigError(
        f"{missing} of {images} images have no caption file, e.g. '{caption_file(first, extension)}' "
        f"for '{first}' (write one, or set data.default_caption)", "data.path")


def scan_captions(images: list[Path], extension: str) -> CaptionSummary:
    """Read every caption file of `images`: the count, the first image without one, the empty files
    and the first file that does not read (see `CaptionSummary.check`)."""
    first_missing, error = None, None
    empty: list[Path] = []
    with_caption = 0
    for image in images:
        path = caption_file(image, extension)
        if not path.is_file():
            first_missing = first_missing or Path(image)
            continue
        with_caption += 1
        try:
            if not read_caption(path):
                empty.append(path)
        except ConfigError as problem:
            error = error or problem
    return CaptionSummary(len(images), with_caption, first_missing, tuple(empty), error)


def check_captions(images: list[Path], extension: str, default_caption: str | None) -> list[str]:
    """What `load_captions` would refuse, as the same ConfigError, without keeping the captions;
    a warning naming the first empty caption file (and how many there are) otherwise."""
    return scan_captions(images, extension).check(default_caption, extension)


def _decoded(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise ConfigError(f"caption file '{path}' is not UTF-8 text (byte {error.start})", "data.path") from None


def tag_joiner(separator: str) -> str:
    """What tags are joined with again: ', ' for ',' (as kohya sd-scripts writes them), a space-ending or
    blank separator as it is."""
    return separator if separator.endswith(" ") or separator.isspace() else separator + " "


def transform_caption(caption: str, settings, data_dropout: float, rng) -> str:
    """A concept's caption options applied to one sample's caption (SPEC §10), drawn from `rng` (a numpy
    Generator seeded from the micro-batch): the caption dropped to '' with probability
    `extra_caption_dropout(settings.caption_dropout, data_dropout)`, else split on `tag_separator`, the
    first `keep_tags` tags kept in place, each other tag dropped with probability `tag_dropout`, the
    rest shuffled when `shuffle_tags`, joined with `tag_joiner`."""
    dropout = extra_caption_dropout(settings.caption_dropout, data_dropout)
    if dropout and rng.random() < dropout:
        return ""
    if not (settings.shuffle_tags or settings.tag_dropout):
        return caption
    tags = [tag.strip() for tag in caption.split(settings.tag_separator)]
    tags = [tag for tag in tags if tag]
    kept, rest = tags[:settings.keep_tags], tags[settings.keep_tags:]
    if settings.tag_dropout:
        rest = [tag for tag, draw in zip(rest, rng.random(len(rest))) if draw >= settings.tag_dropout]
    if settings.shuffle_tags:
        rest = [rest[index] for index in rng.permutation(len(rest))]
    return tag_joiner(settings.tag_separator).join(kept + rest)


def extra_caption_dropout(concept_dropout: float, data_dropout: float) -> float:
    """The dropout the data side draws so that a concept's caption is dropped with its own
    `caption_dropout` p_c: the model family drops every caption with data.caption_dropout p_d
    afterwards, so the data side drops with q = (p_c - p_d) / (1 - p_d), and 1 - (1 - q)(1 - p_d) = p_c.
    0 where p_c <= p_d (a concept's caption_dropout below data.caption_dropout is refused by the preset)."""
    if concept_dropout <= data_dropout:
        return 0.0
    return 1.0 if data_dropout >= 1 else (concept_dropout - data_dropout) / (1 - data_dropout)
