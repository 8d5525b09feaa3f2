"""The concepts panel (SPEC §10): list editing of data.concepts in the draft, each concept's image and
caption counts, the preview's concept lines; and the real panel under Xvfb with 20 concepts."""

from pathlib import Path

import pytest
from tests.conftest import make_images

from modules.config.preset import validate_preset
from ui.controllers.image_counter import CaptionCounter, ImageCounter
from ui.controllers.preset_draft import PresetDraft, concept_error_target


def make_draft(raw_data: dict, synchronous: bool = True) -> PresetDraft:
    raw = {
        "version": 1,
        "data": raw_data,
        "training": {"epochs": 2, "batch_size": 1},
        "optimizer": {"lr": 1e-3},
        "scheduler": {"type": "cosine", "warmup": 2},
    }
    return PresetDraft(raw, ImageCounter(synchronous=synchronous), CaptionCounter(synchronous=synchronous))


def captioned(folder: Path, count: int, captions: int, seed: int = 0) -> Path:
    make_images(folder, count, seed=seed)
    for index in range(captions):
        (folder / f"image_{index:04d}.txt").write_text(f"tag{index}, photo, cat")
    return folder


@pytest.fixture
def three_folders(tmp_path):
    return (captioned(tmp_path / "cat", 6, 6), captioned(tmp_path / "style", 5, 3, seed=1),
            captioned(tmp_path / "person", 4, 0, seed=2))


def test_adding_a_folder_turns_data_path_into_the_first_concept(three_folders):
    cat, style, _ = three_folders
    draft = make_draft({"path": str(cat), "repeats": 3})
    assert draft.add_concept(str(style)) == 1
    assert "path" not in draft.raw["data"] and "repeats" not in draft.raw["data"]
    assert draft.concepts() == [{"name": "cat", "path": str(cat), "repeats": 3},
                                {"name": "style", "path": str(style)}]
    validate_preset(draft.raw)  # both set would be an error
    assert draft.modified


def test_added_concepts_get_unique_names(tmp_path):
    draft = make_draft({})
    for parent in ("a", "b", "c"):
        draft.add_concept(str(tmp_path / parent / "img"))
    assert [concept["name"] for concept in draft.concepts()] == ["img", "img_2", "img_3"]


def test_repeats_samples_and_loss_weight_are_edited_by_index(three_folders):
    cat, style, person = three_folders
    draft = make_draft({})
    for folder in three_folders:
        draft.add_concept(str(folder))
    draft.set_concept_text(1, "amount", "1.5")
    draft.set_concept_text(2, "type", "regularization")
    draft.set_concept_text(2, "loss_weight", "0.5")
    assert draft.concept_text(1, "amount") == "1.5" and draft.concept_amount_kind(1) == "repeats"
    draft.counter.lookup(str(person))
    draft.set_concept_text(2, "amount", "2")
    draft.set_concept_text(2, "amount_kind", "samples")  # starts from what it gives now: 4 images x 2
    assert draft.concepts()[2] == {"name": "person", "path": str(person), "type": "regularization",
                                   "loss_weight": 0.5, "samples": 8}
    assert draft.concept_texts(2)["amount"] == "8" and draft.concept_texts(2)["amount_kind"] == "samples"
    draft.set_concept_text(2, "amount", "3")
    preset = validate_preset(draft.raw)
    assert [(c.repeats, c.samples) for c in preset.data.concepts] == [(None, None), (1.5, None), (None, 3)]
    draft.set_concept_text(2, "amount_kind", "repeats")
    assert "samples" not in draft.concepts()[2] and draft.concepts()[2]["repeats"] == 1


def test_caption_options_inherit_data_until_a_concept_sets_its_own(three_folders):
    draft = make_draft({"caption_extension": ".caption", "shuffle_tags": True})
    draft.add_concept(str(three_folders[0]))
    assert draft.concept_text(0, "caption_extension") == ".caption"
    assert draft.concept_text(0, "shuffle_tags") is True
    assert draft.concept_text(0, "keep_tags") == "0"
    draft.set_concept_text(0, "keep_tags", "2")
    draft.set_concept_text(0, "caption_extension", ".txt")
    assert draft.concepts()[0]["keep_tags"] == 2 and draft.concepts()[0]["caption_extension"] == ".txt"
    draft.set_concept_text(0, "name", "")  # empty: the folder's name again
    assert "name" not in draft.concepts()[0] and draft.concept_text(0, "name") == "cat"


