"""The `stable_diffusion` family: StableDiffusionPipeline folders (SD 1.x / 2.x), LoRA or full.

- Load: `model.path` is a local diffusers pipeline folder whose
  model_index.json names `PIPELINE_CLASS` and lists every component of
  `REQUIRED_COMPONENTS`, each in its own folder (otherwise a one-line
  ConfigError naming what is missing); loaded with
  `from_pretrained(local_files_only=True)`. Or `model.path` is a single-file
  checkpoint (`.safetensors`, A1111 / ComfyUI layout) of this family, loaded
  with `from_single_file` and the shipped configs (`modules.families.single_file`).
  The folder's noise scheduler
  config is used as a DDPMScheduler for training (prediction type from it,
  or `model.prediction_type`).
- Captions: they come with the micro-batch (`MicroBatch.captions`, read by
  the data side with `modules.data.captions`).
- Loss of a micro-batch, all draws from its generator in this order: caption
  dropout (`data.caption_dropout`), `vae.encode(pixels).latent_dist.sample`
  times `vae.config.scaling_factor`, noise (+ `training.noise_offset`),
  timesteps; target epsilon or v_prediction (the VAE encodes one image at a
  time; with data.cache_latents its stored output is used instead, see
  `modules.data.caches`); min-SNR weighting with
  `training.min_snr_gamma` and each sample's loss weight (see `losses`). The VAE and frozen text encoders
  run under no_grad.
- `training.method` lora: peft LoRA (`lora.rank`, `alpha`, `dropout`,
  `target_modules`) on the UNet, and on the text encoder's attention
  projections when `optimizer.text_encoder_lr` is set; full: the UNet's
  weights, and the text encoder's when text_encoder_lr is set.
- Checkpoint weights: `trainable_weights.safetensors`, the trained tensors
  only (a LoRA checkpoint holds the adapters, not the model).
- Final model (`output.dir/model`): lora -> `pytorch_lora_weights.safetensors`
  (diffusers format with the adapter metadata, so `load_lora_weights` applies
  alpha) and `lora_kohya.safetensors` (see `modules.families.lora`);
  full -> the whole pipeline folder with the trained components replaced, and
  (unless `output.single_file` is false) `model.safetensors`, the same weights in
  the original single-file layout. Every file is written readable by others (0644).
  LoRA with `lora.init_weights`: the adapters start from that file (`lora.load_init_weights`).
- Samples: one image per `output.sample_prompts` entry, fixed seed, the
  folder's own inference scheduler.
- Memory (`modules.training.precision`): frozen weights (the UNet under a
  LoRA, the frozen text encoders, the VAE) in `model.frozen_dtype`, trained
  ones fp32; with fp16 the VAE stays fp32. Gradient checkpointing on the UNet
  and the trained text encoders. With the latent cache the VAE, with the
  text-embedding cache the frozen text encoders leave the training device
  (CUDA -> CPU, or freed on CPU when nothing needs them again); sampling
  brings them back while it runs.
"""

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from modules.errors import ConfigError
from modules.families.model_types import read_model_index
from modules.training import checkpoints, paths
from modules.families.base import Family, cast_weights
from modules.families import lora as lora_files
from modules.families import single_file
from modules.families.losses import LossModule, Prediction, draw_noise
from modules.families.unet_models import size_multiple

