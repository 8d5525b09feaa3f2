"""The real window under a virtual screen (Xvfb): edits redraw the preview, Start trains.

Screenshots go to test-artifacts/ for a person to look at.
"""

import time
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import ROOT, make_images

pytestmark = [pytest.mark.gui, pytest.mark.slow]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def app(display, tmp_path):
    raw = {
        "version": 1,
        "model": {"config": "tiny", "resolution": 16},
        "data": {"path": str(make_images(tmp_path / "images", 7))},
        "training": {"epochs": 3, "batch_size": 1, "gradient_accumulation_steps": 2, "device": "cpu"},
        "optimizer": {"lr": 1e-3, "param_groups": [{"name": "attention", "match": "attentions", "lr": 4e-4}]},
        "scheduler": {"type": "cosine_with_hard_restarts", "warmup": 2, "cycles": 2, "min_factor": 0.1},
        "output": {"dir": str(tmp_path / "out"), "checkpoint_every": "1 epochs"},
    }
    yield from open_app(raw)


def open_app(raw: dict):
    """The app on preset `raw`, light, 1280x800, its first preview drawn; yielded, then closed (a training it
    started is killed)."""
    import customtkinter as ctk

    from ui.app import App
    from ui.controllers.preset_draft import PresetDraft

    ctk.set_appearance_mode("light")
    window = App(PresetDraft(raw))
    window.geometry("1280x800+0+0")
    pump(window, lambda: window.preview_state is not None and window.preview_state.fresh)
    yield window
    if window.run_tab.training is not None:
        window.run_tab.training.kill()
    window.destroy()


def pump(window, condition, timeout_seconds: float = 20.0) -> None:
    """Run the Tk event loop until `condition()` holds."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        window.update()
        if condition():
            return
        assert time.monotonic() < deadline, "the window did not reach the expected state in time"
        time.sleep(0.01)


def settle(window, seconds: float = 0.4) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        window.update()
        time.sleep(0.01)


def screenshot(window, display: str, name: str) -> Path:
    from PIL import ImageGrab

    window.update()
    ARTIFACTS.mkdir(exist_ok=True)
    x, y = window.winfo_rootx(), window.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + window.winfo_width(), y + window.winfo_height()), xdisplay=display)
    path = ARTIFACTS / name
    image.save(path)
    return path


def select_tab(window, name: str) -> None:
    """Show tab `name`. CTkTabview.set hides the other tabs 100 ms later, so a second set inside
    those 100 ms would be undone: wait them out, as a user's clicks always do."""
    window.tabs.set(name)
    settle(window, 0.15)


def type_into(entry, text: str) -> None:
    """Replace the entry's text one key at a time, as a user types."""
    entry.delete(0, "end")
    for character in text:
        entry.insert("end", character)


def plotted(window, group: str) -> np.ndarray:
    return np.asarray(window.settings.scheduler_tab.preview_panel.plot.curve_artists[group].get_ydata())


def test_editing_a_field_redraws_the_preview_once_after_the_debounce(app, display):
    select_tab(app, "Training")
    before_lrs = plotted(app, "unet").copy()
    before_redraws = app.live_preview.redraws
    entry = app.field_row("optimizer.lr").input
    type_into(entry, "0.0005")
    assert app.live_preview.redraws == before_redraws  # nothing is recomputed while the user is typing
    pump(app, lambda: app.live_preview.redraws > before_redraws)
    settle(app)
    assert app.live_preview.redraws == before_redraws + 1
    after_lrs = plotted(app, "unet")
    np.testing.assert_allclose(after_lrs, before_lrs * 0.5)
    summary = app.settings.scheduler_tab.preview_panel.summary.cget("text")
    assert summary.startswith("7 images x 1 repeat, batch 1, accumulation 2 -> 4 steps")

    select_tab(app, "Scheduler")
    type_into(app.field_row("scheduler.warmup").input, "1 epochs")
    pump(app, lambda: app.preview_state.fresh and app.preview_state.preview.plan.warmup_steps == 4)
    settle(app)
    screenshot(app, display, "scheduler_tab_light.png")


