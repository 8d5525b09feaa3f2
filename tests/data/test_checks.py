"""The plan's dataset checks (modules/data/checks.py): the step plan training builds refuses what the
preview refuses (the preview's side is tested through the command in tests/schedule/test_preview_cli.py)."""

import json

import pytest

from modules.config.preset import validate_preset
from modules.data.checks import check_dataset
from modules.errors import ConfigError
from modules.schedule.step_plan import build_step_plan
from tests.conftest import make_images


def plan_error(raw) -> ConfigError:
    """The error of the plan the trainer builds (`build_step_plan(preset)`, which lists the dataset)."""
    with pytest.raises(ConfigError) as raised:
        build_step_plan(validate_preset(raw))
    return raised.value


def text_to_image(tmp_path, images):
    model = tmp_path / "sd_model"
    model.mkdir(exist_ok=True)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return {"model": {"path": str(model)}, "data": {"path": str(images)}, "output": {"dir": str(tmp_path / "out")}}


def test_the_trainers_plan_refuses_what_the_preview_refuses(tmp_path):
    images = make_images(tmp_path / "images", 3, size=8)
    base = {"data": {"path": str(images)}, "output": {"dir": str(tmp_path / "out")}}
    assert plan_error({**base, "optimizer": {"type": "adamw_8bit"}, "training": {"device": "cpu"}}).key \
        == "optimizer.type"
    assert plan_error({**base, "output": {"dir": str(images / "run")}}).key == "output.dir"
    assert plan_error({**base, "data": {"path": str(images), "cache_dir": str(images / "c")}}).key == "data.cache_dir"
    (images / "image_0002.png").write_bytes(b"")
    error = plan_error(base)
    assert error.key == "data.path" and "image_0002.png" in str(error)


def test_captions_are_checked_only_for_text_to_image_models(tmp_path):
    images = make_images(tmp_path / "images", 3, size=8)
    (images / "image_0000.txt").write_bytes(b"caf\xe9")
    # resolution 8: the images' own size (a smaller one is a warning of its own, issue 16)
    unet = validate_preset({"model": {"resolution": 8}, "data": {"path": str(images)},
                            "output": {"dir": str(tmp_path / "out")}})
    assert check_dataset(unet) == []
    error = plan_error(text_to_image(tmp_path, images))
    assert error.key == "data.path" and "not UTF-8" in str(error)
    (images / "image_0000.txt").write_text("")
    raw = text_to_image(tmp_path, images)
    assert "2 of 3 images have no caption file" in str(plan_error(raw))
    raw["data"]["default_caption"] = "a thing"
    warnings = build_step_plan(validate_preset(raw)).warnings
    assert any(f"caption file '{images / 'image_0000.txt'}' is empty" in line for line in warnings)
    raw["output"]["sample_every"] = 1
    assert plan_error(raw).key == "output.sample_every"


def test_a_held_out_image_without_a_caption_is_refused_before_training(tmp_path):
    """Held-out validation images are scored with their captions: the preview checks them like the rest."""
    from modules.data.concepts import resolve_concepts

    images = make_images(tmp_path / "images", 12, size=8)
    raw = text_to_image(tmp_path, images)
    raw["data"]["validation_split"] = 0.3
    (concept,) = resolve_concepts(validate_preset(raw).data)
    assert concept.held_out
    for path in concept.files:
        (tmp_path / "images" / path.rsplit("/", 1)[1]).with_suffix(".txt").write_text("a photo")
    error = plan_error(raw)
    assert error.key == "data.path" and "have no caption file" in str(error)
