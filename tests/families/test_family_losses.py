"""What each family really passes to the shared loss: training.noise_offset, min_snr_gamma, per-sample loss weights.

Each test builds the family from a preset with the option set and compares its prediction and its loss
with the same draws (the same micro-batch generator) without it, so a family that ignores the option fails.
"""

import pytest
import torch
from safetensors import safe_open

from modules.families.lora import KOHYA_LORA_FILE
from modules.families.losses import min_snr_weights, per_sample_mse
from modules.families.registry import FAMILIES
from tests.families.conftest import build, family_preset, micro_batch
from tests.training_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [family.name for family in FAMILIES]
SEED = 5
GAMMA = 0.001  # below the SNR of the timesteps drawn, so the weights are not 1


def draws():
    return torch.Generator().manual_seed(SEED)


@pytest.mark.parametrize("name", NAMES)
def test_the_family_adds_training_noise_offset_to_its_noise(family_pipelines, name):
    plain = build(family_preset(family_pipelines[name], name))
    offset = build(family_preset(family_pipelines[name], name, training={"noise_offset": 0.5}))
    batch = micro_batch(name)
    with torch.no_grad():
        target = plain.predict(batch, draws()).target  # epsilon: the target is the noise
        shifted = offset.predict(batch, draws()).target
    difference = shifted - target
    constant = difference[:, :, :1, :1].expand_as(difference)
    assert torch.allclose(difference, constant, atol=1e-5)  # one constant per (sample, channel)
    assert difference.abs().max() > 0.01
    with torch.no_grad():
        assert float(offset.model(batch, draws())) != float(plain.model(batch, draws()))


@pytest.mark.parametrize("name", NAMES)
def test_the_family_weights_its_loss_by_min_snr_gamma(family_pipelines, name):
    family = build(family_preset(family_pipelines[name], name, training={"min_snr_gamma": GAMMA}))
    plain = build(family_preset(family_pipelines[name], name))
    batch = micro_batch(name)
    with torch.no_grad():
        loss = float(family.model(batch, draws()))
        prediction = family.predict(batch, draws())
        unweighted = float(plain.model(batch, draws()))
    per_sample = per_sample_mse(prediction.output, prediction.target)
    weights = min_snr_weights(prediction.noise_scheduler, prediction.timesteps, GAMMA)
    assert loss == pytest.approx(float((per_sample * weights).mean()), rel=1e-5)
    assert unweighted == pytest.approx(float(per_sample.mean()), rel=1e-5)
    assert loss != pytest.approx(unweighted, rel=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_each_samples_loss_is_multiplied_by_its_loss_weight(family_pipelines, name):
    family = build(family_preset(family_pipelines[name], name))
    with torch.no_grad():
        prediction = family.predict(micro_batch(name), draws())
        weighted = float(family.model(micro_batch(name, loss_weights=[3.0, 0.0]), draws()))
    per_sample = per_sample_mse(prediction.output, prediction.target)
    assert weighted == pytest.approx(float(3.0 * per_sample[0] / 2), rel=1e-5)


@pytest.mark.parametrize("name", [family.name for family in FAMILIES if family.supports_lora])
def test_the_kohya_file_records_lora_alpha_not_the_rank(family_pipelines, name, tmp_path):
    family = build(family_preset(family_pipelines[name], name, "lora", lora={"rank": 4, "alpha": 8}))
    family.save_final_model(tmp_path)
    with safe_open(str(tmp_path / KOHYA_LORA_FILE), framework="pt") as kohya:
        metadata = kohya.metadata()
        alphas = [kohya.get_tensor(key) for key in kohya.keys() if key.endswith(".alpha")]
    assert float(metadata["ss_network_alpha"]) == 8.0 and int(metadata["ss_network_dim"]) == 4
    assert alphas and all(float(alpha) == 8.0 for alpha in alphas)
