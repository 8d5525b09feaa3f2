"""The latent cache and the text-embedding cache (SPEC §8), and SD / SDXL with non-square buckets.

Tiny SD and SDXL pipelines (modules.families.tiny_pipelines) at 16 px, images of mixed aspect ratios
with captions, buckets of step 8 and flips on: the cached runs must give the very weights of the
uncached ones, bit for bit on CPU (both encode one image / one caption at a time).
"""

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel

from modules.data.buckets import cover_and_crop
from modules.config.preset import save_preset, validate_preset
from modules.errors import ConfigError
from modules.data.sizes import header_size
from modules.schedule.step_plan import build_step_plan
from modules.training import train
from modules.data.caches import LATENTS_DIR, TEXT_EMBEDDINGS_DIR, file_sha256
from modules.families.base import family_class
from modules.families.tiny_pipelines import build_tiny_pipeline
from tests.data.test_buckets import TABLE_SIZES, write_image
from tests.training.test_train_cli import run, train_command
from tests.training_helpers import assert_same_weights, one_thread  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

IMAGE_SIZES = TABLE_SIZES[:7]   # square, landscape, portrait, 8x24 and 24x8 buckets at 16 px
LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: build_tiny_pipeline(kind, root / kind) for kind in ("stable_diffusion", "stable_diffusion_xl")}


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (width, height) in enumerate(IMAGE_SIZES):
        write_image(folder / f"image_{index:02d}.png", width, height, seed=index)
        (folder / f"image_{index:02d}.txt").write_text(f"a photo of the thing {index % 4}", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("captioned") / "images")


def cache_preset(root: Path, pipelines, images: Path, out: str, kind="stable_diffusion", **data):
    return validate_preset({
        "model": {"path": str(pipelines[kind]), "resolution": 16},
        "data": {"path": str(images), "buckets": True, "bucket_step": 8, "bucket_max_aspect": 4, "flip": True,
                 "caption_dropout": 0.3, "num_workers": 0, "cache_dir": str(root / "cache"), **data},
        "training": {"epochs": 2, "batch_size": 2, "device": "cpu", "seed": 3, "method": "lora"},
        "optimizer": {"type": "adamw", "lr": 1e-2},
        "scheduler": {"type": "cosine", "warmup": 1},
        "lora": {"rank": 4, "alpha": 4},
        "output": {"dir": str(root / out), "checkpoint_every": None},
    })


class Calls:
    """Counts calls of a module class's method (the VAE's encode, a text encoder's forward)."""

    def __init__(self, monkeypatch, owner, name):
        self.count = 0
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def trained(preset, **kwargs) -> tuple[dict, list[str]]:
    lines = []
    result = train(preset, progress_bar=False, log=lines.append, **kwargs)
    assert result.finished or kwargs.get("should_stop")
    weights = load_file(Path(preset.output.dir) / "model" / LORA_FILE) if result.finished else None
    return weights, lines


@pytest.fixture(scope="module")
def uncached_sd(tmp_path_factory, pipelines, dataset):
    """The reference: the SD LoRA run without any cache (and its plan, which has non-square buckets)."""
    preset = cache_preset(tmp_path_factory.mktemp("uncached"), pipelines, dataset, "out")
    plan = build_step_plan(preset)
    assert any(width != height for width, height, _ in plan.buckets)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests it is compared with (one_thread is function-scoped)
    try:
        return trained(preset)[0]
    finally:
        torch.set_num_threads(threads)


def test_sd_trains_from_the_latent_cache_to_the_same_weights_and_a_second_run_encodes_nothing(
        tmp_path, monkeypatch, pipelines, dataset, uncached_sd):
    encodes = Calls(monkeypatch, AutoencoderKL, "encode")
    first, lines = trained(cache_preset(tmp_path, pipelines, dataset, "first", cache_latents=True))
    built = encodes.count
    entries = list((tmp_path / "cache" / LATENTS_DIR).rglob("*.safetensors"))
    assert built == len(entries) > len(IMAGE_SIZES)  # one encode per (image, flip) variant the run trains on
    assert any(f"0 of {built} entries reused, {built} to encode" in line for line in lines)
    assert_same_weights(first, uncached_sd)

    second, lines = trained(cache_preset(tmp_path, pipelines, dataset, "second", cache_latents=True))
    assert encodes.count == built  # not one VAE encode: every micro-batch came from the cache
    assert any(f"{built} of {built} entries reused, 0 to encode" in line for line in lines)
    assert_same_weights(second, uncached_sd)


