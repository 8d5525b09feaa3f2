"""The app's text-to-image settings without a display: fields, caption counts, LoRA method, text-encoder LR.

The window itself (the Data & model tab, the preview with its drop to 0, Start
training the demo preset like scripts/train.py) is in tests/ui/test_ui_window.py.
"""

import threading
from pathlib import Path

import numpy as np
from tests.conftest import ROOT, make_images
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from modules.config.preset import load_preset
from ui.controllers.fields import ALL_FIELDS
from ui.controllers.image_counter import CaptionCounter, ImageCounter
from ui.controllers.preset_draft import PresetDraft
from ui.curve_plot import PreviewPlot

DEMO = ROOT / "training_presets" / "text_to_image_demo.json"
TEXT_TO_IMAGE_KEYS = ("model.type", "data.caption_extension", "data.default_caption", "data.caption_dropout",
                      "training.method", "lora.rank", "lora.alpha", "lora.dropout", "lora.target_modules",
                      "optimizer.text_encoder_lr", "optimizer.text_encoder_stop_after", "output.sample_every",
                      "output.sample_prompts")


def demo_draft(**counters) -> PresetDraft:
    draft = PresetDraft(counter=ImageCounter(synchronous=True), **counters)
    draft.load(DEMO)
    draft.set_value("data.path", str(ROOT / "training_presets" / "text_to_image_images"))
    return draft


def captioned_folder(folder: Path, images: int, captions: int) -> Path:
    make_images(folder, images)
    for image in sorted(folder.glob("*.png"))[:captions]:
        image.with_suffix(".txt").write_text("a photo", encoding="utf-8")
    return folder


def test_every_text_to_image_setting_is_a_field_and_retyping_its_text_changes_nothing():
    assert set(TEXT_TO_IMAGE_KEYS) <= set(ALL_FIELDS)
    draft = demo_draft()
    before = draft.wait_for_images().preset
    for key in ALL_FIELDS:
        draft.set_text(key, draft.text(key))  # what the field shows, typed back in
    state = draft.wait_for_images()
    assert state.error is None, state.error
    assert state.preset == before


def test_lora_settings_typed_in_reach_the_preset():
    draft = demo_draft()
    for key, text in (("lora.rank", "4"), ("lora.alpha", "2"), ("lora.dropout", "0.1"),
                      ("lora.target_modules", '["to_q", "to_v"]'), ("data.default_caption", "a photo"),
                      ("data.caption_dropout", "0.25"), ("optimizer.text_encoder_lr", "2e-4")):
        draft.set_text(key, text)
    preset = draft.wait_for_images().preset
    assert (preset.lora.rank, preset.lora.alpha, preset.lora.dropout) == (4, 2.0, 0.1)
    assert preset.lora.target_modules == ["to_q", "to_v"]
    assert (preset.data.default_caption, preset.data.caption_dropout) == ("a photo", 0.25)
    assert preset.optimizer.text_encoder_lr == 2e-4
    draft.set_text("lora.alpha", "")  # empty: null, the rank
    assert draft.wait_for_images().preset.lora.resolved_alpha == 4


def test_switching_to_full_sets_the_lora_settings_aside_and_lora_brings_them_back():
    draft = demo_draft()
    draft.set_text("lora.rank", "4")
    draft.set_text("training.method", "full")
    state = draft.wait_for_images()
    assert state.error is None, state.error  # a LoRA option with "full" would be an error
    assert state.preset.training.method == "full"
    draft.set_text("training.method", "lora")
    state = draft.wait_for_images()
    assert state.error is None and state.preset.lora.rank == 4 and state.preset.lora.alpha == 4


def test_a_lora_option_with_full_is_marked_at_its_field():
    draft = demo_draft()
    draft.set_text("training.method", "full")
    draft.set_text("lora.rank", "4")
    state = draft.wait_for_images()
    assert state.error_key == "lora.rank" and "training.method is 'full'" in state.error


def test_captions_are_counted_off_the_calling_thread_and_the_preview_does_not_wait(tmp_path):
    threads = []

    class RecordingCounter(CaptionCounter):
        def measure(self, folder, kind):
            threads.append(threading.current_thread())
            return super().measure(folder, kind)

    draft = PresetDraft({"version": 1, "model": {"type": "stable_diffusion", "path": str(tmp_path / "sd")},
                         "data": {"path": str(captioned_folder(tmp_path / "images", 5, 3))}},
                        ImageCounter(synchronous=True), RecordingCounter())
    first = draft.evaluate()
    assert first.fresh and first.preview.plan.num_images == 5  # the plan is there at once
    assert first.counting_captions and first.captions is None
    state = draft.wait_for_images()  # 2 captions missing and no default caption: refused at the field
    assert state.error_key == "data.path" and "2 of 5 images have no caption file" in state.error
    assert threads and all(thread is not threading.main_thread() for thread in threads)
    draft.set_text("data.default_caption", "a photo")  # another edit: the count is not redone
    state = draft.wait_for_images()
    assert (state.captions.images, state.captions.with_caption) == (5, 3)
    assert state.captions.describe("a photo").endswith("(2 use data.default_caption)")
    assert len(threads) == 1
    draft.set_text("data.caption_extension", ".caption")  # another extension: counted again
    assert draft.wait_for_images().captions.with_caption == 0
    assert len(threads) == 2


