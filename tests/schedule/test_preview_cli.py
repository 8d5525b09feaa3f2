"""`scripts/preview.py` (SPEC §4): the printed plan, the CSV, the PNG, and bad input.

Every error goes through the real command in a subprocess: exit status 2,
exactly one line on stderr naming the problem, no traceback.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modules.config.preset import load_preset
from modules.schedule.lr_curve import read_lr_csv
from modules.schedule.preview import build_preview
from tests.conftest import make_images

ROOT = Path(__file__).resolve().parents[2]
PREVIEW = ROOT / "scripts" / "preview.py"


def run_preview(*args, cwd=None):
    return subprocess.run([sys.executable, str(PREVIEW), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


def write_preset(path, raw):
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


@pytest.fixture
def preset_file(tmp_path, image_folder):
    return write_preset(tmp_path / "preset.json", {
        "data": {"path": str(image_folder)},
        "training": {"epochs": 3, "batch_size": 1, "gradient_accumulation_steps": 2},
        "optimizer": {"lr": 3e-4, "param_groups": [{"name": "attention", "match": "attn", "lr": 1e-4}]},
        "scheduler": {"type": "cosine_with_hard_restarts", "cycles": 2, "warmup": "0.5 epochs", "min_factor": 0.1},
        "output": {"dir": str(tmp_path / "out"), "checkpoint_every": "1 epochs"},
    })


def test_prints_the_plan_and_writes_csv_and_png(tmp_path, preset_file):
    csv_path, png_path = tmp_path / "curve" / "lr.csv", tmp_path / "curve.png"
    result = run_preview(preset_file, "--csv", csv_path, "--png", png_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # 7 images, batch 1, accumulation 2 -> 7 micro-batches, 4 steps per epoch, 12 steps, warmup 2.
    assert "7 x 1 repeat = 7 samples per epoch" in out
    assert "micro-batches     7 per epoch" in out
    assert "steps per epoch   4 (accumulation 2)" in out
    assert "total steps       12 (3 epochs)" in out
    assert "warmup steps      2" in out
    assert "cycle boundaries  7" in out  # D = 10, two cycles of 5 steps after warmup 2
    assert "checkpoints at    4, 8, 12" in out
    assert "last optimizer step of each epoch holds 1 of 2 micro-batches" in out
    assert result.stderr == ""

    lines = csv_path.read_text().splitlines()
    assert lines[0] == "step,lr/attention,lr/unet"
    assert len(lines) == 1 + 12
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(12))
    preview = build_preview(load_preset(preset_file))
    names, table = read_lr_csv(csv_path)
    assert names == ["attention", "unet"]
    assert np.array_equal(table, preview.curve.effective_table())  # full precision, no rounding
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overrides_change_the_plan(preset_file, tmp_path):
    csv_path = tmp_path / "lr.csv"
    result = run_preview(preset_file, "--set", "training.gradient_accumulation_steps=1", "--set",
                         "scheduler.type=linear", "--set", "scheduler.warmup=0", "--csv", csv_path)
    assert result.returncode == 0, result.stderr
    assert "total steps       21" in result.stdout
    _, table = read_lr_csv(csv_path)
    np.testing.assert_allclose(table[:, 1], 3e-4 * (0.1 + 0.9 * (21 - np.arange(21)) / 21), rtol=1e-12)


def test_schedule_free_csv_shows_the_optimizer_ramp(preset_file, tmp_path):
    csv_path = tmp_path / "lr.csv"
    result = run_preview(preset_file, "--set", "optimizer.type=adamw_schedule_free", "--set", "scheduler.type=constant",
                         "--set", "scheduler.min_factor=0", "--set", "scheduler.warmup=1 epochs", "--csv", csv_path)
    assert result.returncode == 0, result.stderr
    assert "optimizer adamw_schedule_free" in result.stdout
    _, table = read_lr_csv(csv_path)
    np.testing.assert_allclose(table[:5, 1], 3e-4 * np.array([0.25, 0.5, 0.75, 1.0, 1.0]), rtol=1e-12)


def test_the_demo_preset_previews(tmp_path):
    result = run_preview("training_presets/demo.json", "--csv", tmp_path / "demo.csv")
    assert result.returncode == 0, result.stderr
    assert "7 images" in result.stdout


CHECK_NO_TORCH = """
import sys, time
sys.path.insert(0, {scripts!r})
import preview
started = time.perf_counter()
status = preview.main({args!r})
print("seconds", time.perf_counter() - started)
print("torch imported:", "torch" in sys.modules)
sys.exit(status)
"""


def test_a_million_step_preview_works_without_torch(preset_file, tmp_path):
    args = [str(preset_file), "--set", "training.max_steps=1000000", "--png", str(tmp_path / "big.png")]
    result = subprocess.run([sys.executable, "-c", CHECK_NO_TORCH.format(scripts=str(ROOT / "scripts"), args=args)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "total steps       1000000" in result.stdout
    assert "torch imported: False" in result.stdout
    assert (tmp_path / "big.png").stat().st_size > 1000


# --- bad input ------------------------------------------------------------------------------------------------------

def bad_cases(tmp_path, image_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    good = {"data": {"path": str(image_folder)}, "training": {"epochs": 2}}
    preset = write_preset(tmp_path / "good.json", good)
    broken = tmp_path / "broken.json"
    broken.write_text('{"training": {"epochs": 2,}}', encoding="utf-8")
    return {
        **dataset_cases(tmp_path, image_folder, preset),
        "unknown key": ([preset, "--set", "training.batch_sise=2"], ["training.batch_sise", "did you mean 'batch_size'"]),
        "unknown key in file": ([write_preset(tmp_path / "typo.json", {**good, "schedular": {}})],
                                ["schedular", "did you mean 'scheduler'"]),
        "wrong type": ([preset, "--set", "training.batch_size=two"], ["training.batch_size", "integer"]),
        "out of range": ([preset, "--set", "scheduler.min_factor=1.5"], ["scheduler.min_factor", "less than 1"]),
        "warmup >= total": ([preset, "--set", "scheduler.warmup=14"], ["scheduler.warmup", "14", "shorter"]),
        "cycles < 1": ([preset, "--set", "scheduler.type=cosine_with_hard_restarts", "--set", "scheduler.cycles=0.5"],
                       ["scheduler.cycles", ">= 1"]),
        "schedule-free + cosine": ([preset, "--set", "optimizer.type=adamw_schedule_free", "--set",
                                    "scheduler.type=cosine"], ["scheduler.type", "constant"]),
        "missing dataset folder": ([preset, "--set", f"data.path={tmp_path / 'nowhere'}"], ["data.path", "does not exist"]),
        "folder with no images": ([preset, "--set", f"data.path={empty}"], ["data.path", "no images"]),
        "drop_last leaves nothing": ([preset, "--set", "data.drop_last=true", "--set", "training.batch_size=8"],
                                     ["data.drop_last", "no batch"]),
        "bad --set syntax": ([preset, "--set", "training.batch_size"], ["--set", "KEY=VALUE"]),
        "bad --set key": ([preset, "--set", "batch_size=2"], ["--set", "section.key"]),
        "missing preset file": ([tmp_path / "missing.json"], ["missing.json", "does not exist"]),
        "invalid JSON": ([broken], ["broken.json", "not valid JSON"]),
        "sine period too short": ([preset, "--set", "scheduler.type=sine", "--set", "scheduler.period=1"],
                                  ["scheduler.period", "at least 2"]),
        "unwritable csv": ([preset, "--csv", tmp_path / "good.json" / "x.csv"], ["cannot write"]),
        "no preset argument": ([], ["required", "preset"]),
        "--set without a value": ([preset, "--set"], ["--set", "expected one argument"]),
    }


def text_to_image_folders(tmp_path, captions: dict[int, bytes], count: int = 3):
    """(a model folder whose model_index.json names a StableDiffusionPipeline, an image folder whose
    image i has the caption bytes captions[i])."""
    model = tmp_path / "sd_model"
    model.mkdir(exist_ok=True)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    images = make_images(tmp_path / f"captioned_{len(list(tmp_path.glob('captioned_*')))}", count, size=8)
    for index, data in captions.items():
        (images / f"image_{index:04d}.txt").write_bytes(data)
    return model, images


def dataset_cases(tmp_path, image_folder, preset):
    """What the preview refuses that, before it, only training found (issue 15 items 6, 8 and 9)."""
    broken = make_images(tmp_path / "broken_image", 3)
    (broken / "image_0001.png").write_bytes(b"not a png")
    model, not_utf8 = text_to_image_folders(tmp_path, {0: b"a cat", 1: b"caf\xe9", 2: b"a dog"})
    _, one_missing = text_to_image_folders(tmp_path, {0: b"a cat", 2: b"a dog"})
    _, captioned = text_to_image_folders(tmp_path, {0: b"a cat", 1: b"a bird", 2: b"a dog"})
    text_to_image = [preset, "--set", f"model.path={model}"]
    return {
        "dadapt_adam + safeguard_warmup": ([preset, "--set", "optimizer.type=dadapt_adam", "--set",
                                            "optimizer.safeguard_warmup=true"],
                                           ["optimizer.safeguard_warmup", "not an option of dadapt_adam"]),
        "sample_every without prompts": ([*text_to_image, "--set", f"data.path={captioned}",
                                          "--set", "output.sample_every=1"],
                                         ["output.sample_every", "output.sample_prompts, which is empty"]),
        "adamw_8bit on cpu": ([preset, "--set", "optimizer.type=adamw_8bit", "--set", "training.device=cpu"],
                              ["optimizer.type", "'adamw_8bit' needs a CUDA device"]),
        "unreadable image without buckets": ([preset, "--set", f"data.path={broken}"],
                                             ["data.path", "cannot read image", str(broken / "image_0001.png")]),
        "caption not UTF-8": ([*text_to_image, "--set", f"data.path={not_utf8}"],
                              ["data.path", str(not_utf8 / "image_0001.txt"), "not UTF-8"]),
        "missing caption": ([*text_to_image, "--set", f"data.path={one_missing}"],
                            ["data.path", "1 of 3 images have no caption file", str(one_missing / "image_0001.txt"),
                             "data.default_caption"]),
        "output.dir inside the dataset": ([preset, "--set", f"output.dir={image_folder / 'out'}"],
                                          ["output.dir", "inside the dataset folder"]),
        "cache_dir inside the dataset": ([preset, "--set", f"data.cache_dir={image_folder}"],
                                         ["data.cache_dir", "inside the dataset folder"]),
        "key in the wrong section": ([preset, "--set", "training.lr=0.001"],
                                     ["training.lr", "unknown key; did you mean 'optimizer.lr'?"]),
        "~ in a path": ([preset, "--set", "data.path=~/no_such_folder_15"],
                        ["data.path", "'~/no_such_folder_15' does not exist", f"looked for in '{ROOT}'",
                         "'~' is not expanded: write '" + str(Path("~/no_such_folder_15").expanduser()) + "'"]),
    }


CASE_NAMES = ["dadapt_adam + safeguard_warmup", "sample_every without prompts", "adamw_8bit on cpu",
              "unreadable image without buckets", "caption not UTF-8", "missing caption",
              "output.dir inside the dataset", "cache_dir inside the dataset", "key in the wrong section",
              "~ in a path",
              "unknown key", "unknown key in file", "wrong type", "out of range", "warmup >= total", "cycles < 1",
              "schedule-free + cosine", "missing dataset folder", "folder with no images", "drop_last leaves nothing",
              "bad --set syntax", "bad --set key", "missing preset file", "invalid JSON", "sine period too short",
              "unwritable csv", "no preset argument", "--set without a value"]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """Run every bad-input case through the real command once; name -> (status, stderr, expected fragments)."""
    tmp_path = tmp_path_factory.mktemp("bad_input")
    cases = bad_cases(tmp_path, make_images(tmp_path / "images", 7))
    # Start every command at once: the interpreter start-up dominates, and the cases are independent.
    processes = {
        name: subprocess.Popen([sys.executable, str(PREVIEW), *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for name, (args, _) in cases.items()
    }
    results = {}
    for name, process in processes.items():
        _, err = process.communicate(timeout=120)
        results[name] = (process.returncode, err, cases[name][1])
    return results


def test_every_bad_input_case_is_checked(bad_input_results):
    assert sorted(bad_input_results) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_and_exit_status_2(bad_input_results, name):
    status, err, fragments = bad_input_results[name]
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("preview.py: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("flag, name, fragment", [
    ("--png", "curve.txt", "must end in .png"),
    ("--png", "{tmp}", "is a folder"),
    ("--png", "{tmp}/new/", "is a folder"),
    ("--csv", "{tmp}", "is a folder"),
])
def test_output_files_that_cannot_be_written_as_asked_are_refused_before_any_work(tmp_path, preset_file, flag, name,
                                                                                  fragment):
    target = name.format(tmp=tmp_path)
    result = run_preview(preset_file, flag, target, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"preview.py: error: {flag}: '{target}'") and fragment in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "preset.json"]  # nothing written


@pytest.mark.parametrize("override, key", [
    ("training.epochs=1000000000000", "training.epochs"),
    ("training.max_steps=1e9", "training.max_steps"),
    ("optimizer.lr=Infinity", "optimizer.lr"),
    ("training.batch_size=true", "training.batch_size"),
    ("data.drop_last=yes", "data.drop_last"),
])
def test_huge_lengths_and_coercible_values_are_one_line_and_exit_2(preset_file, override, key):
    result = run_preview(preset_file, "--set", override)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"preview.py: error: {key}: ")


def test_what_the_checks_allow_previews(tmp_path, preset_file):
    """The other side of each refusal: a unet samples without prompts, a hidden folder of the dataset
    may hold the output (the listing skips it), an empty caption file is a warning naming it, and a
    preset file that starts with a UTF-8 byte order mark reads."""
    result = run_preview(preset_file, "--set", "output.sample_every=1", "--set",
                         f"output.dir={Path(load_preset(preset_file).data.path) / '.runs'}")
    assert result.returncode == 0, result.stderr
    model, images = text_to_image_folders(tmp_path, {0: b"a cat", 1: b"  \n", 2: b"a dog"})
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"model": {"path": str(model)}, "data": {"path": str(images)},
                                                      "output": {"sample_every": 1, "sample_prompts": ["a"]}}).encode())
    result = run_preview(with_bom)
    assert result.returncode == 0, result.stderr
    assert f"caption file '{images / 'image_0001.txt'}' is empty" in result.stdout
