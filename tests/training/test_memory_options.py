"""Memory and precision options (SPEC §12) on tiny SD / SDXL pipelines, on CPU.

- bf16 on CPU runs under accelerate's CPU autocast (the UNet computes in bf16) while the LoRA
  weights stay fp32, and a bf16 run stopped and resumed ends bit for bit where the straight run ends.
- Gradient checkpointing, frozen weights in bf16 and the cached components off the device change
  the trained weights by rounding only (tolerances measured below).
- SD and SDXL LoRA with the text encoders and buckets on 2 processes (torchrun): the steps and the
  LR of every group as the preview shows them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from modules.config.preset import validate_preset
from modules.errors import ConfigError
from modules.families.tiny_pipelines import build_tiny_pipeline
from modules.schedule.preview import build_preview
from modules.training import precision, train, trainer
from tests.training_helpers import one_thread, scalar_events  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
KINDS = ("stable_diffusion", "stable_diffusion_xl")
LORA_FILE = "pytorch_lora_weights.safetensors"
# Measured on this CPU, the trained LoRA weights after 4 steps against the run without the option:
# gradient checkpointing (SD and SDXL, text encoders training) and the cached components off the device
# are bit for bit the same (difference 0). Frozen weights in bf16 instead of fp32 under bf16 autocast
# (SGD, 4 steps): max |difference| 5.9e-4, 1.9e-2 of the largest learned (up) weight; bf16 keeps 8 bits
# of mantissa, about 4e-3 per rounding. The bound leaves room for other CPUs.
FROZEN_BF16_RELATIVE_TOLERANCE = 5e-2


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: build_tiny_pipeline(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """6 captioned images in two aspect ratios (square 24 px and 48 x 16), so buckets differ."""
    folder = tmp_path_factory.mktemp("data") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        size = (24, 24) if index % 2 else (48, 16)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(f"a photo of the thing {index}", encoding="utf-8")
    return folder


def preset_for(tmp_path, pipelines, images, kind="stable_diffusion", out="out", **sections):
    raw = {
        "model": {"path": str(pipelines[kind]), "resolution": 16},
        "data": {"path": str(images), "caption_dropout": 0.2},
        "training": {"epochs": 2, "batch_size": 2, "device": "cpu", "seed": 5, "method": "lora"},
        "optimizer": {"type": "adamw", "lr": 2e-2, "text_encoder_lr": 1e-2},
        "scheduler": {"type": "cosine", "warmup": 1},
        "lora": {"rank": 4, "alpha": 4},
        "output": {"dir": str(tmp_path / out), "checkpoint_every": None},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return validate_preset(raw)


def quiet(preset, **kwargs):
    lines = []
    result = train(preset, progress_bar=False, log=lines.append, **kwargs)
    return result, lines


def lora_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(output_dir) / "model" / LORA_FILE)


def largest_difference(left: dict, right: dict) -> tuple[float, float]:
    """(max |left - right| over every tensor, the same over the up weights (zero at the start, so what was
    learned) relative to their largest |value|)."""
    assert left.keys() == right.keys()
    difference = max(float((left[name].float() - right[name].float()).abs().max()) for name in left)
    learned = [name for name in left if ".up." in name]
    learned_difference = max(float((left[name].float() - right[name].float()).abs().max()) for name in learned)
    return difference, learned_difference / max(float(left[name].float().abs().max()) for name in learned)


@pytest.fixture
def watch_family(monkeypatch):
    """The family each `train` builds, seen when the trainer sets up its memory options."""
    seen = []

    def set_up_memory(preset, family, accelerator):
        precision.set_up_memory(preset, family, accelerator)
        seen.append(family)

    monkeypatch.setattr(trainer, "set_up_memory", set_up_memory)
    return seen


# --- bf16 on CPU -----------------------------------------------------------------------------------------


def test_bf16_on_cpu_runs_under_autocast_and_keeps_the_lora_weights_fp32(tmp_path, pipelines, captioned,
                                                                        watch_family, monkeypatch):
    seen_dtypes, parameter_dtypes = set(), set()

    def record(module, inputs, output):
        seen_dtypes.add(output.dtype)

    original = precision.set_up_memory

    def hooked(preset, family, accelerator):
        original(preset, family, accelerator)
        family.pipeline.unet.conv_in.register_forward_hook(record)
        text_layer = next(module for name, module in family.pipeline.text_encoder.named_modules()
                          if name.endswith("q_proj.base_layer"))
        text_layer.register_forward_hook(record)
        watch_family.append(family)

    monkeypatch.setattr(trainer, "set_up_memory", hooked)
    preset = preset_for(tmp_path, pipelines, captioned, training={"mixed_precision": "bf16", "max_steps": 2})
    result, lines = quiet(preset)
    assert result.finished and any("mixed precision: bf16" in line for line in lines)
    assert seen_dtypes == {torch.bfloat16}  # the UNet and the trained text encoder compute in bf16
    family = watch_family[-1]
    for _, parameters in family.parameter_components():
        parameter_dtypes.update(parameter.dtype for _, parameter in parameters)
    assert parameter_dtypes == {torch.float32}
    # model.frozen_dtype auto on CPU: the frozen weights stay fp32 too.
    assert family.pipeline.unet.conv_in.weight.dtype == torch.float32
    assert {value.dtype for value in lora_weights(result.output_dir).values()} == {torch.float32}


def test_a_bf16_run_stopped_and_resumed_ends_bit_for_bit_where_the_straight_run_ends(tmp_path, pipelines,
                                                                                    captioned):
    sections = {"training": {"mixed_precision": "bf16", "epochs": 2}, "model": {"frozen_dtype": "bf16"}}
    straight, _ = quiet(preset_for(tmp_path, pipelines, captioned, out="straight", **sections))
    stopped_preset = preset_for(tmp_path, pipelines, captioned, out="stopped", **sections)
    calls = []
    first, _ = quiet(stopped_preset, should_stop=lambda: calls.append(1) or len(calls) == 2)
    assert not first.finished and first.completed_steps == 2
    resumed, lines = quiet(stopped_preset, resume=True)
    assert resumed.finished and any("resuming" in line and "at step 2" in line for line in lines)
    left, right = lora_weights(straight.output_dir), lora_weights(resumed.output_dir)
    assert left.keys() == right.keys()
    assert all(torch.equal(left[name], right[name]) for name in left)
    assert scalar_events(straight.output_dir) == scalar_events(resumed.output_dir)


def test_a_model_stored_in_bf16_trains_fp32_adapters_and_fp32_frozen_weights_on_cpu(tmp_path, pipelines, captioned,
                                                                                   watch_family):
    import diffusers

    pipeline = diffusers.StableDiffusionPipeline.from_pretrained(pipelines["stable_diffusion"], local_files_only=True)
    pipeline.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
    stored = {**pipelines, "stable_diffusion": tmp_path / "bf16"}
    result, _ = quiet(preset_for(tmp_path, stored, captioned, training={"max_steps": 2}))
    family = watch_family[-1]
    assert result.finished and trained_dtypes(family) == {torch.float32}
    assert {parameter.dtype for parameter in family.model.parameters()} == {torch.float32}  # auto on CPU: fp32


def test_frozen_dtype_needs_mixed_precision_one_line(tmp_path, pipelines, captioned):
    with pytest.raises(ConfigError) as error:
        preset_for(tmp_path, pipelines, captioned, model={"frozen_dtype": "bf16"})
    assert error.value.key == "model.frozen_dtype" and "training.mixed_precision" in str(error.value)
    # fp16 runs in fp32 on CPU, so frozen fp16 weights would have no autocast: refused before training.
    preset = preset_for(tmp_path, pipelines, captioned, model={"frozen_dtype": "fp16"},
                        training={"mixed_precision": "fp16"})
    with pytest.raises(ConfigError) as error:
        quiet(preset)
    assert error.value.key == "model.frozen_dtype" and "fp32 on cpu" in str(error.value)


# --- the memory options change results by rounding only ----------------------------------------------------


def checkpointing_on(encoder) -> bool:
    flag = getattr(type(encoder), "is_activation_checkpointing", None)  # transformers 5; before: is_gradient_...
    return encoder.is_activation_checkpointing if flag is not None else encoder.is_gradient_checkpointing


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_recomputes_and_gives_the_same_weights(tmp_path, pipelines, captioned, kind,
                                                                      watch_family):
    base = preset_for(tmp_path, pipelines, captioned, kind, out="plain", training={"max_steps": 4})
    plain, _ = quiet(base)
    checkpointed = preset_for(tmp_path, pipelines, captioned, kind, out="checkpointed",
                              training={"max_steps": 4, "gradient_checkpointing": True})
    result, _ = quiet(checkpointed)
    family = watch_family[-1]
    assert family.pipeline.unet.is_gradient_checkpointing
    assert all(checkpointing_on(encoder) for _, encoder in family.text_encoders())  # they train
    assert not family.pipeline.vae.is_gradient_checkpointing
    difference, _ = largest_difference(lora_weights(plain.output_dir), lora_weights(result.output_dir))
    assert difference == 0


def test_gradient_checkpointing_runs_the_unet_blocks_again_in_backward(tmp_path, pipelines, captioned,
                                                                      monkeypatch):
    calls = []

    def hooked(preset, family, accelerator):
        precision.set_up_memory(preset, family, accelerator)
        family.pipeline.unet.up_blocks[-1].resnets[-1].conv1.register_forward_hook(lambda *args: calls.append(1))

    monkeypatch.setattr(trainer, "set_up_memory", hooked)
    per_run = []
    for flag, out in ((False, "plain"), (True, "checkpointed")):
        calls.clear()
        quiet(preset_for(tmp_path, pipelines, captioned, out=out, scheduler={"warmup": 0},
                         training={"max_steps": 1, "gradient_checkpointing": flag}))
        per_run.append(len(calls))
    assert per_run[1] == 2 * per_run[0] > 0  # forward, then the recomputation in backward


def test_frozen_weights_in_bf16_change_the_weights_by_rounding_only(tmp_path, pipelines, captioned, watch_family):
    runs = {}
    for frozen in ("fp32", "bf16"):
        # Plain SGD: Adam's first steps are sign(gradient) * lr, which turns any rounding into a full step.
        preset = preset_for(tmp_path, pipelines, captioned, out=frozen, model={"frozen_dtype": frozen},
                            training={"mixed_precision": "bf16", "max_steps": 4},
                            optimizer={"type": "sgd", "lr": 1.0, "text_encoder_lr": 1.0})
        runs[frozen], _ = quiet(preset)
        family = watch_family[-1]
        assert family.pipeline.unet.conv_in.weight.dtype == getattr(torch, {"fp32": "float32",
                                                                             "bf16": "bfloat16"}[frozen])
        assert family.pipeline.vae.encoder.conv_in.weight.dtype == family.pipeline.unet.conv_in.weight.dtype
        assert {parameter.dtype for _, group in family.parameter_components() for _, parameter in group} == {
            torch.float32}
    difference, relative = largest_difference(lora_weights(runs["fp32"].output_dir),
                                              lora_weights(runs["bf16"].output_dir))
    assert 0 < relative < FROZEN_BF16_RELATIVE_TOLERANCE, (difference, relative)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_components_are_released_on_cpu_and_the_weights_are_the_same(tmp_path, pipelines, captioned, kind,
                                                                            watch_family, monkeypatch):
    # A LoRA run without samples on CPU frees them ("meta": a weight there has no values, so any use of the
    # VAE or the frozen text encoders after the caches are built would fail the run).
    sections = {"training": {"max_steps": 4}, "optimizer": {"text_encoder_lr": None},
                "data": {"cache_latents": True, "cache_text_embeddings": True}}
    released, lines = quiet(preset_for(tmp_path, pipelines, captioned, kind, out="released", **sections))
    family = watch_family[-1]
    assert family.pipeline.vae.encoder.conv_in.weight.device.type == "meta"
    assert all(encoder.device.type == "meta" for _, encoder in family.text_encoders())
    assert family.pipeline.unet.conv_in.weight.device.type == "cpu"
    names = ", ".join(["vae", *[name for name, _ in family.text_encoders()]])
    assert f"memory: {names} released (the caches serve every sample; no samples are drawn)" in lines
    monkeypatch.setattr(trainer, "release_cached_components", lambda *args: None)
    kept, _ = quiet(preset_for(tmp_path, pipelines, captioned, kind, out="kept", **sections))
    assert watch_family[-1].pipeline.vae.encoder.conv_in.weight.device.type == "cpu"
    difference, _ = largest_difference(lora_weights(kept.output_dir), lora_weights(released.output_dir))
    assert difference == 0


def test_cached_components_move_off_the_device_and_stay_on_cpu_when_samples_need_them(tmp_path, pipelines,
                                                                                      captioned, watch_family,
                                                                                      monkeypatch):
    sections = {"training": {"max_steps": 2}, "optimizer": {"text_encoder_lr": None},
                "data": {"cache_latents": True, "cache_text_embeddings": True}}
    sampled, lines = quiet(preset_for(tmp_path, pipelines, captioned, out="sampled",
                                      output={"sample_every": 2, "sample_prompts": ["a photo"]}, **sections))
    assert watch_family[-1].pipeline.vae.encoder.conv_in.weight.device.type == "cpu"
    assert not any(line.startswith("memory:") for line in lines) and list((sampled.output_dir / "samples").glob("*"))
    # A training device other than the offload device (CUDA -> CPU): "meta" stands in for the CPU here.
    monkeypatch.setattr(precision, "OFFLOAD_DEVICE", torch.device("meta"))
    moved, lines = quiet(preset_for(tmp_path, pipelines, captioned, out="moved", **sections))
    assert "memory: vae, text_encoder moved to meta (the caches serve every sample)" in lines
    assert watch_family[-1].pipeline.vae.encoder.conv_in.weight.device.type == "meta"


# --- two processes -----------------------------------------------------------------------------------------


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("kind", KINDS)
def test_lora_with_text_encoders_and_buckets_on_two_processes_follows_the_preview(tmp_path, pipelines, captioned,
                                                                                  kind):
    preset = preset_for(tmp_path, pipelines, captioned, kind,
                        data={"buckets": True, "bucket_step": 8, "bucket_max_aspect": 4, "caption_dropout": 0.2},
                        training={"num_processes": 2, "batch_size": 1, "epochs": 2,
                                  "gradient_accumulation_steps": 2},
                        optimizer={"text_encoder_stop_after": 2})
    preset_file = tmp_path / "preset.json"
    preset_file.write_text(json.dumps(preset.to_json_dict()), encoding="utf-8")
    preview = build_preview(preset)
    total = preview.plan.total_steps
    assert preview.plan.buckets and len(preview.plan.buckets) == 2
    result = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", str(ROOT / "scripts" / "train.py"),
                             str(preset_file), "--no-progress"], capture_output=True, text=True,
                            env=environment(), cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout and result.stdout.count(f"finished {total} steps") == 1
    events = scalar_events(preset.output.dir)
    table = preview.curve.effective_table()
    for column, name in enumerate(preview.curve.group_names):
        steps, values = zip(*events[f"lr/{name}"])
        assert list(steps) == list(range(total))
        np.testing.assert_allclose(values, table[:, column], rtol=1e-6, atol=0)
    assert set(preview.curve.group_names) >= {"unet", "text_encoder"}
    weights = lora_weights(preset.output.dir)
    assert any("text_encoder" in name for name in weights) and any("unet" in name for name in weights)


# --- CUDA (scripts/gpu_check.sh runs these on a GPU machine; skipped elsewhere) ----------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def watch_set_up(monkeypatch):
    """(family, accelerator) of each `train`, seen when the trainer sets up its memory options."""
    seen = []

    def set_up_memory(preset, family, accelerator):
        precision.set_up_memory(preset, family, accelerator)
        seen.append((family, accelerator))

    monkeypatch.setattr(trainer, "set_up_memory", set_up_memory)
    return seen


def trained_dtypes(family) -> set:
    return {parameter.dtype for _, group in family.parameter_components() for _, parameter in group}


@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_bf16_frozen_weights_in_bf16_and_lora_weights_fp32(tmp_path, pipelines, captioned, kind, watch_set_up):
    losses = []
    preset = preset_for(tmp_path, pipelines, captioned, kind, training={"device": "cuda", "mixed_precision": "bf16",
                                                                         "max_steps": 3,
                                                                         "gradient_checkpointing": True})
    result, _ = quiet(preset, on_step=lambda report: losses.append(report.loss))
    family, accelerator = watch_set_up[-1]
    assert result.finished and accelerator.mixed_precision == "bf16" and all(np.isfinite(losses))
    assert family.pipeline.unet.conv_in.weight.dtype == torch.bfloat16  # frozen_dtype auto on CUDA
    assert family.pipeline.unet.conv_in.weight.device.type == "cuda"
    assert trained_dtypes(family) == {torch.float32}
    assert {value.dtype for value in lora_weights(result.output_dir).values()} == {torch.float32}


@needs_cuda
def test_cuda_fp16_uses_the_grad_scaler_and_keeps_the_vae_fp32(tmp_path, pipelines, captioned, watch_set_up):
    losses = []
    preset = preset_for(tmp_path, pipelines, captioned, training={"device": "cuda", "mixed_precision": "fp16",
                                                                  "max_steps": 3})
    result, _ = quiet(preset, on_step=lambda report: losses.append(report.loss))
    family, accelerator = watch_set_up[-1]
    assert result.finished and accelerator.scaler is not None and all(np.isfinite(losses))
    assert family.pipeline.unet.conv_in.weight.dtype == torch.float16
    assert family.pipeline.vae.encoder.conv_in.weight.dtype == torch.float32
    assert trained_dtypes(family) == {torch.float32}


@needs_cuda
def test_cuda_cached_components_move_to_cpu_and_come_back_for_samples(tmp_path, pipelines, captioned,
                                                                       watch_set_up):
    preset = preset_for(tmp_path, pipelines, captioned, training={"device": "cuda", "mixed_precision": "bf16",
                                                                  "max_steps": 2},
                        optimizer={"text_encoder_lr": None},
                        data={"cache_latents": True, "cache_text_embeddings": True},
                        output={"sample_every": 2, "sample_prompts": ["a photo"]})
    result, lines = quiet(preset)
    family, _ = watch_set_up[-1]
    assert "memory: vae, text_encoder moved to cpu (the caches serve every sample)" in lines
    assert family.pipeline.vae.device.type == "cpu" and family.pipeline.text_encoder.device.type == "cpu"
    assert list((result.output_dir / "samples").glob("*.png"))


@needs_cuda
def test_cuda_adamw_8bit_trains_a_lora(tmp_path, pipelines, captioned):
    pytest.importorskip("bitsandbytes")
    losses = []
    preset = preset_for(tmp_path, pipelines, captioned, training={"device": "cuda", "mixed_precision": "bf16",
                                                                  "max_steps": 3},
                        optimizer={"type": "adamw_8bit"})
    result, _ = quiet(preset, on_step=lambda report: losses.append(report.loss))
    assert result.finished and all(np.isfinite(losses))
