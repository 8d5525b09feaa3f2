"""Text-to-image LoRA: our trainer's time per optimizer step against a bare diffusers loop, and its checkpoint.

    python benchmarks/bench_text_to_image.py        (or `make bench`, which runs every benchmark)

Both sides train the same tiny Stable Diffusion pipeline (built from configs
by `modules.families.tiny_pipelines`, random weights, seed 0) on the same 16
captioned images at 32 px, batch 4, no accumulation, a UNet LoRA of rank 4 on
to_q/to_k/to_v/to_out.0 (alpha = rank, gaussian init), AdamW with a cosine
schedule, gradients clipped to norm 1, CPU fp32, one torch thread:

- ours: `modules.training.train` as users run it (step plan, LR written into
  the param groups before every step, images decoded as their micro-batch is
  due, captions tokenized, every draw from the micro-batch's seeded generator,
  loss and LR logged to TensorBoard every step), no checkpoint or sample
  during the measured steps; `data.num_workers` 0, so the decoding is done,
  and timed, in this process as on the other side;
- baseline: the loop of diffusers' examples/text_to_image/train_text_to_image_lora.py:
  `unet.add_adapter(LoraConfig(...))`, `accelerator.prepare(unet, optimizer,
  lr_scheduler)`, each step a random batch decoded and tokenized as the
  script's `preprocess_train` does on every fetch (PIL, resize, centre crop,
  normalise; `tokenizer(..., padding="max_length")`),
  `vae.encode(...).latent_dist.sample() * scaling_factor`,
  `randn_like` noise, `add_noise`, `text_encoder(input_ids)[0]`, UNet, MSE,
  `accelerator.gather` of the loss and `.item()`, backward, clip, step,
  `lr_scheduler.step()`, `zero_grad()`.

Time: the two sides alternate for several rounds in this process; the first
steps of each run are warm-up and not timed; the clock is the process's CPU
time (TensorBoard's writer thread included), which other programs on a shared
machine cannot inflate as they inflate wall time. The best round of each side
is compared.

Checkpoint: one LoRA checkpoint as our trainer writes it (the adapters in
trainable_weights.safetensors, optimizer.pt, RNG state, training state, the
preset; temporary folder renamed into place) against the script's
`accelerator.save_state(save_path)`, which writes the whole UNet (base weights
and adapters) with the optimizer and RNG. Wall time, best of alternating repeats.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path
from _report import print_rows  # benchmarks/ is on sys.path: the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESOLUTION = 32
BATCH_SIZE = 4
LORA_RANK = 4
NUM_IMAGES = 16
WARMUP_STEPS = 5
MEASURED_STEPS = 20
ROUNDS = 5
CHECKPOINT_REPEATS = 7
TARGET_RATIO = 1.03
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 1e-4


def _make_data(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(NUM_IMAGES):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(f"a photo of the thing number {index}", encoding="utf-8")


def _preset(work: Path, total_steps: int):
    from modules.config.preset import validate_preset

    return validate_preset({
        "model": {"type": "stable_diffusion", "path": str(work / "sd"), "resolution": RESOLUTION},
        "data": {"path": str(work / "images"), "num_workers": 0},
        "training": {"max_steps": total_steps, "batch_size": BATCH_SIZE, "device": "cpu", "seed": 0,
                     "method": "lora", "max_grad_norm": MAX_GRAD_NORM},
        "lora": {"rank": LORA_RANK},
        "optimizer": {"type": "adamw", "lr": LEARNING_RATE},
        "scheduler": {"type": "cosine", "warmup": 5},
        "output": {"dir": str(work / "out"), "checkpoint_every": None},
    })


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _ours(work: Path) -> tuple[float, float]:
    """(wall, CPU) seconds per optimizer step of the measured steps."""
    from modules.training import train

    shutil.rmtree(work / "out", ignore_errors=True)  # a fresh run each round
    stamps = []
    train(_preset(work, WARMUP_STEPS + MEASURED_STEPS), on_step=lambda report: stamps.append(_clocks()),
          progress_bar=False, log=lambda message: None)
    first, last = stamps[WARMUP_STEPS - 1], stamps[-1]
    return (last[0] - first[0]) / MEASURED_STEPS, (last[1] - first[1]) / MEASURED_STEPS


def _fresh_accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=True)


def _baseline_setup(work: Path):
    """What train_text_to_image_lora.py sets up: frozen VAE / text encoder, a LoRA UNet, AdamW, a cosine LR."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    from modules.data.listing import list_images

    folder = work / "sd"
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    lora_layers = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=LEARNING_RATE)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=5,
                                 num_training_steps=WARMUP_STEPS + MEASURED_STEPS)
    files = list_images(work / "images")
    accelerator = _fresh_accelerator()
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    def fetch(indices) -> tuple:
        """(pixel_values, input_ids) of `indices`, prepared on each fetch as the script's preprocess_train."""
        from modules.data.datasets import load_image

        pixels = torch.stack([torch.from_numpy(load_image(files[index], RESOLUTION)[0]) for index in indices])
        pixels = pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        captions = [files[index].with_suffix(".txt").read_text(encoding="utf-8") for index in indices]
        input_ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length",
                              truncation=True, return_tensors="pt").input_ids
        return pixels, input_ids

    return accelerator, unet, vae, text_encoder, noise_scheduler, optimizer, lr_scheduler, fetch, len(files)