def test_a_curve_only_edit_reaches_the_screen(app, display):
    """min_factor leaves the axes as they are: the curve is drawn over the kept background."""
    select_tab(app, "Scheduler")
    settle(app)
    canvas = app.settings.scheduler_tab.preview_panel.canvas.get_tk_widget()
    before = canvas_pixels(canvas, display)
    full_draws = app.settings.scheduler_tab.preview_panel.plot.full_draws
    type_into(app.field_row("scheduler.min_factor").input, "0.5")
    pump(app, lambda: app.preview_state.fresh and app.preview_state.preview.plan.schedule.min_factor == 0.5)
    settle(app)
    assert app.settings.scheduler_tab.preview_panel.plot.full_draws == full_draws  # the fast path was taken
    after = canvas_pixels(canvas, display)
    assert before.shape == after.shape
    assert np.abs(after.astype(int) - before.astype(int)).sum(axis=2).astype(bool).mean() > 0.005
    table = app.preview_state.preview.curve.effective_table()
    np.testing.assert_array_equal(plotted(app, "unet")[:-1], table[:, -1])  # the new plan's curve, step by step


def canvas_pixels(widget, display: str) -> np.ndarray:
    from PIL import ImageGrab

    x, y = widget.winfo_rootx(), widget.winfo_rooty()
    box = (x, y, x + widget.winfo_width(), y + widget.winfo_height())
    return np.asarray(ImageGrab.grab(bbox=box, xdisplay=display).convert("RGB"))


def test_an_invalid_field_is_marked_and_the_last_curve_stays(app, display):
    select_tab(app, "Scheduler")
    before = plotted(app, "attention").copy()
    row = app.field_row("scheduler.min_factor")
    type_into(row.input, "1.5")
    pump(app, lambda: app.preview_state.error is not None)
    settle(app)
    assert app.preview_state.error_key == "scheduler.min_factor"
    assert row.error == app.preview_state.error and "less than 1" in row.error
    assert row.message.winfo_ismapped()
    assert row.input.cget("border_color") != app.field_row("scheduler.warmup").input.cget("border_color")
    np.testing.assert_array_equal(plotted(app, "attention"), before)
    screenshot(app, display, "scheduler_tab_invalid_field.png")
    type_into(row.input, "0.2")
    pump(app, lambda: app.preview_state.fresh)
    assert row.error is None and not row.message.winfo_ismapped()


def test_switching_the_schedule_type_shows_only_its_fields(app, display):
    select_tab(app, "Scheduler")
    menu = app.field_row("scheduler.type").input
    menu._dropdown_callback("sine")  # what choosing the entry in the menu does
    pump(app, lambda: app.preview_state.fresh and app.preview_state.preview.plan.schedule.type == "sine")
    visible = app.settings.scheduler_tab.scheduler_panel.visible_keys()
    assert "scheduler.period" in visible and "scheduler.cycles" not in visible
    assert app.field_row("scheduler.period").get_value() == "1 epochs"


def test_the_plots_follow_a_switch_to_dark_mode(app, display):
    import customtkinter as ctk

    select_tab(app, "Scheduler")
    ctk.set_appearance_mode("dark")  # what customtkinter does when the system switches
    try:
        pump(app, lambda: app.settings.scheduler_tab.preview_panel.plot.dark, timeout_seconds=5)
        settle(app, 0.4)
        assert app.settings.scheduler_tab.preview_panel.figure.get_facecolor() != (1.0, 1.0, 1.0, 1.0)
        screenshot(app, display, "scheduler_tab_dark.png")
    finally:
        ctk.set_appearance_mode("light")


