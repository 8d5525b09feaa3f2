"""Concepts (SPEC §10): the plan counts every epoch exactly, the loader yields exactly that, the kohya
layout, per-concept captions, loss weights and warnings."""

import math

import numpy as np
import pytest

from modules.config.preset import validate_preset
from modules.data.concepts import apportion, resolve_concepts, samples_per_bucket
from modules.data.datasets import ImageDataset, build_dataset
from modules.errors import ConfigError
from modules.schedule.preview import build_preview
from modules.schedule.step_plan import build_step_plan
from tests.conftest import make_images
from tests.data.test_buckets import write_image

SIZES = [(16, 16), (32, 16), (16, 32), (24, 9), (18, 18), (30, 14), (14, 30), (40, 8), (17, 16)]


def sized_folder(folder, count, offset=0):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        width, height = SIZES[(index + offset) % len(SIZES)]
        write_image(folder / f"img_{index:03d}.png", width, height, seed=index + 100 * offset)
    return folder


def concept_preset(tmp_path, concepts, buckets=True, **training):
    return validate_preset({
        "model": {"config": "tiny", "resolution": 16},
        "data": {"concepts": concepts, "buckets": buckets, "bucket_step": 8, "bucket_max_aspect": 4,
                 "drop_last": training.pop("drop_last", False)},
        "training": {"epochs": 3, "batch_size": 2, "gradient_accumulation_steps": 2, "device": "cpu", "seed": 5,
                     **training},
        "output": {"dir": str(tmp_path / "out"), "checkpoint_every": None},
    })


@pytest.fixture(scope="module")
def three_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts")
    return sized_folder(root / "cat", 7), sized_folder(root / "style", 5, offset=3), sized_folder(root / "reg", 11, 5)


def three_concepts(folders):
    cat, style, reg = folders
    return [{"path": str(cat), "repeats": 2.5}, {"path": str(style), "repeats": 0.6, "loss_weight": 2},
            {"path": str(reg), "type": "regularization", "samples": 9, "loss_weight": 0.5},
            {"path": str(cat), "name": "held_out", "type": "validation"}]


def test_apportion_is_largest_remainder_and_exact():
    assert apportion(5, np.array([1, 1, 1])).tolist() == [2, 2, 1]
    assert apportion(29, np.array([100])).tolist() == [29]
    assert apportion(7, np.array([3, 0, 5, 2])).tolist() == [2, 0, 4, 1]
    assert apportion(0, np.array([3, 4])).tolist() == [0, 0]


def test_fractional_repeats_are_counted_as_the_decimal_written(tmp_path):
    folder = make_images(tmp_path / "a", 100, size=8)
    data = validate_preset({"data": {"concepts": [{"path": str(folder), "repeats": 0.29}]}}).data
    (concept,) = resolve_concepts(data)
    assert concept.samples_per_epoch == 29  # 100 * 0.29 is 28.999999999999996 in floats
    assert samples_per_bucket(concept, np.zeros(100, dtype=np.int64), 1).tolist() == [29]


