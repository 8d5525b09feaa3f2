"""Captions (SPEC §7): files beside the images, the default, errors naming the file, seeded dropout."""

import pytest
import torch

from modules.data.captions import caption_file, load_captions, summarize_captions
from modules.errors import ConfigError
from modules.data.listing import list_images
from modules.data.batch import MicroBatch
from modules.data.datasets import torch_generator
from tests.conftest import make_images


@pytest.fixture
def images(tmp_path):
    folder = make_images(tmp_path / "images", 4, size=8)
    return list_images(folder)


def test_caption_is_the_stripped_utf8_file_beside_the_image_with_the_configured_extension(images):
    caption_file(images[0], ".caption").write_text("  naïve café \n\n", encoding="utf-8")
    (images[1].parent / "image_0001.txt").write_text("ignored: other extension")
    captions = load_captions(images, ".caption", default_caption=" a default ")
    assert captions[images[0]] == "naïve café"
    assert [captions[image] for image in images[1:]] == ["a default"] * 3
    assert summarize_captions(images, ".caption").with_caption == 1
    assert summarize_captions(images, ".caption").describe("x") == "1 of 4 images have a caption file (3 use data.default_caption)"


def test_missing_captions_without_a_default_say_how_many_and_name_the_first(images):
    caption_file(images[0], ".txt").write_text("one")
    caption_file(images[2], ".txt").write_text("three")
    with pytest.raises(ConfigError) as error:
        load_captions(images, ".txt", default_caption=None)
    message = str(error.value)
    assert "2 of 4 images have no caption file" in message and str(caption_file(images[1], ".txt")) in message
    assert "\n" not in message


def test_a_caption_that_is_not_utf8_is_named(images):
    for image in images:
        caption_file(image, ".txt").write_text("fine")
    caption_file(images[3], ".txt").write_bytes(b"\xff\xfe broken")
    with pytest.raises(ConfigError, match=str(caption_file(images[3], ".txt"))):
        load_captions(images, ".txt", default_caption=None)


def test_caption_dropout_is_drawn_from_the_micro_batch_generator(images, tmp_path):
    """The same (seed, micro-batch, rank) always drops the same captions; another micro-batch draws anew."""
    from modules.families.stable_diffusion import StableDiffusionFamily

    family = StableDiffusionFamily.__new__(StableDiffusionFamily)  # only the caption logic is exercised

    class Data:
        caption_dropout = 0.5

    class Preset:
        data = Data()

    family.preset = Preset()
    batch = MicroBatch(pixels=torch.zeros(4, 3, 8, 8), paths=images, original_sizes=[(8, 8)] * 4,
                       crop_top_lefts=[(0, 0)] * 4, epoch=0, index=0, global_index=0, rank=0,
                       captions=[f"caption {index}" for index in range(4)])
    draws = [tuple(family.captions_of(batch, torch_generator(7, index, 0))) for index in range(12)]
    assert draws[:6] == [tuple(family.captions_of(batch, torch_generator(7, index, 0))) for index in range(6)]
    dropped = sum(caption == "" for draw in draws for caption in draw)
    assert 0 < dropped < 48 and len(set(draws)) > 1
    Data.caption_dropout = 0.0
    assert family.captions_of(batch, torch_generator(7, 0, 0)) == [f"caption {index}" for index in range(4)]
