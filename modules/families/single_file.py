"""Single-file checkpoints (the A1111 / ComfyUI layout): the architecture from the keys, loading, and saving.

SPEC §12. A single file is one `.safetensors` holding the original (CompVis / SGM)
key names: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE) and the
text encoders under

    cond_stage_model.transformer.text_model.*      SD 1.x   (CLIP ViT-L, transformers names)      -> sd_v1
    cond_stage_model.model.*                       SD 2.x   (OpenCLIP ViT-H)                      -> sd_v2 / sd_v2_768_v
    conditioner.embedders.0.transformer.*  and
    conditioner.embedders.1.model.*                SDXL base (CLIP ViT-L + OpenCLIP ViT-bigG)     -> sdxl_base

- `read_header(path)`: the safetensors JSON header (names, dtypes, shapes, `__metadata__`) read
  from the file's first bytes: no torch, no weights; the preview calls `detect_layout` through
  `modules.families.model_types`.
- `detect_layout(path, prediction_type)`: the `Layout` of a file, or one ConfigError (model.path):
  a `.ckpt` / `.pt` / `.bin` pickle is refused (convert it to safetensors); a file matching no
  layout names the keys looked for. SD 2.x 512 (epsilon) and 768 (v-prediction) share every key:
  `model.prediction_type` decides, else the file's `modelspec.architecture` /
  `modelspec.prediction_type` metadata, else a `v_pred` key (ComfyUI writes it), else ComfyUI's
  test on one small tensor (the std of `output_blocks.11.1.transformer_blocks.0.norm1.bias` > 0.09
  is v-prediction), read from its bytes with NumPy.
- `load_pipeline(pipeline_class, path, layout)`: diffusers' `from_single_file(path,
  config=<folder>, local_files_only=True)` with the component configs shipped in
  `single_file_configs/<layout>/` (no weights) and CLIP tokenizers built from the shipped
  `clip_bpe/vocab.json` and `merges.txt` (generated once from open_clip's
  `bpe_simple_vocab_16e6.txt.gz`, the vocabulary of every SD / SDXL tokenizer). Nothing is
  downloaded. `CONFIG_OVERRIDES[layout]` replaces the shipped folder (the tests point it at a tiny
  pipeline folder, whose tokenizer folders are then used).
- `save_pipeline(pipeline, path, layout)`: the inverse of diffusers' single-file converters
  (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
  `convert_open_clip_checkpoint`): every tensor renamed to its original key, the VAE attention
  weights as 1x1 convolutions, OpenCLIP's q/k/v concatenated into `in_proj_*` and its text
  projection transposed. `from_single_file` with the same configs loads it back to the same tensors.
  SD 2.x files carry 23 of OpenCLIP's 24 text layers and no text projection (diffusers drops
  them on load; SD 2.x uses the penultimate layer, so A1111 and ComfyUI do not read them).
"""

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from modules.errors import ConfigError

CONFIG_ROOT = Path(__file__).with_name("single_file_configs")
CLIP_BPE_FOLDER = CONFIG_ROOT / "clip_bpe"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
SINGLE_FILE_NAME = "model.safetensors"  # in output.dir/model of a full fine-tune
FILE_MODE = 0o644
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# A layout name -> a config folder to use instead of single_file_configs/<name> (tests: tiny pipelines).
CONFIG_OVERRIDES: dict[str, Path] = {}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT_2_PREFIX = "conditioner.embedders.1.model."
SD1_KEY = SD1_TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"
SD2_KEY = SD2_TEXT_PREFIX + "token_embedding.weight"
SDXL_KEYS = (SDXL_TEXT_PREFIX + "text_model.embeddings.position_embedding.weight",
             SDXL_TEXT_2_PREFIX + "positional_embedding")
SDXL_REFINER_KEY = "conditioner.embedders.0.model.text_projection"
V_PREDICTION_PROBE = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PREDICTION_STD = 0.09  # ComfyUI's threshold for SD 2.x v-prediction


