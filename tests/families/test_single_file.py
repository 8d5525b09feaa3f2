"""Single-file checkpoints in and out (SPEC §12): layouts from keys, loading, training, the original-layout file.

The tiny pipelines stand in for real checkpoints: saved as single files in tmp_path with our
inverse mapping, and loaded with `from_single_file` and the tiny folder as `config=`
(`single_file.CONFIG_OVERRIDES`; a user's run uses the shipped real-size configs). The tiny
SDXL here has text encoders of different widths (32, 48), as SDXL's are (768, 1280): diffusers
tells the two CLIP models of an SDXL file apart by width. The tiny SD 2.x has an OpenCLIP-style
(gelu) text encoder, saved in OpenCLIP's names.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules.config.preset import validate_preset
from modules.errors import ConfigError
from modules.families import single_file
from modules.families.model_types import resolve_model_type
from modules.families.tiny_pipelines import _scheduler, _text_config, _tokenizer, _vae, build_tiny_pipeline
from tests.training_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
LAYOUT_TYPES = {"sd_v1": "stable_diffusion", "sd_v2": "stable_diffusion", "sd_v2_768_v": "stable_diffusion",
                "sdxl_base": "stable_diffusion_xl"}
PIPELINE_CLASSES = {"stable_diffusion": "StableDiffusionPipeline", "stable_diffusion_xl": "StableDiffusionXLPipeline"}
OPTIONAL_NONE = {"stable_diffusion": {"safety_checker": None, "requires_safety_checker": False},
                 "stable_diffusion_xl": {}}


def _wide_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, hidden_size=48, intermediate_size=40, layer_norm_eps=1e-05,
                          num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000,
                          max_position_embeddings=77, projection_dim=24, hidden_act="gelu")


def build_tiny_sdxl(folder: Path) -> Path:
    """A tiny SDXL pipeline whose two text encoders differ in width (32 and 48), as SDXL's do."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 24, cross_attention_dim=80, norm_num_groups=4)
    scratch = folder.with_name(folder.name + ".tokenizers")
    pipeline = StableDiffusionXLPipeline(
        unet=unet, vae=_vae(), text_encoder=CLIPTextModel(_text_config()).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_wide_text_config()).eval(),
        tokenizer=_tokenizer(scratch / "tokenizer", "<|endoftext|>"), tokenizer_2=_tokenizer(scratch / "tokenizer_2", "!"),
        scheduler=_scheduler(), force_zeros_for_empty_prompt=True)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sd2(folder: Path, prediction_type: str) -> Path:
    """The tiny SD pipeline with an OpenCLIP-style (gelu) text encoder and `prediction_type`."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    build_tiny_pipeline("stable_diffusion", folder)
    pipeline = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
    torch.manual_seed(1)
    pipeline.text_encoder = CLIPTextModel(_text_config(hidden_act="gelu")).eval()
    pipeline.scheduler.register_to_config(prediction_type=prediction_type)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def load_folder(kind: str, folder: Path):
    import diffusers

    return getattr(diffusers, PIPELINE_CLASSES[kind]).from_pretrained(folder, local_files_only=True,
                                                                       **OPTIONAL_NONE[kind])


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """{layout name: a tiny diffusers folder of that layout}, each also the config folder for its single files."""
    root = tmp_path_factory.mktemp("single_file_pipelines")
    return {"sd_v1": build_tiny_pipeline("stable_diffusion", root / "sd_v1"),
            "sd_v2": build_tiny_sd2(root / "sd_v2", "epsilon"),
            "sd_v2_768_v": build_tiny_sd2(root / "sd_v2_768_v", "v_prediction"),
            "sdxl_base": build_tiny_sdxl(root / "sdxl_base")}


@pytest.fixture
def tiny_configs(tiny_folders, monkeypatch):
    for name, folder in tiny_folders.items():
        monkeypatch.setitem(single_file.CONFIG_OVERRIDES, name, folder)
    return tiny_folders


@pytest.fixture(scope="module")
def tiny_files(tiny_folders, tmp_path_factory):
    """{layout name: the tiny pipeline saved as one single-file checkpoint}."""
    root = tmp_path_factory.mktemp("single_files")
    files = {}
    for name, folder in tiny_folders.items():
        kind = LAYOUT_TYPES[name]
        pipeline = load_folder(kind, folder)
        layout = single_file.layout_of_pipeline(pipeline, kind, pipeline.scheduler.config.prediction_type)
        assert layout.name == name
        files[name] = root / f"{name}.safetensors"
        single_file.save_pipeline(pipeline, files[name], layout)
    return files


def weights(pipeline, kind: str) -> dict[str, torch.Tensor]:
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if kind == "stable_diffusion_xl" else [])
    return {f"{component}.{key}": value for component in components
            for key, value in getattr(pipeline, component).state_dict().items()}


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert set(expected) == set(actual)
    different = [key for key, value in expected.items() if actual[key].is_meta or not torch.equal(value, actual[key])]
    assert not different, different[:5]


# --- layouts from keys -----------------------------------------------------------------------------

def keys_file(path: Path, keys, metadata=None, shapes=None) -> Path:
    """A .safetensors file with these tensor names (tiny tensors): what detection reads is only the header."""
    shapes = shapes or {}
    save_file({key: torch.zeros(shapes.get(key, (1,))) for key in keys}, str(path), metadata=metadata)
    return path


COMMON = [single_file.UNET_PREFIX + "input_blocks.0.0.weight", single_file.VAE_PREFIX + "encoder.conv_in.weight"]
LAYOUT_KEYS = {"sd_v1": [single_file.SD1_KEY], "sd_v2": [single_file.SD2_KEY],
               "sdxl_base": list(single_file.SDXL_KEYS)}


@pytest.mark.parametrize("name", sorted(LAYOUT_KEYS))
def test_each_layout_is_detected_from_the_keys(tmp_path, name):
    path = keys_file(tmp_path / "model.safetensors", COMMON + LAYOUT_KEYS[name])
    assert single_file.detect_layout(path).name == name
    preset = validate_preset({"model": {"path": str(path)}})
    assert resolve_model_type(preset.model) == LAYOUT_TYPES[name]


def test_sd2_prediction_type_from_the_setting_the_metadata_a_v_pred_key_or_the_norm_probe(tmp_path):
    keys = COMMON + LAYOUT_KEYS["sd_v2"]
    plain = keys_file(tmp_path / "plain.safetensors", keys)
    assert single_file.detect_layout(plain).name == "sd_v2"
    assert single_file.detect_layout(plain, "v_prediction").name == "sd_v2_768_v"
    spec = keys_file(tmp_path / "spec.safetensors", keys, {"modelspec.architecture": "stable-diffusion-v2-768-v"})
    assert single_file.detect_layout(spec).name == "sd_v2_768_v"
    assert single_file.detect_layout(spec, "epsilon").name == "sd_v2"
    marked = keys_file(tmp_path / "marked.safetensors", keys + ["v_pred"])
    assert single_file.detect_layout(marked).name == "sd_v2_768_v"
    probe = single_file.V_PREDICTION_PROBE
    for std, expected in ((0.2, "sd_v2_768_v"), (0.01, "sd_v2")):
        values = torch.randn(1280, generator=torch.Generator().manual_seed(0)) * std
        path = tmp_path / f"probe_{std}.safetensors"
        save_file({**{key: torch.zeros(1) for key in keys}, probe: values.to(torch.bfloat16)}, str(path))
        assert single_file.detect_layout(path).name == expected


def test_the_preview_reads_the_model_type_without_torch(tmp_path):
    path = keys_file(tmp_path / "model.safetensors", COMMON + LAYOUT_KEYS["sdxl_base"])
    code = ("import sys; from modules.config.preset import validate_preset; "
            "from modules.families.model_types import resolve_model_type; "
            f"print(resolve_model_type(validate_preset({{'model': {{'path': {str(path)!r}}}}}).model)); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.split() == ["stable_diffusion_xl", "False"], result.stderr


@pytest.mark.parametrize("case", ["ckpt", "unknown", "no_vae", "refiner", "inpainting", "not_safetensors"])
def test_bad_single_files_are_one_line_errors(tmp_path, case):
    path = tmp_path / "model.safetensors"
    if case == "ckpt":
        path = tmp_path / "model.ckpt"
        path.write_bytes(b"PK\x03\x04 pickle")
    elif case == "unknown":
        keys_file(path, COMMON + ["some.other.weight"])
    elif case == "no_vae":
        keys_file(path, COMMON[:1] + LAYOUT_KEYS["sd_v1"])
    elif case == "refiner":
        keys_file(path, COMMON + [single_file.SDXL_REFINER_KEY])
    elif case == "inpainting":
        keys_file(path, COMMON + LAYOUT_KEYS["sd_v1"], shapes={COMMON[0]: (320, 9, 3, 3)})
    else:
        path.write_bytes(b"not a safetensors file at all")
    expected = {"ckpt": "convert it to .safetensors", "unknown": "matches no known single-file layout: looked for",
                "no_vae": "has no VAE (first_stage_model.*)", "refiner": "SDXL refiner",
                "inpainting": "9-channel UNet", "not_safetensors": "is not a readable .safetensors file"}[case]
    with pytest.raises(ConfigError) as error:
        single_file.detect_layout(path)
    assert error.value.key == "model.path" and expected in str(error.value) and "\n" not in str(error.value)


def cli_preset(tmp_path: Path, model_path: Path) -> Path:
    from tests.conftest import make_images

    images = make_images(tmp_path / "images", 2, size=16)
    for image in images.glob("*.png"):
        image.with_suffix(".txt").write_text("a photo", encoding="utf-8")
    preset = tmp_path / "preset.json"
    preset.write_text(f'{{"model": {{"path": "{model_path}", "resolution": 16}}, "data": {{"path": "{images}"}}, '
                      f'"training": {{"method": "lora", "device": "cpu"}}, '
                      f'"output": {{"dir": "{tmp_path / "out"}"}}}}', encoding="utf-8")
    return preset


@pytest.mark.parametrize("script", ["preview.py", "train.py"])
@pytest.mark.parametrize("case", ["ckpt", "unknown"])
def test_bad_single_files_exit_2_from_the_command_line(tmp_path, script, case):
    if case == "ckpt":
        model = tmp_path / "model.ckpt"
        model.write_bytes(b"pickle")
    else:
        model = keys_file(tmp_path / "model.safetensors", COMMON + ["some.other.weight"])
    preset = cli_preset(tmp_path, model)
    arguments = [str(preset)]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *arguments], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert "model.path" in result.stderr and "Traceback" not in result.stderr
    assert ("convert it to .safetensors" if case == "ckpt" else "matches no known single-file layout") in result.stderr


# --- loading and saving ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUT_TYPES))
def test_a_saved_single_file_loads_back_to_the_same_tensors(tiny_folders, tiny_files, tiny_configs, name):
    import diffusers

    kind = LAYOUT_TYPES[name]
    assert single_file.detect_layout(tiny_files[name]).name == name
    with safe_open(str(tiny_files[name]), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata()["modelspec.architecture"] == single_file.LAYOUTS[name].modelspec_architecture
    assert all(key.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
               for key in keys)
    loaded = single_file.load_pipeline(getattr(diffusers, PIPELINE_CLASSES[kind]), tiny_files[name],
                                       single_file.LAYOUTS[name], **OPTIONAL_NONE[kind])
    assert_same_weights(weights(load_folder(kind, tiny_folders[name]), kind), weights(loaded, kind))
    assert loaded.scheduler.config.prediction_type == single_file.LAYOUTS[name].prediction_type


def test_the_vae_attention_is_saved_as_1x1_convolutions_and_openclip_qkv_as_in_proj(tiny_files):
    sd2 = load_file(tiny_files["sd_v2"])
    assert sd2["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    xl = load_file(tiny_files["sdxl_base"])
    assert xl["conditioner.embedders.1.model.text_projection"].shape == (48, 24)  # (width, projection): transposed


@pytest.mark.slow
def test_shipped_configs_load_a_real_size_layout(tmp_path):
    """The shipped SD 1.x configs build the real-size model (meta weights) whose single-file keys our saver writes."""
    import diffusers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = single_file.CONFIG_ROOT / "sd_v1"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    unet_keys = {single_file.unet_key(key, unet.config) for key in unet.state_dict()}
    vae_keys = {single_file.vae_key(key, vae.config) for key in vae.state_dict()}
    # The real SD 1.5 checkpoint has 686 UNet and 248 VAE tensors under these names.
    assert len(unet_keys) == 686 and len(vae_keys) == 248
    assert "output_blocks.11.0.skip_connection.weight" in unet_keys and "decoder.mid.attn_1.proj_out.weight" in vae_keys
    tokenizer = single_file.clip_tokenizer("<|endoftext|>")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert diffusers.StableDiffusionPipeline.load_config(folder)["_class_name"] == "StableDiffusionPipeline"


# --- training from a single file, and what it writes --------------------------------------------------

@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    from tests.conftest import make_images

    folder = make_images(tmp_path_factory.mktemp("captioned") / "images", 2, size=16)
    for index, image in enumerate(sorted(folder.glob("*.png"))):
        image.with_suffix(".txt").write_text(f"a photo of the thing {index}", encoding="utf-8")
    return folder


def run(tmp_path, model_path, images, method, **sections):
    from modules.training import train

    raw = {"model": {"path": str(model_path), "resolution": 16}, "data": {"path": str(images)},
           "training": {"epochs": 1, "batch_size": 2, "device": "cpu", "seed": 3, "method": method},
           "optimizer": {"type": "adamw", "lr": 1e-2, "text_encoder_lr": 1e-2},
           "scheduler": {"type": "constant"}, "output": {"dir": str(tmp_path / "out"), "checkpoint_every": None}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    train(validate_preset(raw), progress_bar=False, log=lambda message: None)
    return tmp_path / "out" / "model"


def a1111_sd_version(metadata: dict) -> str:
    """A1111's Lora tab (extensions-builtin/Lora/network.py, NetworkOnDisk.detect_version)."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd_v1", "sdxl_base"])
