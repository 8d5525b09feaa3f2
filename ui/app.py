"""The desktop app: one window, four tabs; it wires the parts together.

Tabs: Data & model, Training, Scheduler (fields of the chosen schedule type
beside the live preview), Run. Each part owns its own concern and its own
`after` loops, so nothing blocks the Tk main loop:

- `SettingsTabs` (ui.views.settings_tabs): the three settings tabs; every
  edit goes to the `PresetDraft`, then to `changed()`.
- `LivePreview` (ui.views.live_preview): recomputes the preview ~150 ms
  after the last edit on a worker thread and polls the image counts; each
  state it collects comes to `show_state()`.
- `RunTab` (ui.views.run_tab): trains in a child process and polls it.
- `LrFindWindow` (ui.views.lr_find_window): the LR range test in a child
  process, polled by the window; the app keeps its `LrFindController`.
- `Toolbar` and `StatusBar` (ui.views.toolbar): file actions, the preset's
  path, and the one-line status under the tabs.
"""

from tkinter import messagebox

import customtkinter as ctk

from modules.errors import ConfigError
from ui.controllers.lr_find_controller import LrFindController
from ui.controllers.preset_draft import PresetDraft, PreviewState
from ui.views.live_preview import LivePreview
from ui.views.lr_find_window import LrFindWindow
from ui.views.run_tab import RunTab
from ui.views.settings_tabs import SettingsTabs
from ui.views.toolbar import StatusBar, Toolbar

APPEARANCE_POLL_MS = 1000
TABS = ("Data & model", "Training", "Scheduler", "Run")


