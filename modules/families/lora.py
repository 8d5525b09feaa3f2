"""peft LoRA for the text-to-image families: adapters, and the two files a LoRA run leaves.

- UNet: `unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha or rank,
  lora_dropout=lora.dropout, target_modules=lora.target_modules,
  init_lora_weights="gaussian"))`, as diffusers' LoRA scripts. A target
  module that matches no module of the UNet is a ConfigError.
- Text encoders: the same settings on their attention projections
  (`TEXT_ENCODER_TARGETS`), injected with `peft.inject_adapter_in_model`
  (transformers' own `add_adapter` wants a newer peft than the one pinned).
- `pytorch_lora_weights.safetensors`: `PipelineClass.save_lora_weights` with
  the peft state dicts converted to diffusers keys and each component's
  LoraConfig as adapter metadata, so `load_lora_weights` applies
  alpha / rank even where alpha != rank.
- `lora_kohya.safetensors`: diffusers' `convert_state_dict_to_kohya` on the
  same peft state dicts (keys `lora_unet_...`, `lora_te_...` for SD 1.x/2.x or
  `lora_te1_...` / `lora_te2_...` for SDXL, `.lora_down.weight`,
  `.lora_up.weight`, `.alpha`), with `.alpha` set to lora.alpha: diffusers'
  converter writes the rank there, which would change the model when alpha != rank.
  Text-encoder keys carry CLIP's `text_model.` prefix as kohya writes them.
  Its metadata (SPEC §12) is what kohya sd-scripts writes and A1111's Lora tab reads to tell the base
  model (`ss_base_model_version` starting `sdxl_` is SDXL, `ss_v2` "True" is SD 2.x, else SD 1.x):
  `ss_network_module` networks.lora, `ss_network_dim`, `ss_network_alpha`, `ss_base_model_version`
  (sd_v1, sd_v2, sdxl_base_v1-0), `ss_v2`, `ss_output_name` (output.dir's name), and the SAI model
  spec's `modelspec.sai_model_spec` 1.0.0, `modelspec.architecture` (stable-diffusion-v1/lora,
  stable-diffusion-v2-512/lora, stable-diffusion-v2-768-v/lora, stable-diffusion-xl-v1-base/lora),
  `modelspec.implementation`, `modelspec.title`.
- Both files hold `lora.save_dtype` (fp32, fp16, bf16) tensors (kohya's `.alpha` scalars too) and
  are written with mode 0644, readable by others (safetensors writes 0600).
Nothing is ever save_pretrained with an adapter attached.
"""

import difflib
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.errors import ConfigError

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_LORA_FILE = "lora_kohya.safetensors"
CLIP_TEXT_PREFIX = "text_model."
CLOSEST_NAMES = 5  # module names a target typo's error suggests
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FILE_MODE = 0o644


def lora_config(lora, target_modules):
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.resolved_alpha, lora_dropout=lora.dropout,
                      init_lora_weights="gaussian", target_modules=list(target_modules))


def check_targets(module: torch.nn.Module, targets, what: str, key: str) -> None:
    """ConfigError naming the first target that matches no module name (peft's own suffix rule), with the
    module-name suffixes closest to it (difflib), so a typo shows what was meant."""
    names = [name for name, _ in module.named_modules() if name]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ConfigError(f"{target!r} matches no module of the {what} (closest: "
                              f"{', '.join(closest_module_names(names, str(target)))})", key)


def closest_module_names(names: list[str], target: str, count: int = CLOSEST_NAMES) -> list[str]:
    """The `count` module-name suffixes ('to_q', 'attn1.to_q', ...) most like `target`, closest first."""
    suffixes = set()
    for name in names:
        parts = name.split(".")
        suffixes.update(".".join(parts[index:]) for index in range(len(parts)))
    suffixes = sorted(suffix for suffix in suffixes if not suffix.isdigit())
    close = difflib.get_close_matches(target, suffixes, n=count, cutoff=0.0)
    return close


def add_unet_adapter(unet, lora) -> None:
    check_targets(unet, lora.target_modules, "UNet", "lora.target_modules")
    unet.add_adapter(lora_config(lora, lora.target_modules))


def add_text_encoder_adapter(encoder, lora) -> None:
    from peft import inject_adapter_in_model

    check_targets(encoder, TEXT_ENCODER_TARGETS, "text encoder", "optimizer.text_encoder_lr")
    encoder.requires_grad_(False)
    inject_adapter_in_model(lora_config(lora, TEXT_ENCODER_TARGETS), encoder)


def peft_state_dict(module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {name: value.detach().float().cpu().contiguous() for name, value in get_peft_model_state_dict(module).items()}


def save_lora(pipeline_class, folder: Path, modules: dict, lora, layout, output_name: str = "") -> None:
    """Both LoRA files of `modules` ({"unet": ..., "text_encoder": ..., "text_encoder_2": ...}) into `folder`.

    `layout` (`modules.families.single_file.Layout`) names the base model in the kohya file's metadata.
    """
    from diffusers.training_utils import _collate_lora_metadata
    from diffusers.utils import convert_state_dict_to_diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = SAVE_DTYPES[lora.save_dtype]
    peft_dicts = {name: {key: value.to(dtype) for key, value in peft_state_dict(module).items()}
                  for name, module in modules.items()}
    layers = {f"{name}_lora_layers": convert_state_dict_to_diffusers(state) for name, state in peft_dicts.items()}
    pipeline_class.save_lora_weights(folder, **layers, **_collate_lora_metadata(modules), weight_name=DIFFUSERS_LORA_FILE,
                                     safe_serialization=True)
    save_file(kohya_state_dict(peft_dicts, lora, dtype), folder / KOHYA_LORA_FILE,
              metadata=kohya_metadata(lora, layout, output_name))
    for name in (DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE):
        (folder / name).chmod(FILE_MODE)


def kohya_state_dict(peft_dicts: dict, lora, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The kohya keys of the peft state dicts, each `.alpha` set to lora.alpha (see the module docstring)."""
    from diffusers.utils import convert_state_dict_to_kohya

    prefixed = {}
    for name, state in peft_dicts.items():
        for key, value in state.items():
            if name != "unet" and not key.startswith(CLIP_TEXT_PREFIX):
                key = CLIP_TEXT_PREFIX + key  # transformers 5 CLIP names omit the prefix kohya keys carry
            prefixed[f"{name}.{key}"] = value
    kohya = convert_state_dict_to_kohya(prefixed)
    single_text_encoder = not any(name == "text_encoder_2" for name in peft_dicts)
    result = {}
    for key, value in kohya.items():
        if single_text_encoder and key.startswith("lora_te1_"):
            key = "lora_te_" + key[len("lora_te1_"):]
        if key.endswith(".alpha"):
            value = torch.tensor(lora.resolved_alpha, dtype=dtype)
        result[key] = value.contiguous()
    return result


def kohya_metadata(lora, layout, output_name: str) -> dict[str, str]:
    """kohya sd-scripts' ss_* keys and the SAI model spec's keys of a LoRA on `layout`'s base model."""
    alpha = lora.resolved_alpha
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(lora.rank),
            "ss_network_alpha": str(int(alpha) if alpha == int(alpha) else alpha),
            "ss_base_model_version": layout.base_model_version, "ss_v2": str(layout.v2),
            "ss_output_name": output_name,
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": layout.modelspec_architecture + "/lora",
            "modelspec.implementation": "https://github.com/huggingface/diffusers",
            "modelspec.title": output_name or "lora"}