def test_removing_the_last_concept_leaves_no_concepts_key(three_folders):
    draft = make_draft({})
    draft.add_concept(str(three_folders[0]))
    draft.add_concept(str(three_folders[1]))
    draft.remove_concept(0)
    assert [concept["name"] for concept in draft.concepts()] == ["style"]
    draft.remove_concept(0)
    assert "concepts" not in draft.raw["data"]


def test_each_concept_has_its_image_and_caption_counts(three_folders):
    draft = make_draft({"default_caption": "a photo"})
    for folder in three_folders:
        draft.add_concept(str(folder))
    counts = draft.wait_for_images().concept_counts
    assert [(count.images, count.captions.with_caption) for count in counts] == [(6, 6), (5, 3), (4, 0)]
    assert counts[1].describe() == "5 images, 3 captioned" and counts[1].describe(with_captions=False) == "5 images"


def test_concept_counts_run_off_the_calling_thread_and_are_cached(three_folders):
    draft = make_draft({}, synchronous=False)
    for folder in three_folders:
        draft.add_concept(str(folder))
    state = draft.evaluate()
    assert all(count.counting for count in state.concept_counts) and state.counting_captions
    state = draft.wait_for_images()
    assert not any(count.counting for count in state.concept_counts)
    walks = draft.counter.walks
    draft.set_concept_text(0, "amount", "2")
    draft.evaluate()
    assert draft.counter.walks == walks  # an edit never counts a folder again


def test_a_missing_concept_folder_is_named_at_its_concept(three_folders, tmp_path):
    draft = make_draft({})
    draft.add_concept(str(three_folders[0]))
    draft.add_concept(str(tmp_path / "nowhere"))
    state = draft.wait_for_images()
    assert state.error_key == "data.concepts.1.path"
    assert concept_error_target(state.error_key) == (1, "path")
    assert state.concept_counts[1].error and state.concept_counts[0].images == 6


def test_a_bad_amount_is_marked_at_the_concepts_amount_entry(three_folders):
    draft = make_draft({})
    draft.add_concept(str(three_folders[0]))
    draft.set_concept_text(0, "amount", "-1")
    state = draft.evaluate()
    assert state.error_key == "data.concepts.0.repeats"
    assert concept_error_target(state.error_key) == (0, "amount")
    assert concept_error_target("data.concepts") is None and concept_error_target("data.path") is None



def test_a_kohya_folder_concept_is_previewed_as_its_subfolders(tmp_path):
    from ui.controllers.preset_draft import concept_lines

    make_images(tmp_path / "train" / "10_mychar", 3)
    make_images(tmp_path / "train" / "2_style", 2, seed=1)
    draft = make_draft({})
    draft.add_concept(str(tmp_path / "train"))
    state = draft.wait_for_images()
    assert state.error is None and state.concept_counts[0].images == 5
    assert state.preview.plan.samples_per_epoch == 3 * 10 + 2 * 2
    assert [line.split()[0] for line in concept_lines(state.preview)[2:]] == ["mychar", "style"]
    draft.add_concept(str(make_images(tmp_path / "other" / "mychar", 2, seed=2)))  # named like a subfolder
    state = draft.wait_for_images()
    assert "two concepts are named 'mychar'" in state.error

def test_the_apps_concept_preview_holds_out_what_training_holds_out(three_folders):
    """data.validation_split with data.concepts: the app's per-concept listing splits as the trainer's plan does,
    and a new split is listed again."""
    from modules.schedule.step_plan import build_step_plan

    draft = make_draft({"concepts": [{"path": str(folder)} for folder in three_folders]})
    draft.wait_for_images()
    for split in ("0.3", "0.5"):
        draft.set_text("data.validation_split", split)
        state = draft.wait_for_images()
        assert state.error is None, state.error
        trained = build_step_plan(state.preset)  # what the trainer plans for the same settings
        assert state.preview.plan.concepts == trained.concepts
        assert state.preview.plan.validation_images == trained.validation_images > 0


# --- the real panel under Xvfb -----------------------------------------------------------------------------

