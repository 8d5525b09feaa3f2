"""The families' shared loss pieces and the model-type seam (no training)."""

import json

import pytest
import torch
from diffusers import DDPMScheduler

from modules.config.preset import validate_preset
from modules.errors import ConfigError
from modules.families.model_types import resolve_model_type
from modules.families.base import family_class
from modules.families.losses import diffusion_loss, draw_noise


def test_noise_offset_adds_one_constant_per_sample_and_channel_to_the_same_draws():
    plain_noise, plain_timesteps = draw_noise((3, 4, 8, 8), 1000, torch.Generator().manual_seed(1))
    noise, timesteps = draw_noise((3, 4, 8, 8), 1000, torch.Generator().manual_seed(1), noise_offset=0.1)
    assert torch.equal(timesteps, plain_timesteps)
    offset = noise - plain_noise
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset), atol=1e-6)  # float rounding of a sum
    assert offset[:, :, 0, 0].abs().max() > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_is_min_snr_gamma_over_snr(prediction_type):
    """w(t) = min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), SNR = a / (1 - a) from alphas_cumprod."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([1, 100, 500, 999])
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3)).double()
    alphas = scheduler.alphas_cumprod[timesteps].double()
    snr = alphas / (1 - alphas)
    weights = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1 if prediction_type == "v_prediction" else snr)
    expected = float((per_sample * weights).mean())
    # float32 in the loss vs float64 here: measured relative difference below 1e-6.
    assert float(diffusion_loss(prediction, target, scheduler, timesteps, 5.0)) == pytest.approx(expected, rel=1e-5)
    plain = float(diffusion_loss(prediction, target, scheduler, timesteps, None))
    assert plain == pytest.approx(float(per_sample.mean()), rel=1e-5) and plain != pytest.approx(expected, rel=1e-3)


def test_model_type_auto_reads_model_index_and_picks_the_family(tmp_path):
    for class_name, model_type, family in [("StableDiffusionPipeline", "stable_diffusion", "StableDiffusionFamily"),
                                           ("StableDiffusionXLPipeline", "stable_diffusion_xl",
                                            "StableDiffusionXLFamily"),
                                           ("DDPMPipeline", "unet", "UnetFamily")]:
        folder = tmp_path / class_name
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
        preset = validate_preset({"model": {"path": str(folder)}})
        assert resolve_model_type(preset.model) == model_type and family_class(preset).__name__ == family
    assert family_class(validate_preset({})).__name__ == "UnetFamily"  # the built-in tiny UNet
    other = tmp_path / "sd3"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ConfigError, match="StableDiffusion3Pipeline"):
        resolve_model_type(validate_preset({"model": {"path": str(other)}}).model)


@pytest.mark.parametrize("raw, key", [
    ({"lora": {"rank": 0}, "training": {"method": "lora"}}, "lora.rank"),
    ({"lora": {"alpha": 8}}, "lora.alpha"),  # a LoRA option with training.method full
    ({"optimizer": {"text_encoder_stop_after": 10}}, "optimizer.text_encoder_stop_after"),
    ({"model": {"config": "tiny"}, "optimizer": {"text_encoder_lr": 1e-5}}, "optimizer.text_encoder_lr"),
    ({"model": {"config": "tiny"}, "training": {"method": "lora"}}, "training.method"),
    ({"model": {"config": "tiny", "type": "stable_diffusion"}}, "model.type"),
])
def test_text_to_image_keys_are_validated_with_the_key_named(raw, key):
    with pytest.raises(ConfigError) as error:
        validate_preset(raw)
    assert str(error.value).startswith(key) and "\n" not in str(error.value)


def test_a_text_to_image_option_with_a_missing_model_folder_names_the_folder(tmp_path, image_folder):
    """model.type auto cannot tell a pipeline from a UNet without the folder: say that, not 'a unet model'."""
    from modules.schedule.step_plan import build_step_plan

    missing = tmp_path / "no_such_pipeline"
    for extra in ({"optimizer": {"text_encoder_lr": 1e-5}}, {"training": {"method": "lora"}}):
        preset = validate_preset({"model": {"path": str(missing)}, "data": {"path": str(image_folder)}, **extra})
        with pytest.raises(ConfigError) as error:
            build_step_plan(preset)
        assert error.value.key == "model.path" and "does not exist" in str(error.value)
    with pytest.raises(ConfigError, match="a unet model has no text encoder"):
        validate_preset({"model": {"type": "unet", "path": str(missing)}, "optimizer": {"text_encoder_lr": 1e-5}})
