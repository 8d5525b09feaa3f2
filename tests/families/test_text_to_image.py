"""Text-to-image fine-tuning (SPEC §7) on tiny SD and SDXL pipelines: steps, LR per group, outputs, resume, errors.

The pipelines are built once per session from configs (modules.families.tiny_pipelines,
the SD one through scripts/build_tiny_pipeline.py as a user builds it), at 16 px.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from modules.config.preset import save_preset, validate_preset
from modules.errors import ConfigError
from modules.schedule.lr_curve import read_lr_csv
from modules.schedule.preview import build_preview
from modules.training import train
from modules.families.tiny_pipelines import build_tiny_pipeline
from tests.conftest import make_images
from tests.training_helpers import one_thread, scalar_events  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_CLASSES = {"stable_diffusion": "StableDiffusionPipeline", "stable_diffusion_xl": "StableDiffusionXLPipeline"}
ENCODER_GROUPS = {"stable_diffusion": ["text_encoder"], "stable_diffusion_xl": ["text_encoder", "text_encoder_2"]}
RANK, ALPHA = 4, 2.0  # alpha != rank: the LoRA scale 0.5 must survive into every output file
# Measured: the fused LoRA delta of the loaded files differs from scale * B @ A of the trained tensors by
# at most 1.4e-8 (float32 matmul order); 1e-6 leaves room for other CPUs.
DELTA_TOLERANCE = 1e-6


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    built = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tiny_pipeline.py"), "--type",
                            "stable_diffusion", str(root / "sd")], capture_output=True, text=True, env=environment(),
                           cwd=ROOT, timeout=300)
    assert built.returncode == 0, built.stderr
    build_tiny_pipeline("stable_diffusion_xl", root / "sdxl")
    return {"stable_diffusion": root / "sd", "stable_diffusion_xl": root / "sdxl"}


@pytest.fixture(scope="session")
def captioned(tmp_path_factory):
    """5 images of 20 px (cropped to 16), each with a caption."""
    folder = make_images(tmp_path_factory.mktemp("data") / "images", 5, size=20)
    for index, image in enumerate(sorted(folder.glob("*.png"))):
        image.with_suffix(".txt").write_text(f"  a photo of the thing {index}\n", encoding="utf-8")
    return folder


def text_preset(tmp_path, pipelines, images, kind, method="lora", out="out", **sections):
    raw = {
        "model": {"path": str(pipelines[kind]), "resolution": 16},
        "data": {"path": str(images), "caption_dropout": 0.2},
        "training": {"epochs": 2, "gradient_accumulation_steps": 2, "device": "cpu", "seed": 5, "method": method},
        "optimizer": {"type": "adamw", "lr": 2e-2, "text_encoder_lr": 1e-2, "text_encoder_stop_after": 3},
        "scheduler": {"type": "cosine", "warmup": 1},
        "output": {"dir": str(tmp_path / out), "checkpoint_every": None, "keep_checkpoints": 2},
    }
    if method == "lora":
        raw["lora"] = {"rank": RANK, "alpha": ALPHA}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return validate_preset(raw)


def quiet(preset, **kwargs):
    return train(preset, progress_bar=False, log=lambda message: None, **kwargs)


def load_pipeline(kind, folder):
    import diffusers

    pipeline = getattr(diffusers, PIPELINE_CLASSES[kind]).from_pretrained(folder, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def images_of(pipeline) -> np.ndarray:
    return pipeline(prompt=["a photo of the thing"], height=16, width=16, num_inference_steps=3,
                    generator=torch.Generator().manual_seed(0), output_type="np").images


class StepRecorder:
    """The lr every group really ran with at each optimizer step, and the text-encoder weights after each step."""

    def __init__(self):
        self.lrs, self.encoder_weights = [], []
        self.handles = [register_optimizer_step_pre_hook(self.before), register_optimizer_step_post_hook(self.after)]

    def before(self, optimizer, args, kwargs):
        self.lrs.append({group["name"]: group["lr"] for group in optimizer.param_groups})

    def after(self, optimizer, args, kwargs):
        self.encoder_weights.append([parameter.detach().clone() for group in optimizer.param_groups
                                     if group["name"].startswith("text_encoder") for parameter in group["params"]])

    def close(self):
        for handle in self.handles:
            handle.remove()


def fused_delta_error(kind, base_folder, lora_file, trained: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Load `lora_file` into the base pipeline, fuse it, and compare every layer's weight change with
    (alpha / rank) * B @ A of the trained tensors. Returns (largest error, layers compared)."""
    pipeline = load_pipeline(kind, base_folder)
    before = {name: parameter.detach().clone() for component in ["unet", *ENCODER_GROUPS[kind]]
              for name, parameter in _weights(getattr(pipeline, component), component).items()}
    pipeline.load_lora_weights(lora_file)
    pipeline.fuse_lora()
    worst, layers = 0.0, 0
    for name, down in trained.items():
        if ".lora_A." not in name:
            continue
        component, path = name.split(".", 1)
        path = path.split(".lora_A.")[0]
        up = trained[name.replace(".lora_A.", ".lora_B.")]
        module = getattr(pipeline, component).get_submodule(path)
        delta = module.weight.detach() - before[f"{component}.{path}"]
        expected = (ALPHA / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(delta.shape)
        worst = max(worst, float((delta - expected).abs().max()))
        layers += 1
    return worst, layers


def _weights(module, component):
    return {f"{component}.{name[: -len('.weight')]}": parameter for name, parameter in module.named_parameters()
            if name.endswith(".weight")}


@pytest.mark.parametrize("kind", ["stable_diffusion", "stable_diffusion_xl"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_trains_the_plan_every_group_follows_the_preview_and_the_outputs_load(tmp_path, pipelines, captioned, kind,
                                                                             method):
    preset = text_preset(tmp_path, pipelines, captioned, kind, method,
                         output={"checkpoint_every": "1 epochs"})
    preview = build_preview(preset)
    plan, curve = preview.plan, preview.curve
    groups = ["unet", *ENCODER_GROUPS[kind]]
    assert list(curve.group_names) == groups and plan.total_steps == 6  # 5 micro-batches, windows 2+2+1, 2 epochs
    assert any("5 of 5 images have a caption file" in line for line in preview.report_lines())

    recorder = StepRecorder()
    try:
        result = quiet(preset)
    finally:
        recorder.close()

    assert result.finished and result.completed_steps == plan.total_steps == len(recorder.lrs)
    # The LR each optimizer step ran with is the plan's, the text encoders' drop to 0 at step 3 included.
    for step, lrs in enumerate(recorder.lrs):
        assert [lrs[name] for name in groups] == curve.applied_lrs(step)
        if step:  # step 0 is the warmup's first step, at LR 0 for every group
            assert all((lrs[name] == 0) == (step >= 3) for name in groups[1:])
    # From the stop on the text encoders do not move; before it they trained.
    assert all(torch.equal(a, b) for a, b in zip(recorder.encoder_weights[2], recorder.encoder_weights[-1]))
    assert not all(torch.equal(a, b) for a, b in zip(recorder.encoder_weights[0], recorder.encoder_weights[2]))
    names, csv_table = read_lr_csv(tmp_path / "out" / "lr_plan.csv")
    table = curve.effective_table()
    assert names == groups
    np.testing.assert_array_equal(csv_table, table)
    assert (table[3:, 1:] == 0).all() and (table[1:3, 1:] > 0).all()
    events = scalar_events(tmp_path / "out")
    for column, name in enumerate(groups):
        steps, values = zip(*events[f"lr/{name}"])
        assert list(steps) == list(range(plan.total_steps))
        np.testing.assert_allclose(values, table[:, column], rtol=1e-6, atol=0)  # TensorBoard stores float32

    model_dir = tmp_path / "out" / "model"
    checkpoint = result.checkpoint
    base_images = images_of(load_pipeline(kind, pipelines[kind]))
    if method == "lora":
        trained = load_file(checkpoint / "trainable_weights.safetensors")
        assert set(trained) and all(".lora_" in name for name in trained)  # the adapters only, not the model
        assert sum(path.stat().st_size for path in checkpoint.iterdir()) < 2_000_000
        assert sorted(path.name for path in model_dir.iterdir()) == ["lora_kohya.safetensors",
                                                                     "pytorch_lora_weights.safetensors"]
        error, layers = fused_delta_error(kind, pipelines[kind], model_dir, trained)
        assert layers == len(trained) // 2 and error < DELTA_TOLERANCE
        pipeline = load_pipeline(kind, pipelines[kind])
        pipeline.load_lora_weights(model_dir)
        assert not np.array_equal(images_of(pipeline), base_images)

        kohya = load_file(model_dir / "lora_kohya.safetensors")
        prefixes = ("lora_unet_", "lora_te_") if kind == "stable_diffusion" else ("lora_unet_", "lora_te1_",
                                                                                  "lora_te2_")
        pattern = re.compile(r"^(lora_unet|lora_te|lora_te1|lora_te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
        assert all(pattern.match(key) for key in kohya), [key for key in kohya if not pattern.match(key)][:3]
        assert {key.split("_")[0] + "_" + key.split("_")[1] + "_" for key in kohya} == set(prefixes)
        assert len(kohya) == 3 * layers
        assert all(float(value) == ALPHA for key, value in kohya.items() if key.endswith(".alpha"))
        assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
        assert any(key.startswith(prefixes[1] + "text_model_encoder_layers_0_self_attn_q_proj.") for key in kohya)
        # The kohya file describes the same model: diffusers' kohya loader gives the same fused weights.
        error, _ = fused_delta_error(kind, pipelines[kind], model_dir / "lora_kohya.safetensors", trained)
        assert error < DELTA_TOLERANCE
    else:
        assert (model_dir / "model_index.json").is_file()
        loaded, base = load_pipeline(kind, model_dir), load_pipeline(kind, pipelines[kind])
        for component in groups:
            trained_state, base_state = getattr(loaded, component).state_dict(), getattr(base, component).state_dict()
            assert trained_state.keys() == base_state.keys()
            assert any(not torch.equal(trained_state[name], base_state[name]) for name in base_state), component
        assert not any("lora" in name for name in loaded.unet.state_dict())
        assert not np.array_equal(images_of(loaded), base_images)


def test_sampling_writes_one_image_per_prompt_and_does_not_change_training(tmp_path, pipelines, captioned):
    common = {"training": {"max_steps": 3}}
    plain = text_preset(tmp_path, pipelines, captioned, "stable_diffusion", out="plain", **common)
    sampled = text_preset(tmp_path, pipelines, captioned, "stable_diffusion", out="sampled", **common,
                          output={"sample_every": 2, "sample_prompts": ["a photo", "the thing"]})
    quiet(plain)
    quiet(sampled)
    assert sorted(path.name for path in (tmp_path / "sampled" / "samples").iterdir()) == [
        "step-00000002-0.png", "step-00000002-1.png"]
    plain_weights = load_file(tmp_path / "plain" / "model" / "pytorch_lora_weights.safetensors")
    sampled_weights = load_file(tmp_path / "sampled" / "model" / "pytorch_lora_weights.safetensors")
    assert plain_weights.keys() == sampled_weights.keys()
    assert all(torch.equal(plain_weights[name], sampled_weights[name]) for name in plain_weights)


# --- resume through scripts/train.py ------------------------------------------------------------------------------


def train_command(*args) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *map(str, args), "--no-progress"]


def newest_step(output: Path) -> int:
    steps = [-1]
    for path in (output / "checkpoints").iterdir() if (output / "checkpoints").is_dir() else ():
        try:
            if not path.name.startswith("."):
                steps.append(json.loads((path / "training_state.json").read_text())["global_step"])
        except FileNotFoundError:
            pass
    return max(steps)


def wait_for(condition, process, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_lora_with_a_text_encoder_lora_resumes_exactly_after_a_stop_sigterm_and_sigkill(tmp_path, pipelines,
                                                                                      captioned):
    sections = {"training": {"epochs": 5, "gradient_accumulation_steps": 2},
                "lora": {"rank": RANK, "alpha": ALPHA, "dropout": 0.1},
                "optimizer": {"text_encoder_stop_after": "60%"},
                "output": {"checkpoint_every": 1, "keep_checkpoints": 2}}
    straight = text_preset(tmp_path, pipelines, captioned, "stable_diffusion", out="straight", **sections)
    quiet(straight)
    preset_file = tmp_path / "preset.json"
    save_preset(text_preset(tmp_path, pipelines, captioned, "stable_diffusion", **sections), preset_file)
    output, total = tmp_path / "out", build_preview(straight).plan.total_steps
    assert total == 15

    # 1. A planned stop (--stop-at-step): checkpoint, resume command, exit 0.
    first = subprocess.run(train_command(preset_file, "--stop-at-step", 3), capture_output=True, text=True,
                           env=environment(), cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "resume with: " in first.stdout and newest_step(output) == 3

    # 2. SIGTERM: finishes the step, writes a checkpoint, exits 0.
    process = subprocess.Popen(train_command(preset_file, "--resume"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment(), cwd=ROOT)
    wait_for(lambda: newest_step(output) >= 5, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    stopped_at = newest_step(output)
    assert 5 <= stopped_at < total - 4

    # 3. SIGKILL while a later checkpoint is being written.
    target = stopped_at + random.randint(2, 3)
    process = subprocess.Popen(train_command(preset_file, "--resume"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=environment(), cwd=ROOT)

    def writing_target() -> bool:
        names = os.listdir(output / "checkpoints")
        return any(name.startswith(".step-") and int(name[6:14]) >= target for name in names)

    wait_for(writing_target, process)
    process.kill()
    process.wait(timeout=60)
    killed_at = newest_step(output)
    assert stopped_at < killed_at < total

    # 4. Resume to the end: the same LoRA, bit for bit, and the same curves.
    last = subprocess.run(train_command(preset_file, "--resume"), capture_output=True, text=True,
                          env=environment(), cwd=ROOT, timeout=300)
    assert last.returncode == 0, last.stderr
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        expected, got = load_file(tmp_path / "straight" / "model" / name), load_file(output / "model" / name)
        assert expected.keys() == got.keys()
        different = [key for key in expected if not torch.equal(expected[key], got[key])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:2]}"
    straight_events, resumed_events = scalar_events(tmp_path / "straight"), scalar_events(output)
    for tag in ("lr/unet", "lr/text_encoder", "loss/train"):
        assert [step for step, _ in resumed_events[tag]] == list(range(total)), tag
        assert resumed_events[tag] == straight_events[tag], tag


# --- bad input through scripts/train.py: one line, exit 2, nothing written --------------------------------------------


@pytest.fixture
def train_cli(monkeypatch):
    """scripts/train.py's main() in this process (its signal handlers restored after)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import train as train_script

    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield train_script.main
    for number, handler in handlers.items():
        signal.signal(number, handler)


def run_bad(train_cli, capsys, preset_file, *overrides) -> str:
    arguments = [str(preset_file), "--no-progress"]
    for override in overrides:
        arguments += ["--set", override]
    with pytest.raises(SystemExit) as exited:
        train_cli(arguments)
    stderr = capsys.readouterr().err.strip()
    assert exited.value.code == 2
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    return stderr


def test_bad_text_to_image_input_is_one_line_and_exit_2(tmp_path, pipelines, captioned, train_cli, capsys):
    preset_file = tmp_path / "preset.json"
    save_preset(text_preset(tmp_path, pipelines, captioned, "stable_diffusion"), preset_file)
    output = tmp_path / "out"

    # Captions: a missing one without a default names how many and the first; a non-UTF-8 one is named.
    images = tmp_path / "images"
    shutil.copytree(captioned, images)
    (images / "image_0001.txt").unlink()
    (images / "image_0003.txt").unlink()
    message = run_bad(train_cli, capsys, preset_file, f"data.path={images}")
    assert "2 of 5 images have no caption file" in message and str(images / "image_0001.txt") in message
    (images / "image_0001.txt").write_bytes(b"caf\xe9")
    (images / "image_0003.txt").write_text("fine")
    message = run_bad(train_cli, capsys, preset_file, f"data.path={images}")
    assert str(images / "image_0001.txt") in message and "UTF-8" in message

    # Pipeline folders: the wrong type, a component missing.
    message = run_bad(train_cli, capsys, preset_file, "model.type=stable_diffusion_xl")
    assert "'StableDiffusionPipeline'" in message and "StableDiffusionXLPipeline" in message
    broken = tmp_path / "broken_pipeline"
    shutil.copytree(pipelines["stable_diffusion"], broken)
    shutil.rmtree(broken / "text_encoder")
    message = run_bad(train_cli, capsys, preset_file, f"model.path={broken}")
    assert "lacks the component 'text_encoder'" in message

    # LoRA settings.
    assert "lora.rank" in run_bad(train_cli, capsys, preset_file, "lora.rank=0")
    message = run_bad(train_cli, capsys, preset_file, 'lora.target_modules=["to_q", "to_query"]')
    assert message.startswith("train.py: error: lora.target_modules") and "'to_query' matches no module" in message
    message = run_bad(train_cli, capsys, preset_file, "training.method=full")
    assert "lora." in message and "training.method is 'full'" in message
    assert not output.exists()  # nothing was written for any of them

    # A text-encoder LR for a unet model (tiny built-in UNet, no text encoder).
    unet_file = tmp_path / "unet.json"
    unet_file.write_text(json.dumps({"model": {"config": "tiny", "resolution": 8}, "data": {"path": str(captioned)},
                                     "optimizer": {"text_encoder_lr": 1e-4}}))
    message = run_bad(train_cli, capsys, unet_file)
    assert "optimizer.text_encoder_lr" in message and "no text encoder" in message
    ddpm_folder = tmp_path / "ddpm_unet"
    from modules.families.unet_models import tiny_unet

    tiny_unet(8).save_pretrained(ddpm_folder)
    unet_file.write_text(json.dumps({"model": {"path": str(ddpm_folder), "resolution": 8},
                                     "data": {"path": str(captioned)}, "optimizer": {"text_encoder_lr": 1e-4}}))
    assert "no text encoder" in run_bad(train_cli, capsys, unet_file)  # model.type auto, read from the folder


def test_resuming_with_other_lora_settings_is_refused_and_keeps_the_checkpoint(tmp_path, pipelines, captioned):
    preset = text_preset(tmp_path, pipelines, captioned, "stable_diffusion", training={"max_steps": 4})
    reports = []
    stopped = quiet(preset, on_step=reports.append, should_stop=lambda: len(reports) >= 2)
    assert not stopped.finished and stopped.checkpoint.is_dir()

    for method, changed in (("lora", {"lora": {"rank": 8, "alpha": ALPHA}}), ("full", {})):
        other = text_preset(tmp_path, pipelines, captioned, "stable_diffusion", method,
                            training={"max_steps": 4}, **changed)
        with pytest.raises(ConfigError, match="do not fit the model"):
            quiet(other, resume=True)
    assert quiet(preset, resume=True).finished  # the checkpoint is intact


# --- SPEC §11: validation and EMA on the text-to-image families --------------------------------------

def lora_file(output_dir) -> dict:
    return load_file(Path(output_dir) / "model" / "pytorch_lora_weights.safetensors")


def test_validation_with_lora_dropout_and_caption_dropout_changes_no_trained_weight(tmp_path, pipelines, captioned):
    """LoRA dropout draws from the global torch RNG and caption dropout from the step's generator: the
    validation pass (eval mode, its own generators) must leave both untouched."""
    runs = {}
    for name, output in (("plain", {}), ("validated", {"validate_every": 2, "validation_timesteps": [10, 900]})):
        preset = text_preset(tmp_path, pipelines, captioned, "stable_diffusion", out=name,
                             data={"validation_split": 0.4}, lora={"rank": RANK, "alpha": ALPHA, "dropout": 0.3},
                             training={"ema": True, "ema_decay": 0.9}, output=output)
        quiet(preset)
        runs[name] = preset
    plain, validated = lora_file(runs["plain"].output.dir), lora_file(runs["validated"].output.dir)
    assert plain.keys() == validated.keys() and all(torch.equal(plain[key], validated[key]) for key in plain)
    events = scalar_events(runs["validated"].output.dir)
    assert {"loss/validation", "loss/validation/images", "loss/validation/non_ema"} <= set(events)


def test_sdxl_validation_from_the_caches_equals_validation_without_them(tmp_path, pipelines, captioned):
    """The VAE latents and caption embeddings of the validation images, cached or not, give the same losses."""
    values = []
    for name, data in (("direct", {}), ("cached", {"cache_latents": True, "cache_text_embeddings": True})):
        preset = text_preset(tmp_path, pipelines, captioned, "stable_diffusion_xl", out=name,
                             data={"validation_split": 0.4, "caption_dropout": 0.0, **data},
                             optimizer={"text_encoder_lr": None, "text_encoder_stop_after": None},
                             output={"validate_every": 3, "validation_timesteps": [100, 700]})
        quiet(preset)
        values.append(scalar_events(preset.output.dir)["loss/validation"])
    assert values[0] == values[1] and len(values[0]) == 2
