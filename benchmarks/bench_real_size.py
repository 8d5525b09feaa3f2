"""Real-size SD 1.5 LoRA on CPU: our step time and peak memory against a loop written like diffusers' script.

    python benchmarks/bench_real_size.py [--steps 3] [--resolution 256] [--keep FOLDER]
    python benchmarks/bench_real_size.py --model sdxl --device cuda --mixed-precision bf16 --resolution 1024

Heavy: the pipeline folder is 4.3 GB (fp32), each measured process holds 5-7 GiB. It is not part of
`make bench` (`run_all.py` runs only the light benchmarks); run it alone on a quiet machine.

The model: a StableDiffusionPipeline folder with the published SD 1.5 component configs (written
below as dicts: UNet2DConditionModel 320/640/1280/1280, CLIP ViT-L/14 text encoder of 12 layers,
AutoencoderKL 128/256/512/512, the scaled-linear DDPM scheduler), random weights (seed 0), the tiny
project tokenizer (only the token ids differ from the real vocabulary; the text encoder's
vocabulary size is the real 49408). Nothing is downloaded.

Both sides: 4 captioned 256 px images, batch 1, no accumulation, UNet LoRA rank 16 (alpha 16) on
to_q/to_k/to_v/to_out.0, AdamW lr 1e-4, gradients clipped to norm 1, CPU fp32, the machine's threads.

- ours: `modules.training.train` as users run it (`data.num_workers` 0, TensorBoard on);
- reference: the loop of diffusers' examples/text_to_image/train_text_to_image_lora.py (current
  version: peft `unet.add_adapter(LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian", ...))`,
  `accelerator.prepare(unet, optimizer, lr_scheduler)`, each step `vae.encode(...).latent_dist.sample()
  * scaling_factor`, noise, timesteps, `add_noise`, `text_encoder(input_ids)[0]`, UNet, MSE,
  backward, clip, step, `lr_scheduler.step()`, `zero_grad()`; `--gradient_checkpointing` is
  `unet.enable_gradient_checkpointing()`).

Configurations, each in its own process (the peak is that process's RSS high-water mark, from
`getrusage`, loading and cache building included): reference, reference with gradient
checkpointing, ours, ours with `training.gradient_checkpointing`, ours with gradient checkpointing
and both caches (`data.cache_latents`, `data.cache_text_embeddings`). Time: wall seconds per step
over `--steps` steps after one warm-up step. Each figure is printed with its ratio against the
reference measured in the same run (ours vs reference, ours checkpointed vs reference checkpointed,
ours checkpointed + caches vs reference checkpointed).

Targets (issue 18): step time <= 1.05x the reference, peak memory <= 1.0x, and with gradient
checkpointing and the caches on, peak memory lower than the reference with checkpointing.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NUM_IMAGES = 4
LORA_RANK = 16
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
WARMUP_STEPS = 1
TARGET_TIME_RATIO = 1.05
TARGET_MEMORY_RATIO = 1.0

# The published SD 1.5 component configs (runwayml/stable-diffusion-v1-5), the keys that shape the model.
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
SD15_TEXT_ENCODER = {
    "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
    "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SD15_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "clip_sample": False, "steps_offset": 1, "prediction_type": "epsilon",
}
# The published SDXL base 1.0 component configs (stabilityai/stable-diffusion-xl-base-1.0).
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "in_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_ENCODER = {**SD15_TEXT_ENCODER, "eos_token_id": 2}
SDXL_TEXT_ENCODER_2 = {
    "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
    "num_hidden_layers": 32, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280,
    "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
PIPELINE_TYPES = {"sd15": "stable_diffusion", "sdxl": "stable_diffusion_xl"}
CONFIGURATIONS = {  # name -> (side, gradient checkpointing, caches)
    "reference": ("reference", False, False),
    "reference, gradient checkpointing": ("reference", True, False),
    "ours": ("ours", False, False),
    "ours, gradient checkpointing": ("ours", True, False),
    "ours, gradient checkpointing + caches": ("ours", True, True),
}
COMPARED_WITH = {"ours": "reference", "ours, gradient checkpointing": "reference, gradient checkpointing",
                 "ours, gradient checkpointing + caches": "reference, gradient checkpointing"}


def build_folder(model: str, folder: Path) -> Path:
    """A pipeline folder of SD 1.5's or SDXL base's architecture (`model` sd15 / sdxl), random weights (seed 0)."""
    import torch
    from diffusers import (AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.families.tiny_pipelines import _tokenizer

    torch.manual_seed(0)
    tokenizer = _tokenizer(folder.with_name("tokenizer_files"), "<|endoftext|>")
    if model == "sd15":
        pipeline = StableDiffusionPipeline(
            unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)).eval(), tokenizer=tokenizer,
            scheduler=DDPMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    else:
        pipeline = StableDiffusionXLPipeline(
            unet=UNet2DConditionModel(**SDXL_UNET), vae=AutoencoderKL(**SDXL_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER)).eval(),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2)).eval(),
            tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=DDPMScheduler(**SD15_SCHEDULER))
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def make_images(folder: Path, resolution: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(NUM_IMAGES):
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(
            folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(f"a photo of the thing number {index}", encoding="utf-8")
    return folder


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_ours(work: Path, options, checkpointing: bool, caches: bool) -> float:
    from modules.config.preset import validate_preset
    from modules.training import train

    preset = validate_preset({
        "model": {"type": PIPELINE_TYPES[options.model], "path": str(work / options.model),
                  "resolution": options.resolution},
        "data": {"path": str(work / "images"), "num_workers": 0, "cache_latents": caches,
                 "cache_text_embeddings": caches, "cache_dir": str(work / "cache")},
        "training": {"max_steps": WARMUP_STEPS + options.steps, "batch_size": 1, "device": options.device,
                     "seed": 0, "method": "lora", "max_grad_norm": MAX_GRAD_NORM,
                     "gradient_checkpointing": checkpointing, "mixed_precision": options.mixed_precision},
        "lora": {"rank": LORA_RANK, "alpha": LORA_RANK},
        "optimizer": {"type": "adamw", "lr": LEARNING_RATE},
        "scheduler": {"type": "constant"},
        "output": {"dir": str(work / "out"), "checkpoint_every": None},
    })
    stamps = []
    train(preset, on_step=lambda report: stamps.append(synchronized_clock()), progress_bar=False,
          log=lambda message: None)
    return (stamps[-1] - stamps[WARMUP_STEPS - 1]) / options.steps


def synchronized_clock() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def reference_models(folder: Path, model: str):
    """(noise scheduler, [(tokenizer, text encoder)], vae, unet) loaded as the diffusers scripts load them."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    encoders = [(CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
                 CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True))]
    if model == "sdxl":
        encoders.append((CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", local_files_only=True),
                         CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2",
                                                                     local_files_only=True)))
    return (DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True), encoders,
            AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True),
            UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True))


