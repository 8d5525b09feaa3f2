"""Aspect-ratio buckets and the size index: bucket shapes, the bucketed plan against a loader simulation."""

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.data.buckets import assign_buckets, bucket_resolutions, cover_and_crop
from modules.config.preset import validate_preset
from modules.errors import ConfigError
from modules.data.listing import list_images
from modules.data.sizes import header_size, image_sizes, index_file
from modules.schedule.preview import build_preview
from modules.schedule.step_plan import build_step_plan
from modules.data.datasets import ImageDataset, decode, micro_batch_range

# (width, height) of the table's images: squares, landscapes, portraits, one far too wide.
TABLE_SIZES = [(16, 16), (18, 18), (20, 19), (32, 16), (30, 14), (16, 32), (14, 30), (15, 31), (24, 9), (40, 8),
               (9, 24), (17, 16), (33, 17)]


def write_image(path: Path, width: int, height: int, seed: int = 0, exif_orientation: int | None = None) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    return path


@pytest.fixture(scope="module")
def table_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("table")
    for index, (width, height) in enumerate(TABLE_SIZES):
        write_image(folder / f"image_{index:02d}.png", width, height, seed=index)
    return folder


def bucket_preset(folder, **data_and_training):
    data = {key: data_and_training.pop(key) for key in ("repeats", "drop_last") if key in data_and_training}
    return validate_preset({
        "model": {"config": "tiny", "resolution": 16},
        "data": {"path": str(folder), "buckets": True, "bucket_step": 8, "bucket_max_aspect": 4, **data},
        "training": {"epochs": 2, **data_and_training},
    })


# --- bucket shapes ------------------------------------------------------------------

@pytest.mark.parametrize("resolution, step, max_aspect", [(1024, 64, 2.0), (512, 64, 4.0), (768, 32, 1.5),
                                                          (16, 8, 4.0), (40, 16, 2.0)])
def test_buckets_are_multiples_of_the_step_near_the_area_and_within_the_aspect(resolution, step, max_aspect):
    buckets = bucket_resolutions(resolution, step, max_aspect)
    side = resolution // step * step
    assert (side, side) in buckets
    for width, height in buckets:
        assert width % step == 0 and height % step == 0
        assert max(width, height) / min(width, height) <= max_aspect
        assert width * height <= resolution**2
        assert (height, width) in buckets  # portrait and landscape alike
        # As large as the step allows: one step more on the short side overshoots the area.
        assert width * (height + step) > resolution**2 or height * (width + step) > resolution**2 or \
            width == height == side
    aspects = [width / height for width, height in buckets]
    assert aspects == sorted(aspects)


def test_each_image_goes_to_the_bucket_nearest_its_aspect_ratio():
    buckets = bucket_resolutions(1024, 64, 2.0)
    sizes = [(4000, 3000), (3000, 4000), (1000, 1000), (6000, 1000), (1920, 1080), (1023, 1024)]
    chosen = [buckets[index] for index in assign_buckets(sizes, buckets)]
    for (width, height), bucket in zip(sizes, chosen):
        distance = abs(math.log(width / height) - math.log(bucket[0] / bucket[1]))
        assert all(distance <= abs(math.log(width / height) - math.log(w / h)) + 1e-12 for w, h in buckets)
    assert chosen[2] == chosen[5] == (1024, 1024)
    assert chosen[3] == (1408, 704)  # far too wide: the widest bucket
    assert chosen[0] == (1152, 896) and chosen[1] == (896, 1152)


def test_images_are_resized_to_cover_the_bucket_and_centre_cropped(tmp_path):
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, 20:40] = 255  # a white band in the middle third
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    assert cover_and_crop((60, 30), (24, 8)) == ((24, 12), (2, 0))
    image, original, crop = decode(tmp_path / "wide.png", (8, 24))  # (height, width) of the bucket
    assert image.shape == (8, 24, 3) and original == (30, 60) and crop == (2, 0)
    assert image[:, 9:15].min() > 200 and image[:, :6].max() < 60  # the band stays in the middle


def test_header_sizes_respect_exif_orientation_and_decoding_agrees(tmp_path):
    upright = write_image(tmp_path / "upright.jpg", 40, 20)
    turned = write_image(tmp_path / "turned.jpg", 40, 20, exif_orientation=6)  # stored landscape, shown portrait
    assert header_size(upright) == (40, 20)
    assert header_size(turned) == (20, 40)
    image, original, _ = decode(turned, (32, 16))
    assert original == (40, 20) and image.shape == (32, 16, 3)


# --- the bucketed plan against a simulation of the loader ------------------------------

