"""modules.data.datasets: the same listing as the plan, deterministic order, exact sharding."""

import numpy as np
import pytest
from PIL import Image

from modules.errors import ConfigError
from modules.schedule.step_plan import build_step_plan
from modules.data.datasets import ImageDataset, build_dataset, load_image, torch_generator
from tests.training_helpers import tiny_preset


def every_sample_of_epoch(dataset, plan, order):
    """[(rank, micro_batch, sample)] for one epoch, as the processes would read it."""
    return [(rank, micro_batch, int(sample))
            for micro_batch in range(plan.micro_batches_per_epoch)
            for rank in range(plan.num_processes)
            for sample in dataset.micro_batch_samples(order, plan, micro_batch, rank)]


def test_epoch_order_depends_on_seed_and_epoch_only(tmp_path):
    preset = tiny_preset(tmp_path, data={"repeats": 3})
    dataset = build_dataset(preset, build_step_plan(preset))
    again = build_dataset(preset, build_step_plan(preset))
    first = dataset.epoch_order(seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(21))
    np.testing.assert_array_equal(first, again.epoch_order(seed=3, epoch=0))
    assert not np.array_equal(first, dataset.epoch_order(seed=3, epoch=1))
    assert not np.array_equal(first, dataset.epoch_order(seed=4, epoch=0))


@pytest.mark.parametrize("images, batch, processes, drop_last", [(7, 1, 2, False), (7, 2, 2, False),
                                                                  (9, 2, 3, False), (7, 2, 2, True)])
def test_processes_share_each_micro_batch_and_pad_from_the_start(tmp_path, images, batch, processes, drop_last):
    preset = tiny_preset(tmp_path, images=images, data={"drop_last": drop_last},
                         training={"batch_size": batch, "num_processes": processes}, scheduler={"warmup": 0})
    plan = build_step_plan(preset)
    dataset = build_dataset(preset, plan)
    order = dataset.epoch_order(3, 0)
    read = every_sample_of_epoch(dataset, plan, order)
    per_epoch = plan.micro_batches_per_epoch * batch * processes
    assert len(read) == per_epoch
    samples = [sample for _, _, sample in read]
    if drop_last:
        assert samples == order[:per_epoch].tolist()
    else:
        # Every sample once, in the epoch's order, then repeats from the start of that order.
        assert samples == [int(order[position % len(order)]) for position in range(per_epoch)]
        assert set(samples) == set(range(images))


def test_micro_batch_pixels_flips_and_noise_are_reproducible(tmp_path):
    preset = tiny_preset(tmp_path)
    plan = build_step_plan(preset)
    dataset = build_dataset(preset, plan)
    order = dataset.epoch_order(3, 0)
    batches = [dataset.micro_batch(order, plan, micro_batch, 0, 3, micro_batch).pixels for micro_batch in range(7)]
    assert batches[0].shape == (1, 3, 8, 8) and batches[0].min() >= -1 and batches[0].max() <= 1
    again = dataset.micro_batch(order, plan, 4, 0, 3, 4).pixels
    assert np.array_equal(batches[4].numpy(), again.numpy())
    flipped = [not np.array_equal(batch.numpy(),
                                  dataset.micro_batch(order, plan, index, 0, 3, index + 100).pixels.numpy())
               for index, batch in enumerate(batches)]
    assert any(flipped)  # the flip draw depends on the global micro-batch index
    batch = dataset.micro_batch(order, plan, 2, 0, 3, 9)
    sample = int(dataset.micro_batch_samples(order, plan, 2, 0)[0]) % dataset.num_images
    assert batch.paths == [dataset.paths[sample]] and batch.original_sizes == [(12, 12)]
    assert (batch.index, batch.global_index, batch.rank, batch.target_size) == (2, 9, 0, (8, 8))
    first = torch_generator(3, 5, 0)
    assert first.initial_seed() == torch_generator(3, 5, 0).initial_seed()
    assert len({torch_generator(3, 5, rank).initial_seed() for rank in range(4)}) == 4


def test_images_are_resized_on_the_shorter_side_and_centre_cropped(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 10:30] = 255  # a white centre band, 20 of 40 columns
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    Image.fromarray(pixels[:, :, 0], mode="L").save(tmp_path / "gray.png")
    image, original_size, crop_top_left = load_image(tmp_path / "wide.png", 8)
    assert image.shape == (8, 8, 3)
    assert image[:, 2:6].min() > 200  # the centre of the band survives the crop
    assert original_size == (20, 40)  # (height, width) of the file
    assert crop_top_left == (0, 4)  # resized to 8 x 16, the centre 8 columns start at 4
    assert load_image(tmp_path / "gray.png", 8)[0].shape == (8, 8, 3)


def test_an_unreadable_image_names_its_path(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "good.png")
    (folder / "empty.jpg").write_bytes(b"")
    with pytest.raises(ConfigError) as error:
        ImageDataset(folder, 8)
    assert str(folder / "empty.jpg") in str(error.value) and error.value.key == "data.path"


def test_the_micro_batch_carries_each_samples_caption_concept_and_loss_weight(tmp_path, image_folder):
    """The data side reads the captions (for a family that takes them) and hands them over with the samples."""
    import json

    from modules.config.preset import validate_preset
    from modules.data.captions import caption_file

    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    images = sorted(image_folder.iterdir())
    for index, image in enumerate(images[:-1]):
        caption_file(image, ".txt").write_text(f" caption {index}\n", encoding="utf-8")
    raw = {"model": {"path": str(pipeline), "resolution": 8}, "data": {"path": str(image_folder),
                                                                        "default_caption": "the default"},
           "training": {"batch_size": 3, "device": "cpu"}}
    preset = validate_preset(raw)
    plan = build_step_plan(preset)
    dataset = build_dataset(preset, plan)
    batch = dataset.micro_batch(dataset.epoch_order(0, 0), plan, 0, 0, 0, 0)
    expected = {image: f"caption {index}" for index, image in enumerate(images[:-1])} | {images[-1]: "the default"}
    assert batch.captions == [expected[path] for path in batch.paths] and len(batch.captions) == 3
    assert batch.concepts == [image_folder.name] * 3 and batch.loss_weights == [1.0] * 3

    raw["data"]["default_caption"] = None  # a missing caption is refused when the dataset is built
    with pytest.raises(ConfigError, match="have no caption file"):
        build_dataset(validate_preset(raw), plan)
    unet = tiny_preset(tmp_path)
    assert build_dataset(unet, build_step_plan(unet)).captions is None  # a unet model takes no captions