def reference_conditioning(encoders, caption: str, model: str, resolution: int, device, dtype):
    """(encoder_hidden_states, added_cond_kwargs) as train_text_to_image_lora(_sdxl).py make them."""
    import torch

    ids = [tokenizer([caption], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids.to(device) for tokenizer, _ in encoders]
    if model == "sd15":
        return encoders[0][1](ids[0], return_dict=False)[0], None
    hidden, pooled = [], None
    for (_, encoder), token_ids in zip(encoders, ids):
        output = encoder(token_ids, output_hidden_states=True, return_dict=False)
        pooled, hidden = output[0], hidden + [output[-1][-2]]
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device, dtype=dtype)
    return torch.cat(hidden, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}


def run_reference(work: Path, options, checkpointing: bool) -> float:
    """The loop of train_text_to_image_lora(_sdxl).py, the images in turn."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from PIL import Image

    accelerator = Accelerator(cpu=options.device == "cpu", mixed_precision=options.mixed_precision)
    noise_scheduler, encoders, vae, unet = reference_models(work / options.model, options.model)
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.mixed_precision, torch.float32)
    vae_dtype = torch.float32 if options.model == "sdxl" else weight_dtype  # the SDXL script keeps its VAE fp32
    for module, dtype in [(unet, weight_dtype), (vae, vae_dtype)] + [(encoder, weight_dtype) for _, encoder in encoders]:
        module.requires_grad_(False)
        module.to(accelerator.device, dtype=dtype)
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    cast_training_params(unet, dtype=torch.float32)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    lora_layers = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=LEARNING_RATE)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    files = sorted((work / "images").glob("*.png"))
    unet.train()
    stamps = []
    for step in range(WARMUP_STEPS + options.steps):
        image = Image.open(files[step % len(files)]).convert("RGB")
        pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        caption = files[step % len(files)].with_suffix(".txt").read_text(encoding="utf-8")
        with torch.no_grad():
            latents = vae.encode(pixels.to(accelerator.device, dtype=vae_dtype)).latent_dist.sample()
            latents = (latents * vae.config.scaling_factor).to(weight_dtype)
            hidden, added = reference_conditioning(encoders, caption, options.model, options.resolution,
                                                   accelerator.device, weight_dtype)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), device=latents.device)
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        model_pred = unet(noisy_latents, timesteps, hidden, added_cond_kwargs=added, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(lora_layers, MAX_GRAD_NORM)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        loss.item()
        stamps.append(synchronized_clock())
    return (stamps[-1] - stamps[WARMUP_STEPS - 1]) / options.steps


def measure(name: str, work: Path, options) -> dict:
    """One configuration in a fresh process: {'seconds_per_step', 'peak_bytes'[, 'peak_vram_bytes']}."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--work", str(work),
               *option_arguments(options)]
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def option_arguments(options) -> list[str]:
    return ["--model", options.model, "--device", options.device, "--mixed-precision", options.mixed_precision,
            "--resolution", str(options.resolution), "--steps", str(options.steps)]


