"""The `data.concepts` model (SPEC §10): defaults, inheritance from data.*, and one-line errors."""

import pytest

from modules.config.preset import validate_preset
from modules.errors import ConfigError


def concepts(*items, **data):
    return validate_preset({"data": {"concepts": list(items), **data}}).data


def test_a_concept_inherits_the_data_caption_keys_and_is_named_after_its_folder():
    data = concepts({"path": "sets/10_cat/"}, {"path": "reg", "type": "regularization", "samples": 5,
                                                "flip": False, "caption_extension": ".caption"},
                    flip=True, caption_dropout=0.1, shuffle_tags=True, keep_tags=2)
    first, second = data.concept_list()
    assert (first.name, first.type, first.repeats, first.samples) == ("10_cat", "train", None, None)
    assert (first.flip, first.caption_dropout, first.shuffle_tags, first.keep_tags) == (True, 0.1, True, 2)
    assert (second.name, second.flip, second.caption_extension, second.samples) == ("reg", False, ".caption", 5)
    assert second.loss_weight == 1.0 and first.tag_separator == ","


def test_data_path_alone_is_one_train_concept():
    data = validate_preset({"data": {"path": "images", "repeats": 3}}).data
    (concept,) = data.concept_list()
    assert (concept.name, concept.path, concept.type, concept.repeats) == ("images", "images", "train", 3)
    assert validate_preset({}).data.concept_list() == []


@pytest.mark.parametrize("data, key", [
    ({"path": "a", "concepts": [{"path": "b"}]}, "data.concepts"),
    ({"concepts": [{"path": "x/c"}, {"path": "y/c"}]}, "data.concepts.1.name"),
    ({"concepts": [{"path": "a", "name": "n"}, {"path": "b", "name": "n"}]}, "data.concepts.1.name"),
    ({"concepts": [{"path": "a", "repeats": 1, "samples": 2}]}, "data.concepts.0.samples"),
    ({"concepts": [{"path": "a", "repeats": -0.5}]}, "data.concepts.0.repeats"),
    ({"concepts": [{"path": "a", "samples": 0}]}, "data.concepts.0.samples"),
    ({"concepts": [{"path": "a", "samples": 1.5}]}, "data.concepts.0.samples"),
    ({"concepts": [{"path": "a", "type": "reg"}]}, "data.concepts.0.type"),
    ({"concepts": [{"path": "a", "loss_weight": -1}]}, "data.concepts.0.loss_weight"),
    ({"concepts": [{"path": "a", "tag_dropout": 2}]}, "data.concepts.0.tag_dropout"),
    ({"concepts": [{"pth": "a"}]}, "data.concepts.0.pth"),
    ({"concepts": [{"path": ""}]}, "data.concepts.0.path"),
    ({"layout": "kohya"}, "data.layout"),
    ({"concepts": [{"path": "a", "shuffle_tags": True}], "cache_text_embeddings": True},
     "data.concepts.0.shuffle_tags"),
    ({"path": "a", "tag_dropout": 0.1, "cache_text_embeddings": True}, "data.tag_dropout"),
])
def test_bad_concept_input_is_one_line_naming_the_key(data, key):
    with pytest.raises(ConfigError) as raised:
        validate_preset({"data": data})
    assert raised.value.key == key
    assert "\n" not in str(raised.value)
