"""Validation loss and EMA (issue 17): what they cost against the training step they accompany.

    python benchmarks/bench_validation_ema.py        (or `make bench`, which runs every benchmark)

The workload: the tiny Stable Diffusion pipeline (`modules.families.tiny_pipelines`, random weights,
seed 0) at 64 px, 16 captioned training images and 4 captioned validation images (a concept of
type `validation`), all made with NumPy / Pillow in a temporary folder; batch 4, no accumulation,
AdamW, cosine schedule, gradients clipped to norm 1, CPU fp32, one torch thread,
`data.num_workers` 0. The run is set up by the trainer's own `set_up` / `restore` (so the family,
the optimizer, the EmaPart and the ValidationSet are the ones `train` builds), then:

- the training step (the baseline of every ratio): `trainer.train_one_step` (LRs written,
  `step.optimizer_step`: decode and tokenize the batch, loss, backward, clip, AdamW, zero_grad)
  with the EMA update taken out of it and timed on its own right after it;
- validation: `validation.evaluate` (eval mode, no grad, one micro-batch of one sample per
  (image, timestep) through `step.loss_with_generator`) over 4 images x the 5 default timesteps,
  divided by 20: the time per (image, timestep). `evaluate` with an EMA runs the table twice (EMA
  weights and the trained ones); that figure is in the notes;
- EMA: `EmaPart.after_step` (diffusers' `EMAModel.step`, foreach on as `EmaPart` builds it), for a
  UNet LoRA of rank 4 on to_q/to_k/to_v/to_out.0 (target: under 5% of the step) and for a full
  fine-tune of the same tiny UNet (figure only). The notes add what diffusers' default
  per-tensor loop (`foreach=False`) takes on the same tensors.

Real size: an `EMAModel` as `EmaPart` builds it over tensors of the shapes of an SD 1.5 UNet LoRA
of rank 16 on to_q/to_k/to_v/to_out.0 (the shapes read from the SD 1.5 UNet config in
`modules/families/single_file_configs/sd_v1`, the UNet built on the meta device, nothing
allocated for it). There is no SD 1.5 training step to compare with on this CPU, so its baseline
is only the AdamW update (`optimizer.step()`) of the same tensors with random gradients — a lower
bound of any real step, which adds the UNet's forward and backward. Figure only.

Time: the process's CPU time (one thread, so the work of this process alone, which other
programs on a shared machine cannot inflate as they inflate wall time); medians over the measured
steps / repeats, after warm-up steps and one untimed validation pass. Wall-time medians are in
the notes.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path
from _report import print_rows  # benchmarks/ is on sys.path: the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESOLUTION = 64
BATCH_SIZE = 4
LORA_RANK = 4
NUM_TRAIN_IMAGES = 16
NUM_VALIDATION_IMAGES = 4
VALIDATION_TIMESTEPS = [100, 300, 500, 700, 900]  # the preset's default
WARMUP_STEPS = 3
MEASURED_STEPS = 30
VALIDATION_REPEATS = 5
EMA_DECAY = 0.999
EMA_TARGET = 0.05  # of a LoRA step
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
REAL_LORA_RANK = 16
REAL_REPEATS = 31
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def _make_images(folder: Path, count: int, first: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(first)
    for index in range(first, first + count):
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(f"a photo of the thing number {index}", encoding="utf-8")


def _preset(work: Path, method: str):
    from modules.config.preset import validate_preset

    total = WARMUP_STEPS + MEASURED_STEPS
    return validate_preset({
        "model": {"type": "stable_diffusion", "path": str(work / "sd"), "resolution": RESOLUTION},
        "data": {"concepts": [{"path": str(work / "train")}, {"path": str(work / "validation"), "type": "validation"}],
                 "num_workers": 0},
        "training": {"max_steps": total, "batch_size": BATCH_SIZE, "device": "cpu", "seed": 0, "method": method,
                     "max_grad_norm": MAX_GRAD_NORM, "ema": True, "ema_decay": EMA_DECAY},
        **({"lora": {"rank": LORA_RANK}} if method == "lora" else {}),
        "optimizer": {"type": "adamw", "lr": LEARNING_RATE},
        "scheduler": {"type": "cosine", "warmup": 2},
        "output": {"dir": str(work / f"out_{method}"), "checkpoint_every": None, "validate_every": total,
                   "validation_timesteps": VALIDATION_TIMESTEPS},
    })


def _loop_update_seconds(parameters, repeats: int) -> float:
    """Median CPU seconds of diffusers' per-tensor loop EMA update (foreach=False, its default) on
    `parameters` (a separate EMAModel), to set beside EmaPart's foreach update."""
    from modules.training.ema import _ema_model_class

    model = _ema_model_class()(parameters, decay=EMA_DECAY, min_decay=0.0, update_after_step=0,
                               use_ema_warmup=False, foreach=False)
    model.step(parameters)  # warm-up
    times = []
    for _ in range(repeats):
        start = _clocks()
        model.step(parameters)
        times.append(_since(start)[1])
    return statistics.median(times)


