"""Captions of a text-to-image dataset (SPEC §7); plain Python, no torch.

The caption of image `x.png` is the file `x` + `data.caption_extension`
(default `.txt`) in the same folder, read as UTF-8 and stripped. Where none
exists, `data.default_caption` serves; when that is null, a missing caption
is a ConfigError saying how many images lack one and naming the first. A
caption file that is not UTF-8 (or cannot be read) is a ConfigError naming it.
The step plan does not depend on captions. Caption dropout (`data.caption_dropout`,
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
        return Path(path).read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise ConfigError(f"caption file '{path}' is not UTF-8 text (byte {error.start})", "data.path") from None
    except OSError as error:
        raise ConfigError(f"caption file '{path}' cannot be read: {error.strerror}", "data.path") from None


@dataclass(frozen=True)
class CaptionSummary:
    images: int
    with_caption: int

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
        raise ConfigError(
            f"{len(missing)} of {len(images)} images have no caption file, e.g. '{caption_file(missing[0], extension)}' "
            f"for '{missing[0]}' (write one, or set data.default_caption)", "data.path")
    return captions