SAMPLE_INFERENCE_STEPS = 20


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def _quiet_loading():
    """No per-component loading bars from diffusers / transformers: the trainer has its own progress output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    shown = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # Importing the pipeline classes warns about optional image-processor backends training never uses.
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if shown[0]:
            diffusers_logging.enable_progress_bar()
        if shown[1]:
            transformers_logging.enable_progress_bar()


class TextToImageLossModel(LossModule):
    """forward(micro_batch, generator) -> the latent-diffusion loss (`predict` + the shared loss)."""

    def __init__(self, family: "StableDiffusionFamily"):
        super().__init__()
        self.min_snr_gamma = family.preset.training.min_snr_gamma
        self.unet = family.pipeline.unet
        self.vae = family.pipeline.vae
        for name in family.TEXT_ENCODERS:
            setattr(self, name, getattr(family.pipeline, name))
        self.family = [family]  # a list: not a submodule

    def train(self, mode: bool = True):
        """Only what trains is in train mode (LoRA / text-encoder dropout); the VAE and frozen encoders stay in eval."""
        super().train(mode)
        family = self.family[0]
        self.vae.eval()
        if not family.train_text_encoders:
            for name in family.TEXT_ENCODERS:
                getattr(self, name).eval()
        return self

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE's latent distribution parameters (mean and log-variance) of pixels (1, 3, H, W).

        One image at a time, here and when the latent cache is built: a batched convolution may round
        differently in the last bit, and training from the cache must equal training from the images.
        """
        return self.vae.encode(pixels.to(dtype=self.vae.encoder.conv_in.weight.dtype)).latent_dist.parameters

    def predict(self, batch, generator: torch.Generator) -> Prediction:
        family = self.family[0]
        # A weight's device and dtype, not ModelMixin.device / .dtype: those walk every module on each call.
        device = self.unet.conv_in.weight.device
        captions = family.captions_of(batch, generator)
        with torch.no_grad():
            if batch.latent_parameters is not None:  # data.cache_latents
                parameters = batch.latent_parameters.to(device)
            else:
                parameters = torch.cat([self.encode_pixels(batch.pixels[index:index + 1].to(device))
                                        for index in range(batch.size)])
            # One memory layout in both paths (the VAE may return channels-last): the UNet's convolutions
            # round by layout.
            parameters = parameters.contiguous()
            latents = DiagonalGaussianDistribution(parameters).sample(generator=generator)
            latents = latents * self.vae.config.scaling_factor
        noise, timesteps = draw_noise(latents.shape, family.noise_scheduler.config.num_train_timesteps, generator,
                                      family.preset.training.noise_offset, getattr(batch, "fixed_timesteps", None))
        latents = latents.float()
        noise, timesteps = noise.to(device), timesteps.to(device)
        noisy = family.noise_scheduler.add_noise(latents, noise, timesteps)
        if family.noise_scheduler.config.prediction_type == "v_prediction":
            target = family.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        hidden_states, added = family.encode(captions, batch, device)
        prediction = self.unet(noisy, timesteps, hidden_states, added_cond_kwargs=added, return_dict=False)[0]
        return Prediction(prediction, target, timesteps, family.noise_scheduler)


