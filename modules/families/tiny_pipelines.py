"""Tiny Stable Diffusion and SDXL pipelines with random weights, built from configs into a folder.

There are no real diffusion weights offline, so the tests and the demo train
these: the same classes as the real pipelines (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel / CLIPTextModelWithProjection, CLIPTokenizer,
DDPMScheduler), sized as diffusers' own pipeline tests size them. The
tokenizer is a byte-level BPE built from a vocab.json and merges.txt written
here (every byte, every byte ending a word, a few merges), with
`model_max_length=77` as in the real CLIP tokenizers. Weights come from
`seed`, so the same call always writes the same pipeline.

    build_tiny_pipeline("unet" | "stable_diffusion" | "stable_diffusion_xl", folder, seed=0) -> folder

The folder is what `DDPMPipeline` / `StableDiffusionPipeline` / `StableDiffusionXLPipeline`
`.from_pretrained(folder)` loads (model_index.json and one folder per component);
the unet one holds the built-in tiny UNet (`modules.families.unet_models.tiny_unet`).
"""

import json
from pathlib import Path

import torch

TINY_PIPELINE_TYPES = ("unet", "stable_diffusion", "stable_diffusion_xl")
TOKENIZER_MAX_LENGTH = 77
VOCAB_SIZE = 1000
MERGES = ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n", "p h", "ph o", "pho t", "phot o</w>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of a small CLIP BPE tokenizer, plus its configs, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [symbol + "</w>" for symbol in symbols]
    for merge in MERGES:
        left, right = merge.split()
        tokens.append(left + right)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")


def _tokenizer(folder: Path, pad_token: str):
    """A CLIPTokenizer read from the vocab.json and merges.txt written into `folder`."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder)
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                         model_max_length=TOKENIZER_MAX_LENGTH, pad_token=pad_token)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                          num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=VOCAB_SIZE,
                          max_position_embeddings=TOKENIZER_MAX_LENGTH, **extra)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4)


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, steps_offset=1)


def _tiny_ddpm_pipeline(sample_size: int):
    from diffusers import DDPMPipeline, DDPMScheduler

    from modules.families.unet_models import tiny_unet

    return DDPMPipeline(unet=tiny_unet(sample_size), scheduler=DDPMScheduler(num_train_timesteps=1000))


def build_tiny_pipeline(pipeline_type: str, folder: str | Path, seed: int = 0, sample_size: int = 16) -> Path:
    """Write a tiny `pipeline_type` pipeline with random weights (from `seed`) into `folder`; return it."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # no warnings about image-processor backends a pipeline never uses
    try:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection
    finally:
        transformers_logging.set_verbosity(verbosity)

    if pipeline_type not in TINY_PIPELINE_TYPES:
        raise ValueError(f"unknown pipeline type {pipeline_type!r} (allowed: {', '.join(TINY_PIPELINE_TYPES)})")
    folder = Path(folder)
    scratch = folder.with_name(folder.name + ".tokenizers")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if pipeline_type == "unet":
            pipeline = _tiny_ddpm_pipeline(sample_size)
        elif pipeline_type == "stable_diffusion":
            unet = UNet2DConditionModel(
                block_out_channels=(16, 32), layers_per_block=1, sample_size=sample_size, in_channels=4,
                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=4,
                attention_head_dim=4)
            pipeline = StableDiffusionPipeline(
                unet=unet, vae=_vae(), text_encoder=CLIPTextModel(_text_config()).eval(),
                tokenizer=_tokenizer(scratch / "tokenizer", "<|endoftext|>"), scheduler=_scheduler(),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:
            unet = UNet2DConditionModel(
                block_out_channels=(16, 32), layers_per_block=1, sample_size=sample_size, in_channels=4,
                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
                cross_attention_dim=64, norm_num_groups=4)
            pipeline = StableDiffusionXLPipeline(
                unet=unet, vae=_vae(), text_encoder=CLIPTextModel(_text_config()).eval(),
                text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=32)).eval(),
                tokenizer=_tokenizer(scratch / "tokenizer", "<|endoftext|>"),
                tokenizer_2=_tokenizer(scratch / "tokenizer_2", "<|endoftext|>"), scheduler=_scheduler(),
                force_zeros_for_empty_prompt=True)
        pipeline.save_pretrained(folder, safe_serialization=True)
    finally:
        torch.random.set_rng_state(state)
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return folder
