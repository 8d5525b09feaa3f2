"""Model families: what the training loop needs to know about a model, behind one interface.

The loop (`modules.training.trainer`) is generic: it never names a model
class. Each family is one module here with one `Family` subclass:

    unet                 a diffusers UNet2DModel trained as DDPM (model.config "tiny" or a DDPM folder)
    stable_diffusion     StableDiffusionPipeline folders (SD 1.x / 2.x), LoRA or full
    stable_diffusion_xl  StableDiffusionXLPipeline folders, LoRA or full

The seam, in the order the loop uses it:

- `family_class(preset)` -> the class; `Cls.read_checkpoint_weights(folder)`
  reads a checkpoint's trainable weights (ConfigError naming a missing or
  damaged file) before anything is built, so a resume checks every file first.
- `Cls(preset, plan)` loads the model from `model.path` (local files only) or
  builds it, and sets up what trains (LoRA adapters, frozen parts).
- `family.model`: the one `torch.nn.Module` accelerate prepares (and wraps in
  DDP), a `modules.families.losses.LossModule`: `family.predict(batch,
  generator)` (its `predict`) is the family's part (model output, target,
  timesteps), and the shared loss pieces of `losses` (MSE, min-SNR, each
  sample's `loss_weights`) turn it into the loss. Its forward is the loss of one micro-batch:
  `model(micro_batch, generator) -> scalar fp32 loss`, where `generator` is
  the micro-batch's seeded CPU generator (seed, global micro-batch, rank): every
  random draw of the loss (caption dropout, VAE sample, noise, timesteps)
  comes from it, so a resumed run repeats them. Frozen parts run under no_grad.
  The captions come with the micro-batch (`MicroBatch.captions`): a family
  never lists the dataset.
- `family.parameter_components()`: [(group name, [(parameter name, parameter)])]
  of the trainable parameters, in optimizer order: `unet` first (the named
  regex groups of `optimizer.param_groups` match inside it), then
  `text_encoder`, `text_encoder_2` where they train.
- `family.trainable_state_dict()` / `load_trainable_state_dict(weights)`:
  exactly the trained tensors (a LoRA: the adapters), for checkpoints and the
  schedule-free train-mode copy; loading raises RuntimeError when they do not fit.
- `family.save_checkpoint_weights(folder)`: the trainable weights into a
  checkpoint folder (what `read_checkpoint_weights` reads back).
- `family.save_final_model(folder)`: the final model in diffusers format.
- `family.sample(seed)`: images (N, H, W, 3) in [0, 1] for output.samples
  (the loop switches schedule-free optimizers to eval mode around it).
- `family.size_multiple()`: the pixel multiple every training height and
  width must be (aspect-ratio buckets), or None when the model takes only
  square `model.resolution` input; `family.name` names it in errors.
- Memory (`modules.training.precision`): `family.cast_frozen_weights(dtype)`
  puts every frozen weight in `dtype` and the trained ones in fp32 (as
  diffusers' cast_training_params); `enable_gradient_checkpointing()` turns it
  on for every trained model component; `offload_cached_components(preset,
  device)` moves what the caches replace off the training device (the names
  moved), `offloadable_state_names(preset)` names their weights (kept out of
  DDP's broadcasts).

- The caches (`modules.data.caches`) ask a family whose registry entry has a
  VAE / text encoders: `latent_cache_identity()`, `latent_layout()`,
  `encode_latents(pixels)`; `text_cache_identity()`, `text_embedding_shapes()`,
  `embed_caption(caption, device)`, and `use_text_cache(cache)`.

A new family is one new module here plus one entry in `modules.families.registry`.
"""

from pathlib import Path

import torch

from modules.families.model_types import resolve_model_type
from modules.families.registry import descriptor