def simulated_micro_batches(buckets_of_images: list[int], repeats: int, per_micro_batch: int, drop_last: bool) -> int:
    """What a bucket loader yields per process and epoch (kohya's bucket manager, the straightforward way)."""
    count = 0
    for bucket in set(buckets_of_images):
        samples = buckets_of_images.count(bucket) * repeats
        full, rest = divmod(samples, per_micro_batch)
        count += full + (1 if rest and not drop_last else 0)
    return count


TABLE = [(batch, accumulation, processes, drop_last, repeats)
         for batch, accumulation, processes, drop_last, repeats in itertools.product(
             (1, 2, 3, 4), (1, 2, 3), (1, 2, 8), (False, True), (1, 3))
         if not (drop_last and processes == 8 and batch * repeats > 8)]


@pytest.mark.parametrize("batch, accumulation, processes, drop_last, repeats", TABLE)
def test_bucketed_plan_matches_the_loader(table_folder, batch, accumulation, processes, drop_last, repeats):
    preset = bucket_preset(table_folder, batch_size=batch, gradient_accumulation_steps=accumulation,
                           num_processes=processes, drop_last=drop_last, repeats=repeats)
    try:
        plan = build_step_plan(preset)
    except ConfigError as error:  # drop_last with every bucket smaller than one micro-batch
        assert drop_last and "drop_last leaves no batch" in str(error)
        return
    dataset = ImageDataset(table_folder, 16, repeats, bucket_step=8, bucket_max_aspect=4)
    buckets_of_images = dataset.image_buckets.tolist()
    per_micro_batch = batch * processes
    micro_batches = simulated_micro_batches(buckets_of_images, repeats, per_micro_batch, drop_last)
    assert plan.micro_batches_per_epoch == micro_batches
    assert plan.steps_per_epoch == math.ceil(micro_batches / accumulation)
    assert plan.total_steps == 2 * plan.steps_per_epoch
    assert sum(images for _, _, images in plan.buckets) == len(TABLE_SIZES)

    for epoch in range(2):
        order = dataset.epoch_order(5, epoch, plan)
        assert len(order) == micro_batches * per_micro_batch  # exactly M micro-batches for every process
        seen = []
        for micro_batch in range(micro_batches):
            parts = [dataset.micro_batch_samples(order, plan, micro_batch, rank) for rank in range(processes)]
            samples = np.concatenate(parts) % len(TABLE_SIZES)
            assert len({buckets_of_images[image] for image in samples}) == 1  # one bucket per micro-batch
            seen.extend(np.concatenate(parts).tolist())
        per_bucket = {bucket: [s for s in seen if buckets_of_images[s % len(TABLE_SIZES)] == bucket]
                      for bucket in set(buckets_of_images)}
        for bucket, samples in per_bucket.items():
            bucket_samples = buckets_of_images.count(bucket) * repeats
            if drop_last:  # each sample at most once, the short rest dropped
                assert len(samples) == len(set(samples)) == bucket_samples // per_micro_batch * per_micro_batch
            else:  # every sample at least once, the last micro-batch filled with the bucket's own samples
                assert len(set(samples)) == bucket_samples
                assert len(samples) == math.ceil(bucket_samples / per_micro_batch) * per_micro_batch
    # The micro-batches the optimizer steps train on are the plan's, from any resume step.
    windows = [plan.position(k)[0] * micro_batches + index for k in range(plan.total_steps)
               for index in plan.micro_batch_window(plan.position(k)[1])]
    assert list(micro_batch_range(plan, 0)) == windows
    assert list(micro_batch_range(plan, plan.total_steps // 2)) == \
        windows[sum(1 for k in range(plan.total_steps // 2)
                    for _ in plan.micro_batch_window(plan.position(k)[1])):]


def test_bucketed_order_depends_on_seed_and_epoch_only(table_folder):
    preset = bucket_preset(table_folder, batch_size=2, repeats=2)
    plan = build_step_plan(preset)
    dataset = ImageDataset(table_folder, 16, 2, bucket_step=8, bucket_max_aspect=4)
    again = ImageDataset(table_folder, 16, 2, bucket_step=8, bucket_max_aspect=4)
    first = dataset.epoch_order(3, 0, plan)
    np.testing.assert_array_equal(first, again.epoch_order(3, 0, plan))
    assert not np.array_equal(first, dataset.epoch_order(3, 1, plan))
    assert not np.array_equal(first, dataset.epoch_order(4, 0, plan))


def test_without_buckets_the_plan_is_the_square_plan(table_folder):
    square = validate_preset({"model": {"resolution": 16}, "data": {"path": str(table_folder)},
                              "training": {"batch_size": 3}})
    plan = build_step_plan(square)
    assert plan.buckets == () and plan.micro_batches_per_epoch == math.ceil(len(TABLE_SIZES) / 3)
    assert "buckets" not in plan.identity() and "bucket" not in plan.summary()


def test_preview_lists_the_buckets_and_warns_about_small_ones(table_folder):
    preview = build_preview(bucket_preset(table_folder, batch_size=3))
    lines = preview.report_lines()
    listing = next(line for line in lines if line.strip().startswith("buckets"))
    for width, height, images in preview.plan.buckets:
        assert f"{width}x{height} x {images}" in listing
    small = [(w, h, n) for w, h, n in preview.plan.buckets if n < 3]
    assert small
    for width, height, images in small:
        assert any(f"bucket {width}x{height} holds {images} sample" in warning for warning in preview.plan.warnings)
    assert f"in {len(preview.plan.buckets)} buckets" in preview.plan.summary()


def test_a_changed_bucket_layout_changes_the_plan_identity(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        write_image(folder / f"{index}.png", 16, 16, seed=index)
    before = build_step_plan(bucket_preset(folder))
    write_image(folder / "0.png", 32, 8)  # same count, another bucket
    after = build_step_plan(bucket_preset(folder))
    assert before.num_images == after.num_images and before.identity() != after.identity()


@pytest.mark.parametrize("data, message", [
    ({"bucket_step": 12}, "data.bucket_step: must be a multiple of 8, got 12"),
    ({"buckets": True, "bucket_step": 64}, "data.bucket_step: 64 is larger than model.resolution 16"),
    ({"bucket_max_aspect": 0.5}, "data.bucket_max_aspect"),
    ({"num_workers": -1}, "data.num_workers"),
])
def test_bad_bucket_settings_are_one_line(data, message):
    with pytest.raises(ConfigError) as error:
        validate_preset({"model": {"resolution": 16}, "data": data})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# --- the size index ---------------------------------------------------------------

def test_the_size_index_follows_changed_added_and_removed_files(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        write_image(folder / f"{index}.png", 16 + index, 16, seed=index)
    assert image_sizes(folder, list_images(folder)) == [(16 + index, 16) for index in range(5)]
    assert index_file(folder).is_file() and not any(path.name.startswith(".") for path in folder.iterdir())

    import modules.data.sizes as sizes_module

    reads = []
    real = sizes_module.header_size
    monkeypatch.setattr(sizes_module, "header_size", lambda path: reads.append(Path(path).name) or real(path))
    assert image_sizes(folder, list_images(folder)) == [(16 + index, 16) for index in range(5)]
    assert reads == []  # warm: no header read at all

    changed = write_image(folder / "1.png", 8, 40, seed=9)
    os.utime(changed, ns=(1, 1_000_000_000))  # even with a modification time from the past
    write_image(folder / "5.png", 24, 8, seed=5)
    (folder / "3.png").unlink()
    listing = list_images(folder)
    assert image_sizes(folder, listing) == [(16, 16), (8, 40), (18, 16), (20, 16), (24, 8)]
    assert sorted(reads) == ["1.png", "5.png"]
    reads.clear()
    assert image_sizes(folder, listing) == [(16, 16), (8, 40), (18, 16), (20, 16), (24, 8)]
    assert reads == []


def test_a_read_only_dataset_and_an_unwritable_cache_still_plan(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        write_image(folder / f"{index}.png", 16, 8 * (index + 1), seed=index)
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")  # a cache path below a file cannot be created, whoever runs the test
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    folder.chmod(0o555)
    try:
        plan = build_step_plan(bucket_preset(folder))
        assert sum(images for _, _, images in plan.buckets) == 3
        assert not index_file(folder).exists()
        assert sorted(path.name for path in folder.iterdir()) == ["0.png", "1.png", "2.png"]
    finally:
        folder.chmod(0o755)


def test_a_damaged_index_is_rebuilt_not_trusted(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", 16, 8)
    image_sizes(folder, list_images(folder))
    index_file(folder).write_text('{"version": 1, "folder": 3, "files": {"a.png": [0, 0, 99, 99]}}')
    assert image_sizes(folder, list_images(folder)) == [(16, 8)]
    index_file(folder).write_bytes(b"\x00garbage")
    assert image_sizes(folder, list_images(folder)) == [(16, 8)]


def test_an_unreadable_header_is_named_by_path(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "good.png", 16, 16)
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ConfigError) as error:
        build_step_plan(bucket_preset(folder))
    assert str(folder / "broken.png") in str(error.value) and error.value.key == "data.path"
