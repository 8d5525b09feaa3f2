"""Shared helpers for the training tests: tiny presets in tmp_path and weight comparison."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modules.config.preset import validate_preset
from tests.conftest import make_images


def tiny_preset(tmp_path: Path, images: int = 7, out: str = "out", **sections):
    """A preset for the tiny UNet at resolution 8 on `images` generated images; `sections` overlay it."""
    folder = tmp_path / f"images_{images}"
    if not folder.exists():
        make_images(folder, images, size=12)
    raw = {
        "model": {"config": "tiny", "resolution": 8},
        "data": {"path": str(folder), "flip": True},
        "training": {"epochs": 2, "gradient_accumulation_steps": 2, "device": "cpu", "seed": 3},
        "optimizer": {"type": "adamw", "lr": 1e-3,
                      "param_groups": [{"name": "attention", "match": "attentions", "lr": 5e-4}]},
        "scheduler": {"type": "cosine", "warmup": 2},
        "output": {"dir": str(tmp_path / out), "checkpoint_every": None, "keep_checkpoints": 3},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return validate_preset(raw)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(output_dir) / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def assert_same_weights(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def scalar_events(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of output_dir/tensorboard as [(step, value)], read with tensorboard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(Path(output_dir) / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models train faster and steadier on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