def test_a_modified_image_and_a_truncated_entry_are_rebuilt_and_said_so(tmp_path, monkeypatch, pipelines):
    images = write_dataset(tmp_path / "images")
    trained(cache_preset(tmp_path, pipelines, images, "first", cache_latents=True))
    entries = sorted((tmp_path / "cache" / LATENTS_DIR).rglob("*.safetensors"))
    changed = images / "image_03.png"
    # An entry of another image: truncating one of the changed image's would hide its "(image changed)".
    truncated = next(entry for entry in entries if entry_content(entry) != file_sha256(changed))
    truncated.write_bytes(truncated.read_bytes()[:100])
    write_image(changed, *IMAGE_SIZES[3], seed=99)  # same size, other pixels: same bucket, other content

    encodes = Calls(monkeypatch, AutoencoderKL, "encode")
    rebuilt, lines = trained(cache_preset(tmp_path, pipelines, images, "second", cache_latents=True))
    assert any("(unreadable)" in line for line in lines)
    assert any(f"'{changed}'" in line and "(image changed)" in line for line in lines)
    assert encodes.count >= 2 and encodes.count < len(entries)  # only those entries, not the whole cache
    again = Calls(monkeypatch, AutoencoderKL, "encode")
    trained(cache_preset(tmp_path, pipelines, images, "third", cache_latents=True))
    assert again.count == 0  # the rebuilt entries are whole and current

    shutil.rmtree(tmp_path / "cache")  # the rebuilt entries hold the new image: the same weights as no cache
    assert_same_weights(rebuilt, trained(cache_preset(tmp_path, pipelines, images, "uncached"))[0])


def entry_content(entry: Path) -> str:
    """The SHA-256 of the image an intact latent entry was made from."""
    with safe_open(str(entry), framework="pt") as stored:
        return stored.metadata()["content_sha256"]


def test_the_cache_identities_hold_the_weights_and_not_the_model_folders_path(tmp_path, pipelines, dataset):
    moved = tmp_path / "elsewhere" / "moved_pipeline"
    shutil.copytree(pipelines["stable_diffusion"], moved)
    here, there = (family_class(preset)(preset, None) for preset in (
        cache_preset(tmp_path, pipelines, dataset, "out"),
        cache_preset(tmp_path, {"stable_diffusion": moved}, dataset, "out")))
    assert here.latent_cache_identity() == there.latent_cache_identity()
    assert here.text_cache_identity() == there.text_cache_identity()
    vae_config = dict(there.pipeline.vae.config)
    with torch.no_grad():
        next(there.pipeline.vae.parameters()).view(-1)[0] += 1e-3  # one weight: the config is unchanged
    assert dict(there.pipeline.vae.config) == vae_config
    assert here.latent_cache_identity() != there.latent_cache_identity()
    assert here.text_cache_identity() == there.text_cache_identity()  # the VAE makes no text embedding
    with torch.no_grad():
        next(there.pipeline.text_encoder.parameters()).view(-1)[0] += 1e-3
    assert here.text_cache_identity() != there.text_cache_identity()


def test_a_moved_model_folder_keeps_its_latent_cache(tmp_path, monkeypatch, pipelines, dataset):
    trained(cache_preset(tmp_path, pipelines, dataset, "first", cache_latents=True))
    moved = tmp_path / "moved" / "pipeline"
    shutil.copytree(pipelines["stable_diffusion"], moved)
    encodes = Calls(monkeypatch, AutoencoderKL, "encode")
    _, lines = trained(cache_preset(tmp_path, {"stable_diffusion": moved}, dataset, "second", cache_latents=True))
    assert encodes.count == 0 and any("entries reused, 0 to encode" in line for line in lines)


def test_stop_and_resume_with_the_latent_cache_and_two_workers_equals_a_straight_run(tmp_path, pipelines, dataset,
                                                                                    uncached_sd):
    preset = cache_preset(tmp_path, pipelines, dataset, "out", cache_latents=True, num_workers=2)
    steps = []
    _, _ = trained(preset, should_stop=lambda: len(steps) >= 3, on_step=steps.append)
    resumed, lines = trained(preset, resume=True)
    assert any("resuming from" in line for line in lines)
    assert_same_weights(resumed, uncached_sd)


def test_sdxl_text_embedding_cache_is_reused_and_trains_the_same_weights(tmp_path, monkeypatch, pipelines,
                                                                         dataset):
    reference, _ = trained(cache_preset(tmp_path, pipelines, dataset, "uncached", "stable_diffusion_xl"))
    forwards = Calls(monkeypatch, CLIPTextModel, "forward")
    first, lines = trained(cache_preset(tmp_path, pipelines, dataset, "first", "stable_diffusion_xl",
                                        cache_text_embeddings=True, cache_latents=True))
    entries = list((tmp_path / "cache" / TEXT_EMBEDDINGS_DIR).rglob("*.safetensors"))
    assert len(entries) == 4 + 1  # four distinct captions and the empty one (caption dropout)
    assert "pooled" in load_file(entries[0])
    assert_same_weights(first, reference)
    built = forwards.count

    second, lines = trained(cache_preset(tmp_path, pipelines, dataset, "second", "stable_diffusion_xl",
                                         cache_text_embeddings=True, cache_latents=True))
    assert forwards.count == built  # no text encoder ran
    assert any("text-embedding cache" in line and "5 of 5 entries reused, 0 to encode" in line for line in lines)
    assert_same_weights(second, reference)