def one(name: str, work: Path, options) -> None:
    side, checkpointing, caches = CONFIGURATIONS[name]
    if side == "ours":
        seconds = run_ours(work, options, checkpointing, caches)
    else:
        seconds = run_reference(work, options, checkpointing)
    figures = {"seconds_per_step": seconds, "peak_bytes": peak_rss_bytes()}
    if options.device == "cuda":
        import torch

        figures["peak_vram_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(figures))


def report(results: dict, options) -> bool:
    """Print every figure and its ratio against the reference of the same run; True when every target is met."""
    gib = 1024 ** 3
    memory_key = "peak_vram_bytes" if options.device == "cuda" else "peak_bytes"
    memory_name = "peak VRAM GiB" if options.device == "cuda" else "peak RSS GiB"
    size = "TINY (dry run)" if options.tiny else "real-size"
    print(f"\n{size} {options.model} LoRA rank {LORA_RANK}, {options.resolution} px, batch 1, {options.device} "
          f"{options.mixed_precision}, {os.cpu_count()} cores; {options.steps} timed steps after {WARMUP_STEPS} "
          "warm-up")
    print(f"{'configuration':40s} {'s/step':>8s} {'steps/s':>8s} {memory_name:>14s}   ratio (time, memory)")
    met = True
    for name, figures in results.items():
        seconds, memory = figures["seconds_per_step"], figures[memory_key]
        line = f"{name:40s} {seconds:8.2f} {1 / seconds:8.3f} {memory / gib:14.2f}"
        reference = COMPARED_WITH.get(name)
        if reference in results:
            time_ratio = seconds / results[reference]["seconds_per_step"]
            memory_ratio = memory / results[reference][memory_key]
            if "caches" in name:  # lower than the reference with checkpointing
                ok = time_ratio <= TARGET_TIME_RATIO and memory_ratio < TARGET_MEMORY_RATIO
            else:
                ok = time_ratio <= TARGET_TIME_RATIO and memory_ratio <= TARGET_MEMORY_RATIO
            met &= ok
            line += f"   {time_ratio:.2f}x, {memory_ratio:.3f}x vs '{reference}' ({'met' if ok else 'MISSED'})"
        print(line, flush=True)
    return met


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the pipeline folder and images here")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny pipelines of the same classes instead of real-size ones (a dry run of the script)")
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGURATIONS), help="measure only these")
    parser.add_argument("--one", choices=sorted(CONFIGURATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    options = parse_arguments(argv)
    if options.one:
        one(options.one, options.work, options)
        return 0
    work = options.keep or Path(tempfile.mkdtemp(prefix="bench_real_size_"))
    try:
        if not (work / options.model / "model_index.json").is_file():
            print(f"building the {'tiny ' if options.tiny else ''}{options.model}-size pipeline in "
                  f"{work / options.model} ...", flush=True)
            if options.tiny:
                from modules.families.tiny_pipelines import build_tiny_pipeline

                build_tiny_pipeline(PIPELINE_TYPES[options.model], work / options.model)
            else:
                build_folder(options.model, work / options.model)
        shutil.rmtree(work / "images", ignore_errors=True)
        make_images(work / "images", options.resolution)
        results = {}
        for name in options.only or CONFIGURATIONS:
            results[name] = measure(name, work, options)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        return 0 if report(results, options) else 1
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run() -> list[dict]:
    """For benchmarks/run_all.py: nothing unless BENCH_REAL_SIZE=1 (it needs ~10 GB of disk and memory)."""
    if os.environ.get("BENCH_REAL_SIZE") != "1":
        print("   bench_real_size: skipped (heavy; run it alone, or set BENCH_REAL_SIZE=1)")
        return []
    main([])
    return []


if __name__ == "__main__":
    sys.exit(main())