@dataclass(frozen=True)
class Layout:
    name: str                     # the folder of its shipped configs
    model_type: str               # the family (modules.families.registry)
    base_model_version: str       # kohya's ss_base_model_version
    modelspec_architecture: str   # SAI model spec's architecture of the checkpoint (LoRA: + "/lora")
    prediction_type: str
    text_prefixes: tuple[tuple[str, str, str], ...]  # (pipeline component, key prefix, "clip" | "open_clip")
    tokenizer_pads: tuple[tuple[str, str], ...]      # (tokenizer component, pad token)

    @property
    def v2(self) -> bool:
        return self.base_model_version == "sd_v2"


LAYOUTS = {layout.name: layout for layout in (
    Layout("sd_v1", "stable_diffusion", "sd_v1", "stable-diffusion-v1", "epsilon",
           (("text_encoder", SD1_TEXT_PREFIX, "clip"),), (("tokenizer", "<|endoftext|>"),)),
    Layout("sd_v2", "stable_diffusion", "sd_v2", "stable-diffusion-v2-512", "epsilon",
           (("text_encoder", SD2_TEXT_PREFIX, "open_clip"),), (("tokenizer", "!"),)),
    Layout("sd_v2_768_v", "stable_diffusion", "sd_v2", "stable-diffusion-v2-768-v", "v_prediction",
           (("text_encoder", SD2_TEXT_PREFIX, "open_clip"),), (("tokenizer", "!"),)),
    Layout("sdxl_base", "stable_diffusion_xl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base", "epsilon",
           (("text_encoder", SDXL_TEXT_PREFIX, "clip"), ("text_encoder_2", SDXL_TEXT_2_PREFIX, "open_clip")),
           (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!"))),
)}


def is_single_file(path) -> bool:
    """Whether `model.path` names a file (a single-file checkpoint) rather than a folder."""
    return bool(path) and (Path(path).is_file() or Path(path).suffix.lower() in PICKLE_SUFFIXES + (SAFETENSORS_SUFFIX,))


# --- reading the header -------------------------------------------------------------------------

def read_header(path) -> tuple[dict[str, dict], dict[str, str]]:
    """({tensor name: {"dtype", "shape", "data_offsets"}}, metadata) of a .safetensors file, from its header only."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(f"'{path}' is a pickle checkpoint ({path.suffix}), which can run code when loaded; "
                          "convert it to .safetensors first", "model.path")
    if not path.is_file():
        raise ConfigError(f"model file '{path}' does not exist", "model.path")
    try:
        with open(path, "rb") as handle:
            size_bytes = handle.read(8)
            (length,) = struct.unpack("<Q", size_bytes) if len(size_bytes) == 8 else (0,)
            if not 0 < length <= MAX_HEADER_BYTES:
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError) as error:
        raise ConfigError(f"'{path}' is not a readable .safetensors file ({str(error).splitlines()[0]})",
                          "model.path") from None
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata


def _unsupported(tensors: dict) -> str | None:
    if SDXL_REFINER_KEY in tensors:
        return "an SDXL refiner (only SDXL base is supported)"
    first = tensors.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if first and len(first.get("shape", [])) == 4 and first["shape"][1] != 4:
        return f"an inpainting or other {first['shape'][1]}-channel UNet (only 4 latent channels are supported)"
    return None


def detect_layout(path, prediction_type: str | None = None) -> Layout:
    """The Layout of the single-file checkpoint at `path`, from its header's keys; ConfigError (model.path) if none."""
    tensors, metadata = read_header(path)
    unsupported = _unsupported(tensors)
    if unsupported:
        raise ConfigError(f"'{path}' is {unsupported}", "model.path")
    if all(key in tensors for key in SDXL_KEYS):
        name = "sdxl_base"
    elif SD2_KEY in tensors:
        name = "sd_v2_768_v" if _is_v_prediction(path, tensors, metadata, prediction_type) else "sd_v2"
    elif SD1_KEY in tensors:
        name = "sd_v1"
    else:
        raise ConfigError(f"'{path}' matches no known single-file layout: looked for the text encoder of SD 1.x "
                          f"({SD1_KEY}), SD 2.x ({SD2_KEY}) or SDXL base ({' and '.join(SDXL_KEYS)})", "model.path")
    for prefix, what in ((UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE")):
        if not any(key.startswith(prefix) for key in tensors):
            raise ConfigError(f"'{path}' has no {what} ({prefix}*): a single-file checkpoint holds the whole model",
                              "model.path")
    return LAYOUTS[name]


def _is_v_prediction(path, tensors: dict, metadata: dict, prediction_type: str | None) -> bool:
    """SD 2.x: 768 v-prediction or 512 epsilon (same keys); see the module docstring for the order asked."""
    if prediction_type:
        return prediction_type == "v_prediction"
    spec = metadata.get("modelspec.prediction_type", "") + " " + metadata.get("modelspec.architecture", "")
    if "768-v" in spec or spec.startswith("v ") or "v_prediction" in spec:
        return True
    if "epsilon" in spec or "512" in spec:
        return False
    if "v_pred" in tensors:
        return True
    probe = _read_tensor(path, tensors, V_PREDICTION_PROBE)
    return probe is not None and float(probe.std()) > V_PREDICTION_STD


def _read_tensor(path, tensors: dict, name: str):
    """One tensor of the file as a float32 NumPy array (F32 / F16 / BF16), read from its bytes; None if absent."""
    import numpy

    entry = tensors.get(name)
    if entry is None or entry.get("dtype") not in ("F32", "F16", "BF16"):
        return None
    start, end = entry["data_offsets"]
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(8 + length + start)
        data = handle.read(end - start)
    if entry["dtype"] == "BF16":
        return (numpy.frombuffer(data, dtype="<u2").astype(numpy.uint32) << 16).view(numpy.float32)
    return numpy.frombuffer(data, dtype="<f4" if entry["dtype"] == "F32" else "<f2").astype(numpy.float32)


# --- loading ------------------------------------------------------------------------------------

def config_folder(layout: Layout) -> Path:
    return Path(CONFIG_OVERRIDES.get(layout.name, CONFIG_ROOT / layout.name))


def clip_tokenizer(pad_token: str):
    """The CLIP BPE tokenizer of SD / SDXL (77 tokens), from the shipped vocabulary."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=str(CLIP_BPE_FOLDER / "vocab.json"), merges=str(CLIP_BPE_FOLDER / "merges.txt"),
                         model_max_length=77, pad_token=pad_token)


def load_pipeline(pipeline_class, path, layout: Layout, **components):
    """`pipeline_class.from_single_file` of `path` with the layout's config folder, offline."""
    folder = config_folder(layout)
    for name, pad_token in layout.tokenizer_pads:
        if not (folder / name).is_dir():
            components[name] = clip_tokenizer(pad_token)
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        return pipeline_class.from_single_file(str(path), config=str(folder), local_files_only=True, **components)
    except SingleFileComponentError as error:  # not an OSError / ValueError: the caller's one-line error needs one
        raise ValueError(str(error)) from None


# --- saving: diffusers names -> the original names -------------------------------------------------

_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                  ("to_out.0.", "proj_out."))
_OPEN_CLIP_NAMES = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def _renamed(name: str, pairs) -> str:
    for new, old in pairs:
        name = name.replace(new, old)
    return name


def unet_key(key: str, config) -> str:
    """The original (LDM) name of a UNet2DConditionModel parameter, given the UNet's config."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    if key in fixed:
        return fixed[key]
    per_block = config["layers_per_block"] + 1
    match = re.match(r"(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?(resnets|attentions|downsamplers|upsamplers)"
                     r"\.(\d+)\.(.*)", key)
    if not match:
        raise KeyError(f"no original name for UNet parameter {key!r}")
    part, block, kind, index, rest = match.group(1), int(match.group(2) or 0), match.group(3), int(match.group(4)), \
        match.group(5)
    if kind == "resnets":
        rest = _renamed(rest, _UNET_RESNET)
    if part == "mid_block":
        return f"middle_block.{2 * index if kind == 'resnets' else 1}.{rest}"
    if part == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{1 + block * per_block + per_block - 1}.0.op.{rest.removeprefix('conv.')}"
        return f"input_blocks.{1 + block * per_block + index}.{0 if kind == 'resnets' else 1}.{rest}"
    if kind == "upsamplers":
        has_attention = "CrossAttn" in config["up_block_types"][block]
        return f"output_blocks.{block * per_block + per_block - 1}.{2 if has_attention else 1}.{rest}"
    return f"output_blocks.{block * per_block + index}.{0 if kind == 'resnets' else 1}.{rest}"


def vae_key(key: str, config) -> str:
    """The original name of an AutoencoderKL parameter."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in fixed:
        return fixed[key]
    up_blocks = len(config["up_block_types"])
    key = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m.group(1)) + 1}", key)
    if "mid_block.attentions.0." in key:
        return _renamed(key.replace("mid_block.attentions.0.", "mid.attn_1."), _VAE_ATTENTION)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{up_blocks - 1 - int(m.group(1))}.upsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{up_blocks - 1 - int(m.group(1))}.block.", key)
    return key.replace("conv_shortcut", "nin_shortcut")


def open_clip_state_dict(state: dict, prefix: str) -> dict:
    """A transformers CLIP text model's state dict in OpenCLIP names under `prefix` (q/k/v -> in_proj)."""
    import torch

    result = {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            result[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            result[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            result[prefix + "ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif key == "text_projection.weight":
            result[prefix + "text_projection"] = value.T.contiguous()
        elif re.search(r"self_attn\.[qkv]_proj\.", key):
            if ".q_proj." in key:
                kind = key.rsplit(".", 1)[1]
                parts = [state[_find(state, key.replace("q_proj", name))] for name in ("q_proj", "k_proj", "v_proj")]
                layer = key.split(".self_attn.")[0].replace("encoder.layers.", "transformer.resblocks.")
                result[f"{prefix}{layer}.attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        elif key.startswith("encoder.layers."):
            result[prefix + _renamed(key, _OPEN_CLIP_NAMES).replace("encoder.layers.", "transformer.resblocks.")] = value
        elif key != "embeddings.position_ids":
            raise KeyError(f"no OpenCLIP name for text encoder parameter {key!r}")
    return result


def _find(state: dict, key: str) -> str:
    return key if key in state else "text_model." + key


def clip_state_dict(state: dict, prefix: str) -> dict:
    """A transformers CLIP text model's state dict under `prefix` + `text_model.` (the original SD 1.x names)."""
    return {prefix + ("" if key.startswith("text_model.") else "text_model.") + key: value
            for key, value in state.items() if not key.endswith("position_ids")}


def original_state_dict(pipeline, layout: Layout) -> dict:
    """Every weight of `pipeline` (UNet, VAE, text encoders) under its original single-file name (where it is)."""
    unet, vae = pipeline.unet, pipeline.vae
    result = {UNET_PREFIX + unet_key(key, unet.config): value for key, value in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        if re.search(r"mid_block\.attentions\.0\.(to_[qkv]|to_out\.0)\.weight$", key) and value.dim() == 2:
            value = value[:, :, None, None]  # the original VAE's attention projections are 1x1 convolutions
        result[VAE_PREFIX + vae_key(key, vae.config)] = value
    for component, prefix, kind in layout.text_prefixes:
        state = getattr(pipeline, component).state_dict()
        result.update(clip_state_dict(state, prefix) if kind == "clip" else open_clip_state_dict(state, prefix))
    return result


def save_pipeline(pipeline, path, layout: Layout) -> None:
    """`pipeline` as one single-file .safetensors at `path` (original names, the weights' own dtype)."""
    from safetensors.torch import save_file

    metadata = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": layout.modelspec_architecture,
                "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
                if layout.model_type == "stable_diffusion_xl" else "https://github.com/Stability-AI/stablediffusion",
                "modelspec.prediction_type": "v" if layout.prediction_type == "v_prediction" else "epsilon"}
    tensors = {key: value.detach().cpu().contiguous() for key, value in original_state_dict(pipeline, layout).items()}
    save_file(tensors, str(path), metadata=metadata)


def layout_of_pipeline(pipeline, model_type: str, prediction_type: str = "epsilon") -> Layout:
    """The single-file layout a diffusers pipeline saves as: SDXL, SD 2.x (an OpenCLIP text encoder) or SD 1.x."""
    if model_type == "stable_diffusion_xl":
        return LAYOUTS["sdxl_base"]
    if pipeline.text_encoder.config.hidden_act == "gelu":  # OpenCLIP (SD 2.x); OpenAI CLIP uses quick_gelu
        return LAYOUTS["sd_v2_768_v" if prediction_type == "v_prediction" else "sd_v2"]
    return LAYOUTS["sd_v1"]


def make_readable(folder) -> None:
    """Every file under `folder` readable by others (0644): safetensors and diffusers write 0600."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            path.chmod(FILE_MODE)