def _baseline(work: Path) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    accelerator, unet, vae, text_encoder, noise_scheduler, optimizer, lr_scheduler, fetch, num_images = \
        _baseline_setup(work)
    unet.train()

    def step() -> None:
        pixel_values, input_ids = fetch(torch.randint(0, num_images, (BATCH_SIZE,)).tolist())
        latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (BATCH_SIZE,)).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids)[0]
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        accelerator.gather(loss.repeat(BATCH_SIZE)).mean().item()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_([p for p in unet.parameters() if p.requires_grad], MAX_GRAD_NORM)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()

    for _ in range(WARMUP_STEPS):
        step()
    first = _clocks()
    for _ in range(MEASURED_STEPS):
        step()
    last = _clocks()
    return (last[0] - first[0]) / MEASURED_STEPS, (last[1] - first[1]) / MEASURED_STEPS


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _checkpoints(work: Path) -> dict:
    """Best save time (s) and size (bytes) of one LoRA checkpoint, ours and the script's save_state."""
    import torch

    from modules.schedule.lr_curve import build_lr_curve
    from modules.schedule.step_plan import build_step_plan
    from modules.training import checkpoints
    from modules.data.datasets import build_dataset, torch_generator
    from modules.families.base import build_family
    from modules.training.optimizers import build_optimizer

    preset = _preset(work, 10)
    plan = build_step_plan(preset)
    curve = build_lr_curve(plan, preset.optimizer)
    family = build_family(preset, plan)
    optimizer = build_optimizer(family.model, preset, plan.warmup_steps, family.parameter_components(),
                                (curve.group_names, curve.base_lrs))
    accelerator = _fresh_accelerator()
    model, optimizer = accelerator.prepare(family.model, optimizer)
    dataset = build_dataset(preset, plan)
    batch = dataset.micro_batch(dataset.epoch_order(0, 0), plan, 0, 0, 0, 0)
    accelerator.backward(model(batch, torch_generator(0, 0, 0)))
    optimizer.step()
    config = preset.to_json_dict()

    base_accelerator, unet, vae, text_encoder, noise_scheduler, base_optimizer, lr_scheduler, fetch, _ = \
        _baseline_setup(work)
    pixel_values, input_ids = fetch(range(BATCH_SIZE))
    latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
    timesteps = torch.randint(0, 1000, (BATCH_SIZE,))
    unet(latents, timesteps, text_encoder(input_ids)[0]).sample.mean().backward()
    base_optimizer.step()
    lr_scheduler.step()

    times, sizes = {"ours": [], "baseline": []}, {}
    root = work / "checkpoints"

    def ours(repeat: int) -> None:
        state = checkpoints.TrainingState(
            global_step=repeat + 1, epoch=0, step_in_epoch=repeat + 1, micro_batch_in_epoch=repeat + 1, seed=0,
            total_steps=1000, num_processes=1, plan_fingerprint=plan.fingerprint, plan_identity=curve.identity())
        started = time.perf_counter()
        folder = checkpoints.save_checkpoint(
            root / "ours", state, rank=0, is_main=True, barrier=lambda: None,
            save_weights=family.save_checkpoint_weights, optimizer_state=lambda: {"optimizer": optimizer.state_dict()},
            config=config, keep=1)
        times["ours"].append(time.perf_counter() - started)
        sizes["ours"] = _folder_bytes(folder)
        shutil.rmtree(folder)

    def baseline(repeat: int) -> None:
        folder = root / "script" / f"checkpoint-{repeat + 1}"
        started = time.perf_counter()
        base_accelerator.save_state(str(folder))
        times["baseline"].append(time.perf_counter() - started)
        sizes["baseline"] = _folder_bytes(folder)
        shutil.rmtree(folder)

    for repeat in range(CHECKPOINT_REPEATS):  # alternate which side goes first
        for side in ((ours, baseline) if repeat % 2 == 0 else (baseline, ours)):
            side(repeat)
    lora_parameters = sum(parameter.numel() for parameter in unet.parameters() if parameter.requires_grad)
    unet_parameters = sum(parameter.numel() for parameter in unet.parameters())
    return {"ours_s": min(times["ours"]), "baseline_s": min(times["baseline"]), "ours_bytes": sizes["ours"],
            "baseline_bytes": sizes["baseline"], "lora_parameters": lora_parameters,
            "unet_parameters": unet_parameters}


