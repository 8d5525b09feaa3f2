"""LR features, second round (SPEC §13): LoRA+ (`lora.plus_ratio`) and regex groups inside a text encoder
(`optimizer.param_groups[].component`), in the preview, the CSV, TensorBoard and the LR each step really applies.

The training test runs a tiny SDXL LoRA (both text encoders) on CPU and reads, with an optimizer step
pre-hook, the LR of the param group each parameter sits in as every `optimizer.step()` begins.
"""

import re

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import modules.training.trainer as trainer_module
from modules.config.preset import load_preset, validate_preset
from modules.errors import ConfigError
from modules.schedule.lr_curve import read_lr_csv
from modules.schedule.preview import build_preview
from modules.training import train
from modules.training.optimizers import is_lora_b, param_groups
from tests.conftest import ROOT, make_images
from tests.training_helpers import one_thread, scalar_events  # noqa: F401

PER_BLOCK = ROOT / "training_presets" / "per_block_lr_demo.json"
PLUS_RATIO = 4.0
STOP = 3  # optimizer.text_encoder_stop_after, in optimizer steps
NAMED = [
    {"name": "te_query", "match": r"self_attn\.q_proj", "lr": 3e-3, "component": "text_encoder"},
    {"name": "down", "match": r"^down_blocks\.", "lr": 1e-2},
]
SDXL_GROUPS = ["te_query", "te_query_B", "down", "down_B", "unet", "unet_B", "text_encoder", "text_encoder_B",
               "text_encoder_2", "text_encoder_2_B"]


def sdxl_raw(tmp_path, model_path="unused", **sections) -> dict:
    raw = {
        "model": {"type": "stable_diffusion_xl", "path": str(model_path), "resolution": 16},
        "training": {"method": "lora", "epochs": 2, "gradient_accumulation_steps": 2, "device": "cpu", "seed": 5},
        "lora": {"rank": 4, "alpha": 4, "plus_ratio": PLUS_RATIO},
        "optimizer": {"type": "adamw", "lr": 2e-2, "text_encoder_lr": 1e-2, "text_encoder_stop_after": STOP,
                      "param_groups": NAMED},
        "scheduler": {"type": "cosine", "warmup": 1},
        "output": {"dir": str(tmp_path / "out"), "checkpoint_every": None},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


# --- the plan: names, order, ratios, stops (no torch) --------------------------------------------------------


def test_the_preview_lists_each_group_then_its_b_group_at_the_ratio_with_the_same_stop(tmp_path):
    preview = build_preview(validate_preset(sdxl_raw(tmp_path)), num_images=5)
    curve = preview.curve
    assert list(curve.group_names) == SDXL_GROUPS
    table = curve.effective_table()
    for index in range(0, len(SDXL_GROUPS), 2):
        np.testing.assert_allclose(table[:, index + 1], PLUS_RATIO * table[:, index], rtol=1e-15, atol=0)
    column = {name: table[:, index] for index, name in enumerate(SDXL_GROUPS)}
    for name in ("te_query", "te_query_B", "text_encoder", "text_encoder_2_B"):  # the text encoders' stop
        assert (column[name][STOP:] == 0).all() and (column[name][1:STOP] > 0).all(), name
    for name in ("down", "down_B", "unet", "unet_B"):
        assert (column[name][1:] > 0).all(), name
    assert column["down"][1] == pytest.approx(1e-2) and column["unet_B"][1] == pytest.approx(PLUS_RATIO * 2e-2)
    assert curve.csv_header == "step," + ",".join(f"lr/{name}" for name in SDXL_GROUPS)
    assert any(line.startswith("  lr/down_B ") for line in preview.report_lines())


def test_without_lora_plus_or_in_full_training_there_are_no_b_groups(tmp_path):
    raw = sdxl_raw(tmp_path, lora={"plus_ratio": None})
    names = build_preview(validate_preset(raw), num_images=5).curve.group_names
    assert list(names) == [name for name in SDXL_GROUPS if not name.endswith("_B")]


@pytest.mark.parametrize("optimizer_type", ["prodigy", "dadapt_adam"])
def test_lora_plus_is_refused_with_an_optimizer_of_one_lr(tmp_path, optimizer_type):
    raw = sdxl_raw(tmp_path, optimizer={"type": optimizer_type, "lr": 1.0, "text_encoder_lr": 1.0,
                                        "text_encoder_stop_after": None, "param_groups": []})
    with pytest.raises(ConfigError) as error:
        validate_preset(raw)
    assert error.value.key == "lora.plus_ratio" and optimizer_type in str(error.value)


@pytest.mark.parametrize("change, key, words", [
    ({"training": {"method": "full"}, "lora": {"rank": 16, "alpha": None}}, "lora.plus_ratio", "LoRA option"),
    ({"lora": {"plus_ratio": 0}}, "lora.plus_ratio", "greater than 0"),
    ({"optimizer": {"text_encoder_lr": None, "text_encoder_stop_after": None}},
     "optimizer.param_groups.0.component", "text_encoder_lr"),
    ({"optimizer": {"param_groups": [{**NAMED[0], "component": "vae"}]}}, "optimizer.param_groups.0.component",
     "must be one of"),
    ({"optimizer": {"param_groups": [{**NAMED[0], "name": "text_encoder_2"}]}}, "optimizer.param_groups",
     "reserved"),
])
def test_bad_lora_plus_and_component_settings_name_their_key(tmp_path, change, key, words):
    raw = sdxl_raw(tmp_path)
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ConfigError) as error:
        validate_preset(raw)
    assert error.value.key == key and words in str(error.value)


