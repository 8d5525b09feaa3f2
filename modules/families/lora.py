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


def save_lora(pipeline_class, folder: Path, modules: dict, lora) -> None:
    """Both LoRA files of `modules` ({"unet": ..., "text_encoder": ..., "text_encoder_2": ...}) into `folder`."""
    from diffusers.training_utils import _collate_lora_metadata
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_dicts = {name: peft_state_dict(module) for name, module in modules.items()}
    layers = {f"{name}_lora_layers": convert_state_dict_to_diffusers(state) for name, state in peft_dicts.items()}
    pipeline_class.save_lora_weights(folder, **layers, **_collate_lora_metadata(modules), weight_name=DIFFUSERS_LORA_FILE,
                                     safe_serialization=True)

    prefixed = {}
    for name, state in peft_dicts.items():
        for key, value in state.items():
            if name != "unet" and not key.startswith(CLIP_TEXT_PREFIX):
                key = CLIP_TEXT_PREFIX + key  # transformers 5 CLIP names omit the prefix kohya keys carry
            prefixed[f"{name}.{key}"] = value
    kohya = convert_state_dict_to_kohya(prefixed)
    single_text_encoder = "text_encoder_2" not in modules
    result = {}
    for key, value in kohya.items():
        if single_text_encoder and key.startswith("lora_te1_"):
            key = "lora_te_" + key[len("lora_te1_"):]
        if key.endswith(".alpha"):
            value = torch.tensor(lora.resolved_alpha, dtype=torch.float32)
        result[key] = value.contiguous()
    save_file(result, folder / KOHYA_LORA_FILE, metadata={"ss_network_dim": str(lora.rank),
                                                           "ss_network_alpha": str(lora.resolved_alpha),
                                                           "ss_network_module": "networks.lora"})
