"""SPEC §11 in training: the validation loss changes nothing and repeats itself; the EMA is diffusers'
EMAModel with the contract's d_j, resumes exactly and is what the final model holds (CPU, tiny UNet)."""

import torch
from safetensors.torch import load_file

import pytest

from modules.errors import ConfigError
from modules.schedule.ema_decay import ema_decays
from modules.training import train
from modules.training.checkpoints import load_checkpoint, newest_checkpoint
from modules.training.ema import EmaPart
from tests.training_helpers import assert_same_weights, final_weights, one_thread, scalar_events, tiny_preset  # noqa: F401

pytestmark = [pytest.mark.usefixtures("one_thread")]

VALIDATION = {"validate_every": 2, "validation_timesteps": [50, 500, 950]}


def quiet(preset, **kwargs):
    return train(preset, progress_bar=False, log=lambda message: None, **kwargs)


def split_preset(tmp_path, out: str, output=None, training=None):
    """9 images, 30% held out by content; the tiny UNet trains 2 epochs (flip and LoRA-free)."""
    return tiny_preset(tmp_path, images=9, out=out, data={"validation_split": 0.3},
                       output={**(output or {})}, training={"epochs": 2, **(training or {})})


@pytest.mark.slow
@pytest.mark.parametrize("ema", [False, True])
def test_a_run_with_validation_trains_exactly_the_weights_of_the_run_without(tmp_path, ema):
    training = {"ema": ema, "ema_decay": 0.9}
    plain = split_preset(tmp_path, "plain", training=training)
    validated = split_preset(tmp_path, "validated", output=VALIDATION, training=training)
    quiet(plain), quiet(validated)
    assert_same_weights(final_weights(plain.output.dir), final_weights(validated.output.dir))
    plain_events, validated_events = scalar_events(plain.output.dir), scalar_events(validated.output.dir)
    assert plain_events["loss/train"] == validated_events["loss/train"]
    assert "loss/validation" not in plain_events


@pytest.mark.slow
def test_validation_is_logged_at_every_multiple_and_the_last_step_per_concept_and_non_ema(tmp_path):
    preset = split_preset(tmp_path, "out", output={**VALIDATION, "validate_every": 3},
                          training={"ema": True, "ema_decay": 0.9})
    reports = []
    result = quiet(preset, on_step=reports.append)
    total = result.total_steps
    expected = [step - 1 for step in range(3, total + 1, 3)] + ([total - 1] if total % 3 else [])
    events = scalar_events(preset.output.dir)
    concept = "images_9"
    for tag in ("loss/validation", f"loss/validation/{concept}", "loss/validation/non_ema"):
        assert [step for step, _ in events[tag]] == expected, tag
    # One concept: its mean is the whole mean; the EMA weights are not the trained ones.
    assert [value for _, value in events["loss/validation"]] == [value for _, value in
                                                                 events[f"loss/validation/{concept}"]]
    assert events["loss/validation"] != events["loss/validation/non_ema"]
    logged = {report.step: report.validation for report in reports if report.validation is not None}
    assert sorted(logged) == expected
    assert [pytest.approx(logged[step]["loss/validation"], rel=1e-6) for step in expected] == \
        [value for _, value in events["loss/validation"]]
    steps, decays = ema_decays(total, 0.9, 1)
    assert [step for step, _ in events["ema/decay"]] == list(steps)
    assert [value for _, value in events["ema/decay"]] == pytest.approx(list(decays), rel=1e-6)


@pytest.mark.slow
def test_a_resumed_run_logs_the_same_validation_and_ends_with_the_same_ema(tmp_path):
    training = {"ema": True, "ema_decay": 0.8, "ema_update_every": 2, "epochs": 3}
    straight = split_preset(tmp_path, "straight", output=VALIDATION, training=training)
    stopped = split_preset(tmp_path, "stopped", output=VALIDATION, training=training)
    quiet(straight)
    reports = []
    quiet(stopped, on_step=reports.append, should_stop=lambda: len(reports) >= 5)
    assert newest_checkpoint(stopped.output.dir).name == "step-00000005"
    quiet(stopped, resume=True)
    assert_same_weights(final_weights(straight.output.dir), final_weights(stopped.output.dir))
    straight_events, resumed_events = scalar_events(straight.output.dir), scalar_events(stopped.output.dir)
    for tag in ("loss/validation", "loss/validation/non_ema", "ema/decay"):
        assert resumed_events[tag] == straight_events[tag], tag


@pytest.mark.slow
def test_the_final_model_holds_the_ema_and_the_checkpoint_the_trained_weights(tmp_path):
    preset = split_preset(tmp_path, "out", output={"checkpoint_every": "1 epochs"},
                          training={"ema": True, "ema_decay": 0.9})
    quiet(preset)
    last = newest_checkpoint(preset.output.dir)
    loaded = load_checkpoint(last, rank=0)
    shadows = loaded.optimizer["ema"]["shadow_params"]
    final = final_weights(preset.output.dir)
    trained = load_file(last / "unet" / "diffusion_pytorch_model.safetensors")
    from modules.families.base import build_family
    from modules.schedule.step_plan import build_step_plan

    family = build_family(preset, build_step_plan(preset))
    names = [name for _, named in family.parameter_components() for name, _ in named]
    assert len(names) == len(shadows) and loaded.optimizer["ema"]["optimization_step"] == loaded.state.global_step
    assert all(torch.equal(final[name], shadow) for name, shadow in zip(names, shadows))
    assert any(not torch.equal(final[name], trained[name]) for name in names)