def test_a_component_the_model_does_not_train_and_a_name_taken_twice_are_plan_errors(tmp_path):
    raw = sdxl_raw(tmp_path, model={"type": "stable_diffusion"},
                   optimizer={"param_groups": [{**NAMED[0], "component": "text_encoder_2"}]})
    with pytest.raises(ConfigError) as error:
        build_preview(validate_preset(raw), num_images=5)
    assert error.value.key == "optimizer.param_groups.0.component" and "text_encoder_2" in str(error.value)
    raw = sdxl_raw(tmp_path, optimizer={"param_groups": [NAMED[1], {**NAMED[1], "name": "down_B"}]})
    with pytest.raises(ConfigError) as error:
        build_preview(validate_preset(raw), num_images=5)
    assert error.value.key == "optimizer.param_groups" and "'down_B'" in str(error.value)


# --- the optimizer's groups (torch, no model) ---------------------------------------------------------------


def fake_components():
    def parameters(*names):
        return [(name, torch.nn.Parameter(torch.zeros(1))) for name in names]

    return [
        ("unet", parameters("down_blocks.0.attn.to_q.lora_A.default.weight",
                            "down_blocks.0.attn.to_q.lora_B.default.weight",
                            "up_blocks.0.attn.to_q.lora_A.default.weight",
                            "up_blocks.0.attn.to_q.lora_B.default.weight")),
        ("text_encoder", parameters("text_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight",
                                    "text_model.encoder.layers.0.self_attn.q_proj.lora_B.default.weight",
                                    "text_model.encoder.layers.0.self_attn.v_proj.lora_A.default.weight",
                                    "text_model.encoder.layers.0.self_attn.v_proj.lora_B.default.weight")),
        ("text_encoder_2", parameters("text_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight",
                                      "text_model.encoder.layers.0.self_attn.q_proj.lora_B.default.weight")),
    ]


