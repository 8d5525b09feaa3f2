"""Trainer overhead: time per optimizer step of `train()` against a bare diffusers loop.

    python benchmarks/bench_trainer.py        (or `make bench`, which runs every benchmark)

Both sides train the same tiny UNet (`model.config: "tiny"`, 32x32, seeded the
same) on the same decoded images, batch 4, no accumulation, AdamW with a
cosine schedule, on the CPU (and on CUDA with bf16 when a GPU is present):

- ours: `modules.training.train` as users run it (step plan, LR written into
  the param groups before every step, per-micro-batch seeded noise, loss
  reduced and logged to TensorBoard every step, progress callback), no
  checkpoint or sample during the measured steps;
- baseline: the loop of the diffusers example scripts, stripped to the bone:
  random batch from a tensor, `add_noise`, forward, MSE, backward,
  `optimizer.step()`, `lr_scheduler.step()` (diffusers' cosine), `zero_grad()`;
  no logging.

Time: the two sides alternate in this process for several rounds, one torch
thread; the first steps of each run are warm-up and not timed. On the CPU the
clock is the process's CPU time (all its threads, TensorBoard's writer
included), which other programs on a shared machine cannot inflate the way
they inflate wall time; wall time is given in the notes. The best round of
each side is compared. On CUDA the clock is wall time after a synchronise.
Peak memory: each side once more in its own fresh process; the peak resident
set on CPU, `torch.cuda.max_memory_allocated` on CUDA.
"""

import multiprocessing
import queue
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from _report import print_rows  # benchmarks/ is on sys.path: the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESOLUTION = 32
BATCH_SIZE = 4
WARMUP_STEPS = 5
MEASURED_STEPS = 20
ROUNDS = 5
NUM_IMAGES = 16
TARGET_RATIO = 1.03
MEMORY_TARGET_RATIO = 1.2


def _make_images(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(NUM_IMAGES):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")


def _preset(work: Path, device: str, mixed_precision: str):
    from modules.config.preset import validate_preset

    return validate_preset({
        "model": {"config": "tiny", "resolution": RESOLUTION},
        "data": {"path": str(work / "images")},
        "training": {"max_steps": WARMUP_STEPS + MEASURED_STEPS, "batch_size": BATCH_SIZE, "device": device,
                     "mixed_precision": mixed_precision, "seed": 0},
        "optimizer": {"type": "adamw", "lr": 1e-4},
        "scheduler": {"type": "cosine", "warmup": 5},
        "output": {"dir": str(work / "out"), "checkpoint_every": None},
    })


def _peak_memory_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM: this process image's own high-water mark. (ru_maxrss would carry over the
    # parent's resident size through fork + exec, hiding the difference between the sides.)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _current_memory_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    try:  # resident pages now (Linux); the peak can only be read as a high-water mark
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _ours(work: Path, device: str, mixed_precision: str) -> tuple[float, float]:
    """(wall, CPU) seconds per optimizer step of the measured steps."""
    from modules.training import train

    shutil.rmtree(work / "out", ignore_errors=True)  # a fresh run each round
    stamps = []
    train(_preset(work, device, mixed_precision), on_step=lambda report: stamps.append(_clocks()),
          progress_bar=False, log=lambda message: None)
    first, last = stamps[WARMUP_STEPS - 1], stamps[-1]
    return (last[0] - first[0]) / MEASURED_STEPS, (last[1] - first[1]) / MEASURED_STEPS


def _baseline(work: Path, device: str, mixed_precision: str) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup

    import numpy as np

    from modules.data.listing import list_images
    from modules.data.datasets import load_image
    from modules.families.unet_models import tiny_unet

    preset = _preset(work, device, mixed_precision)
    images = np.stack([load_image(path, RESOLUTION)[0] for path in list_images(preset.data.path)])
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    torch.manual_seed(0)
    model = tiny_unet(RESOLUTION).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    total = WARMUP_STEPS + MEASURED_STEPS
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, 5, total)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed_precision == "bf16" and device == "cuda")

    def step() -> None:
        indices = torch.randint(0, len(data), (BATCH_SIZE,), device=device)
        clean = data[indices]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, 1000, (BATCH_SIZE,), device=device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with autocast:
            prediction = model(noisy, timesteps).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(WARMUP_STEPS):
        step()
    sync()
    first = _clocks()
    for _ in range(MEASURED_STEPS):
        step()
    sync()
    last = _clocks()
    return (last[0] - first[0]) / MEASURED_STEPS, (last[1] - first[1]) / MEASURED_STEPS