def test_start_trains_the_settings_on_screen_and_draws_the_lr_used(app, display):
    select_tab(app, "Training")
    type_into(app.field_row("training.epochs").input, "2")
    pump(app, lambda: app.preview_state.fresh and app.preview_state.preview.plan.total_steps == 8)
    select_tab(app, "Run")
    app.run_tab.panel.start_button.invoke()
    assert app.run_tab.run.status == "running"
    pump(app, lambda: not app.run_tab.run.active, timeout_seconds=180)
    settle(app, 0.8)
    assert app.run_tab.run.status == "finished", app.run_tab.run.log_lines
    planned = app.run_tab.run.planned
    assert planned.plan.total_steps == 8
    used = {line.get_label(): line for line in app.run_tab.panel.lr_plot.axes.lines}
    for index, name in enumerate(planned.curve.group_names):
        dots = used[f"lr/{name} used"]
        np.testing.assert_array_equal(dots.get_xdata(), np.arange(8))
        assert list(dots.get_ydata()) == [planned.curve.effective_lrs(k)[index] for k in range(8)]
    assert len(app.run_tab.panel.loss_line.get_xdata()) == 8
    assert app.run_tab.panel.progress_label.cget("text").startswith("step 8 / 8 (100%)")
    assert "finished 8 steps" in app.run_tab.panel.log_box.get("1.0", "end")
    screenshot(app, display, "run_tab_finished.png")


def test_a_trainer_error_shows_in_the_run_tab(app, display, tmp_path):
    # A model folder that does not exist passes the preset validator; the trainer finds out.
    select_tab(app, "Data & model")
    app.field_row("model.config").input._dropdown_callback("(none)")
    type_into(app.field_row("model.path").input, str(tmp_path / "no_model_here"))
    pump(app, lambda: app.preview_state.fresh and app.draft.value("model.path"))
    select_tab(app, "Run")
    app.run_tab.panel.start_button.invoke()
    pump(app, lambda: not app.run_tab.run.active, timeout_seconds=120)
    settle(app)
    assert app.run_tab.run.status == "failed"
    assert app.run_tab.run.error.startswith("model.path:") and "does not exist" in app.run_tab.run.error
    screenshot(app, display, "run_tab_error.png")
    assert app.run_tab.panel.error_label.winfo_ismapped()
    assert app.run_tab.panel.error_label.cget("text") == app.run_tab.run.error


# --- what a new user hits ---------------------------------------------------------------

def test_a_preset_with_misspelt_keys_offers_to_drop_them(display, tmp_path):
    from ui.app import App
    from ui.controllers.preset_draft import PresetDraft

    preset = tmp_path / "misspelt.json"
    preset.write_text('{"version": 1, "data": {"path": "%s"}, "training": {"epochs": 2, "batch_size": 1},'
                      ' "scheduler": {"type": "cosine", "min_facter": 0.1}}' % make_images(tmp_path / "images", 3))
    questions = []
    answers = iter([False, True])

    def confirm(title, message):
        questions.append(message)
        return next(answers)

    window = App(PresetDraft(), confirm=confirm)
    try:
        window.load(str(preset))
        assert "scheduler.min_facter (did you mean 'min_factor'?)" in questions[0]
        pump(window, lambda: window.preview_state is not None and window.preview_state.error is not None)
        assert window.preview_state.error_key == "scheduler.min_facter"  # declined: still named, Save refuses
        assert window.offer_to_drop_unknown_keys()  # Save asks again; this time yes
        pump(window, lambda: window.preview_state.fresh)
        assert window.draft.unknown_keys() == [] and window.draft.evaluate().fresh
        assert "(modified)" in window.toolbar.path_label.cget("text")
    finally:
        window.destroy()


