"""Devices, mixed precision and the memory options (SPEC §12), set up the same way by the trainer and the LR range test.

Contract:
- `mixed_precision_mode(preset, use_cpu)`: what accelerate runs. On CUDA
  `training.mixed_precision` as written (`auto`: bf16 where the card has it,
  else fp16). On CPU `bf16` runs under accelerate's CPU autocast
  (`torch.autocast("cpu", torch.bfloat16)`); `fp16` and `auto` run in fp32
  (CPU autocast has no fp16 grad scaler; `auto` picks what is fast, and bf16 is
  fast only on CPUs with bf16 units).
- `frozen_dtype(preset, accelerator)`: `model.frozen_dtype`; `auto` is the
  mixed precision dtype on CUDA and fp32 on CPU. fp16 / bf16 frozen weights
  need autocast: without mixed precision it is a ConfigError naming the key.
- `set_up_memory(preset, family, accelerator)`, before accelerate prepares the
  model: frozen weights in the frozen dtype, trained weights (LoRA adapters,
  fully trained modules) in fp32 (diffusers' `cast_training_params`; also
  when the model folder stores fp16 / bf16 weights), then
  `training.gradient_checkpointing` on the trained modules.
- `release_cached_components(preset, family, accelerator)`, once the caches
  are built: the VAE (`data.cache_latents`) and the frozen text encoders
  (`data.cache_text_embeddings`) leave the training device; the caches serve
  every sample the run trains on. On CUDA they move to the CPU, and sampling
  brings them back for its duration. On CPU there is no other device: when
  nothing needs them again (a LoRA run without samples; its final files hold
  only the adapters) their weights are freed (torch's "meta" device), else
  they stay.
None of these changes the plan, the data order or any random draw.
"""

import os

import torch

from modules.errors import ConfigError

MIXED_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FROZEN_DTYPES = {"fp32": torch.float32, **MIXED_PRECISION_DTYPES}
# Where frozen components go when the caches serve every sample.
OFFLOAD_DEVICE = torch.device("cpu")
# Where they go on CPU when nothing needs them again: no memory behind them.
RELEASED_DEVICE = torch.device("meta")


def mixed_precision_mode(preset, use_cpu: bool) -> str:
    """accelerate's mixed_precision for `training.mixed_precision` on this device (see the module docstring)."""
    requested = preset.training.mixed_precision
    if use_cpu:
        return "bf16" if requested == "bf16" else "no"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def frozen_dtype(preset, accelerator) -> torch.dtype:
    """The dtype of the frozen weights (`model.frozen_dtype`, `auto` resolved); ConfigError without autocast."""
    requested = preset.model.frozen_dtype
    mixed = accelerator.mixed_precision
    if requested == "auto":
        on_cuda = accelerator.device.type == "cuda"
        return MIXED_PRECISION_DTYPES[mixed] if on_cuda and mixed in MIXED_PRECISION_DTYPES else torch.float32
    if requested != "fp32" and mixed not in MIXED_PRECISION_DTYPES:
        raise ConfigError(
            f"'{requested}' needs mixed precision (autocast), but this run trains in fp32 on "
            f"{accelerator.device.type} (training.mixed_precision '{preset.training.mixed_precision}'): set "
            "training.mixed_precision to bf16, or model.frozen_dtype to auto or fp32", "model.frozen_dtype")
    return FROZEN_DTYPES[requested]


def set_up_memory(preset, family, accelerator) -> None:
    """Frozen weights in their dtype (trained ones fp32), then gradient checkpointing; before `prepare`."""
    family.cast_frozen_weights(frozen_dtype(preset, accelerator))
    if preset.training.gradient_checkpointing:
        family.enable_gradient_checkpointing()
    if accelerator.device.type != OFFLOAD_DEVICE.type and accelerator.num_processes > 1:
        # Components that leave the device must not be broadcast by DDP (they are frozen and equal everywhere).
        names = family.offloadable_state_names(preset)
        if names:
            from torch.nn.parallel import DistributedDataParallel

            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(family.model, names)


def release_cached_components(preset, family, accelerator, say) -> None:
    """The VAE / frozen text encoders off the training device when the caches serve every sample."""
    if accelerator.device.type != OFFLOAD_DEVICE.type:
        moved = family.offload_cached_components(preset, OFFLOAD_DEVICE)
        if moved:
            say(f"memory: {', '.join(moved)} moved to {OFFLOAD_DEVICE.type} (the caches serve every sample)")
    elif preset.training.method == "lora" and preset.output.sample_every is None:
        # On CPU there is no other device; nothing after the caches needs them (no samples, and a LoRA's final
        # files hold only the adapters): their memory is freed.
        released = family.offload_cached_components(preset, RELEASED_DEVICE)
        if released:
            say(f"memory: {', '.join(released)} released (the caches serve every sample; no samples are drawn)")


def ddp_kwargs(preset) -> list:
    """accelerate's DDP options: with trained text encoders some adapters may get no gradient (SDXL uses the
    first encoder's penultimate layer, so its last layer's adapters never train): DDP must look for them."""
    if preset.training.num_processes == 1 or preset.optimizer.text_encoder_lr is None:
        return []
    from accelerate.utils import DistributedDataParallelKwargs

    return [DistributedDataParallelKwargs(find_unused_parameters=True)]


def reset_accelerate_state() -> None:
    """One process may train several times (tests, the app's worker): start from a clean accelerate state."""
    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
