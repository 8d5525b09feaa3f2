"""Session-wide tiny pipelines of every registered family (random weights, built once), and families built on them."""

from pathlib import Path

import pytest
import torch

from modules.config.preset import validate_preset
from modules.data.batch import MicroBatch
from modules.families.registry import FAMILIES, descriptor

RESOLUTION = 16
BATCH_SIZE = 2
CAPTIONS = ["a photo of the thing", "the thing and a photo"]


@pytest.fixture(scope="session")
def family_pipelines(tmp_path_factory):
    """{family name: its tiny pipeline folder}, built once per test session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("family_pipelines")
        return {family.name: family.build_tiny_pipeline(root / family.name) for family in FAMILIES}
    finally:
        torch.set_num_threads(threads)


def family_preset(folder: Path, name: str, method: str = "full", training: dict | None = None, **sections):
    """A preset training family `name` from `folder`; the text encoders train where the family has them."""
    optimizer = {"type": "sgd", "lr": 0.1}
    if descriptor(name).takes_captions:
        optimizer["text_encoder_lr"] = 0.1
    raw = {"model": {"path": str(folder), "type": name, "resolution": RESOLUTION},
           "training": {"method": method, "device": "cpu", "seed": 0, **(training or {})},
           "optimizer": optimizer, **sections}
    if method == "lora":
        raw.setdefault("lora", {"rank": 4, "alpha": 8})
    return validate_preset(raw)


def build(preset):
    from modules.families.base import family_class

    return family_class(preset)(preset, None)


def micro_batch(name: str, seed: int = 0, loss_weights=None) -> MicroBatch:
    """A micro-batch of random pixels in [-1, 1], with captions where the family takes them."""
    pixels = torch.rand(BATCH_SIZE, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return MicroBatch(pixels=pixels, paths=[Path(f"image_{index}.png") for index in range(BATCH_SIZE)],
                      original_sizes=[(RESOLUTION, RESOLUTION)] * BATCH_SIZE, crop_top_lefts=[(0, 0)] * BATCH_SIZE,
                      epoch=0, index=0, global_index=0, rank=0,
                      captions=list(CAPTIONS) if descriptor(name).takes_captions else None,
                      concepts=["images"] * BATCH_SIZE, loss_weights=loss_weights or [1.0] * BATCH_SIZE)