@pytest.mark.parametrize("batch, processes, drop_last", [(2, 2, False), (1, 3, False), (3, 1, True), (2, 1, False)])
def test_every_epoch_holds_exactly_the_plans_samples_and_micro_batches(tmp_path, three_folders, batch, processes,
                                                                     drop_last):
    preset = concept_preset(tmp_path, three_concepts(three_folders), batch_size=batch, num_processes=processes,
                            drop_last=drop_last)
    plan = build_step_plan(preset)
    rows = {row.name: row for row in plan.concepts}
    assert [rows[name].samples_per_epoch for name in ("cat", "style", "reg")] == [17, 3, 9]
    assert rows["held_out"].type == "validation" and plan.samples_per_epoch == 29 and plan.num_images == 23
    dataset = build_dataset(preset, plan)
    per_micro_batch = batch * processes
    bucket_totals = None
    for epoch in range(4):
        images = dataset.epoch_images(5, epoch)
        per_concept = np.bincount(dataset.image_concept[images], minlength=3).tolist()
        assert per_concept == [17, 3, 9]
        per_bucket = np.bincount(dataset.image_buckets[images], minlength=len(dataset.bucket_sizes))
        bucket_totals = per_bucket if bucket_totals is None else bucket_totals
        assert per_bucket.tolist() == bucket_totals.tolist()  # fixed by construction, not drawn
        rounding = (lambda n: n // per_micro_batch) if drop_last else (lambda n: math.ceil(n / per_micro_batch))
        assert sum(rounding(int(n)) for n in per_bucket) == plan.micro_batches_per_epoch
        order = dataset.epoch_order(5, epoch, plan)
        assert len(order) == plan.micro_batches_per_epoch * per_micro_batch
        for micro_batch in range(plan.micro_batches_per_epoch):
            specs = [spec for rank in range(processes)
                     for spec in dataset.sample_specs(order, plan, micro_batch, rank, 5, micro_batch)]
            assert len({spec.target_size for spec in specs}) == 1  # train and regularization mix within a bucket


def test_the_fraction_and_the_samples_are_redrawn_each_epoch_and_cycle(tmp_path, three_folders):
    preset = concept_preset(tmp_path, three_concepts(three_folders), buckets=False)
    dataset = build_dataset(preset, build_step_plan(preset))
    style = [sorted(dataset.epoch_images(5, epoch)[17:20].tolist()) for epoch in range(6)]
    assert len({tuple(chosen) for chosen in style}) > 1  # a seeded subset of fixed size, drawn per epoch
    reg = [dataset.epoch_images(5, epoch)[20:].tolist() for epoch in range(3)]
    assert all(len(chosen) == 9 for chosen in reg)
    seen = reg[0] + reg[1]
    assert sorted(set(seen)) == list(range(12, 23))  # 18 samples of 11 images: the order cycles through all
    again = build_dataset(preset, build_step_plan(preset))
    assert again.epoch_images(5, 3).tolist() == dataset.epoch_images(5, 3).tolist()


def test_the_logged_counts_are_the_micro_batches_the_processes_take(tmp_path, three_folders):
    preset = concept_preset(tmp_path, three_concepts(three_folders), num_processes=2)
    plan = build_step_plan(preset)
    dataset = build_dataset(preset, plan)
    for epoch, taken in [(0, plan.micro_batches_per_epoch), (1, 3)]:
        order = dataset.epoch_order(5, epoch, plan)
        names = [name for micro_batch in range(taken) for rank in range(2)
                 for name in dataset.micro_batch(order, plan, micro_batch, rank, 5,
                                                 epoch * plan.micro_batches_per_epoch + micro_batch).concepts]
        expected = {name: names.count(name) for name in ("cat", "style", "reg")}
        assert dataset.concept_counts(plan, 5, epoch, taken) == expected


def test_the_micro_batch_carries_each_concepts_caption_options_and_loss_weight(tmp_path):
    tags = make_images(tmp_path / "tags", 2, size=8)
    reg = make_images(tmp_path / "reg", 2, size=8, seed=1)
    for image in tags.glob("*.png"):
        image.with_suffix(".txt").write_text("sks cat, red, blue, green, tall, small")
    for image in reg.glob("*.png"):
        image.with_suffix(".cap").write_text("a cat")
    dataset = ImageDataset(None, 8, concepts=resolve_concepts(validate_preset({"data": {"concepts": [
        {"path": str(tags), "shuffle_tags": True, "keep_tags": 1, "tag_dropout": 0.3},
        {"path": str(reg), "type": "regularization", "loss_weight": 0.25, "caption_extension": ".cap"},
    ]}}).data), read_captions=True)
    plan = build_step_plan(validate_preset({"model": {"config": "tiny", "resolution": 8},
                                            "training": {"batch_size": 4}}), num_images=4)
    order = dataset.epoch_order(0, 0)
    batches = [dataset.micro_batch(order, plan, 0, 0, 0, index) for index in range(8)]
    for batch in batches:
        for caption, concept, weight in zip(batch.captions, batch.concepts, batch.loss_weights):
            if concept == "reg":
                assert (caption, weight) == ("a cat", 0.25)
            else:
                assert caption.startswith("sks cat") and weight == 1.0
                assert set(caption.split(", ")[1:]) <= {"red", "blue", "green", "tall", "small"}
    tagged = [caption for batch in batches for caption, c in zip(batch.captions, batch.concepts) if c == "tags"]
    assert len(set(tagged)) > 1 and any(len(caption.split(", ")) < 6 for caption in tagged)
    assert dataset.micro_batch(order, plan, 0, 0, 0, 3).captions == batches[3].captions  # seeded: a resume repeats


def test_a_concepts_own_caption_dropout_is_exact_with_the_models_own(tmp_path):
    from modules.data.captions import extra_caption_dropout
    assert extra_caption_dropout(0.5, 0.2) == pytest.approx(0.375)  # 1 - (1 - 0.375)(1 - 0.2) = 0.5
    assert extra_caption_dropout(0.1, 0.1) == 0


def kohya_tree(root):
    make_images(root / "train" / "10_cat", 3, size=8)
    make_images(root / "train" / "2_misc", 4, size=8, seed=1)
    make_images(root / "reg" / "1_person", 5, size=8, seed=2)
    return root


def test_the_kohya_layout_is_one_concept_per_subfolder_with_its_repeats(tmp_path):
    root = kohya_tree(tmp_path)
    raw = {"model": {"config": "tiny", "resolution": 8},
           "data": {"concepts": [{"path": str(root / "train")},
                                 {"path": str(root / "reg"), "type": "regularization", "repeats": 2}]},
           "output": {"dir": str(tmp_path / "out")}}
    preview = build_preview(validate_preset(raw))
    rows = [(row.name, row.type, row.images, row.repeats, row.samples_per_epoch) for row in preview.plan.concepts]
    assert rows == [("cat", "train", 3, 10, 30), ("misc", "train", 4, 2, 8), ("person", "regularization", 5, 2, 10)]
    assert preview.plan.samples_per_epoch == 48
    assert "kohya layout of" in preview.plan.summary() and "3 concepts" in preview.plan.summary()
    assert any("kohya layout" in line for line in preview.report_lines())
    flat = build_preview(validate_preset({**raw, "data": {**raw["data"], "layout": "flat"}})).plan
    assert [(row.name, row.images) for row in flat.concepts] == [("train", 7), ("reg", 5)]
    alone = build_preview(validate_preset({**raw, "data": {"path": str(root / "train")}})).plan
    assert alone.samples_per_epoch == 38 and alone.kohya_folders == (str(root / "train"),)


def test_per_concept_warnings_name_the_files(tmp_path):
    folder = make_images(tmp_path / "cat", 2, size=8)
    (folder / "scan.tif").write_bytes(b"II*\x00")
    (folder / "anim.gif").write_bytes(b"GIF89a")
    write_image(folder / "image_0000.jpg", 40, 40)
    make_images(tmp_path / "train" / "3_dog", 1, size=40)
    make_images(tmp_path / "train", 1, size=40)  # beside the kohya subfolders: not read
    preset = validate_preset({"model": {"config": "tiny", "resolution": 32},
                              "data": {"concepts": [{"path": str(folder)}, {"path": str(tmp_path / "train")}]},
                              "output": {"dir": str(tmp_path / "out")}})
    warnings = build_step_plan(preset).warnings
    text = "\n".join(warnings)
    assert "concept 'cat': 2 files of an unsupported image type skipped" in text and "scan.tif" in text \
        and "anim.gif" in text
    assert "concept 'cat': 2 images smaller than the training size" in text and "image_0001.png" in text
    assert "image_0000.jpg" in text and "image_0000.png" in text and "share the caption file" in text
    assert "directly in it are not read" in text and "image_0000.png" in text


@pytest.mark.parametrize("key", ["output.dir", "data.cache_dir"])
def test_an_output_or_cache_folder_inside_any_concept_is_an_error(tmp_path, key):
    first, second = make_images(tmp_path / "a", 2, size=8), make_images(tmp_path / "b", 2, size=8)
    section, name = key.split(".")
    raw = {"data": {"concepts": [{"path": str(first)}, {"path": str(second), "type": "regularization"}]},
           "output": {"dir": str(tmp_path / "out")}}
    raw.setdefault(section, {})[name] = str(second / "run")
    with pytest.raises(ConfigError) as raised:
        build_step_plan(validate_preset(raw))
    assert raised.value.key == key and "data.concepts.1.path ('b')" in str(raised.value)
