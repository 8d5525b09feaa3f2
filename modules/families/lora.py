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


# --- lora.init_weights: start from a LoRA file ------------------------------------------------------

INIT_KEY = "lora.init_weights"
_KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def _tagged(state: dict) -> dict:
    """Each key of `state` with a distinct scalar tag, to follow key renamings back to the key."""
    return {key: torch.tensor([float(index)]) for index, key in enumerate(state)}


def init_key_candidates(modules: dict) -> dict[str, tuple[str, str]]:
    """{a key a LoRA file may hold: (component, peft key)}: our diffusers file's names, kohya's names as
    we and diffusers write them (`lora_te_` for one text encoder), and kohya sd-scripts' SDXL names
    (the original UNet's `input_blocks` names, `modules.families.single_file.unet_key`)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya

    from modules.families.single_file import unet_key

    candidates = {}
    single_text_encoder = "text_encoder_2" not in modules
    for component, module in modules.items():
        keys = list(peft_state_dict(module))
        for converted, tag in convert_state_dict_to_diffusers(_tagged(dict.fromkeys(keys))).items():
            candidates[f"{component}.{converted}"] = (component, keys[int(tag)])
        prefixed = {(key if component == "unet" or key.startswith(CLIP_TEXT_PREFIX) else CLIP_TEXT_PREFIX + key): key
                    for key in keys}
        tagged = {f"{component}.{key}": tag for key, tag in zip(prefixed, _tagged(dict.fromkeys(keys)).values())}
        for converted, tag in convert_state_dict_to_kohya(tagged).items():
            if converted.endswith(".alpha"):
                continue
            candidates[converted] = (component, keys[int(tag)])
            if single_text_encoder and converted.startswith("lora_te1_"):
                candidates["lora_te_" + converted[len("lora_te1_"):]] = (component, keys[int(tag)])
        if component == "unet":
            for key in keys:
                module_name, _, suffix = key.partition(".lora_")
                original = unet_key(module_name + ".weight", module.config).removesuffix(".weight")
                kind = "lora_down" if suffix.startswith("A") else "lora_up"
                candidates[f"lora_unet_{original.replace('.', '_')}.{kind}.weight"] = (component, key)
    return candidates


def read_init_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"'{path}' is not a .safetensors LoRA file", INIT_KEY)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise ConfigError(f"cannot read '{path}': {str(error).splitlines()[0]}", INIT_KEY) from None


def _file_alpha(tensors: dict, metadata: dict, rank: int | None) -> set[float]:
    """The alphas a LoRA file records: kohya's `.alpha` tensors, else our diffusers file's adapter
    metadata (`<component>.lora_alpha`), else the rank (diffusers' scale 1)."""
    alphas = {round(float(value), 6) for key, value in tensors.items() if key.endswith(".alpha")}
    if not alphas and "lora_adapter_metadata" in metadata:
        import json

        recorded = json.loads(metadata["lora_adapter_metadata"])
        alphas = {float(value) for key, value in recorded.items() if key.endswith(".lora_alpha")}
    return alphas or ({float(rank)} if rank else set())


def _names(keys, count: int = 2) -> str:
    modules = sorted({key.split(".lora")[0] for key in keys})
    return f"{len(modules)} modules, e.g. {', '.join(modules[:count])}"


def init_differences(found: dict, unknown: list, missing: list, alphas: set, own: dict, lora) -> list[str]:
    """What differs between a LoRA file and the adapters the lora section makes, one phrase each."""
    differences = []
    ranks = sorted({value.shape[0] for (_, key), value in found.items() if ".lora_A." in key})
    if ranks and ranks != [lora.rank]:
        differences.append(f"rank {'/'.join(map(str, ranks))} in the file, lora.rank {lora.rank}")
    if alphas and alphas != {lora.resolved_alpha}:
        differences.append(f"alpha {'/'.join(f'{alpha:g}' for alpha in sorted(alphas))} in the file, "
                           f"lora.alpha {lora.resolved_alpha:g}")
    if unknown:
        differences.append(f"the file adapts {_names(unknown)}, which lora.target_modules (and the trained text "
                           "encoders, optimizer.text_encoder_lr) do not")
    if missing:
        differences.append(f"lora.target_modules adapts {_names(key for _, key in missing)}, which the file does not")
    shapes = [key for (component, key), value in found.items() if value.shape != own[component][key].shape]
    if shapes and (not ranks or ranks == [lora.rank]):
        differences.append(f"{_names(shapes)} have other shapes in the file (another base model?)")
    return differences


def load_init_weights(modules: dict, lora) -> None:
    """The adapters of `modules` ({component: module with adapters}) set from lora.init_weights (ours or
    kohya's file); ConfigError (lora.init_weights) listing every difference from the lora section."""
    tensors, metadata = read_init_file(lora.init_weights)
    candidates = init_key_candidates(modules)
    own = {component: peft_state_dict(module) for component, module in modules.items()}
    found, unknown = {}, []
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            continue
        if key in candidates:
            found[candidates[key]] = value
        else:
            unknown.append(key)
    missing = [(component, key) for component, state in own.items() for key in state if (component, key) not in found]
    ranks = [value.shape[0] for (_, key), value in found.items() if ".lora_A." in key]
    differences = init_differences(found, unknown, missing, _file_alpha(tensors, metadata, ranks[0] if ranks else None),
                                   own, lora)
    if differences:
        raise ConfigError(f"'{lora.init_weights}' does not match the lora section: {'; '.join(differences)}", INIT_KEY)
    for component, module in modules.items():
        parameters = {_peft_key(name): parameter for name, parameter in module.named_parameters() if ".lora_" in name}
        with torch.no_grad():
            for (owner, key), value in found.items():
                if owner == component:
                    parameters[key].copy_(value.to(parameters[key].dtype))


def _peft_key(parameter_name: str) -> str:
    """`x.lora_A.<adapter>.weight` -> `x.lora_A.weight` (the names of get_peft_model_state_dict)."""
    parts = parameter_name.split(".")
    index = next(position for position, part in enumerate(parts) if part in ("lora_A", "lora_B"))
    return ".".join(parts[:index + 1] + parts[index + 2:])
