"""lora.init_weights (SPEC §12): start LoRA training from a LoRA file, ours (either file) or kohya sd-scripts'.

The file's adapters must match the lora section (rank, alpha, target modules, the trained text
encoders); otherwise one line lists every difference. Its path and content hash are in the plan identity.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules.errors import ConfigError
from modules.families import single_file
from modules.families.lora import DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE
from tests.families.conftest import build, family_preset
from tests.training_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["stable_diffusion", "stable_diffusion_xl"]
LORA = {"rank": 4, "alpha": 8}


def lora_weights(family) -> dict[str, torch.Tensor]:
    return {name: value for name, value in family.trainable_state_dict().items() if ".lora_" in name}


@pytest.fixture(scope="module")
def saved(family_pipelines, tmp_path_factory):
    """{family: (its adapters with random values, the folder of both LoRA files written from them)}."""
    result = {}
    for name in NAMES:
        family = build(family_preset(family_pipelines[name], name, "lora", lora=LORA))
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for parameter_name, parameter in family.model.named_parameters():
                if ".lora_" in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))
        folder = tmp_path_factory.mktemp(f"lora_{name}")
        family.save_final_model(folder)
        result[name] = (lora_weights(family), folder)
    return result


# How kohya sd-scripts names the tiny SDXL's attention blocks (its SDXL UNet is the original one:
# input_blocks / middle_block / output_blocks; one resnet per block here, so 2 original blocks per level).
SD_SCRIPTS_SDXL_BLOCKS = {"lora_unet_down_blocks_1_attentions_0_": "lora_unet_input_blocks_3_1_",
                          "lora_unet_mid_block_attentions_0_": "lora_unet_middle_block_1_",
                          "lora_unet_up_blocks_0_attentions_0_": "lora_unet_output_blocks_0_1_",
                          "lora_unet_up_blocks_0_attentions_1_": "lora_unet_output_blocks_1_1_"}


def sd_scripts_sdxl_file(kohya_file: Path, path: Path) -> Path:
    """Our SDXL kohya file with the UNet keys renamed as kohya sd-scripts names SDXL modules."""
    renamed = {}
    for key, value in load_file(kohya_file).items():
        for ours, theirs in SD_SCRIPTS_SDXL_BLOCKS.items():
            key = key.replace(ours, theirs)
        renamed[key] = value
    assert not any(key.startswith("lora_unet_") and "_blocks_" in key.split("transformer_blocks")[0].replace(
        "input_blocks", "").replace("output_blocks", "") for key in renamed)
    save_file(renamed, str(path))
    return path


# kohya sd-scripts names SD 1.x / 2.x UNet modules as diffusers does (the kohya file's names); SDXL ones differ.
@pytest.mark.parametrize("name, file", [(name, file) for name in NAMES for file in (DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE)]
                         + [("stable_diffusion_xl", "sd_scripts")])
def test_training_starts_from_the_adapters_of_a_lora_file(family_pipelines, saved, tmp_path, name, file):
    expected, folder = saved[name]
    path = folder / (KOHYA_LORA_FILE if file == "sd_scripts" else file)
    if file == "sd_scripts":
        path = sd_scripts_sdxl_file(path, tmp_path / "sd_scripts.safetensors")
        assert any(key.startswith("lora_unet_input_blocks_") for key in load_file(path))
    family = build(family_preset(family_pipelines[name], name, "lora", lora={**LORA, "init_weights": str(path)}))
    loaded = lora_weights(family)
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


@pytest.mark.parametrize("lora, expected", [
    ({"rank": 8, "alpha": 8}, "rank 4 in the file, lora.rank 8"),
    ({"rank": 4, "alpha": 4}, "alpha 8 in the file, lora.alpha 4"),
    ({"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k"]}, "which lora.target_modules (and the trained text encoders"),
])
def test_a_file_that_does_not_match_the_lora_section_is_one_line_listing_the_differences(
        family_pipelines, saved, lora, expected):
    name = "stable_diffusion"
    path = saved[name][1] / KOHYA_LORA_FILE
    with pytest.raises(ConfigError) as error:
        build(family_preset(family_pipelines[name], name, "lora", lora={**lora, "init_weights": str(path)}))
    message = str(error.value)
    assert error.value.key == "lora.init_weights" and expected in message and "\n" not in message


def test_text_encoder_adapters_without_text_encoder_training_are_a_difference(family_pipelines, saved):
    from modules.config.preset import validate_preset

    name = "stable_diffusion"
    raw = family_preset(family_pipelines[name], name, "lora", lora=LORA).to_json_dict()
    raw["optimizer"]["text_encoder_lr"] = None
    raw["lora"]["init_weights"] = str(saved[name][1] / DIFFUSERS_LORA_FILE)
    with pytest.raises(ConfigError, match="optimizer.text_encoder_lr"):
        build(validate_preset(raw))


def test_the_plan_identity_holds_the_path_and_content_hash(tmp_path, saved):
    from modules.config.preset import validate_preset
    from modules.schedule.step_plan import build_step_plan
    from tests.conftest import make_images

    path = tmp_path / "start.safetensors"
    path.write_bytes((saved["stable_diffusion"][1] / KOHYA_LORA_FILE).read_bytes())
    images = make_images(tmp_path / "images", 2, size=16)
    raw = {"model": {"path": str(tmp_path / "model.safetensors"), "type": "stable_diffusion"},
           "data": {"path": str(images), "default_caption": "a photo"}, "training": {"method": "lora", "epochs": 1},
           "lora": {"init_weights": str(path)}}
    first = build_step_plan(validate_preset(raw)).identity()
    assert first["lora_init_weights"]["path"] == str(path.resolve())
    assert len(first["lora_init_weights"]["sha256"]) == 64
    save_file({"x": torch.zeros(1)}, str(path))
    assert build_step_plan(validate_preset(raw)).identity()["lora_init_weights"] != first["lora_init_weights"]
    plain = {**raw, "lora": {}}
    assert "lora_init_weights" not in build_step_plan(validate_preset(plain)).identity()


@pytest.mark.parametrize("case", ["missing", "mismatch"])
def test_bad_init_weights_exit_2_from_the_command_line(family_pipelines, saved, tmp_path, case):
    from tests.conftest import make_images

    images = make_images(tmp_path / "images", 2, size=16)
    for image in images.glob("*.png"):
        image.with_suffix(".txt").write_text("a photo", encoding="utf-8")
    init = tmp_path / "absent.safetensors" if case == "missing" else saved["stable_diffusion"][1] / KOHYA_LORA_FILE
    preset = tmp_path / "preset.json"
    preset.write_text(
        f'{{"model": {{"path": "{family_pipelines["stable_diffusion"]}", "resolution": 16}}, '
        f'"data": {{"path": "{images}"}}, "training": {{"method": "lora", "device": "cpu", "epochs": 1}}, '
        f'"optimizer": {{"text_encoder_lr": 0.001}}, "lora": {{"rank": 2, "init_weights": "{init}"}}, '
        f'"output": {{"dir": "{tmp_path / "out"}"}}}}', encoding="utf-8")
    script = "preview.py" if case == "missing" else "train.py"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), str(preset)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert "lora.init_weights" in result.stderr and "Traceback" not in result.stderr
    assert ("does not exist" if case == "missing" else "rank 4 in the file, lora.rank 2") in result.stderr