def test_a_key_in_the_wrong_section_is_offered_a_move_not_a_silent_drop(display, tmp_path):
    from ui.app import App
    from ui.controllers.preset_draft import PresetDraft

    preset = tmp_path / "misplaced.json"
    preset.write_text('{"version": 1, "data": {"path": "%s"}, "training": {"epochs": 2, "lr": 0.002}}'
                      % make_images(tmp_path / "images", 3))
    questions = []

    def confirm(title, message):
        questions.append(message)
        return True

    window = App(PresetDraft(), confirm=confirm)
    try:
        window.load(str(preset))
        assert len(questions) == 1 and "training.lr -> optimizer.lr" in questions[0]  # moved, no drop asked
        pump(window, lambda: window.preview_state is not None and window.preview_state.fresh)
        assert window.draft.unknown_keys() == []
        assert window.preview_state.preview.curve.base_lrs[0] == 0.002
    finally:
        window.destroy()


def test_processes_2_is_refused_at_the_field_and_by_start(app, display):
    select_tab(app, "Training")
    row = app.field_row("training.num_processes")
    type_into(row.input, "2")
    pump(app, lambda: app.preview_state.fresh and app.preview_state.preview.plan.num_processes == 2)
    settle(app)
    assert row.error and "accelerate launch --num_processes 2 scripts/train.py" in row.error
    assert row.message.winfo_ismapped()
    screenshot(app, display, "training_tab_processes.png")
    select_tab(app, "Run")
    app.run_tab.panel.start_button.invoke()
    assert app.run_tab.training is None and app.run_tab.run.status == "idle"
    assert app.run_tab.run.error.startswith("Not started: training.num_processes:")
    settle(app, 0.2)
    assert app.run_tab.panel.error_label.winfo_ismapped()