def _child(side: str, device: str, mixed_precision: str, results) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as folder:
        work = Path(folder)
        _make_images(work / "images")
        before = _current_memory_mib(device)
        (_ours if side == "ours" else _baseline)(work, device, mixed_precision)
        results.put((_peak_memory_mib(device), before))


def peak_memory(side: str, device: str, mixed_precision: str) -> tuple[float, float]:
    """(peak, before training) memory in MiB of one side trained in a fresh process."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(side, device, mixed_precision, results))
    process.start()
    while True:
        try:
            value = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the {side} side failed (exit status {process.exitcode})") from None
    process.join()
    return value


def run() -> list[dict]:
    import torch

    setups = [("cpu", "no")] + ([("cuda", "bf16")] if torch.cuda.is_available() else [])
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for device, mixed_precision in setups:
            clock = 1 if device == "cpu" else 0  # CPU time on the CPU, wall time on CUDA
            ours, baseline = [], []
            with tempfile.TemporaryDirectory(prefix="bench_trainer_") as folder:
                work = Path(folder)
                _make_images(work / "images")
                for _ in range(ROUNDS):
                    ours.append(_ours(work, device, mixed_precision))
                    baseline.append(_baseline(work, device, mixed_precision))
            ours_time, baseline_time = min(v[clock] for v in ours), min(v[clock] for v in baseline)
            label = f"{device}, {mixed_precision if mixed_precision != 'no' else 'fp32'}"
            clock_name = "CPU time, 1 thread" if clock else "wall time"
            setup = (f"{clock_name}; tiny UNet {RESOLUTION}x{RESOLUTION}, batch {BATCH_SIZE}, AdamW, "
                     f"{MEASURED_STEPS} timed steps after {WARMUP_STEPS} warm-up, best of {ROUNDS} alternating "
                     f"rounds (ms/step per round, ours: {', '.join(f'{v[clock] * 1e3:.1f}' for v in ours)}; "
                     f"baseline: {', '.join(f'{v[clock] * 1e3:.1f}' for v in baseline)}; wall ms/step best, "
                     f"ours {min(v[0] for v in ours) * 1e3:.1f}, baseline {min(v[0] for v in baseline) * 1e3:.1f})")
            rows.append({
                "benchmark": f"trainer time per optimizer step vs bare diffusers loop ({label}; ratio ours/baseline)",
                "ours": ours_time * 1e3, "baseline": baseline_time * 1e3, "unit": "ms/step",
                "ratio": ours_time / baseline_time, "target": f"<= {TARGET_RATIO}x",
                "met": ours_time / baseline_time <= TARGET_RATIO, "notes": setup,
            })
            (ours_memory, ours_before) = peak_memory("ours", device, mixed_precision)
            (baseline_memory, baseline_before) = peak_memory("baseline", device, mixed_precision)
            kind = "peak resident memory of a fresh process" if device == "cpu" else "peak CUDA memory allocated"
            rows.append({
                "benchmark": f"trainer peak memory vs bare diffusers loop ({label}; ratio ours/baseline)",
                "ours": ours_memory, "baseline": baseline_memory, "unit": "MiB",
                "ratio": ours_memory / baseline_memory, "target": f"<= {MEMORY_TARGET_RATIO}x",
                "met": ours_memory / baseline_memory <= MEMORY_TARGET_RATIO,
                "notes": f"{kind}, imports included; growth from the start of training to the peak: "
                         f"ours {ours_memory - ours_before:.0f} MiB (data loader, TensorBoard writer), "
                         f"baseline {baseline_memory - baseline_before:.0f} MiB",
            })
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    sys.exit(print_rows(run()))