@pytest.mark.gui
@pytest.mark.slow
def test_the_panel_with_20_concepts_edits_one_row_and_redraws_the_preview(display, tmp_path):
    import customtkinter as ctk
    from test_ui_window import pump, select_tab, settle, type_into

    from ui.app import App

    ctk.set_appearance_mode("light")
    folders = [make_images(tmp_path / f"c{index:02d}", 2 + index % 3, seed=index) for index in range(20)]
    raw = {"version": 1, "model": {"config": "tiny", "resolution": 16},
           "data": {"concepts": [{"path": str(folder)} for folder in folders]},
           "training": {"epochs": 2, "batch_size": 1, "device": "cpu"}, "optimizer": {"lr": 1e-3},
           "scheduler": {"type": "cosine", "warmup": 2}, "output": {"dir": str(tmp_path / "out")}}
    window = App(PresetDraft(raw))
    try:
        window.geometry("1280x800+0+0")
        pump(window, lambda: window.preview_state is not None and window.preview_state.fresh
             and not window.preview_state.counting_captions)
        select_tab(window, "Data & model")
        panel = window.settings.data_tab.concepts_panel
        assert len(panel.rows) == 20 and panel.built == 20
        assert panel.rows[19].counts.cget("text") == f"{2 + 19 % 3} images"  # a unet model reads no captions
        assert not window.field_row("data.path").winfo_manager()  # with concepts, data.path is hidden
        steps = window.preview_state.preview.plan.total_steps
        type_into(panel.rows[7].inputs["amount"], "3")
        pump(window, lambda: window.preview_state.fresh and window.preview_state.preview.plan.total_steps != steps)
        assert panel.built == 20  # an edit builds no row
        assert window.draft.concepts()[7]["repeats"] == 3
        expected = sum((2 + index % 3) * (3 if index == 7 else 1) for index in range(20))
        assert window.preview_state.preview.plan.samples_per_epoch == expected
        listed = window.settings.scheduler_tab.preview_panel.concept_text.splitlines()
        assert len(listed) == 22 and listed[9].split()[:5] == ["c07", "train", "3", "x", "3"]  # 3 images x 3

        type_into(panel.rows[3].inputs["amount"], "-1")
        pump(window, lambda: window.preview_state.error_key == "data.concepts.3.repeats")
        settle(window, 0.2)
        assert panel.rows[3].message.winfo_manager() and "must be greater" in panel.rows[3].message.cget("text")
        type_into(panel.rows[3].inputs["amount"], "1")
        pump(window, lambda: window.preview_state.fresh)

        window.settings.remove_concept(0)
        settle(window, 0.2)
        assert len(panel.rows) == 19 and panel.rows[0].variables["name"].get() == "c01"
        window.settings.add_concept_folder(str(folders[0]))
        pump(window, lambda: window.preview_state.fresh and len(window.preview_state.concept_counts) == 20)
        assert panel.rows[19].variables["name"].get() == "c00" and panel.built == 21
    finally:
        window.destroy()


def test_the_preview_of_three_concepts_sums_their_samples_and_lists_them(three_folders):
    from ui.controllers.preset_draft import concept_lines

    draft = make_draft({"default_caption": "a photo"})
    for folder in three_folders:
        draft.add_concept(str(folder))
    draft.set_concept_text(1, "amount", "1.5")  # 5 images: floor(7.5) = 7
    draft.set_concept_text(2, "type", "regularization")
    draft.set_concept_text(2, "amount_kind", "samples")
    draft.set_concept_text(2, "amount", "10")
    state = draft.wait_for_images()
    assert state.error is None, state.error
    plan = state.preview.plan
    assert plan.samples_per_epoch == 6 + 7 + 10 and plan.steps_per_epoch == 23
    lines = concept_lines(state.preview)
    assert lines[0].startswith("concepts          3, 15 images -> 23 samples per epoch")
    assert [line.split()[:3] for line in lines[2:]] == [["cat", "train", "6"], ["style", "train", "5"],
                                                        ["person", "regularization", "4"]]
    assert "43.5%" in lines[4]  # 10 of 23


def test_an_edit_resolves_only_the_edited_concepts_folder_again(three_folders, monkeypatch):
    import ui.controllers.preset_draft as preset_draft

    draft = make_draft({"default_caption": "a photo"})
    for folder in three_folders:
        draft.add_concept(str(folder))
    draft.wait_for_images()
    resolved = []
    original = preset_draft.resolve_concepts
    monkeypatch.setattr(preset_draft, "resolve_concepts",
                        lambda data, **kwargs: resolved.append(data.concepts[0].path) or original(data, **kwargs))
    draft.set_text("training.batch_size", "2")
    assert draft.evaluate().fresh and resolved == []  # an edit elsewhere lists no folder
    draft.set_concept_text(1, "amount", "2")
    state = draft.evaluate()
    assert resolved == [str(three_folders[1])]
    assert state.preview.plan.samples_per_epoch == 6 + 10 + 4
