"""Checkpoint save and load: ours against accelerate's save_state / load_state.

    python benchmarks/bench_checkpoint.py        (or `make bench`, which runs every benchmark)

Same model and optimizer on both sides: a diffusers UNet2DModel (the tiny
training model, and a larger one of about 15 M parameters) with an AdamW that
has taken one step, prepared by one `Accelerator` on the CPU.

- ours: `modules.training.checkpoints.save_checkpoint` as the trainer calls it
  (temporary folder, `save_pretrained` safetensors weights + config, optimizer.pt,
  RNG state, training_state.json, resolved config, rename into place), and
  loading as a resume does (`load_checkpoint`: every file read and checked,
  `torch.load(weights_only=True)`; then weights, optimizer and RNG applied);
- baseline: `accelerator.save_state(folder)` and `accelerator.load_state(folder)`.

Wall time, best of alternating repeats (each side goes first in turn; each
folder is deleted, untimed, after it is read back), files in a temporary
folder; size is the bytes of one checkpoint folder. Target: at most 1.1x accelerate.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path
from _report import print_rows  # benchmarks/ is on sys.path: the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPEATS = 9
TARGET_RATIO = 1.1


def _models():
    from diffusers import UNet2DModel

    from modules.families.unet_models import tiny_unet

    yield "tiny UNet 32x32", lambda: tiny_unet(32)
    yield "UNet 64x64, channels (64, 128, 256)", lambda: UNet2DModel(
        sample_size=64, block_out_channels=(64, 128, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(build_model) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from modules.training import checkpoints

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    sample = torch.randn(1, 3, model.config.sample_size, model.config.sample_size)
    model(sample, torch.tensor([10])).sample.mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    parameters = sum(parameter.numel() for parameter in model.parameters())

    times = {"ours_save": [], "ours_load": [], "base_save": [], "base_load": []}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_") as root:
        root = Path(root)

        def ours(repeat: int) -> None:
            state = checkpoints.TrainingState(
                global_step=repeat + 1, epoch=0, step_in_epoch=repeat + 1, micro_batch_in_epoch=repeat + 1,
                seed=0, total_steps=1000, num_processes=1, plan_fingerprint="0", plan_identity={})
            started = time.perf_counter()
            folder = checkpoints.save_checkpoint(
                root / "ours", state, rank=0, is_main=True, barrier=lambda: None,
                save_weights=lambda target: model.save_pretrained(target, safe_serialization=True),
                optimizer_state=lambda: {"optimizer": optimizer.state_dict()}, config={"version": 1}, keep=1)
            times["ours_save"].append(time.perf_counter() - started)
            started = time.perf_counter()
            loaded = checkpoints.load_checkpoint(folder, rank=0)
            model.load_state_dict(loaded.weights)
            optimizer.load_state_dict(loaded.optimizer["optimizer"])
            checkpoints.restore_rng_state(loaded.rng)
            times["ours_load"].append(time.perf_counter() - started)
            sizes["ours"] = _folder_bytes(folder)
            shutil.rmtree(folder)

        def baseline(repeat: int) -> None:
            folder = root / "accelerate" / f"checkpoint_{repeat}"
            started = time.perf_counter()
            accelerator.save_state(str(folder))
            times["base_save"].append(time.perf_counter() - started)
            started = time.perf_counter()
            accelerator.load_state(str(folder))
            times["base_load"].append(time.perf_counter() - started)
            sizes["base"] = _folder_bytes(folder)
            shutil.rmtree(folder)

        for repeat in range(REPEATS):  # alternate which side goes first
            for side in ((ours, baseline) if repeat % 2 == 0 else (baseline, ours)):
                side(repeat)
    # The machine may be shared: interference only adds time, so the best repeat is the fairest figure.
    best = {key: min(values) for key, values in times.items()}
    return {"parameters": parameters, **best, "ours_bytes": sizes["ours"], "base_bytes": sizes["base"]}


def run() -> list[dict]:
    rows = []
    for label, build_model in _models():
        result = measure(build_model)
        setup = (f"{label} ({result['parameters'] / 1e6:.2f} M parameters) + AdamW state, CPU, "
                 f"best of {REPEATS} alternating repeats")
        for what, ours, baseline, unit, scale in (
            ("save time", result["ours_save"], result["base_save"], "ms", 1e3),
            ("load time", result["ours_load"], result["base_load"], "ms", 1e3),
            ("size", result["ours_bytes"], result["base_bytes"], "MiB", 1 / 2**20),
        ):
            ratio = ours / baseline
            rows.append({
                "benchmark": f"checkpoint {what} vs accelerate save_state/load_state, {label} (ratio ours/baseline)",
                "ours": ours * scale, "baseline": baseline * scale, "unit": unit, "ratio": ratio,
                "target": f"<= {TARGET_RATIO}x", "met": ratio <= TARGET_RATIO, "notes": setup,
            })
    return rows


if __name__ == "__main__":
    sys.exit(print_rows(run()))