def test_lora_b_matrices_join_their_groups_b_group_and_regex_groups_search_their_component(tmp_path):
    preset = validate_preset(sdxl_raw(tmp_path))
    components = fake_components()
    names = {id(parameter): f"{component}.{name}" for component, listed in components for name, parameter in listed}
    curve = build_preview(preset, num_images=5).curve
    groups = param_groups(None, preset.optimizer, components, (curve.group_names, curve.base_lrs), PLUS_RATIO)
    members = {group["name"]: [names[id(parameter)] for parameter in group["params"]] for group in groups}
    prefix = "text_model.encoder.layers.0.self_attn"
    assert members == {
        "te_query": [f"text_encoder.{prefix}.q_proj.lora_A.default.weight"],
        "te_query_B": [f"text_encoder.{prefix}.q_proj.lora_B.default.weight"],
        "down": ["unet.down_blocks.0.attn.to_q.lora_A.default.weight"],
        "down_B": ["unet.down_blocks.0.attn.to_q.lora_B.default.weight"],
        "unet": ["unet.up_blocks.0.attn.to_q.lora_A.default.weight"],
        "unet_B": ["unet.up_blocks.0.attn.to_q.lora_B.default.weight"],
        "text_encoder": [f"text_encoder.{prefix}.v_proj.lora_A.default.weight"],
        "text_encoder_B": [f"text_encoder.{prefix}.v_proj.lora_B.default.weight"],
        # the text_encoder group's match searches the first text encoder only
        "text_encoder_2": [f"text_encoder_2.{prefix}.q_proj.lora_A.default.weight"],
        "text_encoder_2_B": [f"text_encoder_2.{prefix}.q_proj.lora_B.default.weight"],
    }
    assert [group["lr"] for group in groups] == list(curve.base_lrs)
    assert is_lora_b("a.lora_B.default.weight") and not is_lora_b("a.lora_A.default.weight")
    assert not is_lora_b("a.lora_Bias.weight")


def test_a_group_left_without_lora_b_matrices_is_an_error(tmp_path):
    raw = sdxl_raw(tmp_path, optimizer={"param_groups": [{"name": "down_a", "match": r"down_blocks.*lora_A",
                                                          "lr": 1e-2}]})
    preset = validate_preset(raw)
    curve = build_preview(preset, num_images=5).curve
    with pytest.raises(ConfigError) as error:
        param_groups(None, preset.optimizer, fake_components(), (curve.group_names, curve.base_lrs), PLUS_RATIO)
    assert error.value.key == "lora.plus_ratio" and "'down_a_B'" in str(error.value)


# --- real training: the LR each step applies -----------------------------------------------------------------