def _measure(work: Path, method: str) -> dict:
    """Median step, EMA update and validation (per image and timestep) times of one method on the tiny pipeline."""
    from modules.schedule.lr_curve import build_lr_curve
    from modules.schedule.step_plan import build_step_plan
    from modules.training.trainer import make_accelerator, restore, set_up, train_one_step
    from modules.training.validation import evaluate

    preset = _preset(work, method)
    plan = build_step_plan(preset)
    curve = build_lr_curve(plan, preset.optimizer)
    accelerator = make_accelerator(preset)
    run = set_up(preset, plan, curve, accelerator, Path(preset.output.dir), None, lambda message: None)
    restore(run, None)
    run.validation.prepare(run.family, accelerator)
    ema, run.ema = run.ema, None  # the step without its EMA update; the update timed on its own
    stream = run.dataset.stream(plan, preset.training.seed, run.rank, 0, preset.data.num_workers)
    run.model.train()
    steps, updates = [], []
    try:
        for global_step in range(plan.total_steps):
            start = _clocks()
            train_one_step(run, stream, global_step)
            step = _since(start)
            start = _clocks()
            ema.after_step(global_step + 1)
            update = _since(start)
            if global_step >= WARMUP_STEPS:
                steps.append(step)
                updates.append(update)
    finally:
        stream.close()

    pairs = len(run.validation.images) * len(run.validation.timesteps)
    evaluate(run.validation, accelerator, run.model)  # warm-up
    plain, with_ema = [], []
    for _ in range(VALIDATION_REPEATS):
        start = _clocks()
        evaluate(run.validation, accelerator, run.model)
        plain.append(_since(start))
        start = _clocks()
        evaluate(run.validation, accelerator, run.model, ema)
        with_ema.append(_since(start))

    def median(values, clock=1, per=1):
        return statistics.median(value[clock] for value in values) / per

    return {
        "step": median(steps), "step_wall": median(steps, 0),
        "ema": median(updates), "ema_wall": median(updates, 0),
        "validation": median(plain, per=pairs), "validation_wall": median(plain, 0, pairs),
        "validation_ema": median(with_ema, per=pairs),
        "loop": _loop_update_seconds(ema.parameters, MEASURED_STEPS),
        "pairs": pairs, "images": len(run.validation.images), "timesteps": len(run.validation.timesteps),
        "trained": sum(parameter.numel() for parameter in ema.parameters), "tensors": len(ema.parameters),
    }


def real_lora_shapes(rank: int = REAL_LORA_RANK) -> list[tuple[int, ...]]:
    """The (lora_A, lora_B) shapes of a rank-`rank` LoRA on the SD 1.5 UNet's attention projections."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    folder = Path(__file__).resolve().parent.parent / "modules/families/single_file_configs/sd_v1/unet"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))
    shapes = []
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(ATTENTION_PROJECTIONS):
            shapes += [(rank, module.in_features), (module.out_features, rank)]
    return shapes


def _measure_real_size() -> dict:
    """Median CPU seconds of the EMA update and of AdamW's update over SD 1.5 LoRA-shaped tensors."""
    import torch

    from modules.training.ema import EmaPart

    shapes = real_lora_shapes()
    generator = torch.Generator().manual_seed(0)
    parameters = [torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.01) for shape in shapes]
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)
    ema = EmaPart(parameters, EMA_DECAY, 1)
    optimizer.step()  # warm-up (creates the moments)
    ema.after_step(1)
    adamw, updates = [], []
    for repeat in range(REAL_REPEATS):  # alternate which side goes first
        for side in ((0, 1) if repeat % 2 == 0 else (1, 0)):
            start = _clocks()
            optimizer.step() if side == 0 else ema.after_step(repeat + 2)
            (adamw if side == 0 else updates).append(_since(start)[1])
    return {"ema": statistics.median(updates), "adamw": statistics.median(adamw),
            "loop": _loop_update_seconds(parameters, REAL_REPEATS),
            "parameters": sum(parameter.numel() for parameter in parameters), "tensors": len(parameters)}


