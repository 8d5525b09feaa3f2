"""The model families this program trains, and what each can do: one descriptor per family (no torch).

The configuration (`model.type`), the step plan (text-encoder groups), the
preview, the app, the data side (does it read captions) and the loop
(`modules.families.base.family_class`) ask here instead of naming families
themselves. A descriptor names its implementation by module and class, imported
only when a model is built, so importing this module costs nothing.

Adding a family is one new module under `modules/families/` (a `Family`
subclass, see `base`) plus one `FamilyDescriptor` in `FAMILIES`.
"""

from dataclasses import dataclass
from importlib import import_module

from modules.errors import ConfigError


@dataclass(frozen=True)
class FamilyDescriptor:
    name: str                                  # the `model.type` value
    pipeline_class: str                        # the diffusers pipeline class of its folders (and its final model)
    model_index_classes: tuple[str, ...]       # model_index.json `_class_name`s that `model.type: auto` maps here
    implementation: str                        # "module:Class" of its Family subclass, imported lazily
    has_vae: bool = False                      # trains on VAE latents: data.cache_latents applies
    text_encoder_groups: tuple[str, ...] = ()  # trainable text encoders, in optimizer order: captions are read
    supports_lora: bool = False                # training.method lora
    tiny_pipeline: str = "modules.families.tiny_pipelines:build_tiny_pipeline"  # (name, folder, seed) -> folder

    @property
    def takes_captions(self) -> bool:
        return bool(self.text_encoder_groups)

    def family_class(self):
        """The Family subclass (imports torch and diffusers)."""
        module, _, attribute = self.implementation.partition(":")
        return getattr(import_module(module), attribute)

    def build_tiny_pipeline(self, folder, seed: int = 0):
        """A tiny pipeline folder of this family with random weights from `seed`, for tests and the demo."""
        module, _, attribute = self.tiny_pipeline.partition(":")
        return getattr(import_module(module), attribute)(self.name, folder, seed=seed)


FAMILIES: tuple[FamilyDescriptor, ...] = (
    FamilyDescriptor(
        name="unet", pipeline_class="DDPMPipeline", model_index_classes=("DDPMPipeline",),
        implementation="modules.families.unet:UnetFamily"),
    FamilyDescriptor(
        name="stable_diffusion", pipeline_class="StableDiffusionPipeline",
        model_index_classes=("StableDiffusionPipeline",),
        implementation="modules.families.stable_diffusion:StableDiffusionFamily",
        has_vae=True, text_encoder_groups=("text_encoder",), supports_lora=True),
    FamilyDescriptor(
        name="stable_diffusion_xl", pipeline_class="StableDiffusionXLPipeline",
        model_index_classes=("StableDiffusionXLPipeline",),
        implementation="modules.families.stable_diffusion_xl:StableDiffusionXLFamily",
        has_vae=True, text_encoder_groups=("text_encoder", "text_encoder_2"), supports_lora=True),
)

FAMILY_NAMES: tuple[str, ...] = tuple(family.name for family in FAMILIES)
# A folder without model_index.json (a bare UNet folder) and the built-in model.config are this family.
DEFAULT_FAMILY = "unet"
_BY_NAME = {family.name: family for family in FAMILIES}
_BY_INDEX_CLASS = {class_name: family for family in FAMILIES for class_name in family.model_index_classes}


def descriptor(name: str) -> FamilyDescriptor:
    """The descriptor of family `name`; ConfigError (model.type) for an unknown one."""
    if name not in _BY_NAME:
        raise ConfigError(f"unknown model type {name!r} (allowed: {', '.join(FAMILY_NAMES)})", "model.type")
    return _BY_NAME[name]


def descriptor_of_index_class(class_name) -> FamilyDescriptor | None:
    """The family whose folders a model_index.json `_class_name` names, None when none does."""
    return _BY_INDEX_CLASS.get(class_name)


def known_index_classes() -> tuple[str, ...]:
    return tuple(_BY_INDEX_CLASS)