class AppliedLrs:
    """Per optimizer step: the lr of the param group each parameter (by id) sits in, read as step() begins;
    and copies of the watched parameters after each step()."""

    def __init__(self):
        self.steps: list[dict[int, float]] = []
        self.watched: list[torch.nn.Parameter] = []
        self.after: list[list[torch.Tensor]] = []

    def __enter__(self):
        self.handles = [register_optimizer_step_pre_hook(self._before), register_optimizer_step_post_hook(self._after)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _before(self, optimizer, args, kwargs):
        self.steps.append({id(parameter): float(group["lr"]) for group in optimizer.param_groups
                           for parameter in group["params"]})

    def _after(self, optimizer, args, kwargs):
        self.after.append([parameter.detach().clone() for parameter in self.watched])


def record_parameter_names(monkeypatch, recorder: AppliedLrs, watched_component: str = "",
                           watched_match: str = "") -> dict[int, tuple[str, str]]:
    """id(parameter) -> (component, parameter name), as the family hands them to the trainer's optimizer;
    the parameters of `watched_component` whose name `watched_match` is found in join `recorder.watched`."""
    named: dict[int, tuple[str, str]] = {}
    real_build = trainer_module.build_optimizer

    def recording_build(model, preset, warmup_steps, components=None, groups=None):
        for component, listed in components:
            for name, parameter in listed:
                named[id(parameter)] = (component, name)
                if component == watched_component and re.search(watched_match, name):
                    recorder.watched.append(parameter)
        return real_build(model, preset, warmup_steps, components, groups)

    monkeypatch.setattr(trainer_module, "build_optimizer", recording_build)
    return named


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_lora_b_matrices_and_a_text_encoder_group_train_at_their_planned_lr_every_step(tmp_path, monkeypatch):
    from modules.families.tiny_pipelines import build_tiny_pipeline

    pipeline = build_tiny_pipeline("stable_diffusion_xl", tmp_path / "sdxl")
    images = make_images(tmp_path / "images", 5, size=20)
    for image in images.glob("*.png"):
        image.with_suffix(".txt").write_text("a photo of the thing", encoding="utf-8")
    preset = validate_preset(sdxl_raw(tmp_path, pipeline, data={"path": str(images)}))
    curve = build_preview(preset).curve
    column = {name: index for index, name in enumerate(curve.group_names)}
    recorder = AppliedLrs()
    named = record_parameter_names(monkeypatch, recorder, "text_encoder", NAMED[0]["match"])
    with recorder:
        result = train(preset, progress_bar=False, log=lambda message: None)

    assert result.finished and len(recorder.steps) == curve.plan.total_steps == 6
    lora_b = [key for key, (_, name) in named.items() if ".lora_B." in name]  # peft's names, not the code's test
    assert len(lora_b) * 2 == len(named) and recorder.watched
    for step, applied in enumerate(recorder.steps):
        planned = curve.applied_lrs(step)
        for key, (component, name) in named.items():
            group = next((group["name"] for group in NAMED if group.get("component", "unet") == component
                          and re.search(group["match"], name)), component)
            expected = planned[column[group]] * (PLUS_RATIO if key in lora_b else 1.0)
            assert applied[key] == pytest.approx(expected, rel=1e-12, abs=0), (step, component, name)
        if step >= STOP:  # the text-encoder regex group, lora_B included, stops with the text encoders
            assert all(applied[id(parameter)] == 0 for parameter in recorder.watched)
        elif step:
            assert all(applied[id(parameter)] > 0 for parameter in recorder.watched)
    # ... and its weights really stop moving there (AdamW at lr 0, no weight decay)
    assert all(torch.equal(a, b) for a, b in zip(recorder.after[STOP - 1], recorder.after[-1]))
    assert not all(torch.equal(a, b) for a, b in zip(recorder.after[0], recorder.after[STOP - 1]))

    names, csv_table = read_lr_csv(tmp_path / "out" / "lr_plan.csv")
    assert names == SDXL_GROUPS
    np.testing.assert_array_equal(csv_table, curve.effective_table())
    events = scalar_events(tmp_path / "out")
    for index, name in enumerate(SDXL_GROUPS):
        steps, values = zip(*events[f"lr/{name}"])
        assert list(steps) == list(range(6))
        np.testing.assert_allclose(values, csv_table[:, index], rtol=1e-6, atol=0)  # TensorBoard keeps float32


# --- the documented per-block example -------------------------------------------------------------------------


def test_the_per_block_example_gives_down_mid_and_up_blocks_their_own_lr():
    preset = load_preset(PER_BLOCK)
    assert [(group.name, group.match) for group in preset.optimizer.param_groups] == [
        ("down_blocks", r"^down_blocks\."), ("mid_block", r"^mid_block\."), ("up_blocks", r"^up_blocks\.")]
    curve = build_preview(preset).curve
    assert curve.group_names == ("down_blocks", "mid_block", "up_blocks", "unet")
    peaks = curve.effective_table().max(axis=0)
    np.testing.assert_allclose(peaks, [2.5e-4, 5e-4, 1e-3, 1e-3], rtol=1e-12)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_per_block_example_trains_each_block_at_its_lr(tmp_path, monkeypatch):
    from modules.families.tiny_pipelines import build_tiny_pipeline

    pipeline = build_tiny_pipeline("stable_diffusion", tmp_path / "sd")
    preset = load_preset(PER_BLOCK, [f"model.path={pipeline}", f"output.dir={tmp_path / 'out'}", "model.resolution=16",
                                     "training.max_steps=4", f"data.path={ROOT / 'training_presets' / 'text_to_image_images'}"])
    curve = build_preview(preset).curve
    recorder = AppliedLrs()
    named = record_parameter_names(monkeypatch, recorder)
    with recorder:
        assert train(preset, progress_bar=False, log=lambda message: None).finished
    blocks = {"down_blocks": 0, "mid_block": 0, "up_blocks": 0}
    for step, applied in enumerate(recorder.steps):
        planned = dict(zip(curve.group_names, curve.applied_lrs(step)))
        for key, (component, name) in named.items():
            block = name.split(".")[0]
            assert component == "unet" and block in blocks, name  # LoRA on attention layers: all in the blocks
            assert applied[key] == planned[block], (step, name)
            blocks[block] += 1
    assert all(blocks.values()) and len(recorder.steps) == 4
