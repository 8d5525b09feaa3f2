"""scripts/lr_find.py as a user runs it: CSV, PNG, a suggestion inside the sweep, output.dir untouched, bad input."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from modules.config.preset import save_preset
from modules.errors import ConfigError
from modules.training.lr_range_test import lr_range_test, swept_lrs
from tests.training_helpers import one_thread, tiny_preset  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lr_find.py"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--no-progress"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_lr_find_writes_csv_and_png_suggests_inside_the_sweep_and_leaves_output_dir_alone(tmp_path):
    preset_path = tmp_path / "preset.json"
    save_preset(tiny_preset(tmp_path), preset_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run's file")
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}

    result = run(preset_path, "--min-lr", "1e-5", "--max-lr", "10", "--steps", "30",
                 "--csv", tmp_path / "range.csv", "--png", tmp_path / "range.png")

    assert result.returncode == 0, result.stderr
    suggested = float(result.stdout.strip().splitlines()[-1].removeprefix("suggested lr: "))
    with open(tmp_path / "range.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["step", "lr", "loss", "smoothed_loss"]
    lrs = [float(row[1]) for row in rows[1:]]
    assert [int(row[0]) for row in rows[1:]] == list(range(len(lrs))) and 3 <= len(lrs) <= 30
    assert lrs == swept_lrs(1e-5, 10, 30).tolist()[: len(lrs)]  # geometric from --min-lr
    assert 1e-5 <= suggested <= 10 and any(abs(lr - suggested) <= 5e-3 * lr for lr in lrs)  # printed to 3 digits
    assert Image.open(tmp_path / "range.png").size[0] > 400
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_it_stops_once_the_smoothed_loss_passes_4x_its_minimum(tmp_path):
    result = lr_range_test(tiny_preset(tmp_path), 1e-4, 1e4, 40)
    smoothed = [point.smoothed_loss for point in result.points]
    assert result.stop_reason.startswith("the smoothed loss passed 4x") and len(smoothed) < 40
    assert smoothed[-1] > 4 * min(smoothed[:-1]) and all(s <= 4 * min(smoothed[: i + 1])
                                                         for i, s in enumerate(smoothed[:-1]))
    assert result.suggested_step < result.points[-1].step


def test_adaptive_optimizers_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="sets its own LR"):
        lr_range_test(tiny_preset(tmp_path, optimizer={"type": "prodigy", "lr": 1.0, "param_groups": []}))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--min-lr", "0"], "--min-lr must be a positive number"),
        (["--steps", "many"], "invalid int value"),
        (["--csv", "INSIDE"], "inside output.dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    preset_path = tmp_path / "preset.json"
    save_preset(tiny_preset(tmp_path), preset_path)
    args = [str(tmp_path / "out" / "range.csv") if arg == "INSIDE" else arg for arg in args]
    result = run(preset_path, *args)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.splitlines() == [line] and line.startswith("lr_find.py: error: ") and words in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "min_lr, max_lr, steps, words",
    [(1e-3, 1e-4, 10, "--max-lr must be greater than --min-lr"), (1e-7, 1.0, 2, "--steps must be at least 5"),
     (float("nan"), 1.0, 10, "--min-lr must be a positive number")],
)
def test_bad_sweeps_are_named(tmp_path, min_lr, max_lr, steps, words):
    with pytest.raises(ConfigError, match=words):
        lr_range_test(tiny_preset(tmp_path), min_lr, max_lr, steps)


def test_lr_find_runs_what_training_runs_buckets_and_clipping(tmp_path):
    """The demo preset with buckets (the range test reads the data as the trainer does) and clipping."""
    result = run(ROOT / "training_presets" / "demo.json", "--set", "data.buckets=true", "--set", "data.bucket_step=8",
                 "--set", "training.max_grad_norm=1.0", "--set", "training.device=cpu",
                 "--set", f"output.dir={tmp_path / 'out'}", "--steps", "12", "--csv", tmp_path / "range.csv")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip().splitlines()[-1].startswith("suggested lr: ")
    assert len((tmp_path / "range.csv").read_text().splitlines()) == 13  # header + 12 steps, longer than nothing
    assert not (tmp_path / "out").exists()


def test_the_validation_loss_gives_a_smooth_curve_where_the_training_loss_jumps(tmp_path):
    """At LRs too small to move the weights, the validation loss stays put; the training loss does not."""
    import numpy as np

    preset = tiny_preset(tmp_path, images=12, data={"validation_split": 0.3})
    curves = {loss: [point.loss for point in lr_range_test(preset, 1e-12, 1e-11, 8, loss=loss).points]
              for loss in ("train", "validation")}
    assert len(curves["validation"]) == 8
    assert np.ptp(curves["validation"]) < np.ptp(curves["train"]) / 100


def test_the_validation_loss_needs_validation_images(tmp_path):
    result = run(_saved(tmp_path, tiny_preset(tmp_path)), "--loss", "validation", "--steps", "5")
    assert result.returncode == 2 and "validation_split" in result.stderr
    assert "Traceback" not in result.stderr


def _saved(tmp_path, preset) -> Path:
    path = tmp_path / "preset.json"
    save_preset(preset, path)
    return path
