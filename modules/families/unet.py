"""The `unet` family: an unconditional diffusers UNet2DModel trained as DDPM (see `modules.families.unet_models`).

- Load/build: `model.config: "tiny"` (initialised from training.seed) or a
  DDPMPipeline / bare UNet folder at `model.path`; the noise scheduler from
  the folder, else `DDPMScheduler(1000)`; prediction type epsilon or v_prediction.
- Loss of a micro-batch: noise and timesteps from its generator, MSE against
  the noise (epsilon) or the velocity (v_prediction), optionally weighted by
  min-SNR (`training.min_snr_gamma`, diffusers' compute_snr), with
  `training.noise_offset`.
- Trainable: the whole UNet, one component `unet`.
- Checkpoint weights: `unet/` (save_pretrained). Final model: a DDPMPipeline
  folder (`unet/`, `scheduler/` with the prediction type, model_index.json)
  that `DDPMPipeline.from_pretrained(output.dir/model)` loads.
- Samples: `SAMPLE_COUNT` unconditional images from a fixed seed.
"""

from pathlib import Path

import torch

from modules.training import checkpoints, paths
from modules.families.base import Family
from modules.families.losses import LossModule, Prediction, draw_noise
from modules.families.unet_models import build_model, build_noise_scheduler, size_multiple, training_target

SAMPLE_COUNT = 4
SAMPLE_INFERENCE_STEPS = 20


class UnetLossModel(LossModule):
    """forward(micro_batch, generator) -> the DDPM loss of that micro-batch (`predict` + the shared loss)."""

    def __init__(self, unet, noise_scheduler, training_section):
        super().__init__()
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.min_snr_gamma = training_section.min_snr_gamma
        self.noise_offset = training_section.noise_offset

    def predict(self, batch, generator: torch.Generator) -> Prediction:
        device = self.unet.device
        clean = batch.pixels
        noise, timesteps = draw_noise(clean.shape, self.noise_scheduler.config.num_train_timesteps, generator,
                                      self.noise_offset, getattr(batch, "fixed_timesteps", None))
        clean, noise, timesteps = clean.to(device), noise.to(device), timesteps.to(device)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        target = training_target(self.noise_scheduler, clean, noise, timesteps)
        return Prediction(self.unet(noisy, timesteps).sample, target, timesteps, self.noise_scheduler)


class UnetFamily(Family):
    name = "UNet2DModel"
    model_type = "unet"

    def __init__(self, preset, plan):
        self.preset = preset
        self.unet = build_model(preset)
        self.noise_scheduler = build_noise_scheduler(preset)
        self.model = UnetLossModel(self.unet, self.noise_scheduler, preset.training)

    def size_multiple(self) -> int | None:
        return size_multiple(self.unet)

    @staticmethod
    def read_checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
        return checkpoints.load_weights(folder)

    def parameter_components(self):
        return [("unet", [(name, parameter) for name, parameter in self.unet.named_parameters()
                          if parameter.requires_grad])]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu().clone() for name, value in self.unet.state_dict().items()}

    def load_trainable_state_dict(self, weights) -> None:
        self.unet.load_state_dict(weights)

    def save_checkpoint_weights(self, folder: Path) -> None:
        self.unet.save_pretrained(Path(folder) / paths.UNET_DIR, safe_serialization=True)

    def save_final_model(self, folder: Path) -> None:
        from diffusers import DDPMPipeline, DDPMScheduler

        pipeline = DDPMPipeline(unet=self.unet, scheduler=DDPMScheduler.from_config(self.noise_scheduler.config))
        pipeline.save_pretrained(folder, safe_serialization=True)

    def sample(self, seed: int):
        from diffusers import DDPMPipeline, DDPMScheduler

        was_training = self.unet.training
        self.unet.eval()
        try:
            pipeline = DDPMPipeline(unet=self.unet, scheduler=DDPMScheduler.from_config(self.noise_scheduler.config))
            pipeline.set_progress_bar_config(disable=True)
            with torch.no_grad():
                return pipeline(batch_size=SAMPLE_COUNT, generator=torch.Generator().manual_seed(seed),
                                num_inference_steps=SAMPLE_INFERENCE_STEPS, output_type="np").images
        finally:
            self.unet.train(was_training)
