"""Every registered family keeps the `Family` contract the training loop relies on (modules.families.base).

Parametrised over `modules.families.registry.FAMILIES` and the methods each supports, on its tiny
pipeline: a new family gets these tests by being registered.
"""

import pytest
import torch

from modules.errors import ConfigError
from modules.families.registry import FAMILIES, descriptor
from tests.families.conftest import build, family_preset, micro_batch
from tests.training_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(family.name, method) for family in FAMILIES for method in ("full", "lora")
         if method == "full" or family.supports_lora]


def named(name_method):
    return "-".join(name_method)


@pytest.fixture(params=CASES, ids=[named(case) for case in CASES])
def family(request, family_pipelines):
    name, method = request.param
    return build(family_preset(family_pipelines[name], name, method))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def test_the_registry_names_the_class_and_the_class_names_its_entry(family):
    entry = family.descriptor()
    assert entry.family_class() is type(family) and descriptor(family.model_type) is entry
    groups = [name for name, _ in family.parameter_components()]
    assert groups == ["unet", *entry.text_encoder_groups]  # the text encoders train: text_encoder_lr is set


def test_the_trainable_state_dict_round_trips(family):
    saved = family.trainable_state_dict()
    assert saved and all(value.device.type == "cpu" for value in saved.values())
    with torch.no_grad():
        for _, parameters in family.parameter_components():
            for _, parameter in parameters:
                parameter.add_(1.0)
    assert not all(torch.equal(saved[name], value) for name, value in family.trainable_state_dict().items())
    family.load_trainable_state_dict(saved)
    again = family.trainable_state_dict()
    assert set(again) == set(saved) and all(torch.equal(again[name], saved[name]) for name in saved)
    with pytest.raises(RuntimeError):
        family.load_trainable_state_dict({name: value for name, value in list(saved.items())[1:]})


def test_checkpoint_weights_are_read_back_equal(family, tmp_path):
    family.save_checkpoint_weights(tmp_path)
    read = type(family).read_checkpoint_weights(tmp_path)
    own = family.trainable_state_dict()
    assert set(read) == set(own) and all(torch.equal(read[name], own[name]) for name in own)


def test_one_optimizer_step_gives_a_finite_loss_and_changes_only_the_trained_weights(family):
    trained = {id(parameter) for _, parameters in family.parameter_components() for _, parameter in parameters}
    before = snapshot(family.model)
    parameters = dict(family.model.named_parameters())
    optimizer = torch.optim.SGD([parameters[name] for name in parameters if id(parameters[name]) in trained], lr=0.1)
    loss = family.model(micro_batch(family.model_type), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = snapshot(family.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    frozen = {name for name in before if not (name in parameters and id(parameters[name]) in trained)}
    assert changed and not (changed & frozen), sorted(changed & frozen)[:3]


@pytest.mark.parametrize("name", [family.name for family in FAMILIES if family.supports_lora])
def test_a_lora_target_typo_lists_the_closest_module_names(family_pipelines, name):
    preset = family_preset(family_pipelines[name], name, "lora", lora={"rank": 4, "target_modules": ["to_qq"]})
    with pytest.raises(ConfigError) as error:
        build(preset)
    message = str(error.value)
    assert error.value.key == "lora.target_modules" and "'to_qq' matches no module" in message
    closest = message.split("closest: ", 1)[1].rstrip(")").split(", ")
    assert closest[0] == "to_q" and len(closest) <= 5
