"""Shared fixtures: tiny image folders and presets built in tmp_path."""

import os
import shutil
import subprocess
import sys
import time
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


@pytest.fixture(scope="session")
def display():
    """Start `Xvfb :N` once for the session and point DISPLAY at it.

    One server for every window test module: Tk cannot open a second display after the first one
    it used has gone, and ends the process when it tries.
    """
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (make test installs it where apt-get is available)")
    for number in range(91, 120):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.skip(f"Xvfb :{number} did not start")
        time.sleep(0.05)
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield f":{number}"
    if previous is None:
        del os.environ["DISPLAY"]
    else:
        os.environ["DISPLAY"] = previous
    server.terminate()
    server.wait(10)