class Family:
    """The interface; see the module docstring. Subclasses set `model` in __init__."""

    model: torch.nn.Module
    name: str = "model"
    model_type: str = ""  # its name in modules.families.registry

    @classmethod
    def descriptor(cls):
        return descriptor(cls.model_type)

    def predict(self, batch, generator: torch.Generator):
        """The family's prediction of a micro-batch (`losses.Prediction`), before the shared loss."""
        return self.model.predict(batch, generator)

    @staticmethod
    def read_checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def parameter_components(self) -> list[tuple[str, list[tuple[str, torch.nn.Parameter]]]]:
        raise NotImplementedError

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_trainable_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def save_checkpoint_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def save_final_model(self, folder: Path) -> None:
        raise NotImplementedError

    def sample(self, seed: int):
        raise NotImplementedError

    def size_multiple(self) -> int | None:
        """Default: only square input."""
        return None

    def cast_frozen_weights(self, dtype: torch.dtype) -> None:
        """Every floating-point weight that does not train in `dtype`, every trained one in fp32."""
        cast_weights(self.model.parameters(), dtype)

    def enable_gradient_checkpointing(self) -> None:
        """Gradient checkpointing in each model component of `self.model` that trains (diffusers or transformers)."""
        for component in self.model.children():
            if not any(parameter.requires_grad for parameter in component.parameters()):
                continue
            if getattr(component, "_supports_gradient_checkpointing", False):  # diffusers (use_reentrant=False)
                component.enable_gradient_checkpointing()
            elif getattr(component, "supports_gradient_checkpointing", False):  # transformers
                enable = getattr(component, "activation_checkpointing_enable", None)  # its name from v5 on
                if enable is not None:
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    component.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def offloadable_state_names(self, preset) -> list[str]:
        """Names (in `self.model`) of the weights `offload_cached_components` would move; default: none."""
        return []

    def offload_cached_components(self, preset, device) -> list[str]:
        """Move what the caches replace to `device`; the names of the components moved. Default: nothing."""
        return []

    # --- for the caches, in families whose registry entry has a VAE / text encoders ------------

    def latent_cache_identity(self) -> str:
        """SHA-256 of what makes the latents (the VAE's class, config and weights; not where it was loaded from)."""
        raise NotImplementedError

    def latent_layout(self) -> tuple[int, int]:
        """(latent channels, pixel downsampling) of the latents."""
        raise NotImplementedError

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE's latent distribution parameters (1, 2C, h, w) of one image's pixels (1, 3, H, W)."""
        raise NotImplementedError

    def text_cache_identity(self) -> str:
        """SHA-256 of what makes the text embeddings (the encoders' weights, the tokenizers' vocabularies)."""
        raise NotImplementedError

    def text_embedding_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def embed_caption(self, caption: str, device) -> dict[str, torch.Tensor]:
        """One caption's embeddings as the frozen encoders make them: {"hidden": (L, D)[, "pooled": (P,)]}."""
        raise NotImplementedError

    def use_text_cache(self, cache) -> None:
        """Read frozen text embeddings from `cache` (`modules.data.caches.TextEmbeddingCache`) from now on."""
        raise NotImplementedError


def cast_weights(parameters, frozen_dtype: torch.dtype) -> None:
    """Frozen floating-point `parameters` to `frozen_dtype`, trained ones to fp32 (diffusers' cast_training_params;
    a model stored in fp16 / bf16 gets fp32 adapters too). A parameter already in its dtype is left as it is."""
    with torch.no_grad():
        for parameter in parameters:
            if parameter.is_floating_point():
                wanted = torch.float32 if parameter.requires_grad else frozen_dtype
                if parameter.dtype != wanted:
                    parameter.data = parameter.data.to(wanted)


def family_class(preset) -> type[Family]:
    """The Family subclass for `preset` (model.type, `auto` resolved from the folder), from the registry."""
    return descriptor(resolve_model_type(preset.model)).family_class()


def build_family(preset, plan) -> Family:
    return family_class(preset)(preset, plan)