class App(ctk.CTk):
    def __init__(self, draft: PresetDraft | None = None, confirm=None):
        """`confirm(title, message)` asks a yes/no question (default: a message box; tests inject one)."""
        super().__init__()
        self.draft = draft or PresetDraft()
        self.confirm = confirm or (lambda title, message: messagebox.askyesno(title, message, parent=self))
        self.preview_state: PreviewState | None = None  # the newest preview on screen
        self.lr_find = LrFindController()  # outlives its window: a reopened window shows the last sweep
        self.lr_find_window: LrFindWindow | None = None
        self._closing = False
        self.title("LR scheduler trainer")
        self.geometry("1280x800")
        self.minsize(1000, 640)
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)

        self.toolbar = Toolbar(self, self.load, self._save, self.draft.export_csv, self.draft.export_png,
                               may_save=self.offer_to_drop_unknown_keys, on_written=self._report)
        self.toolbar.grid(row=0, column=0, sticky="we", padx=10, pady=(8, 0))
        self.tabs = ctk.CTkTabview(self, command=self._show_plan_on_run_tab)
        self.tabs.grid(row=1, column=0, sticky="nsew", padx=10, pady=(0, 4))
        for name in TABS:
            self.tabs.add(name)
        self.status = StatusBar(self, text="", anchor="w")
        self.status.grid(row=2, column=0, sticky="we", padx=14, pady=(0, 6))
        self.live_preview = LivePreview(self, self.draft, self.show_state)
        self.settings = SettingsTabs(self.tabs, self.draft, on_changed=self.changed, on_find_lr=self.open_lr_find)
        self.run_tab = RunTab(self.tabs.tab("Run"), self.state_to_train, on_ended=self._run_ended)
        self.run_tab.pack(fill="both", expand=True)
        self.tabs.set("Scheduler")

        self.protocol("WM_DELETE_WINDOW", self.close)
        self.show_draft()
        self.live_preview.refresh()
        self._appearance = ctk.get_appearance_mode()
        self._appearance_job = self.after(APPEARANCE_POLL_MS, self._follow_appearance)
        if self.draft.unknown_keys():
            self.after_idle(self.offer_to_drop_unknown_keys)

    def field_row(self, key: str):
        """The row of the field `key`, on whichever settings tab it is."""
        return self.settings.field_row(key)

    # --- the draft and its preview -----------------------------------------------------------

    def show_draft(self) -> None:
        """Put every value of the draft into its widget (after a load or a save)."""
        self.settings.show_draft()
        self.toolbar.show_path(self.draft.path, self.draft.modified)

    def changed(self) -> None:
        """The draft was edited: mark the path "(modified)" and recompute the preview after the debounce."""
        self.toolbar.show_path(self.draft.path, self.draft.modified)
        self.live_preview.schedule()

    def show_state(self, state: PreviewState) -> None:
        """Put a computed preview state on screen: the settings tabs, the Run tab's plan, the status line."""
        self.preview_state = state
        self.settings.show_state(state)
        self._show_plan_on_run_tab()
        self.status.show(state)

    def _show_plan_on_run_tab(self) -> None:
        """Before the first run, the Run tab shows the plan Start would train (drawn only when shown)."""
        if self.tabs.get() == "Run":
            self.run_tab.show_plan(self.preview_state)

    def _follow_appearance(self) -> None:
        """customtkinter restyles its widgets when the system switches light/dark; the plots follow here."""
        mode = ctk.get_appearance_mode()
        if mode != self._appearance:
            self._appearance = mode
            if self.preview_state is not None:
                self.settings.scheduler_tab.preview_panel.show(self.preview_state)
            if self.run_tab.run.planned is not None or self.tabs.get() == "Run":
                self.run_tab.redraw(self.preview_state)
        self._appearance_job = self.after(APPEARANCE_POLL_MS, self._follow_appearance)

    def offer_to_drop_unknown_keys(self) -> bool:
        """A preset with keys no field has is a dead end: offer to move the misplaced ones where they
        belong ("training.lr" -> "optimizer.lr"), then to drop the rest (misspelt or from another program).

        True when the draft has no unknown keys left.
        """
        self._offer_to_move_misplaced_keys()
        unknown = self.draft.unknown_keys()
        if not unknown:
            return True
        listed = "\n".join(f"  {item.describe()}" for item in unknown)
        if not self.confirm("Unknown keys in the preset",
                            f"The preset has keys that no setting has (misspelt or from another program):\n"
                            f"{listed}\n\nDrop them? The preset cannot be saved or trained with them. "
                            "The file itself stays as it is until you save."):
            return False
        self.draft.drop_keys([item.key for item in unknown])
        self._after_keys_changed()
        return True

    def _offer_to_move_misplaced_keys(self) -> None:
        """Keys in the wrong section are never dropped unasked: the user is offered to move them first."""
        misplaced = [item for item in self.draft.unknown_keys() if item.belongs_at]
        if not misplaced:
            return
        listed = "\n".join(f"  {item.key} -> {item.belongs_at}" for item in misplaced)
        if self.confirm("Keys in the wrong section",
                        f"The preset has settings in the wrong section:\n{listed}\n\nMove them there? "
                        "The file itself stays as it is until you save."):
            if self.draft.move_keys([item.key for item in misplaced]):
                self._after_keys_changed()

    def _after_keys_changed(self) -> None:
        self.show_draft()
        self.live_preview.refresh()

    # --- files ----------------------------------------------------------------------------------

    def _report(self, notice: str) -> None:
        self.status.show(self.preview_state, notice)

    def load(self, path: str) -> None:
        self.draft.load(path)
        self.show_draft()
        self.live_preview.refresh()
        self.offer_to_drop_unknown_keys()

    def _save(self, path: str) -> None:
        self.draft.save(path)
        self.show_draft()

    # --- training and Find LR -------------------------------------------------------------------

    def state_to_train(self) -> PreviewState:
        """The preview of the draft as it is now (waiting for its images); ConfigError if it is invalid."""
        state = self.preview_state
        if state is None or not state.fresh or state.revision != self.draft.revision:
            state = self.draft.wait_for_images()
        if state.error:
            raise ConfigError(state.error, state.error_key)
        return state

    def open_lr_find(self) -> None:
        if self.lr_find_window is None:
            self.lr_find_window = LrFindWindow(self, self.lr_find, self.draft.current_preview, self.apply_lr_find,
                                               self.close_lr_find)
        self.lr_find_window.lift()

    def apply_lr_find(self) -> None:
        text = self.lr_find.apply(self.draft)
        self.field_row("optimizer.lr").set_value(text)
        self.changed()
        self._report(f"optimizer.lr set to {text} (the LR range test's suggestion)")

    def close_lr_find(self) -> None:
        """Closing the window ends a running test (it trains a throw-away copy: nothing is lost)."""
        if self.lr_find_window is not None:
            self.lr_find_window.close()
            self.lr_find_window = None

    # --- closing --------------------------------------------------------------------------------

    def _run_ended(self) -> None:
        if self._closing:
            self.destroy()

    def destroy(self) -> None:
        self.live_preview.cancel()
        self.after_cancel(self._appearance_job)
        super().destroy()  # the Run tab and the Find LR window stop their own polling (and the test)

    def close(self) -> None:
        """Closing while training stops it first (checkpoint), then closes."""
        if self.run_tab.training_running:
            if not messagebox.askokcancel(
                "Training is running", "Stop training (a checkpoint is written) and close?", parent=self
            ):
                return
            self._closing = True
            self.run_tab.stop()
            return
        self.destroy()


def run_app(preset_path: str | None = None) -> None:
    ctk.set_appearance_mode("system")
    draft = PresetDraft()
    if preset_path:
        draft.load(preset_path)
    app = App(draft)
    app.mainloop()
