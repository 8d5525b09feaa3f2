"""The real window under a virtual screen (Xvfb): the parameter groups' component column (SPEC §13)."""

import pytest

from tests.ui.test_ui_window import app, pump, select_tab, settle, screenshot  # noqa: F401 - the window fixture

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_the_component_menu_of_a_group_edits_the_preset_and_marks_its_message(app, display):  # noqa: F811
    select_tab(app, "Training")
    editor = app.settings.training_tab.groups_editor
    menu = editor.entries[0]["component"]
    assert menu.get() == "unet" and menu.cget("values") == ["unet", "text_encoder", "text_encoder_2"]
    menu._dropdown_callback("text_encoder")  # what choosing the entry in the menu does
    pump(app, lambda: app.preview_state.error is not None)
    settle(app)
    assert app.preview_state.error_key == "optimizer.param_groups.0.component"
    assert "text_encoder_lr" in app.preview_state.error and editor.message.winfo_ismapped()
    screenshot(app, display, "training_tab_group_component.png")
    menu._dropdown_callback("unet")
    pump(app, lambda: app.preview_state.fresh and app.preview_state.error is None)
    assert app.settings.training_tab.groups_editor.entries[0]["component"].get() == "unet"
