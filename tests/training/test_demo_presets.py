"""The text-to-image demo of `make demo`: its preset, its bundled captioned images, and one run of it.

`make demo` builds the tiny SD pipeline into output/tiny_sd and trains
training_presets/text_to_image_demo.json on it; here the same script builds
the pipeline into tmp_path and the same preset trains with only model.path
and output.dir moved there.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from modules.data.captions import caption_file, load_captions
from modules.config.preset import load_preset
from modules.data.listing import list_images
from modules.schedule.lr_curve import read_lr_csv
from modules.schedule.preview import build_preview
from modules.training import train
from tests.training_helpers import one_thread, scalar_events  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "training_presets" / "text_to_image_demo.json"
FULL_DEMO = ROOT / "training_presets" / "text_to_image_full_demo.json"
MAX_IMAGE_BYTES = 8 * 1024  # the bundled images stay small: the repository carries them


def test_the_demo_images_are_small_photos_each_with_a_caption():
    preset = load_preset(DEMO)
    images = list_images(ROOT / preset.data.path)
    assert len(images) >= 5
    for image in images:
        assert image.stat().st_size <= MAX_IMAGE_BYTES, image
        with Image.open(image) as opened:
            assert max(opened.size) <= 64 and min(opened.size) >= preset.model.resolution, image
        assert caption_file(image, preset.data.caption_extension).is_file(), image
    captions = load_captions(images, preset.data.caption_extension, None)  # no default needed: all captioned
    assert all(captions.values())


def test_the_demo_preset_is_an_sd_lora_with_a_text_encoder_lora_that_stops():
    preset = load_preset(DEMO)
    assert (preset.model.type, preset.training.method) == ("stable_diffusion", "lora")
    assert preset.lora.resolved_alpha != preset.lora.rank  # the scale alpha / rank is exercised
    assert preset.output.sample_prompts and preset.output.sample_every is not None
    curve = build_preview(preset).curve
    assert list(curve.group_names) == ["unet", "text_encoder"]
    table = curve.effective_table()
    stop = curve.stop_steps[1]
    assert 0 < stop < curve.plan.total_steps - 1  # the drop to 0 is inside the run, with steps on each side
    assert np.all(table[preset.scheduler.warmup:stop, 1] > 0)
    assert np.all(table[stop:, 1] == 0) and np.all(table[stop:, 0] > 0)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """The pipeline `make demo` builds, built the same way (the project script)."""
    folder = tmp_path_factory.mktemp("pipeline") / "tiny_sd"
    built = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tiny_pipeline.py"), "--type",
                            "stable_diffusion", str(folder)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert built.returncode == 0, built.stderr
    return folder


def moved(path: Path, tiny_sd: Path, tmp_path: Path):
    return load_preset(path, [f"model.path={tiny_sd}", f"output.dir={tmp_path / 'out'}",
                              f"data.path={ROOT / 'training_presets' / 'text_to_image_images'}"])


def test_the_full_demo_is_the_same_run_without_lora():
    lora, full = load_preset(DEMO), load_preset(FULL_DEMO)
    assert full.training.method == "full" and full.lora == type(full.lora)()  # no LoRA option with full
    assert full.data == lora.data and full.model == lora.model
    assert build_preview(full).plan.total_steps == build_preview(lora).plan.total_steps
    assert build_preview(full).curve.stop_steps == build_preview(lora).curve.stop_steps


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_full_demo_leaves_a_pipeline_folder_with_the_trained_unet_and_text_encoder(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    preset = moved(FULL_DEMO, tiny_sd, tmp_path)
    assert train(preset, progress_bar=False, log=lambda message: None).finished
    base = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    trained = StableDiffusionPipeline.from_pretrained(tmp_path / "out" / "model", local_files_only=True)
    for component in ("unet", "text_encoder"):
        before, after = getattr(base, component).state_dict(), getattr(trained, component).state_dict()
        assert before.keys() == after.keys()
        assert any(not (before[key] == after[key]).all() for key in before), f"{component} did not change"
    vae_before, vae_after = base.vae.state_dict(), trained.vae.state_dict()
    assert all((vae_before[key] == vae_after[key]).all() for key in vae_before)  # the VAE never trains


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_demo_trains_its_plan_and_leaves_both_lora_files(tiny_sd, tmp_path):
    preset = moved(DEMO, tiny_sd, tmp_path)
    result = train(preset, progress_bar=False, log=lambda message: None)
    plan_total = build_preview(preset).plan.total_steps
    assert result.finished and result.completed_steps == plan_total

    model = tmp_path / "out" / "model"
    assert load_file(model / "pytorch_lora_weights.safetensors")
    kohya = load_file(model / "lora_kohya.safetensors")
    assert any(key.startswith("lora_unet_") for key in kohya) and any(key.startswith("lora_te_") for key in kohya)
    samples = sorted((tmp_path / "out" / "samples").glob("*.png"))
    assert len(samples) == 2 * len(preset.output.sample_prompts)

    names, table = read_lr_csv(tmp_path / "out" / "lr_plan.csv")
    assert names == ["unet", "text_encoder"]
    events = scalar_events(tmp_path / "out")
    for column, group in enumerate(names):
        logged = [value for _, value in events[f"lr/{group}"]]
        np.testing.assert_allclose(logged, table[:, column].astype(np.float32), rtol=0)  # TensorBoard keeps float32
    assert events["lr/text_encoder"][-1][1] == 0.0


VALIDATION_DEMO = ROOT / "training_presets" / "validation_ema_demo.json"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_validation_demo_logs_validation_where_the_preview_says_and_its_lora_loads(tiny_sd, tmp_path):
    import diffusers

    preset = moved(VALIDATION_DEMO, tiny_sd, tmp_path)
    plan = build_preview(preset).plan
    assert plan.validation_images >= 1 and plan.ema_decay == 0.9
    report = "\n".join(build_preview(preset).report_lines())
    assert "validation at     3, 6, 9, 12" in report and "EMA " in report
    result = train(preset, progress_bar=False, log=lambda message: None)
    assert result.finished
    events = scalar_events(tmp_path / "out")
    assert [step for step, _ in events["loss/validation"]] == [step - 1 for step in plan.validation_steps]
    assert len(events["loss/validation/non_ema"]) == len(plan.validation_steps)
    final = load_file(tmp_path / "out" / "model" / "pytorch_lora_weights.safetensors")
    pipeline = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True, safety_checker=None)
    pipeline.load_lora_weights(tmp_path / "out" / "model")  # the EMA weights, loaded the way users load a LoRA
    assert final and any(name.startswith("unet") for name in final)