def run() -> list[dict]:
    import torch

    from modules.families.tiny_pipelines import build_tiny_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_validation_ema_") as folder:
            work = Path(folder)
            build_tiny_pipeline("stable_diffusion", work / "sd", seed=0, sample_size=RESOLUTION // 2)
            _make_images(work / "train", NUM_TRAIN_IMAGES, 0)
            _make_images(work / "validation", NUM_VALIDATION_IMAGES, 100)
            lora = _measure(work, "lora")
            full = _measure(work, "full")
        real = _measure_real_size()
    finally:
        torch.set_num_threads(threads)

    setup = (f"CPU time, 1 thread; tiny SD pipeline {RESOLUTION}x{RESOLUTION}, batch {BATCH_SIZE}, AdamW, clip 1.0, "
             f"medians of {MEASURED_STEPS} steps after {WARMUP_STEPS} warm-up")
    rows = [{
        "benchmark": "validation pass time per (image, timestep) vs one training optimizer step, tiny SD LoRA "
                     "(ratio validation/step)",
        "ours": lora["validation"] * 1e3, "baseline": lora["step"] * 1e3, "unit": "ms",
        "ratio": lora["validation"] / lora["step"], "target": "(figure only)", "met": True,
        "notes": f"{setup}; UNet LoRA rank {LORA_RANK}; evaluate() over {lora['images']} images x "
                 f"{lora['timesteps']} timesteps, median of {VALIDATION_REPEATS} passes / {lora['pairs']}; with "
                 f"the EMA (two tables) {lora['validation_ema'] * 1e3:.2f} ms per (image, timestep); full "
                 f"fine-tune: {full['validation'] * 1e3:.2f} ms vs its step {full['step'] * 1e3:.1f} ms "
                 f"({full['validation'] / full['step']:.3g}x); wall medians: {lora['validation_wall'] * 1e3:.2f} "
                 f"vs {lora['step_wall'] * 1e3:.1f} ms",
    }, {
        "benchmark": "EMA update (EmaPart.after_step) vs one training optimizer step, tiny SD UNet LoRA "
                     "(ratio update/step)",
        "ours": lora["ema"] * 1e3, "baseline": lora["step"] * 1e3, "unit": "ms",
        "ratio": lora["ema"] / lora["step"], "target": f"< {EMA_TARGET:.0%} of a step",
        "met": lora["ema"] / lora["step"] < EMA_TARGET,
        "notes": f"{setup}; UNet LoRA rank {LORA_RANK}: {lora['trained'] / 1e3:.1f} k parameters in "
                 f"{lora['tensors']} tensors; diffusers' per-tensor loop (foreach=False) {lora['loop'] * 1e3:.3f} ms; "
                 f"wall medians {lora['ema_wall'] * 1e3:.3f} vs {lora['step_wall'] * 1e3:.1f} ms",
    }, {
        "benchmark": "EMA update (EmaPart.after_step) vs one training optimizer step, tiny SD UNet full fine-tune "
                     "(ratio update/step)",
        "ours": full["ema"] * 1e3, "baseline": full["step"] * 1e3, "unit": "ms",
        "ratio": full["ema"] / full["step"], "target": "(figure only)", "met": True,
        "notes": f"{setup}; full fine-tune: {full['trained'] / 1e6:.2f} M parameters in {full['tensors']} tensors; "
                 f"diffusers' per-tensor loop (foreach=False) {full['loop'] * 1e3:.3f} ms; wall medians "
                 f"{full['ema_wall'] * 1e3:.3f} vs {full['step_wall'] * 1e3:.1f} ms",
    }, {
        "benchmark": f"EMA update at SD 1.5 LoRA size (rank {REAL_LORA_RANK}, attention projections) vs AdamW's "
                     "update of the same tensors (ratio EMA/AdamW)",
        "ours": real["ema"] * 1e3, "baseline": real["adamw"] * 1e3, "unit": "ms",
        "ratio": real["ema"] / real["adamw"], "target": "(figure only)", "met": True,
        "notes": f"{real['parameters'] / 1e6:.2f} M parameters in {real['tensors']} tensors (shapes from the SD 1.5 "
                 f"UNet config on the meta device), fp32, CPU time, 1 thread, medians of {REAL_REPEATS} alternating "
                 f"repeats; no SD 1.5 step to compare with on this CPU: the baseline is only optimizer.step() with "
                 f"random gradients, a lower bound of a real step; diffusers' per-tensor loop "
                 f"(foreach=False) {real['loop'] * 1e3:.2f} ms",
    }]
    return rows


if __name__ == "__main__":
    sys.exit(print_rows(run()))
