"""The app's side of SPEC §13 without a display: LoRA+ and component groups in the draft and its preview,
both SDXL text-encoder lines visible when equal, the plan title inside the figure, the scheduler.type help."""

import numpy as np
import pytest
from tests.conftest import ROOT
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ui.controllers.fields import ALL_FIELDS, LORA_FIELDS, PARAM_GROUP_FIELDS
from ui.controllers.image_counter import ImageCounter
from ui.controllers.preset_draft import PresetDraft
from ui.curve_plot import PreviewPlot, draw_preview, group_styles

DEMO = ROOT / "training_presets" / "text_to_image_demo.json"


def sdxl_draft() -> PresetDraft:
    draft = PresetDraft(counter=ImageCounter(synchronous=True))
    draft.load(DEMO)
    draft.set_value("data.path", str(ROOT / "training_presets" / "text_to_image_images"))
    draft.set_text("model.type", "stable_diffusion_xl")
    return draft


def drawn(preview) -> PreviewPlot:
    figure = Figure(figsize=(11, 5))
    FigureCanvasAgg(figure)
    plot = PreviewPlot(figure)
    plot.update(preview)
    return plot


def test_the_scheduler_type_help_names_the_restarts_difference():
    hint = ALL_FIELDS["scheduler.type"].hint
    for words in ("cosine_with_restarts", "smooth", "diffusers", "kohya", "cosine_with_hard_restarts"):
        assert words in hint


def test_lora_plus_and_a_text_encoder_group_are_edited_in_the_app_and_previewed(tmp_path):
    draft = sdxl_draft()
    assert "lora.plus_ratio" in {spec.key for spec in LORA_FIELDS}
    assert PARAM_GROUP_FIELDS["component"].choices == ("unet", "text_encoder", "text_encoder_2")
    draft.set_text("lora.plus_ratio", "4")
    draft.add_group()
    assert draft.groups()[0]["component"] == "unet"  # the default, shown when the preset leaves it out
    draft.set_group_text(0, "match", r"self_attn\.q_proj")
    draft.set_group_text(0, "component", "text_encoder_2")
    state = draft.wait_for_images()
    assert state.error is None, state.error
    curve = state.preview.curve
    assert curve.group_names == ("group1", "group1_B", "unet", "unet_B", "text_encoder", "text_encoder_B",
                                 "text_encoder_2", "text_encoder_2_B")
    table = curve.effective_table()
    np.testing.assert_allclose(table[:, 1], 4 * table[:, 0], rtol=1e-15)
    stop = curve.stop_steps[0]
    assert stop is not None and (table[stop:, :2] == 0).all() and (table[1:stop, :2] > 0).all()
    draft.export_csv(tmp_path / "curve.csv")  # the app's Export CSV
    header = (tmp_path / "curve.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "step," + ",".join(f"lr/{name}" for name in curve.group_names)

    plot = drawn(state.preview)
    labels = [text.get_text() for text in plot.axes.get_legend().get_texts()]
    assert all(f"lr/{name}" in labels for name in curve.group_names)


def test_a_text_encoder_group_for_frozen_text_encoders_is_marked_at_its_component():
    draft = sdxl_draft()
    draft.add_group()
    draft.set_group_text(0, "component", "text_encoder")
    draft.set_text("optimizer.text_encoder_stop_after", "")
    draft.set_text("optimizer.text_encoder_lr", "")
    state = draft.wait_for_images()
    assert state.error_key == "optimizer.param_groups.0.component" and "text_encoder_lr" in state.error


def test_both_sdxl_text_encoder_lines_are_visible_when_they_are_equal():
    preview = sdxl_draft().wait_for_images().preview
    curve = preview.curve
    assert curve.group_names == ("unet", "text_encoder", "text_encoder_2")
    artists = drawn(preview).curve_artists
    first, second = artists["text_encoder"], artists["text_encoder_2"]
    np.testing.assert_array_equal(first.get_ydata(), second.get_ydata())  # the same curve ...
    assert first.get_linestyle() == "-" and second.get_linestyle() == "--"  # ... drawn dashed over the solid one
    assert first.get_color() != second.get_color()
    assert second.get_zorder() >= first.get_zorder()


def test_a_lora_plus_group_takes_its_groups_colour_and_a_style_of_its_own():
    draft = sdxl_draft()
    draft.set_text("lora.plus_ratio", "4")
    curve = draft.wait_for_images().preview.curve
    styles = dict(zip(curve.group_names, group_styles(curve)))
    assert styles["unet"] == (0, "-") and styles["unet_B"] == (0, "-.")
    assert styles["text_encoder"] == (1, "-") and styles["text_encoder_B"] == (1, "-.")
    assert styles["text_encoder_2"][1] != "-" and styles["text_encoder_2_B"][1] not in ("-", "-.")
    assert len({style for style in styles.values()}) == len(styles)  # no two groups drawn alike


@pytest.mark.parametrize("optimizer", ["adamw", "prodigy"])
def test_the_plan_title_stays_inside_the_figure_with_room_above_the_plot(optimizer):
    draft = PresetDraft(counter=ImageCounter(synchronous=True))
    draft.load(ROOT / "training_presets" / "demo.json")
    draft.set_value("data.path", str(ROOT / "training_presets" / "demo_images"))
    if optimizer == "prodigy":  # its note makes the title two lines, the second longer than the figure is wide
        draft.set_value("optimizer", {"type": "prodigy", "lr": 1.0})
    preview = draft.wait_for_images().preview
    figure = Figure(figsize=(11, 5), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = draw_preview(figure, preview)
    canvas.draw()
    renderer = canvas.get_renderer()
    title = axes.title.get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= figure.bbox.width
    assert title.y0 - axes.get_window_extent(renderer).y1 >= 5  # pixels between the title box and the plot
    if optimizer == "prodigy":
        assert axes.get_title().count("\n") >= 2 and "lr_effective/<group>" in axes.get_title()