def test_a_refused_length_marks_its_field_and_the_window_keeps_responding(app, display, monkeypatch):
    import threading

    import ui.controllers.preset_draft as preset_draft

    threads = []
    real = preset_draft.build_preview

    def recording(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(preset_draft, "build_preview", recording)
    select_tab(app, "Training")
    before = plotted(app, "unet").copy()
    row = app.field_row("training.epochs")
    type_into(row.input, "1000000000000")
    pump(app, lambda: app.preview_state.error is not None)
    settle(app)
    assert app.preview_state.error_key == "training.epochs"
    assert row.error == app.preview_state.error and row.message.winfo_ismapped()
    np.testing.assert_array_equal(plotted(app, "unet"), before)  # the last valid curve stays, marked stale
    assert threads and threading.main_thread() not in threads  # the plan is computed off the Tk thread
    screenshot(app, display, "training_tab_huge_length.png")


def test_a_folder_that_does_not_exist_says_so(app, display, tmp_path):
    select_tab(app, "Data & model")
    row = app.field_row("data.path")
    type_into(row.input, str(tmp_path / "nowhere"))
    pump(app, lambda: app.preview_state.error_key == "data.path")
    settle(app, 0.6)
    assert "does not exist" in row.error and row.message.winfo_ismapped()
    assert "counting" not in row.note.cget("text")
    screenshot(app, display, "data_tab_missing_folder.png")


def test_an_invalid_entry_stays_in_place_and_its_message_fits_the_panel(app, display):
    select_tab(app, "Scheduler")
    row = app.field_row("scheduler.warmup")
    settle(app)
    x_before = row.input.winfo_rootx()
    type_into(row.input, "10 epocs")
    pump(app, lambda: app.preview_state.error_key == "scheduler.warmup")
    settle(app)
    assert row.message.winfo_ismapped() and len(row.error) > 60
    assert row.input.winfo_rootx() == x_before
    scheduler_panel = app.settings.scheduler_tab.scheduler_panel
    panel_right = scheduler_panel.winfo_rootx() + scheduler_panel.winfo_width()
    assert row.message.winfo_rootx() + row.message.winfo_reqwidth() <= panel_right
    screenshot(app, display, "scheduler_tab_long_message.png")


def test_the_legend_leaves_no_empty_strip_and_empty_plots_have_no_ticks(app, display):
    select_tab(app, "Scheduler")
    settle(app)
    panel = app.settings.scheduler_tab.preview_panel
    legend = panel.legend_figure.legends[0]
    legend_width = legend.get_window_extent(panel.legend_figure.canvas.get_renderer()).width
    assert panel.legend_canvas.get_tk_widget().winfo_width() <= legend_width + 12
    labels = [label.get_text() for label in panel.plot.axes.get_yticklabels()]
    assert "1e-3" in labels and not any("m" in label for label in labels), labels

    select_tab(app, "Run")  # before the Run tab is first drawn with a plan, its plots are empty
    loss_axes = app.run_tab.panel.loss_axes
    assert not any(label.get_visible() and label.get_text() for label in loss_axes.get_yticklabels())


def test_find_lr_runs_in_the_background_plots_and_sets_the_suggested_lr(app, display, tmp_path):
    app.open_lr_find()
    window = app.lr_find_window
    steps_entry = window.entries["steps"]
    steps_entry.delete(0, "end")
    steps_entry.insert(0, "12")
    window.start_button.invoke()
    assert app.lr_find.active  # the click returned at once: the sweep trains in a child process
    pump(app, lambda: app.lr_find.status in ("finished", "failed"), timeout_seconds=120)
    assert app.lr_find.status == "finished", app.lr_find.message
    settle(app)
    lines = window.axes.get_lines()
    assert len(lines[0].get_xdata()) == len(app.lr_find.points) >= 3 and window.axes.get_xscale() == "log"
    assert lines[-1].get_label().startswith("suggested lr")
    screenshot(window, display, "find_lr_window.png")
    window.apply_button.invoke()
    expected = app.lr_find.suggested_optimizer_lr
    assert float(app.field_row("optimizer.lr").get_value()) == pytest.approx(expected, rel=5e-3)  # 3 digits
    pump(app, lambda: app.preview_state.fresh and app.preview_state.preview.curve.base_lrs[-1] != 1e-3)
    assert not (tmp_path / "out").exists()  # the range test wrote nothing into output.dir
    app.close_lr_find()
    assert app.lr_find_window is None


def test_find_lr_on_the_validation_loss_reaches_the_sweep(app, display):
    """The loss menu's choice reaches the range test: without validation images it says what to set."""
    app.open_lr_find()
    window = app.lr_find_window
    window.loss_menu.set("validation")
    window.loss_menu._command("validation")  # what a click on the menu entry calls
    assert app.lr_find.loss == "validation"
    window.start_button.invoke()
    pump(app, lambda: app.lr_find.status in ("finished", "failed"), timeout_seconds=120)
    assert app.lr_find.status == "failed" and "validation_split" in app.lr_find.message
    app.lr_find.loss = "train"
    app.close_lr_find()


def test_closing_the_app_ends_a_running_find_lr(display, tmp_path, monkeypatch):
    """The Find LR window owns its child process: destroying the app (its master) ends the sweep."""
    import ui.views.lr_find_window as lr_find_window
    from ui.app import App
    from ui.controllers.preset_draft import PresetDraft

    killed = []

    class RecordingProcess(lr_find_window.LrFindProcess):
        def kill(self):
            killed.append(self)
            super().kill()

    monkeypatch.setattr(lr_find_window, "LrFindProcess", RecordingProcess)
    raw = {"version": 1, "model": {"config": "tiny", "resolution": 16},
           "data": {"path": str(make_images(tmp_path / "images", 3))},
           "training": {"epochs": 1, "batch_size": 1, "device": "cpu"}, "output": {"dir": str(tmp_path / "out")}}
    window = App(PresetDraft(raw))
    pump(window, lambda: window.preview_state is not None and window.preview_state.fresh)
    window.open_lr_find()
    window.lr_find_window.start_button.invoke()
    assert window.lr_find.active and not killed
    window.destroy()
    assert len(killed) == 1