def test_ema_updates_follow_the_contract_from_the_first_update():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EmaPart([weight], decay=0.5, update_every=2)
    expected = weight.detach().clone()
    updates = 0
    for step in range(1, 9):
        with torch.no_grad():
            weight.add_(torch.tensor([0.25 * step, -0.5]))
        decay = ema.after_step(step)
        if step % 2:
            assert decay is None
            continue
        updates += 1
        d = min(0.5, updates / (9 + updates))
        assert decay == d
        expected = expected - (1 - d) * (expected - weight.detach())
        assert torch.allclose(ema.model.shadow_params[0], expected, rtol=0, atol=1e-6)
    trained = weight.detach().clone()
    with ema.applied():
        assert torch.equal(weight.detach(), ema.model.shadow_params[0])
    assert torch.equal(weight.detach(), trained)


def test_validate_every_without_validation_images_and_ema_with_schedule_free_are_refused(tmp_path):
    from modules.schedule.step_plan import build_step_plan

    preset = tiny_preset(tmp_path, output={"validate_every": 2})
    with pytest.raises(ConfigError) as error:
        build_step_plan(preset)
    assert error.value.key == "output.validate_every" and "validation_split" in str(error.value)
    with pytest.raises(ConfigError) as error:
        tiny_preset(tmp_path, training={"ema": True}, optimizer={"type": "adamw_schedule_free", "param_groups": []},
                    scheduler={"type": "constant", "warmup": 0})
    assert error.value.key == "training.ema"


def test_the_same_weights_give_the_same_validation_loss_whatever_the_global_rng(tmp_path):
    from modules.families.base import build_family
    from modules.schedule.step_plan import build_step_plan
    from modules.training.trainer import make_accelerator
    from modules.training.validation import build_validation_set, evaluate

    preset = split_preset(tmp_path, "out", output=VALIDATION)  # data.flip is on: validation never flips
    plan = build_step_plan(preset)
    family = build_family(preset, plan)
    accelerator = make_accelerator(preset)
    validation = build_validation_set(preset, plan, family, 0, 1)
    held_out = sum(row.held_out for row in plan.concepts)
    assert len(validation.images) == held_out == plan.validation_images >= 1
    assert not any(image.spec.flip for image in validation.images)
    validation.prepare(family, accelerator)
    table = validation.loss_table(accelerator, family.model.eval())  # eval mode, as `evaluate` takes it
    family.model.train()
    assert tuple(table.shape) == (held_out, 3) and bool((table > 0).all())
    first = evaluate(validation, accelerator, family.model)
    torch.manual_seed(1234), torch.rand(100)
    assert evaluate(validation, accelerator, family.model) == first
    assert first["loss/validation"] == pytest.approx(float(table.mean()), rel=1e-12)
    assert family.model.training


@pytest.mark.slow
def test_a_final_model_written_again_from_the_last_checkpoint_holds_the_ema(tmp_path):
    import shutil

    preset = split_preset(tmp_path, "out", training={"ema": True, "ema_decay": 0.9})
    quiet(preset)
    written = final_weights(preset.output.dir)
    shutil.rmtree(tmp_path / "out" / "model")
    assert quiet(preset, resume=True).finished
    assert_same_weights(final_weights(preset.output.dir), written)


@pytest.mark.slow
def test_schedule_free_validation_scores_the_eval_weights_the_final_model_holds_and_changes_no_weight(tmp_path):
    from modules.families.base import build_family
    from modules.schedule.step_plan import build_step_plan
    from modules.training.trainer import make_accelerator
    from modules.training.validation import build_validation_set, evaluate

    common = {"optimizer": {"type": "adamw_schedule_free", "param_groups": []},
              "scheduler": {"type": "constant", "warmup": 2}, "data": {"validation_split": 0.3}}
    plain = tiny_preset(tmp_path, images=9, out="plain", **common)
    validated = tiny_preset(tmp_path, images=9, out="validated", output=VALIDATION, **common)
    quiet(plain), quiet(validated)
    assert_same_weights(final_weights(plain.output.dir), final_weights(validated.output.dir))

    plan = build_step_plan(validated)
    family = build_family(validated, plan)
    family.load_trainable_state_dict(final_weights(validated.output.dir))  # the eval-mode (averaged) weights
    validation = build_validation_set(validated, plan, family, 0, 1)
    accelerator = make_accelerator(validated)
    validation.prepare(family, accelerator)
    logged = scalar_events(validated.output.dir)["loss/validation"][-1][1]
    assert evaluate(validation, accelerator, family.model)["loss/validation"] == pytest.approx(logged, rel=1e-6)