def run() -> list[dict]:
    import torch

    from modules.families.tiny_pipelines import build_tiny_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench_text_to_image_") as folder:
            work = Path(folder)
            build_tiny_pipeline("stable_diffusion", work / "sd", seed=0, sample_size=RESOLUTION // 2)
            _make_data(work / "images")
            ours, baseline = [], []
            for _ in range(ROUNDS):
                ours.append(_ours(work))
                baseline.append(_baseline(work))
            checkpoint = _checkpoints(work)
    finally:
        torch.set_num_threads(threads)

    ours_time, baseline_time = min(v[1] for v in ours), min(v[1] for v in baseline)
    setup = (f"CPU time, 1 thread; tiny SD pipeline {RESOLUTION}x{RESOLUTION}, batch {BATCH_SIZE}, UNet LoRA rank "
             f"{LORA_RANK}, AdamW, clip 1.0, {MEASURED_STEPS} timed steps after {WARMUP_STEPS} warm-up, best of "
             f"{ROUNDS} alternating rounds (ms/step per round, ours: {', '.join(f'{v[1] * 1e3:.1f}' for v in ours)}; "
             f"baseline: {', '.join(f'{v[1] * 1e3:.1f}' for v in baseline)}; wall ms/step best, ours "
             f"{min(v[0] for v in ours) * 1e3:.1f}, baseline {min(v[0] for v in baseline) * 1e3:.1f})")
    rows.append({
        "benchmark": "text-to-image LoRA: trainer time per optimizer step vs a bare train_text_to_image_lora.py loop "
                     "(cpu, fp32; ratio ours/baseline)",
        "ours": ours_time * 1e3, "baseline": baseline_time * 1e3, "unit": "ms/step",
        "ratio": ours_time / baseline_time, "target": f"<= {TARGET_RATIO}x",
        "met": ours_time / baseline_time <= TARGET_RATIO, "notes": setup,
    })
    what = (f"UNet LoRA rank {LORA_RANK} ({checkpoint['lora_parameters'] / 1e3:.1f} k of "
            f"{checkpoint['unet_parameters'] / 1e6:.2f} M UNet parameters) + AdamW state; baseline: the script's "
            f"accelerator.save_state (whole UNet); best of {CHECKPOINT_REPEATS} alternating repeats, wall time")
    rows.append({
        "benchmark": "text-to-image LoRA checkpoint save time vs the script's accelerator.save_state (ratio ours/baseline)",
        "ours": checkpoint["ours_s"] * 1e3, "baseline": checkpoint["baseline_s"] * 1e3, "unit": "ms",
        "ratio": checkpoint["ours_s"] / checkpoint["baseline_s"], "target": "(figure only)", "met": True,
        "notes": what,
    })
    rows.append({
        "benchmark": "text-to-image LoRA checkpoint size vs the script's accelerator.save_state (ratio ours/baseline)",
        "ours": checkpoint["ours_bytes"] / 2**10, "baseline": checkpoint["baseline_bytes"] / 2**10, "unit": "KiB",
        "ratio": checkpoint["ours_bytes"] / checkpoint["baseline_bytes"], "target": "(figure only)", "met": True,
        "notes": what,
    })
    return rows


if __name__ == "__main__":
    sys.exit(print_rows(run()))
