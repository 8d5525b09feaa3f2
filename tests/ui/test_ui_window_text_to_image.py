"""The real window (Xvfb) with the text-to-image demo preset: its fields, caption count, preview, and Start.

Start must train exactly what scripts/train.py trains from the same preset:
the same LR plan and bit-identical LoRA files (CPU, one torch thread each).
Screenshots go to test-artifacts/.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from tests.conftest import ROOT
from safetensors.torch import load_file
from test_ui_window import pump, screenshot, select_tab, settle, type_into

pytestmark = [pytest.mark.gui, pytest.mark.slow]
DEMO = ROOT / "training_presets" / "text_to_image_demo.json"
IMAGES = ROOT / "training_presets" / "text_to_image_images"
LORA_FILES = ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "tiny_sd"
    built = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tiny_pipeline.py"), "--type",
                            "stable_diffusion", str(folder)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert built.returncode == 0, built.stderr
    return folder


@pytest.fixture
def demo_app(display, tiny_sd, tmp_path, monkeypatch):
    import customtkinter as ctk

    from ui.app import App
    from ui.controllers.preset_draft import PresetDraft

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the training child: one torch thread, as the CLI run below
    ctk.set_appearance_mode("light")
    draft = PresetDraft()
    draft.load(DEMO)
    window = App(draft)
    window.geometry("1280x800+0+0")
    select_tab(window, "Data & model")
    for key, text in (("model.path", str(tiny_sd)), ("data.path", str(IMAGES))):
        type_into(window.field_row(key).input, text)
    select_tab(window, "Training")
    type_into(window.field_row("output.dir").input, str(tmp_path / "app_run"))
    pump(window, lambda: window.preview_state is not None and window.preview_state.fresh
         and window.preview_state.revision == window.draft.revision and window.preview_state.captions is not None)
    yield window
    if window.run_tab.training is not None:
        window.run_tab.training.kill()
    window.destroy()


def test_the_data_tab_shows_the_model_type_the_caption_count_and_the_lora_settings(demo_app, display):
    app = demo_app
    select_tab(app, "Data & model")
    assert app.field_row("model.type").get_value() == "stable_diffusion"
    assert app.field_row("training.method").get_value() == "lora"
    assert app.field_row("lora.rank").get_value() == "8" and app.field_row("lora.alpha").get_value() == "4"
    data_tab = app.settings.data_tab
    assert data_tab.data_panel.rows["data.caption_extension"].note.cget("text") == "7 of 7 images have a caption file"
    assert set(data_tab.lora_panel.visible_keys()) == {"training.method", "lora.rank", "lora.alpha", "lora.dropout",
                                                     "lora.target_modules", "lora.plus_ratio"}
    screenshot(app, display, "text_to_image_data_tab.png")

    app.field_row("training.method").input.set("full")
    app.settings.edit("training.method", "full")  # what the option menu's command reports
    settle(app)
    assert data_tab.lora_panel.visible_keys() == ["training.method"]
    pump(app, lambda: app.preview_state.revision == app.draft.revision)
    assert app.preview_state.error is None and app.preview_state.preset.training.method == "full"


def test_the_preview_draws_the_text_encoder_group_and_its_drop_to_zero(demo_app, display):
    app = demo_app
    select_tab(app, "Training")
    assert app.field_row("optimizer.text_encoder_lr").get_value() == "0.0005"
    assert app.field_row("optimizer.text_encoder_stop_after").get_value() == "1.5 epochs"
    select_tab(app, "Scheduler")
    settle(app)
    curve = app.preview_state.preview.curve
    table = curve.effective_table()
    artists = app.settings.scheduler_tab.preview_panel.plot.curve_artists
    assert set(artists) == {"unet", "text_encoder"}
    for index, name in enumerate(curve.group_names):
        np.testing.assert_array_equal(np.asarray(artists[name].get_ydata())[:-1], table[:, index])
    stop = curve.stop_steps[1]
    assert np.all(np.asarray(artists["text_encoder"].get_ydata())[stop:] == 0) and stop < curve.plan.total_steps
    screenshot(app, display, "text_to_image_scheduler_tab.png")


def test_start_trains_the_demo_exactly_as_scripts_train_py_does(demo_app, display, tiny_sd, tmp_path):
    app = demo_app
    select_tab(app, "Run")
    app.run_tab.panel.start_button.invoke()
    assert app.run_tab.run.status == "running"
    pump(app, lambda: not app.run_tab.run.active, timeout_seconds=300)
    settle(app, 0.5)
    assert app.run_tab.run.status == "finished", app.run_tab.run.log_lines
    screenshot(app, display, "text_to_image_run_tab.png")

    cli = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), str(DEMO), "--no-progress",
                          "--set", f"model.path={tiny_sd}", "--set", f"data.path={IMAGES}",
                          "--set", f"output.dir={tmp_path / 'cli_run'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert cli.returncode == 0, cli.stderr
    app_dir, cli_dir = tmp_path / "app_run", tmp_path / "cli_run"
    assert (app_dir / "lr_plan.csv").read_bytes() == (cli_dir / "lr_plan.csv").read_bytes()
    for name in LORA_FILES:
        ours, theirs = load_file(app_dir / "model" / name), load_file(cli_dir / "model" / name)
        assert ours.keys() == theirs.keys()
        different = [key for key in ours if not (ours[key] == theirs[key]).all()]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:2]}"
    assert sorted(path.name for path in (app_dir / "samples").iterdir()) == \
        sorted(path.name for path in (cli_dir / "samples").iterdir())
