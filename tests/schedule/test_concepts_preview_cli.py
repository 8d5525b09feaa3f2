"""`scripts/preview.py` with concepts (SPEC §10): the concept table, the kohya note, and every bad concept
input as one line on stderr naming the key, exit status 2."""

import json

import pytest

from tests.conftest import make_images
from tests.schedule.test_preview_cli import run_preview, write_preset


@pytest.fixture
def folders(tmp_path):
    make_images(tmp_path / "cat", 4, size=8)
    make_images(tmp_path / "reg", 6, size=8, seed=1)
    make_images(tmp_path / "empty_kind", 0)
    (tmp_path / "empty_kind" / "notes.txt").write_text("no images here")
    make_images(tmp_path / "train" / "10_dog", 2, size=8)
    make_images(tmp_path / "more" / "3_dog", 2, size=8, seed=2)
    return tmp_path


def preset_with(tmp_path, data, **sections):
    raw = {"model": {"config": "tiny", "resolution": 8}, "data": data,
           "output": {"dir": str(tmp_path / "out")}, **sections}
    path = tmp_path / "preset.json"
    write_preset(path, raw)
    return path


def test_the_preview_lists_every_concept_with_its_share(folders):
    preset = preset_with(folders, {"concepts": [
        {"path": str(folders / "cat"), "repeats": 1.5},
        {"path": str(folders / "reg"), "type": "regularization", "samples": 4, "loss_weight": 0.5},
        {"path": str(folders / "train")},
        {"path": str(folders / "cat"), "name": "check", "type": "validation"}]})
    result = run_preview(preset)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("3 concepts (kohya layout of '") and "12 images -> 30 samples/epoch" in lines[0]
    table = {line.split()[0]: line.split() for line in lines if line.startswith("    ") and "%" in line or
             "not trained" in line}
    assert table["cat"][1:6] == ["train", "4", "x", "1.5", "6"] and table["cat"][6] == "20.0%"
    assert table["reg"][1:5] == ["regularization", "6", "4", "samples"] and table["reg"][-1] == "0.5"
    assert table["dog"][1:6] == ["train", "2", "x", "10", "20"] and table["dog"][6] == "66.7%"
    assert "not trained" in " ".join(table["check"])
    assert any("kohya layout:" in line and "N_name subfolder" in line for line in lines)


@pytest.mark.parametrize("data, key, words", [
    ({"path": "{cat}", "concepts": [{"path": "{reg}"}]}, "data.concepts", "not both"),
    ({"concepts": [{"path": "{cat}"}, {"path": "{cat}"}]}, "data.concepts.1.name", "two concepts"),
    ({"concepts": [{"path": "{cat}"}, {"path": "{root}/nowhere"}]}, "data.concepts.1.path", "does not exist"),
    ({"concepts": [{"path": "{cat}"}, {"path": "{root}/empty_kind"}]}, "data.concepts.1.path", "holds no images"),
    ({"concepts": [{"path": "{root}/train", "samples": 5}]}, "data.concepts.0.samples", "kohya layout"),
    ({"concepts": [{"path": "{cat}", "repeats": 2, "samples": 5}]}, "data.concepts.0.samples", "not both"),
    ({"concepts": [{"path": "{cat}", "type": "validation"}]}, "data.concepts", "no train or regularization"),
    ({"concepts": [{"path": "{cat}", "repeats": 0}]}, "data.concepts", "0 samples per epoch"),
    ({"concepts": [{"path": "{cat}", "repeat": 2}]}, "data.concepts.0.repeat", "did you mean 'repeats'"),
    ({"concepts": [{"path": "{cat}", "type": "regularisation"}]}, "data.concepts.0.type", "regularization"),
    ({"concepts": [{"path": "{cat}", "samples": 2.5}]}, "data.concepts.0.samples", "integer"),
    ({"concepts": [{"path": "{cat}", "loss_weight": "high"}]}, "data.concepts.0.loss_weight", "number"),
    ({"concepts": [{"path": "{cat}", "caption_dropout": 0.05}], "caption_dropout": 0.1},
     "data.concepts.0.caption_dropout", "below data.caption_dropout"),
    ({"concepts": [{"path": "{root}/train"}, {"path": "{root}/more"}]}, "data.concepts.1.path", "named 'dog'"),
    ({"concepts": [{"path": "{cat}"}, {"path": "{reg}"}], "cache_dir": "{reg}/cache"}, "data.cache_dir",
     "inside the concept folder data.concepts.1.path"),
    ({"layout": "nested", "path": "{cat}"}, "data.layout", "'auto' or 'flat'"),
])
def test_every_bad_concept_input_is_one_line_and_exit_2(folders, data, key, words):
    text = json.dumps(data).replace("{cat}", str(folders / "cat")).replace("{reg}", str(folders / "reg")) \
        .replace("{root}", str(folders))
    result = run_preview(preset_with(folders, json.loads(text)))
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"preview.py: error: {key}:") and words in result.stderr, result.stderr


def test_a_text_embedding_cache_with_tag_shuffling_is_refused_in_one_line(folders):
    model = folders / "sd"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    path = folders / "preset.json"
    write_preset(path, {"model": {"path": str(model)}, "output": {"dir": str(folders / "out")},
                        "data": {"cache_text_embeddings": True, "default_caption": "a",
                                 "concepts": [{"path": str(folders / "cat"), "shuffle_tags": True}]}})
    result = run_preview(path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "data.concepts.0.shuffle_tags: cannot be used with data.cache_text_embeddings" in result.stderr