def test_a_full_fine_tune_of_a_single_file_writes_a_single_file_that_loads_back_exactly(
        tmp_path, tiny_files, tiny_configs, captioned, name):
    import diffusers

    kind = LAYOUT_TYPES[name]
    model = run(tmp_path, tiny_files[name], captioned, "full")
    trained = weights(load_folder(kind, model), kind)
    before = weights(load_folder(kind, tiny_configs[name]), kind)
    assert not torch.equal(trained["unet.conv_in.weight"], before["unet.conv_in.weight"])  # it trained
    path = model / single_file.SINGLE_FILE_NAME
    assert single_file.detect_layout(path).name == name
    loaded = single_file.load_pipeline(getattr(diffusers, PIPELINE_CLASSES[kind]), path, single_file.LAYOUTS[name],
                                       **OPTIONAL_NONE[kind])
    assert_same_weights(trained, weights(loaded, kind))
    assert all(oct(file.stat().st_mode & 0o777) == "0o644" for file in model.rglob("*") if file.is_file())


@pytest.mark.slow
def test_output_single_file_false_writes_only_the_diffusers_folder(tmp_path, tiny_folders, captioned):
    model = run(tmp_path, tiny_folders["sd_v1"], captioned, "full", output={"single_file": False})
    assert (model / "model_index.json").is_file() and not (model / single_file.SINGLE_FILE_NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, save_dtype", [("sd_v1", "fp16"), ("sd_v2_768_v", "fp32"), ("sdxl_base", "bf16")])
def test_a_lora_of_a_single_file_has_kohya_metadata_for_its_base_model_and_save_dtype(
        tmp_path, tiny_files, tiny_configs, captioned, name, save_dtype):
    model = run(tmp_path, tiny_files[name], captioned, "lora", lora={"rank": 4, "alpha": 2, "save_dtype": save_dtype})
    layout = single_file.LAYOUTS[name]
    with safe_open(str(model / "lora_kohya.safetensors"), framework="pt") as kohya:
        metadata = kohya.metadata()
        tensors = {key: kohya.get_tensor(key) for key in kohya.keys()}
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_network_dim"] == "4"
    assert float(metadata["ss_network_alpha"]) == 2.0
    assert metadata["ss_base_model_version"] == layout.base_model_version
    assert metadata["ss_v2"] == str(name.startswith("sd_v2")) and metadata["ss_output_name"] == "out"
    assert metadata["modelspec.architecture"] == {"sd_v1": "stable-diffusion-v1/lora",
                                                  "sd_v2_768_v": "stable-diffusion-v2-768-v/lora",
                                                  "sdxl_base": "stable-diffusion-xl-v1-base/lora"}[name]
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert a1111_sd_version(metadata) == {"sd_v1": "SD1", "sd_v2_768_v": "SD2", "sdxl_base": "SDXL"}[name]
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[save_dtype]
    assert {value.dtype for value in tensors.values()} == {dtype}
    assert all(float(value) == 2.0 for key, value in tensors.items() if key.endswith(".alpha"))
    assert {value.dtype for value in load_file(model / "pytorch_lora_weights.safetensors").values()} == {dtype}
    for file in ("lora_kohya.safetensors", "pytorch_lora_weights.safetensors"):
        assert (model / file).stat().st_mode & 0o777 == 0o644


# Tensors of the real checkpoints (SD 1.5 pruned, SD 2.1, SDXL base 1.0), without the few that diffusers does not
# load (CLIP's position_ids, OpenCLIP's logit_scale, SD 2.x's last text layer and text projection).
REAL_TENSOR_COUNTS = {"sd_v1": {"unet": 686, "vae": 248, "text_encoder": 196},
                      "sd_v2": {"unet": 686, "vae": 248, "text_encoder": 280},
                      "sd_v2_768_v": {"unet": 686, "vae": 248, "text_encoder": 280},
                      "sdxl_base": {"unet": 1680, "vae": 248, "text_encoder": 196, "text_encoder_2": 389}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUT_TYPES))
