"""The real window under a virtual screen (Xvfb) with validation and EMA on (SPEC §11): the Scheduler tab's
validation ticks and EMA decay line, live as the fields change, and the Run tab's validation loss.

Screenshots go to test-artifacts/ for a person to look at.
"""

import numpy as np
import pytest
from tests.conftest import make_images
from tests.ui.test_ui_window import open_app, pump, screenshot, select_tab, settle, type_into

from ui.curve_plot import EMA_LABEL

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def app(display, tmp_path):
    raw = {
        "version": 1,
        "model": {"config": "tiny", "resolution": 16},
        "data": {"path": str(make_images(tmp_path / "images", 10)), "validation_split": 0.3},
        "training": {"epochs": 6, "batch_size": 1, "device": "cpu", "ema": True, "ema_decay": 0.99},
        "optimizer": {"lr": 1e-3},
        "scheduler": {"type": "cosine", "warmup": "1 epochs", "min_factor": 0.1},
        "output": {"dir": str(tmp_path / "out"), "checkpoint_every": "2 epochs", "validate_every": "1 epochs"},
    }
    yield from open_app(raw)


def labels(plot) -> dict:
    return {artist.get_label(): artist for artist in plot.data_artists}


def test_the_scheduler_tab_ticks_validation_and_draws_the_ema_decay_live(app, display):
    select_tab(app, "Scheduler")
    settle(app)
    panel = app.settings.scheduler_tab.preview_panel
    plan = app.preview_state.preview.plan
    assert list(plan.validation_steps) == [7, 14, 21, 28, 35, 42]
    drawn = labels(panel.plot)
    np.testing.assert_array_equal(drawn["validation"].get_xdata(), plan.validation_steps)
    steps, decays = plan.ema_decays()
    np.testing.assert_allclose(drawn[EMA_LABEL].get_ydata()[:-1], decays)
    assert panel.plot.ema_axes.get_visible()
    right_edge = panel.plot.axes.get_position().x1  # left of the EMA axis' labels
    legend_texts = [text.get_text() for text in panel.legend_figure.legends[0].get_texts()]
    assert "validation" in legend_texts and EMA_LABEL in legend_texts
    summary = panel.summary.cget("text")
    assert "validation at 7, 14, 21" in summary and "EMA decay 0.1 at the first update" in summary
    screenshot(app, display, "scheduler_tab_validation_ema.png")

    select_tab(app, "Training")
    app.field_row("training.ema").input.toggle()  # what a click on the check box does
    type_into(app.field_row("output.validate_every").input, "2 epochs")
    pump(app, lambda: app.preview_state.fresh and app.preview_state.preview.plan.ema_decay is None
         and list(app.preview_state.preview.plan.validation_steps) == [14, 28, 42])
    settle(app)
    drawn = labels(panel.plot)
    assert EMA_LABEL not in drawn and not panel.plot.ema_axes.get_visible()
    assert panel.plot.axes.get_position().x1 > right_edge + 0.04  # laid out again: no strip where it was
    np.testing.assert_array_equal(drawn["validation"].get_xdata(), [14, 28, 42])
    assert EMA_LABEL not in [text.get_text() for text in panel.legend_figure.legends[0].get_texts()]
    select_tab(app, "Scheduler")
    settle(app)
    screenshot(app, display, "scheduler_tab_validation_only.png")


def feed_steps(app, steps: int, validation_at, loss_at):
    """The Run tab's controller fed `steps` step reports as the training child sends them, with
    `validation_at(k)` on the plan's validation steps; (run controller, run panel)."""
    select_tab(app, "Run")
    run, panel = app.run_tab.run, app.run_tab.panel
    preview = app.preview_state.preview
    run.start(preview, resume=False)
    for k in range(steps):
        validation = validation_at(k) if k + 1 in preview.plan.validation_steps else None
        run.handle(("step", {"step": k, "total_steps": 42, "epoch": k // 7, "loss": loss_at(k),
                             "lrs": {"unet": float(preview.curve.effective_lrs(k)[0])}, "elapsed_seconds": k + 1.0,
                             "eta_seconds": 42.0 - k, "validation": validation, "ema_decay": None}))
    return run, panel


def test_the_run_tab_draws_the_validation_loss_on_the_lr_step_axis(app, display):
    """A run's reports, as the training child sends them (the trainer's validation is not needed here)."""
    rng = np.random.default_rng(0)
    run, panel = feed_steps(app, 30, lambda k: {"loss/validation": 0.5 - k / 200,
                                                "loss/validation/non_ema": 0.55 - k / 250,
                                                "loss/validation/images": 0.5 - k / 200},
                            lambda k: 0.6 - k / 150 + rng.normal(0, 0.03))
    panel.show(run)
    panel.plot(run)
    settle(app, 0.5)
    np.testing.assert_array_equal(panel.validation_line.get_xdata(), [6, 13, 20, 27])
    np.testing.assert_array_equal(panel.non_ema_line.get_xdata(), [6, 13, 20, 27])
    assert panel.non_ema_line.get_alpha() < 1
    assert panel.loss_axes.get_xlim() == panel.lr_plot.axes.get_xlim() == (0, 42)
    legend_texts = [text.get_text() for text in panel.loss_axes.get_legend().get_texts()]
    assert legend_texts == ["loss/train", "loss/validation", "loss/validation/non_ema"]
    assert "validation loss 0.3650" in panel.values_label.cget("text")
    screenshot(app, display, "run_tab_validation_ema.png")


def test_the_run_tab_draws_each_validation_concept_when_there_are_several(app, display):
    run, panel = feed_steps(app, 14, lambda k: {"loss/validation": 0.5, "loss/validation/cat": 0.4 - k / 100,
                                                "loss/validation/style": 0.6 + k / 100}, lambda k: 0.6)
    panel.plot(run)
    settle(app, 0.2)
    assert sorted(panel.concept_lines) == ["loss/validation/cat", "loss/validation/style"]
    colors = [line.get_color() for line in (panel.loss_line, panel.validation_line, *panel.concept_lines.values())]
    assert len(set(colors)) == len(colors)  # each line tells itself apart
    np.testing.assert_allclose(panel.concept_lines["loss/validation/style"].get_ydata(), [0.66, 0.73])
    low, high = panel.loss_axes.get_ylim()
    assert low < 0.34 and high > 0.73  # the concepts' values are inside the view
    legend_texts = [text.get_text() for text in panel.loss_axes.get_legend().get_texts()]
    assert legend_texts[-2:] == ["loss/validation/cat", "loss/validation/style"]
    screenshot(app, display, "run_tab_validation_concepts.png")
