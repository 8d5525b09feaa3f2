"""Shared fixtures: tiny image folders and presets built in tmp_path."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, count: int, size: int = 16, seed: int = 0) -> Path:
    """Write `count` small RGB PNGs into `folder` and return it."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{index:04d}.png")
    return folder


@pytest.fixture(autouse=True)
def private_cache_folder(tmp_path_factory, monkeypatch):
    """The image size index (and any user cache) goes to a folder of the test, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def image_folder(tmp_path):
    """A folder of 7 images (an odd count, as in the seed failures)."""
    return make_images(tmp_path / "images", 7)
