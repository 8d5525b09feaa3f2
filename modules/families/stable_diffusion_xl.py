"""The `stable_diffusion_xl` family: StableDiffusionXLPipeline folders, LoRA or full.

Everything as `stable_diffusion` (see there), except the conditioning, which
follows diffusers' train_text_to_image_sdxl.py / train_dreambooth_lora_sdxl.py:

    for each (tokenizer, text encoder) of (tokenizer, text_encoder), (tokenizer_2, text_encoder_2):
        out = encoder(ids, output_hidden_states=True)
        pooled = out[0]                        # the last encoder's (text_encoder_2's projected) pooled output
        hidden = out.hidden_states[-2]         # penultimate layer
    encoder_hidden_states = concat(hidden_1, hidden_2, dim=-1)
    add_time_ids[i] = original_size[i] + crop_top_left[i] + target_size     # (h, w), (top, left), (h, w)
    added_cond_kwargs = {"text_embeds": pooled, "time_ids": add_time_ids}

Both text encoders train at `optimizer.text_encoder_lr` (groups
`text_encoder`, `text_encoder_2`) when it is set.
"""

import torch

from modules.families.stable_diffusion import StableDiffusionFamily


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "StableDiffusionXLPipeline"
    model_type = "stable_diffusion_xl"
    PIPELINE_CLASS = "StableDiffusionXLPipeline"
    TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
    TOKENIZERS = ("tokenizer", "tokenizer_2")
    REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    OPTIONAL_NONE = {}

    def embed_texts(self, captions: list[str], device):
        hidden_states = []
        pooled = None
        for tokenizer_name, encoder_name in zip(self.TOKENIZERS, self.TEXT_ENCODERS):
            ids = self.tokenize(getattr(self.pipeline, tokenizer_name), captions, device)
            output = getattr(self.pipeline, encoder_name)(ids, output_hidden_states=True, return_dict=False)
            pooled = output[0]
            hidden = output[-1][-2]
            hidden_states.append(hidden.view(hidden.shape[0], hidden.shape[1], -1))
        return torch.concat(hidden_states, dim=-1), pooled.view(pooled.shape[0], -1)

    def text_embedding_shapes(self) -> dict[str, tuple[int, ...]]:
        width = self.pipeline.text_encoder.config.hidden_size + self.pipeline.text_encoder_2.config.hidden_size
        return {"hidden": (self.pipeline.tokenizer.model_max_length, width),
                "pooled": (self.pipeline.text_encoder_2.config.projection_dim,)}

    def encode(self, captions: list[str], batch, device):
        encoder_hidden_states, pooled = self.text_embeddings(captions, device)
        return encoder_hidden_states, {"text_embeds": pooled, "time_ids": time_ids(batch, device,
                                                                                   encoder_hidden_states.dtype)}


def time_ids(batch, device=None, dtype=torch.float32) -> torch.Tensor:
    """add_time_ids (B, 6) of a micro-batch: each image's original (h, w), crop (top, left), training (h, w)."""
    return torch.tensor([list(original) + list(crop) + list(batch.target_size)
                         for original, crop in zip(batch.original_sizes, batch.crop_top_lefts)],
                        device=device, dtype=dtype)