def test_at_real_size_the_shipped_configs_and_our_names_map_back_through_diffusers_converters(name):
    """The real-size models of the shipped configs (meta weights): our original names for every tensor
    are as many as the real checkpoints hold, and diffusers' own single-file converters map each back
    to the tensor it came from."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights
    from diffusers.loaders import single_file_utils as converters

    layout, folder = single_file.LAYOUTS[name], single_file.CONFIG_ROOT / name
    with init_empty_weights():
        pipeline = {"unet": diffusers.UNet2DConditionModel.from_config(
                        diffusers.UNet2DConditionModel.load_config(folder / "unet")),
                    "vae": diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))}
        for component, _, _ in layout.text_prefixes:
            config = transformers.CLIPTextConfig.from_pretrained(folder / component)
            model_class = getattr(transformers, config.architectures[0])
            pipeline[component] = model_class(config)
    original = single_file.original_state_dict(type("Pipeline", (), pipeline), layout)
    counts = {component: sum(1 for key in original if key.startswith(prefix)) for component, prefix in
              [("unet", single_file.UNET_PREFIX), ("vae", single_file.VAE_PREFIX)]
              + [(component, prefix) for component, prefix, _ in layout.text_prefixes]}
    assert counts == REAL_TENSOR_COUNTS[name]
    back = {"unet": converters.convert_ldm_unet_checkpoint(original, pipeline["unet"].config),
            "vae": converters.convert_ldm_vae_checkpoint(original, pipeline["vae"].config)}
    for component, prefix, kind in layout.text_prefixes:
        back[component] = (converters.convert_ldm_clip_checkpoint(original) if kind == "clip" and component ==
                           "text_encoder" else converters.convert_open_clip_checkpoint(pipeline[component], original,
                                                                                      prefix=prefix))
    for component, converted in back.items():
        own = pipeline[component].state_dict()
        converted = {key.removeprefix("text_model.") if "text_model.embeddings.token_embedding.weight" not in own
                     else key: value for key, value in converted.items()}
        assert set(converted) == set(own), component
        assert all(converted[key].shape == own[key].shape for key in own), component


def test_a_single_file_of_another_family_than_model_type_is_refused(tmp_path):
    from modules.families.stable_diffusion import StableDiffusionFamily

    path = keys_file(tmp_path / "model.safetensors", COMMON + LAYOUT_KEYS["sdxl_base"])
    with pytest.raises(ConfigError, match="is a stable_diffusion_xl checkpoint .sdxl_base., but model.type is "
                                          "stable_diffusion"):
        StableDiffusionFamily.load_pipeline(str(path))


@pytest.mark.parametrize("raw, key", [({"training": {"method": "lora"}, "lora": {"save_dtype": "fp8"}}, "lora.save_dtype"),
                                      ({"output": {"single_file": "yes"}}, "output.single_file"),
                                      ({"training": {"method": "full"}, "lora": {"init_weights": "a.safetensors"}},
                                       "lora.init_weights")])
def test_bad_values_of_the_new_keys_are_one_line_errors(raw, key):
    with pytest.raises(ConfigError) as error:
        validate_preset(raw)
    assert error.value.key == key and "\n" not in str(error.value)


def test_the_preview_of_an_sdxl_single_file_lists_both_text_encoder_groups(tmp_path):
    model = keys_file(tmp_path / "model.safetensors", COMMON + LAYOUT_KEYS["sdxl_base"])
    preset = cli_preset(tmp_path, model)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "preview.py"), str(preset), "--set",
                             "optimizer.text_encoder_lr=0.00001", "--set", "training.epochs=1"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "lr/text_encoder_2" in result.stdout


@pytest.mark.parametrize("name, version", [("stable_diffusion", "sd_v1"), ("stable_diffusion_xl", "sdxl_base_v1-0")])
def test_a_lora_of_a_diffusers_folder_names_its_base_model_too(family_pipelines, tmp_path, name, version):
    from tests.families.conftest import build, family_preset

    family = build(family_preset(family_pipelines[name], name, "lora", lora={"rank": 4, "alpha": 8}))
    family.save_final_model(tmp_path)
    with safe_open(str(tmp_path / "lora_kohya.safetensors"), framework="pt") as kohya:
        assert kohya.metadata()["ss_base_model_version"] == version