def test_sdxl_time_ids_hold_each_images_original_size_crop_and_bucket(tmp_path, monkeypatch, pipelines, dataset):
    seen = []
    forward = UNet2DConditionModel.forward

    def recording(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kwargs):
        if self.training:
            seen.append((tuple(sample.shape[2:]), added_cond_kwargs["time_ids"].tolist()))
        return forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=added_cond_kwargs,
                       **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording)
    preset = cache_preset(tmp_path, pipelines, dataset, "out", "stable_diffusion_xl", cache_latents=True)
    trained(preset)
    plan = build_step_plan(preset)
    originals = {(height, width) for width, height in map(header_size, dataset.glob("*.png"))}
    buckets = {(height, width) for width, height, _ in plan.buckets}
    assert len(seen) == plan.total_steps  # batch 2, no accumulation: one UNet call per step
    for latent_shape, rows in seen:
        for original_height, original_width, top, left, target_height, target_width in rows:
            assert (original_height, original_width) in originals  # the file's own size, upright
            assert (target_height, target_width) in buckets
            assert latent_shape == (target_height // 2, target_width // 2)  # the tiny VAE's factor 2
            # the crop of this image when it is resized to cover this bucket, computed here from the header
            assert (top, left) == cover_and_crop((original_width, original_height), (target_width, target_height))[1]
    assert any(target_height != target_width for _, rows in seen for *_, target_height, target_width in rows)
    assert any(top or left for _, rows in seen for _, _, top, left, _, _ in rows)  # real crops, not zeros


def test_cache_latents_with_a_unet_model_is_one_line_and_exit_2(tmp_path):
    from tests.training_helpers import tiny_preset

    raw = tiny_preset(tmp_path).to_json_dict()
    raw["data"]["cache_latents"] = True
    with pytest.raises(ConfigError) as error:
        validate_preset(raw)
    assert error.value.key == "data.cache_latents"
    preset = tmp_path / "unet.json"
    save_preset(tiny_preset(tmp_path), preset)
    result = run(train_command(preset, "--set", "data.cache_latents=true"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "data.cache_latents" in result.stderr and "unet" in result.stderr


def test_text_embedding_cache_with_training_text_encoders_is_an_error(tmp_path, pipelines, dataset):
    with pytest.raises(ConfigError) as error:
        validate_preset({"model": {"path": str(pipelines["stable_diffusion"])}, "data": {"path": str(dataset),
                         "cache_text_embeddings": True}, "optimizer": {"text_encoder_lr": 1e-4}})
    assert error.value.key == "data.cache_text_embeddings"


def test_an_unwritable_cache_folder_is_one_line_and_exit_2_and_nothing_is_trained(tmp_path, pipelines, dataset):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    preset = cache_preset(tmp_path, pipelines, dataset, "out", cache_latents=True, cache_dir=str(blocked / "cache"))
    path = tmp_path / "preset.json"
    save_preset(preset, path)
    result = run(train_command(path), timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "data.cache_dir" in result.stderr and str(blocked / "cache") in result.stderr
    assert not (tmp_path / "out" / "model").exists()


def test_two_cpu_processes_share_one_latent_cache_and_train_the_same_weights(tmp_path, pipelines, dataset):
    from tests.training.test_train_cli import torchrun_launch

    weights = {}
    for name, cached in (("uncached", False), ("cached", True)):
        preset = cache_preset(tmp_path, pipelines, dataset, name, cache_latents=cached)
        raw = preset.to_json_dict()
        raw["training"]["num_processes"] = 2
        path = tmp_path / f"{name}.json"
        save_preset(validate_preset(raw), path)
        result = run(torchrun_launch(path), timeout=300)
        assert result.returncode == 0, result.stderr
        weights[name] = load_file(tmp_path / name / "model" / LORA_FILE)
    assert "latent cache" in result.stdout  # the main process reports its part
    entries = list((tmp_path / "cache" / LATENTS_DIR).rglob("*.safetensors"))
    assert entries and not list((tmp_path / "cache" / LATENTS_DIR).rglob("*.tmp"))
    assert_same_weights(weights["cached"], weights["uncached"])
