"""The app's side of SPEC §11 without a display: the validation and EMA fields, the preview's validation
ticks and EMA decay line, and the validation losses in the Run tab (live from StepReport, earlier ones
from TensorBoard)."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tests.conftest import make_images

from modules.training.trainer import StepReport
from ui.controllers.fields import DATA_MODEL_FIELDS, OUTPUT_FIELDS, TRAINING_FIELDS
from ui.controllers.image_counter import ImageCounter
from ui.controllers.preset_draft import PresetDraft, validation_ema_lines
from ui.controllers.run_controller import RunController
from ui.controllers.run_history import RunHistory, read_run_history
from ui.curve_plot import EMA_LABEL, PreviewPlot, ema_decay_points, make_preview_figure
from ui.training_process import _plain

NEW_KEYS = {
    "data.validation_split": DATA_MODEL_FIELDS,
    "training.ema": TRAINING_FIELDS,
    "training.ema_decay": TRAINING_FIELDS,
    "training.ema_update_every": TRAINING_FIELDS,
    "output.validate_every": OUTPUT_FIELDS,
    "output.validation_timesteps": OUTPUT_FIELDS,
}


def make_draft(folder, **sections) -> PresetDraft:
    raw = {
        "version": 1,
        "data": {"path": str(folder)},
        "training": {"epochs": 3, "batch_size": 1},
        "optimizer": {"lr": 1e-3},
        "scheduler": {"type": "cosine", "warmup": 2},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return PresetDraft(raw, ImageCounter(synchronous=True))


def on_draft(folder) -> PresetDraft:
    """10 images, 0.3 held out for validation every epoch, EMA on: 7 steps/epoch x 3 epochs."""
    return make_draft(folder, data={"validation_split": 0.3}, training={"ema": True, "ema_decay": 0.99},
                      output={"validate_every": "1 epochs"})


@pytest.fixture
def ten_images(tmp_path):
    return make_images(tmp_path / "ten", 10)


def drawn(preview) -> PreviewPlot:
    figure = Figure(figsize=(10, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    plot = PreviewPlot(figure)
    plot.update(preview)
    figure.canvas.draw()
    return plot


def labelled(plot: PreviewPlot) -> dict:
    return {artist.get_label(): artist for artist in plot.data_artists if not artist.get_label().startswith("_")}


# --- the fields ------------------------------------------------------------------------------

@pytest.mark.parametrize("key", NEW_KEYS)
def test_each_new_key_has_a_field_with_a_hint_in_its_tab(key):
    specs = {spec.key: spec for spec in NEW_KEYS[key]}
    assert key in specs and specs[key].hint


def test_editing_the_fields_re_plans_validation_and_ema(ten_images):
    draft = make_draft(ten_images)
    plan = draft.evaluate().preview.plan
    assert (list(plan.validation_steps), plan.ema_decay, plan.num_images) == ([], None, 10)
    draft.set_text("data.validation_split", "0.3")
    draft.set_text("output.validate_every", "1 epochs")
    draft.set_text("training.ema", True)
    draft.set_text("training.ema_decay", "0.99")
    draft.set_text("training.ema_update_every", "2")
    draft.set_text("output.validation_timesteps", "[100, 500]")
    state = draft.evaluate()
    assert state.error is None, state.error
    plan = state.preview.plan
    assert plan.num_images == 7 and plan.validation_images == 3
    assert list(plan.validation_steps) == [7, 14, 21]
    assert (plan.ema_decay, plan.ema_update_every) == (0.99, 2)
    assert state.preview.preset.output.validation_timesteps == [100, 500]
    lines = validation_ema_lines(state.preview)  # under the plan's summary in the Scheduler tab
    assert lines[0] == "validation at 7, 14, 21 (every 7 steps and the last step), over 3 images"
    assert lines[1].startswith("EMA decay 0.1 at the first update") and "10 updates (every 2 steps)" in lines[1]
    draft.set_text("output.validate_every", "")  # empty: never
    draft.set_text("training.ema", False)
    off = draft.evaluate().preview
    assert list(off.plan.validation_steps) == [] and off.plan.ema_decay is None
    assert validation_ema_lines(off) == ["validation none (output.validate_every is not set; 3 images set aside)"]


def test_validate_every_without_a_validation_image_is_marked_at_its_field(ten_images):
    draft = make_draft(ten_images, output={"validate_every": 5})
    state = draft.evaluate()
    assert state.error_key == "output.validate_every" and "validation image" in state.error


# --- the preview plot ----------------------------------------------------------------------------

def test_validation_ticks_and_the_ema_line_are_drawn_exactly_when_on(ten_images):
    on = on_draft(ten_images).evaluate().preview
    plot = drawn(on)
    artists = labelled(plot)
    ticks = artists["validation"]
    np.testing.assert_array_equal(ticks.get_xdata(), [7, 14, 21])
    assert ticks.get_marker() == "|"
    ema = artists[EMA_LABEL]
    steps, decays = on.plan.ema_decays()
    np.testing.assert_array_equal(ema.get_xdata(), [*steps, 21])
    np.testing.assert_allclose(ema.get_ydata(), [*decays, decays[-1]])
    assert ema.axes is plot.ema_axes and plot.ema_axes.get_visible()
    assert plot.ema_axes.get_ylim() == pytest.approx((0.0, 1.05))
    legend_texts = [text.get_text() for text in plot.axes.get_legend().get_texts()]
    assert "validation" in legend_texts and EMA_LABEL in legend_texts

    off = make_draft(ten_images).evaluate().preview
    plot.update(off)  # the same plot: both go, the EMA axis is hidden
    plot.figure.canvas.draw()
    assert "validation" not in labelled(plot) and EMA_LABEL not in labelled(plot)
    assert not plot.ema_axes.get_visible()
    assert EMA_LABEL not in [text.get_text() for text in plot.axes.get_legend().get_texts()]
    fresh = drawn(off)
    assert fresh.ema_axes is None and "validation" not in labelled(fresh)


def test_the_app_figure_is_laid_out_again_when_the_ema_axis_comes_and_goes(ten_images):
    """The app's figure reuses its layout while nothing it depends on changed; the EMA axis' visibility does."""
    figure = make_preview_figure(6.2, 5.7)
    FigureCanvasAgg(figure)
    plot = PreviewPlot(figure, legend_figure=Figure())
    FigureCanvasAgg(plot.legend_figure)
    edges = []
    for draft in (make_draft(ten_images), on_draft(ten_images), make_draft(ten_images)):
        plot.update(draft.evaluate().preview, title="")
        figure.canvas.draw()
        edges.append(plot.axes.get_position().x1)
    assert edges[1] < edges[0] - 0.04 and edges[2] == pytest.approx(edges[0])  # room for the EMA axis, then none


def test_only_validation_or_only_ema_draws_only_that(ten_images):
    validation_only = make_draft(ten_images, data={"validation_split": 0.3}, output={"validate_every": 7})
    assert set(labelled(drawn(validation_only.evaluate().preview))) & {"validation", EMA_LABEL} == {"validation"}
    ema_only = make_draft(ten_images, training={"ema": True})
    assert set(labelled(drawn(ema_only.evaluate().preview))) & {"validation", EMA_LABEL} == {EMA_LABEL}


def test_a_long_plans_ema_line_is_thinned_and_keeps_its_first_and_last_update(ten_images):
    plan = make_draft(ten_images, training={"epochs": 3000, "ema": True, "ema_update_every": 3}).evaluate().preview.plan
    steps, decays = ema_decay_points(plan, max_points=500)
    full_steps, full_decays = plan.ema_decays()
    assert len(full_steps) == plan.total_steps // 3 > 500 >= len(steps) > 400
    assert (steps[0], steps[-1]) == (full_steps[0], full_steps[-1])
    np.testing.assert_allclose(decays, full_decays[(steps + 1) // 3 - 1])  # each point is the plan's own d_j


# --- the Run tab ---------------------------------------------------------------------------------

def step_event(step: int, loss: float, validation: dict | None = None, ema_decay: float | None = None) -> tuple:
    report = StepReport(step=step, total_steps=21, epoch=step // 7, loss=loss, lrs={"unet": 1e-3},
                        elapsed_seconds=1.0, eta_seconds=1.0, validation=validation, ema_decay=ema_decay)
    return ("step", _plain(report))  # what the training child puts on the queue


def test_plain_carries_the_validation_losses_and_the_ema_decay():
    values = {"loss/validation": np.float32(0.25), "loss/validation/dogs": 0.5, "loss/validation/non_ema": 0.3}
    plain = step_event(6, 0.4, values, ema_decay=np.float64(0.4))[1]
    assert plain["validation"] == {"loss/validation": 0.25, "loss/validation/dogs": 0.5,
                                   "loss/validation/non_ema": 0.3}
    assert type(plain["validation"]["loss/validation"]) is float and plain["ema_decay"] == 0.4
    assert step_event(5, 0.4)[1]["validation"] is None


def test_a_reported_validation_reaches_the_run_controllers_series(ten_images):
    run = RunController()
    run.start(on_draft(ten_images).evaluate().preview, resume=False)
    for step in range(14):
        validated = step in (6, 13)  # the validations after global steps 7 and 14, at k = 6 and 13
        run.handle(step_event(step, 1.0 - step / 20, {"loss/validation": 0.9 - step / 50,
                                                      "loss/validation/non_ema": 0.95 - step / 50,
                                                      "loss/validation/ten": 0.9 - step / 50} if validated
                              else None))
    points = run.validation_points()
    assert points["loss/validation"] == ([6, 13], [pytest.approx(0.78), pytest.approx(0.64)])
    assert points["loss/validation/non_ema"][0] == [6, 13]
    assert set(points) == {"loss/validation", "loss/validation/non_ema", "loss/validation/ten"}
    assert "validation loss 0.6400" in run.values_text()
    run.start(run.planned, resume=False)
    assert run.validation_points() == {} and "validation" not in run.values_text()


def test_run_history_reads_the_validation_losses_from_tensorboard(ten_images, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    log_dir = tmp_path / "out" / "tensorboard"
    first = SummaryWriter(log_dir=str(log_dir))
    for step in range(10):  # a run killed after step 9, its last checkpoint at step 7
        first.add_scalar("lr/unet", 1e-3, step)
        first.add_scalar("loss/train", 1.0 / (step + 1), step)
        if step in (6, 9):
            first.add_scalar("loss/validation", 0.5 + step / 100, step)
            first.add_scalar("loss/validation/non_ema", 0.6 + step / 100, step)
        first.add_scalar("ema/decay", 0.5, step)
    first.close()
    resumed = SummaryWriter(log_dir=str(log_dir), purge_step=7)  # what the trainer opens on resume
    resumed.add_scalar("lr/unet", 1e-3, 7)
    resumed.add_scalar("loss/train", 0.2, 7)
    resumed.close()

    history = read_run_history(tmp_path / "out")
    assert set(history.validation) == {"loss/validation", "loss/validation/non_ema"}
    steps, values = history.validation["loss/validation"]
    assert steps == [6] and values == [pytest.approx(0.56)]  # step 9 was purged with the resume
    assert history.validation["loss/validation/non_ema"][0] == [6]

    run = RunController()
    run.start(on_draft(ten_images).evaluate().preview, resume=True)
    run.set_history(history)
    assert run.validation_points()["loss/validation"] == ([6], [pytest.approx(0.56)])
    for step in range(7, 14):
        run.handle(step_event(step, 0.2, {"loss/validation": 0.4} if step == 13 else None))
    assert run.validation_points()["loss/validation"] == ([6, 13], [pytest.approx(0.56), 0.4])
    assert run.validation_points()["loss/validation/non_ema"] == ([6], [pytest.approx(0.66)])

    # A log that still holds steps this session took again: from the first live step on, the live values count.
    run.set_history(RunHistory(history.steps, history.lrs, history.losses,
                               {"loss/validation": ([6, 13], [0.56, 0.9])}))
    assert run.validation_points()["loss/validation"] == ([6, 13], [0.56, 0.4])
