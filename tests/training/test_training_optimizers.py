"""modules.training.optimizers: param groups by regex, and the schedule-free eval switch."""

import pytest
import torch

from modules.errors import ConfigError
from modules.families.unet_models import tiny_unet
from modules.training.optimizers import build_optimizer, param_groups, schedule_free_eval
from tests.training_helpers import tiny_preset


def test_a_parameter_joins_the_first_matching_group_and_the_rest_form_unet(tmp_path):
    preset = tiny_preset(tmp_path, optimizer={"param_groups": [
        {"name": "attention", "match": "attentions", "lr": 5e-4},
        {"name": "norms", "match": "norm", "lr": 2e-4},
    ]})
    model = tiny_unet(8)
    groups = param_groups(model, preset.optimizer)
    assert [group["name"] for group in groups] == ["attention", "norms", "unet"]
    assert [group["lr"] for group in groups] == [5e-4, 2e-4, 1e-3]
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    members = {group["name"]: [names[id(parameter)] for parameter in group["params"]] for group in groups}
    assert members["attention"] and all("attentions" in name for name in members["attention"])
    # "down_blocks.1.attentions.0.group_norm.weight" matches both; the first group wins.
    assert "down_blocks.1.attentions.0.group_norm.weight" in members["attention"]
    assert all("norm" in name and "attentions" not in name for name in members["norms"])
    assert sum(len(value) for value in members.values()) == len(list(model.parameters()))


def test_a_group_that_matches_nothing_is_an_error_naming_it(tmp_path):
    preset = tiny_preset(tmp_path, optimizer={"param_groups": [{"name": "text", "match": "text_encoder", "lr": 1e-5}]})
    with pytest.raises(ConfigError) as error:
        build_optimizer(tiny_unet(8), preset, warmup_steps=0)
    assert error.value.key == "optimizer.param_groups.0.match" and "'text'" in str(error.value)


@pytest.mark.parametrize("optimizer_type", ["adamw_schedule_free", "radam_schedule_free"])
def test_schedule_free_eval_switches_weights_and_restores_them_exactly(tmp_path, optimizer_type):
    preset = tiny_preset(tmp_path, optimizer={"type": optimizer_type},
                         scheduler={"type": "constant", "warmup": 0})
    torch.manual_seed(0)
    model = tiny_unet(8)
    optimizer = build_optimizer(model, preset, warmup_steps=0)
    assert optimizer.param_groups[0]["train_mode"]
    for _ in range(8):  # RAdam's first steps have a zero rectified LR
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 500])).sample.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    train_weights = [parameter.detach().clone() for parameter in model.parameters()]

    with schedule_free_eval(optimizer, model):
        assert not optimizer.param_groups[0]["train_mode"] and not model.training
        eval_weights = [parameter.detach().clone() for parameter in model.parameters()]

    assert optimizer.param_groups[0]["train_mode"] and model.training
    assert any(not torch.equal(a, b) for a, b in zip(train_weights, eval_weights))
    assert all(torch.equal(a, b) for a, b in zip(train_weights, model.parameters()))


def test_other_optimizers_pass_through_the_eval_switch(tmp_path):
    model = tiny_unet(8)
    optimizer = build_optimizer(model, tiny_preset(tmp_path), warmup_steps=0)
    with schedule_free_eval(optimizer, model):
        assert model.training  # nothing to switch for AdamW