class StableDiffusionFamily(Family):
    name = "StableDiffusionPipeline"
    model_type = "stable_diffusion"
    PIPELINE_CLASS = "StableDiffusionPipeline"
    TEXT_ENCODERS = ("text_encoder",)
    TOKENIZERS = ("tokenizer",)
    REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    OPTIONAL_NONE = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def __init__(self, preset, plan):
        self.preset = preset
        self.method = preset.training.method
        self.train_text_encoders = preset.optimizer.text_encoder_lr is not None
        if preset.output.sample_every is not None and not preset.output.sample_prompts:
            raise ConfigError("is set, but a text-to-image model samples output.sample_prompts, which is empty",
                              "output.sample_every")
        self._token_ids: dict[int, dict[str, torch.Tensor]] = {}
        self.pipeline = self.load_pipeline(preset.model.path)
        self.text_cache = None  # set by modules.data.caches with data.cache_text_embeddings
        self._offloaded: list[str] = []  # components moved off the training device (offload_cached_components)
        self.noise_scheduler = self._noise_scheduler()
        self._set_up_training()
        self.model = TextToImageLossModel(self)

    def size_multiple(self) -> int | None:
        """The VAE's downsampling times the UNet's halvings of the latents."""
        vae_factor = 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)
        halvings = size_multiple(self.pipeline.unet)
        return None if halvings is None else vae_factor * halvings

    # --- loading ------------------------------------------------------------------

    @classmethod
    def check_folder(cls, folder) -> None:
        """ConfigError (one line) unless `folder` is a PIPELINE_CLASS folder with every required component."""
        if not folder:
            raise ConfigError(f"is not set: choose a local {cls.PIPELINE_CLASS} folder", "model.path")
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"model folder '{folder}' does not exist", "model.path")
        index = read_model_index(folder)
        if index is None:
            raise ConfigError(f"'{folder}' has no model_index.json: not a diffusers {cls.PIPELINE_CLASS} folder",
                              "model.path")
        if index.get("_class_name") != cls.PIPELINE_CLASS:
            raise ConfigError(f"'{folder}' holds a {index.get('_class_name')!r}, but model.type needs a "
                              f"{cls.PIPELINE_CLASS}", "model.path")
        for component in cls.REQUIRED_COMPONENTS:
            entry = index.get(component)
            if not isinstance(entry, list) or None in entry:
                raise ConfigError(f"'{folder / 'model_index.json'}' lists no component '{component}'", "model.path")
            if not (folder / component).is_dir():
                raise ConfigError(f"'{folder}' lacks the component '{component}' (no folder '{folder / component}')",
                                  "model.path")

    @classmethod
    def check_single_file(cls, path):
        """The single-file layout of `path` (see `single_file`); ConfigError unless it is this family's."""
        layout = single_file.detect_layout(path)
        if layout.model_type != cls.model_type:
            raise ConfigError(f"'{path}' is a {layout.model_type} checkpoint ({layout.name}), but model.type is "
                              f"{cls.model_type}", "model.path")
        return layout

    @classmethod
    def load_pipeline(cls, folder):
        """The pipeline of `model.path`: a diffusers folder, or a single-file checkpoint (SPEC §12)."""
        import diffusers

        layout = cls.check_single_file(folder) if single_file.is_single_file(folder) else None
        if layout is None:
            cls.check_folder(folder)
        try:
            with _quiet_loading():
                pipeline_class = getattr(diffusers, cls.PIPELINE_CLASS)
                if layout is not None:
                    pipeline = single_file.load_pipeline(pipeline_class, folder, layout, **cls.OPTIONAL_NONE)
                else:
                    pipeline = pipeline_class.from_pretrained(folder, local_files_only=True, **cls.OPTIONAL_NONE)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
            raise ConfigError(f"cannot load the {cls.PIPELINE_CLASS} in '{folder}': {_first_line(error)}",
                              "model.path") from None
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _noise_scheduler(self):
        from diffusers import DDPMScheduler

        config = dict(self.pipeline.scheduler.config)
        if self.preset.model.prediction_type:
            config["prediction_type"] = self.preset.model.prediction_type
        scheduler = DDPMScheduler.from_config(config)
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction type {scheduler.config.prediction_type!r} is not supported "
                              "(allowed: epsilon, v_prediction)", "model.prediction_type")
        return scheduler

    def text_encoders(self) -> list[tuple[str, torch.nn.Module]]:
        return [(name, getattr(self.pipeline, name)) for name in self.TEXT_ENCODERS]

    def _set_up_training(self) -> None:
        pipeline = self.pipeline
        pipeline.vae.requires_grad_(False)
        pipeline.vae.eval()
        for _, encoder in self.text_encoders():
            encoder.requires_grad_(self.train_text_encoders and self.method == "full")
            encoder.train(self.train_text_encoders)
        pipeline.unet.requires_grad_(self.method == "full")
        if self.method == "lora":
            lora = self.preset.lora
            # LoRA initialisation draws from the global torch RNG: seed it, and leave the RNG as it was.
            state = torch.random.get_rng_state()
            torch.manual_seed(self.preset.training.seed)
            try:
                lora_files.add_unet_adapter(pipeline.unet, lora)
                if self.train_text_encoders:
                    for _, encoder in self.text_encoders():
                        lora_files.add_text_encoder_adapter(encoder, lora)
            finally:
                torch.random.set_rng_state(state)
            if lora.init_weights:
                lora_files.load_init_weights(dict(self.lora_modules()), lora)
        pipeline.unet.train()

    # --- the loss -----------------------------------------------------------------

    def captions_of(self, batch, generator: torch.Generator) -> list[str]:
        """The micro-batch's captions, each dropped to '' with probability data.caption_dropout (never in a
        validation batch: one with fixed timesteps)."""
        if batch.captions is None:
            raise RuntimeError(f"{self.name} trains on captions, but the micro-batch carries none")
        if getattr(batch, "fixed_timesteps", None) is not None:
            return list(batch.captions)
        dropped = torch.rand(len(batch.captions), generator=generator) < self.preset.data.caption_dropout
        return ["" if drop else caption for caption, drop in zip(batch.captions, dropped.tolist())]

    def tokenize(self, tokenizer, captions: list[str], device) -> torch.Tensor:
        """Token ids (len(captions), model_max_length); each distinct caption is tokenized once per tokenizer."""
        cache = self._token_ids.setdefault(id(tokenizer), {})
        new = [caption for caption in dict.fromkeys(captions) if caption not in cache]
        if new:
            ids = tokenizer(new, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            cache.update(zip(new, ids))
        return torch.stack([cache[caption] for caption in captions]).to(device)

    def text_embeddings(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(encoder_hidden_states, pooled embeddings or None) of `captions`, as diffusers' train_text_to_image.

        Frozen encoders embed one caption at a time (or read `text_cache`, made the same way), so that
        training with data.cache_text_embeddings equals training without it to the last bit.
        """
        if self.train_text_encoders:
            with torch.enable_grad():
                return self.embed_texts(captions, device)
        if self.text_cache is not None:
            return self.text_cache.embeddings(captions, device)
        with torch.no_grad():
            parts = [self.embed_texts([caption], device) for caption in captions]
        hidden = torch.cat([part[0] for part in parts])
        pooled = None if parts[0][1] is None else torch.cat([part[1] for part in parts])
        return hidden, pooled

    def embed_texts(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text encoder's last hidden states of `captions`; no pooled embeddings for SD 1.x / 2.x."""
        ids = self.tokenize(self.pipeline.tokenizer, captions, device)
        return self.pipeline.text_encoder(ids, return_dict=False)[0], None

    def text_embedding_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one caption's `embed_texts` output: hidden states (tokens, width) [, pooled]."""
        return {"hidden": (self.pipeline.tokenizer.model_max_length, self.pipeline.text_encoder.config.hidden_size)}

    # --- for the caches ------------------------------------------------------------------

    def latent_cache_identity(self) -> str:
        from modules.data.caches import module_identity

        return module_identity([self.pipeline.vae])

    def latent_layout(self) -> tuple[int, int]:
        vae = self.pipeline.vae
        return int(vae.config.latent_channels), 2 ** (len(vae.config.block_out_channels) - 1)

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_pixels(pixels.to(self.pipeline.vae.encoder.conv_in.weight.device))

    def text_cache_identity(self) -> str:
        from modules.data.caches import module_identity, tokenizer_identity

        return module_identity([encoder for _, encoder in self.text_encoders()],
                               [tokenizer_identity(getattr(self.pipeline, name)) for name in self.TOKENIZERS])

    def embed_caption(self, caption: str, device) -> dict[str, torch.Tensor]:
        hidden, pooled = self.embed_texts([caption], device)
        return {"hidden": hidden[0]} if pooled is None else {"hidden": hidden[0], "pooled": pooled[0]}

    def use_text_cache(self, cache) -> None:
        self.text_cache = cache

    def encode(self, captions: list[str], batch, device):
        """(encoder_hidden_states, added_cond_kwargs) for the UNet."""
        return self.text_embeddings(captions, device)[0], None

    # --- parameters and weights -----------------------------------------------------

    def parameter_components(self):
        components = [("unet", [(name, parameter) for name, parameter in self.pipeline.unet.named_parameters()
                                if parameter.requires_grad])]
        if self.train_text_encoders:
            for name, encoder in self.text_encoders():
                components.append((name, [(parameter_name, parameter)
                                          for parameter_name, parameter in encoder.named_parameters()
                                          if parameter.requires_grad]))
        return components

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach().cpu().clone() for name, parameter in self.model.named_parameters()
                if parameter.requires_grad}

    def load_trainable_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        own = dict(self.model.named_parameters())
        expected = {name for name, parameter in own.items() if parameter.requires_grad}
        if set(weights) != expected:
            missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
            raise RuntimeError(f"trainable weights differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, value in weights.items():
                if own[name].shape != value.shape:
                    raise RuntimeError(f"{name}: shape {tuple(value.shape)} != {tuple(own[name].shape)}")
                own[name].copy_(value)

    @staticmethod
    def read_checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
        return checkpoints.load_safetensors(Path(folder) / paths.TRAINABLE_WEIGHTS_FILE)

    def save_checkpoint_weights(self, folder: Path) -> None:
        save_file({name: value.contiguous() for name, value in self.trainable_state_dict().items()},
                  Path(folder) / paths.TRAINABLE_WEIGHTS_FILE)

    def lora_modules(self) -> list[tuple[str, torch.nn.Module]]:
        """The modules that carry LoRA adapters: the UNet, and the text encoders where they train."""
        return [("unet", self.pipeline.unet)] + (self.text_encoders() if self.train_text_encoders else [])

    def single_file_layout(self):
        """The single-file layout of the model trained (its base model for LoRA metadata); see `single_file`."""
        return single_file.layout_of_pipeline(self.pipeline, self.model_type, self.noise_scheduler.config.prediction_type)

    def save_final_model(self, folder: Path) -> None:
        folder = Path(folder)
        if self.method == "lora":
            lora_files.save_lora(type(self.pipeline), folder, dict(self.lora_modules()), self.preset.lora,
                                 self.single_file_layout(),
                                 Path(self.preset.output.dir).resolve().name)
        else:
            self.pipeline.save_pretrained(folder, safe_serialization=True)
            if self.preset.output.single_file:
                single_file.save_pipeline(self.pipeline, folder / single_file.SINGLE_FILE_NAME, self.single_file_layout())
            single_file.make_readable(folder)

    # --- sampling and precision ----------------------------------------------------------

    def sample(self, seed: int):
        pipeline = self.pipeline
        modules = [pipeline.unet] + [encoder for _, encoder in self.text_encoders()]
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        try:
            with torch.no_grad(), self._offloaded_components_back():
                resolution = self.preset.model.resolution
                return pipeline(prompt=list(self.preset.output.sample_prompts), height=resolution, width=resolution,
                                num_inference_steps=SAMPLE_INFERENCE_STEPS,
                                generator=torch.Generator().manual_seed(seed), output_type="np").images
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)

    def cast_frozen_weights(self, dtype: torch.dtype) -> None:
        """Frozen weights in `dtype`, trained ones (adapters, fully trained modules) in fp32.

        The VAE stays fp32 with fp16 (the SDXL VAE overflows in fp16, as diffusers' SDXL scripts note).
        """
        for name, module in self.model.named_children():
            cast_weights(module.parameters(), torch.float32 if name == "vae" and dtype == torch.float16 else dtype)

    def _cached_components(self, preset) -> list[str]:
        """The components the caches replace: the VAE (latent cache), the frozen text encoders (text cache)."""
        names = ["vae"] if preset.data.cache_latents else []
        if preset.data.cache_text_embeddings and not self.train_text_encoders:
            names += list(self.TEXT_ENCODERS)
        return names

    def offloadable_state_names(self, preset) -> list[str]:
        return [f"{component}.{name}" for component in self._cached_components(preset)
                for name, _ in getattr(self.model, component).state_dict().items()]

    def offload_cached_components(self, preset, device) -> list[str]:
        moved = self._cached_components(preset)
        for name in moved:
            getattr(self.pipeline, name).to(device)
        self._offloaded = moved
        return moved

    @contextmanager
    def _offloaded_components_back(self):
        """The offloaded components on the UNet's device for a while (sampling), then off it again."""
        offloaded = self._offloaded
        device = self.pipeline.unet.conv_in.weight.device
        elsewhere = {name: getattr(self.pipeline, name).device for name in offloaded}
        for name in offloaded:
            getattr(self.pipeline, name).to(device)
        try:
            yield
        finally:
            for name, where in elsewhere.items():
                getattr(self.pipeline, name).to(where)