def test_a_unet_model_counts_no_captions(tmp_path):
    draft = PresetDraft({"version": 1, "data": {"path": str(captioned_folder(tmp_path / "images", 4, 4))}},
                        ImageCounter(synchronous=True), CaptionCounter(synchronous=True))
    state = draft.wait_for_images()
    assert state.fresh and state.captions is None and not state.counting_captions


def test_the_text_encoder_lr_and_its_stop_make_a_group_that_drops_to_zero():
    draft = demo_draft()
    draft.set_text("optimizer.text_encoder_stop_after", "5")
    curve = draft.wait_for_images().preview.curve
    assert curve.group_names == ("unet", "text_encoder")
    table = curve.effective_table()
    assert np.all(table[5:, 1] == 0) and np.all(table[2:5, 1] > 0) and np.all(table[2:, 0] > 0)
    draft.set_text("optimizer.text_encoder_stop_after", "")  # never: trains to the end
    assert draft.wait_for_images().preview.curve.effective_table()[-1, 1] > 0
    draft.set_text("optimizer.text_encoder_lr", "")  # frozen: no group
    assert draft.wait_for_images().preview.curve.group_names == ("unet",)


def test_a_text_encoder_lr_for_a_unet_model_is_marked_at_its_field(image_folder):
    draft = PresetDraft({"version": 1, "data": {"path": str(image_folder)}}, ImageCounter(synchronous=True))
    draft.set_text("optimizer.text_encoder_lr", "1e-4")
    state = draft.wait_for_images()
    assert state.error_key == "optimizer.text_encoder_lr" and "no text encoder" in state.error


def plotted_groups(preview, max_line_points: int = 4000) -> dict:
    figure = Figure()
    FigureCanvasAgg(figure)
    plot = PreviewPlot(figure, max_line_points=max_line_points)
    plot.update(preview)
    return plot.curve_artists


def test_the_preview_draws_each_group_as_the_curve_trains_it_the_drop_to_zero_included():
    draft = demo_draft()
    preview = draft.wait_for_images().preview
    table = preview.curve.effective_table()
    artists = plotted_groups(preview)
    for index, name in enumerate(preview.curve.group_names):
        drawn = np.asarray(artists[name].get_ydata())[:-1]  # steps-post: the last value is repeated at T
        np.testing.assert_array_equal(drawn, table[:, index])
    assert np.asarray(artists["text_encoder"].get_ydata())[-1] == 0.0


def test_a_long_plan_drawn_as_a_band_reaches_zero_where_the_text_encoder_stops():
    draft = demo_draft()
    draft.set_text("training.max_steps", "100000")
    draft.set_text("optimizer.text_encoder_stop_after", "30001")
    preview = draft.wait_for_images().preview
    band = plotted_groups(preview, max_line_points=1000)["text_encoder"]
    vertices = band.get_paths()[0].vertices
    steps, values = vertices[:, 0], vertices[:, 1]
    assert np.all(values[steps > 30100] == 0)  # every bin after the stop
    assert values[(steps > 29000) & (steps < 29900)].max() > 0  # before it, the schedule
    straddling = (steps >= 30000) & (steps <= 30100)
    assert values[straddling].min() == 0 and values[straddling].max() > 0  # the bin holding the stop
    table_max = preview.curve.effective_table()[:, 1].max()
    assert np.isclose(values.max(), table_max, rtol=0, atol=0)


def test_an_sdxl_preview_draws_both_text_encoder_groups_down_to_zero_at_the_stop():
    draft = demo_draft()
    draft.set_text("model.type", "stable_diffusion_xl")
    preview = draft.wait_for_images().preview
    assert preview.curve.group_names == ("unet", "text_encoder", "text_encoder_2")
    table = preview.curve.effective_table()
    artists = plotted_groups(preview)
    stop = preview.curve.stop_steps[1]
    for index, name in enumerate(preview.curve.group_names):
        drawn = np.asarray(artists[name].get_ydata())[:-1]
        np.testing.assert_array_equal(drawn, table[:, index])
        assert np.all(drawn[stop:] == 0) == (name != "unet")
