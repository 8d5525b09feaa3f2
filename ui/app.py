"""The desktop app: one window, four tabs, wired to the controllers.

Tabs: Data & model, Training, Scheduler (fields of the chosen schedule type
beside the live preview), Run. Every edit goes to the `PresetDraft`; the
preview is recomputed ~150 ms after the last edit (`after`), so typing
"0.0003" computes once, not six times, and it is computed on a worker
thread (`PreviewWorker`), so a 20-million-step plan never freezes the
window; a result that arrives after a newer edit is dropped. Images are
counted off the Tk thread and polled with `after`; training runs in a child
process (`ui.training_process`) whose events are polled with `after`.
Nothing here blocks the Tk main loop.
"""

import json
import threading
import time
from pathlib import Path
from tkinter import filedialog, messagebox

import customtkinter as ctk

from modules.errors import ConfigError
from ui.controllers.fields import (
    DATA_MODEL_FIELDS,
    LORA_FIELDS,
    METHOD_FIELD,
    OUTPUT_FIELDS,
    SCHEDULER_FIELDS,
    SCHEDULER_TYPE_FIELD,
    TRAINING_FIELDS,
    active_scheduler_keys,
)
from ui.controllers.lr_find_controller import LrFindController
from ui.controllers.preset_draft import PresetDraft, PreviewState, scaled_lr_note
from ui.controllers.preview_worker import PreviewWorker
from ui.controllers.run_controller import RunController
from ui.controllers.run_history import read_run_history
from ui.lr_find_process import LrFindProcess
from ui.training_process import TrainingProcess
from ui.views.fields_panel import ERROR_COLOR, HINT_COLOR, FieldsPanel, ParamGroupsEditor
from ui.views.lr_find_window import LrFindWindow
from ui.views.preview_panel import PreviewPanel
from ui.views.run_panel import RunPanel

DEBOUNCE_MS = 150
PREVIEW_POLL_MS = 20
COUNT_POLL_MS = 100
RUN_POLL_MS = 100
RUN_PLOT_MS = 500
APPEARANCE_POLL_MS = 1000
TABS = ("Data & model", "Training", "Scheduler", "Run")


class Toolbar(ctk.CTkFrame):
    def __init__(self, master, on_load, on_save, on_export_csv, on_export_png):
        super().__init__(master, fg_color="transparent")
        for text, command in (("Load preset...", on_load), ("Save preset...", on_save),
                              ("Export CSV...", on_export_csv), ("Export PNG...", on_export_png)):
            ctk.CTkButton(self, text=text, width=120, command=command).pack(side="left", padx=(0, 6))
        self.path_label = ctk.CTkLabel(self, text="", text_color=HINT_COLOR, anchor="w")
        self.path_label.pack(side="left", padx=8)


class StatusBar(ctk.CTkLabel):
    """One line under the tabs: the plan summary, or what is wrong and where."""

    def show(self, state: PreviewState, notice: str | None = None) -> None:
        if notice:
            self.configure(text=notice, text_color=HINT_COLOR)
        elif state.error:
            self.configure(text=f"invalid: {state.error}", text_color=ERROR_COLOR)
        elif state.start_refusal:
            self.configure(text=f"Start: {state.start_refusal[1]}", text_color=ERROR_COLOR)
        elif state.counting:
            self.configure(text=f"counting the images in {state.counting} ...", text_color=HINT_COLOR)
        elif state.preview is not None:
            self.configure(text=state.preview.plan.summary(), text_color=HINT_COLOR)


class App(ctk.CTk):
    def __init__(self, draft: PresetDraft | None = None, confirm=None):
        """`confirm(title, message)` asks a yes/no question (default: a message box; tests inject one)."""
        super().__init__()
        self.draft = draft or PresetDraft()
        self.confirm = confirm or (lambda title, message: messagebox.askyesno(title, message, parent=self))
        self.preview_worker = PreviewWorker(self.draft)
        self._preview_job = None
        self._history: list = []  # (run number, history) read on a thread after Resume, handed over here
        self._history_thread: threading.Thread | None = None
        self._run_number = 0
        self.run = RunController()
        self.training: TrainingProcess | None = None
        self.preview_state: PreviewState | None = None
        self._refresh_job = None
        self._count_job = None
        self._run_job = None
        self._appearance_job = None
        self._last_run_plot = 0.0
        self._closing = False
        self.lr_find = LrFindController()
        self.lr_find_process: LrFindProcess | None = None
        self.lr_find_window: LrFindWindow | None = None
        self._lr_find_job = None
        self.redraws = 0  # how many times the preview was recomputed (tests check the debounce)

        self.title("LR scheduler trainer")
        self.geometry("1280x800")
        self.minsize(1000, 640)
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)

        self.toolbar = Toolbar(self, self.load_dialog, self.save_dialog, self.export_csv_dialog,
                               self.export_png_dialog)
        self.toolbar.grid(row=0, column=0, sticky="we", padx=10, pady=(8, 0))
        self.tabs = ctk.CTkTabview(self, command=self._plot_plan_on_run_tab)
        self.tabs.grid(row=1, column=0, sticky="nsew", padx=10, pady=(0, 4))
        for name in TABS:
            self.tabs.add(name)
        self.status = StatusBar(self, text="", anchor="w")
        self.status.grid(row=2, column=0, sticky="we", padx=14, pady=(0, 6))

        self._build_data_tab(self.tabs.tab("Data & model"))
        self._build_training_tab(self.tabs.tab("Training"))
        self._build_scheduler_tab(self.tabs.tab("Scheduler"))
        self.run_panel = RunPanel(self.tabs.tab("Run"), self.start_training, self.stop_training,
                                  self.resume_training, self.rebase_training)
        self.run_panel.pack(fill="both", expand=True)
        self.tabs.set("Scheduler")

        self.protocol("WM_DELETE_WINDOW", self.close)
        self.show_draft()
        self.refresh()
        self._appearance = ctk.get_appearance_mode()
        self._appearance_job = self.after(APPEARANCE_POLL_MS, self._follow_appearance)
        if self.draft.unknown_keys():
            self.after_idle(self.offer_to_drop_unknown_keys)

    # --- layout ----------------------------------------------------------------

    def _build_data_tab(self, tab) -> None:
        tab.grid_columnconfigure(0, weight=3, uniform="columns")
        tab.grid_columnconfigure(1, weight=2, uniform="columns")
        tab.grid_rowconfigure(0, weight=1)
        self.data_panel = FieldsPanel(tab, DATA_MODEL_FIELDS, self.edit, self.browse, title="Dataset and model")
        self.data_panel.grid(row=0, column=0, sticky="nsew", padx=(0, 6))
        self.data_panel.add_widget(ctk.CTkButton(self.data_panel, text="Count the images again", width=180,
                                                 command=self.recount), sticky="w")
        # Text-to-image models: LoRA or full; the LoRA rows only with training.method "lora".
        self.lora_panel = FieldsPanel(tab, (METHOD_FIELD, *LORA_FIELDS), self.edit, title="Text-to-image training")
        self.lora_panel.grid(row=0, column=1, sticky="nsew")

    def _build_training_tab(self, tab) -> None:
        tab.grid_columnconfigure((0, 1), weight=1, uniform="columns")
        tab.grid_rowconfigure(0, weight=1)
        self.training_panel = FieldsPanel(tab, TRAINING_FIELDS, self.edit, self.browse, title="Training")
        self.training_panel.grid(row=0, column=0, sticky="nsew", padx=(0, 6))
        self.output_panel = FieldsPanel(tab, OUTPUT_FIELDS, self.edit, self.browse, title="Output")
        self.output_panel.grid(row=0, column=1, sticky="nsew")
        self.groups_editor = ParamGroupsEditor(self.output_panel, self.edit_group, self.add_group,
                                               self.remove_group)
        self.output_panel.add_widget(self.groups_editor, sticky="w")

    def _build_scheduler_tab(self, tab) -> None:
        tab.grid_columnconfigure(1, weight=1)
        tab.grid_rowconfigure(0, weight=1)
        self.scheduler_panel = FieldsPanel(tab, (SCHEDULER_TYPE_FIELD, *SCHEDULER_FIELDS), self.edit,
                                           title="Schedule", width=380)
        self.scheduler_panel.grid(row=0, column=0, sticky="nsw", padx=(0, 6))
        self.scheduler_panel.add_widget(ctk.CTkButton(self.scheduler_panel, text="Find LR...", width=120,
                                                      command=self.open_lr_find), sticky="w")
        self.preview_panel = PreviewPanel(tab)
        self.preview_panel.grid(row=0, column=1, sticky="nsew")

    @property
    def panels(self) -> tuple[FieldsPanel, ...]:
        return self.data_panel, self.lora_panel, self.training_panel, self.output_panel, self.scheduler_panel

    def field_row(self, key: str):
        for panel in self.panels:
            if key in panel.rows:
                return panel.rows[key]
        raise KeyError(key)

    # --- draft -> widgets ----------------------------------------------------------

    def show_draft(self) -> None:
        """Put every value of the draft into its widget (after a load or a type switch)."""
        for panel in self.panels:
            for key, row in panel.rows.items():
                row.set_value(self.draft.text(key))
        self.groups_editor.set_groups(self.draft.groups())
        self.scheduler_panel.show_only(("scheduler.type", *active_scheduler_keys(self.draft.schedule_type)))
        lora_rows = tuple(spec.key for spec in LORA_FIELDS) if self.draft.value("training.method") == "lora" else ()
        self.lora_panel.show_only((METHOD_FIELD.key, *lora_rows))
        self.show_path()

    def show_path(self) -> None:
        """The preset's file (or "unsaved preset"), marked "(modified)" once the draft differs from it."""
        text = str(self.draft.path) if self.draft.path else "unsaved preset"
        self.toolbar.path_label.configure(text=text + ("  (modified)" if self.draft.modified else ""))

    # --- edits -------------------------------------------------------------------------

    def edit(self, key: str, value) -> None:
        self.draft.set_text(key, value)
        if key in ("scheduler.type", "training.method"):
            self.show_draft()
        self.schedule_refresh()

    def edit_group(self, index: int, field: str, text: str) -> None:
        self.draft.set_group_text(index, field, text)
        self.schedule_refresh()

    def add_group(self) -> None:
        self.draft.add_group()
        self.groups_editor.set_groups(self.draft.groups())
        self.schedule_refresh()

    def remove_group(self, index: int) -> None:
        self.draft.remove_group(index)
        self.groups_editor.set_groups(self.draft.groups())
        self.schedule_refresh()

    def offer_to_drop_unknown_keys(self) -> bool:
        """A preset with keys no field has (a misspelling) is a dead end: offer to drop them.

        True when the draft has no unknown keys left.
        """
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
        self.show_draft()
        self.refresh()
        return True

    def browse(self, key: str) -> None:
        current = self.draft.value(key) or "."
        chosen = filedialog.askdirectory(parent=self, initialdir=current if Path(current).is_dir() else ".",
                                         title=f"Choose the {key} folder")
        if chosen:
            if key == "data.path":
                self.draft.counter.forget(chosen)
                self.draft.caption_counter.forget(chosen)
            self.field_row(key).set_value(chosen)
            self.edit(key, chosen)

    def recount(self) -> None:
        path = self.draft.value("data.path")
        if path:
            self.draft.counter.forget(path)
            self.draft.caption_counter.forget(path)
        self.schedule_refresh()

    def schedule_refresh(self) -> None:
        """Recompute the preview DEBOUNCE_MS after the last edit."""
        self.show_path()
        if self._refresh_job is not None:
            self.after_cancel(self._refresh_job)
        self._refresh_job = self.after(DEBOUNCE_MS, self.refresh)

    def refresh(self) -> None:
        """Ask the worker thread for the draft's preview; `_poll_preview` shows it when it arrives."""
        self._refresh_job = None
        self.redraws += 1
        self.preview_worker.request()
        if self._preview_job is None:
            self._preview_job = self.after(PREVIEW_POLL_MS, self._poll_preview)

    def _poll_preview(self) -> None:
        self._preview_job = None
        state = self.preview_worker.collect()
        if state is not None:
            self.show_state(state)
        if self.preview_worker.busy or self.preview_worker.has_result:
            self._preview_job = self.after(PREVIEW_POLL_MS, self._poll_preview)

    def show_state(self, state: PreviewState) -> None:
        """Put a computed preview state on screen: the plot, the status line and the field marks."""
        self.preview_state = state
        self.preview_panel.show(state)
        if self.tabs.get() == "Run":
            self._plot_plan_on_run_tab()
        self.status.show(state)
        self._mark_errors(state)
        self.training_panel.rows["optimizer.lr"].set_note(scaled_lr_note(state.preview if state.fresh else None))
        path_row = self.data_panel.rows["data.path"]
        if state.counting:
            path_row.set_note("counting ...")
            if self._count_job is None:
                self._count_job = self.after(COUNT_POLL_MS, self._poll_count)
        elif state.image_count is not None:
            path_row.set_note(f"{state.image_count} image{'s' * (state.image_count != 1)}")
        elif state.error_key == "data.path" or (path_row.note.cget("text") == "counting ..."
                                                 and not self.draft.counter.busy):
            path_row.set_note("")  # a folder's problem is the message under it
        self._show_captions(state)

    def _show_captions(self, state: PreviewState) -> None:
        """Text-to-image models: how many images have a caption, beside the caption extension."""
        row = self.data_panel.rows["data.caption_extension"]
        if state.counting_captions:
            row.set_note("counting captions ...")
            if self._count_job is None:
                self._count_job = self.after(COUNT_POLL_MS, self._poll_count)
        elif state.captions is not None and state.preset is not None:
            row.set_note(state.captions.describe(state.preset.data.default_caption))
        elif state.fresh or not self.draft.caption_counter.busy:
            row.set_note("")

    def _plot_plan_on_run_tab(self) -> None:
        """Before the first run, the Run tab shows the plan Start would train (drawn only when shown)."""
        state = self.preview_state
        if self.tabs.get() == "Run" and self.run.status == "idle" and state is not None and state.fresh:
            self.run_panel.plot_plan(state.preview)

    def _follow_appearance(self) -> None:
        """customtkinter restyles its widgets when the system switches light/dark; the plots follow here."""
        mode = ctk.get_appearance_mode()
        if mode != self._appearance:
            self._appearance = mode
            if self.preview_state is not None:
                self.preview_panel.show(self.preview_state)
            if self.run.planned is not None:
                self.run_panel.plot(self.run)
            else:
                self._plot_plan_on_run_tab()
        self._appearance_job = self.after(APPEARANCE_POLL_MS, self._follow_appearance)

    def _mark_errors(self, state: PreviewState) -> None:
        key = state.error_key if state.error else None
        message = state.error
        if key is None and state.start_refusal is not None:
            key, message = state.start_refusal  # valid, but not something the app's Start can do
        for panel in self.panels:
            for row_key, row in panel.rows.items():
                row.set_error(message if row_key == key else None)
        group_index = group_field = None
        if key and key.startswith("optimizer.param_groups"):
            parts = key.split(".")
            group_index = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            group_field = parts[3] if len(parts) > 3 else None
        self.groups_editor.set_error(group_index, group_field,
                                     state.error if key and key.startswith("optimizer.param_groups") else None)

    def _poll_count(self) -> None:
        self._count_job = None
        arrived = self.draft.counter.collect()
        arrived = self.draft.caption_counter.collect() or arrived
        if arrived:
            self.refresh()
        elif self.draft.counter.busy or self.draft.caption_counter.busy:
            self._count_job = self.after(COUNT_POLL_MS, self._poll_count)
        else:
            self.refresh()

    # --- files ----------------------------------------------------------------------------

    def _report(self, notice: str) -> None:
        self.status.show(self.preview_state, notice)

    def load(self, path: str) -> None:
        self.draft.load(path)
        self.show_draft()
        self.refresh()
        self.offer_to_drop_unknown_keys()

    def load_dialog(self) -> None:
        path = filedialog.askopenfilename(parent=self, title="Load preset", initialdir="training_presets",
                                          filetypes=[("Preset", "*.json"), ("All files", "*")])
        if path:
            try:
                self.load(path)
            except ConfigError as error:
                messagebox.showerror("Load preset", str(error), parent=self)

    def _save_file(self, title: str, extension: str, writer) -> None:
        path = filedialog.asksaveasfilename(parent=self, title=title, defaultextension=extension,
                                            filetypes=[(extension[1:].upper(), f"*{extension}")])
        if not path:
            return
        try:
            writer(path)
        except ConfigError as error:
            messagebox.showerror(title, f"Not written: {error}", parent=self)
        except OSError as error:
            messagebox.showerror(title, f"Cannot write {path}: {error.strerror}", parent=self)
        else:
            self._report(f"written: {path}")

    def save_dialog(self) -> None:
        def save(path):
            self.draft.save(path)
            self.show_draft()

        if self.offer_to_drop_unknown_keys():
            self._save_file("Save preset", ".json", save)

    def export_csv_dialog(self) -> None:
        self._save_file("Export curve as CSV", ".csv", self.draft.export_csv)

    def export_png_dialog(self) -> None:
        self._save_file("Export curve as PNG", ".png", self.draft.export_png)

    # --- training ---------------------------------------------------------------------------

    def _refuse_start(self, message: str) -> None:
        self.run.error = f"Not started: {message}"
        self.run.log(self.run.error)
        self.run_panel.show(self.run)

    def start_training(self, resume: bool = False, rebase_schedule: bool = False) -> None:
        if self.run.active:
            return
        try:
            state = self.preview_state
            if state is None or not state.fresh or state.revision != self.draft.revision:
                state = self.draft.wait_for_images()
            if state.error:
                raise ConfigError(state.error, state.error_key)
        except ConfigError as error:
            self._refuse_start(str(error))
            return
        if state.start_refusal is not None:
            self._refuse_start(f"{state.start_refusal[0]}: {state.start_refusal[1]}")
            return
        preview = state.preview
        # The child trains exactly this validated preset: the configuration on screen.
        preset_json = json.loads(json.dumps(preview.preset.to_json_dict()))
        self.run.start(preview, resume)
        self._run_number += 1
        if rebase_schedule:
            self.run.log("Continuing on the new plan: the weights, optimizer state and step of the checkpoint "
                         "are kept, the schedule is the one on screen")
        if resume:
            self._read_history(preview.preset.output.dir)
        self.training = TrainingProcess(preset_json, resume=True if resume else None,
                                        rebase_schedule=rebase_schedule)
        self.training.start()
        self.run_panel.show(self.run)
        self.run_panel.plot(self.run)
        self._run_job = self.after(RUN_POLL_MS, self._poll_run)

    def _read_history(self, output_dir: str) -> None:
        """Read the steps the run logged before (TensorBoard) on a thread; `_poll_run` hands them over."""
        number = self._run_number

        def read():
            try:
                self._history.append((number, read_run_history(output_dir)))
            except Exception as error:  # noqa: BLE001 - an unreadable log only loses the earlier points
                self._history.append((number, f"the earlier steps could not be read from the TensorBoard "
                                              f"log: {type(error).__name__}: {error}"))

        self._history_thread = threading.Thread(target=read, name="run-history", daemon=True)
        self._history_thread.start()

    def resume_training(self) -> None:
        self.start_training(resume=True)

    def rebase_training(self) -> None:
        """Resume although the plan changed: continue at the checkpoint's step on the plan on screen."""
        self.start_training(resume=True, rebase_schedule=True)

    def stop_training(self) -> None:
        if self.training is not None and self.run.status == "running":
            self.training.stop()
            self.run.request_stop()
            self.run_panel.show(self.run)

    def _poll_run(self) -> None:
        self._run_job = None
        if self.training is None:
            return
        events = self.training.events()
        for event in events:
            self.run.handle(event)
        while self._history:
            number, history = self._history.pop()
            if number != self._run_number:
                continue
            if isinstance(history, str):
                self.run.log(history)
            else:
                self.run.set_history(history)
            events = events or [("history",)]
        if events:
            self.run_panel.show(self.run)
        now = time.monotonic()
        ended = not self.training.running
        if events and (ended or now - self._last_run_plot >= RUN_PLOT_MS / 1000):
            self._last_run_plot = now
            self.run_panel.plot(self.run)
        if ended and (self._history or self._history_thread is not None and self._history_thread.is_alive()):
            # The earlier steps are still being read: show them before the polling stops.
            self._run_job = self.after(RUN_POLL_MS, self._poll_run)
            return
        if ended:
            self.training.join(5)
            self.training = None
            self.run_panel.show(self.run)
            if self._closing:
                self.destroy()
            return
        self._run_job = self.after(RUN_POLL_MS, self._poll_run)

    # --- Find LR ---------------------------------------------------------------------------------

    def open_lr_find(self) -> None:
        if self.lr_find_window is None:
            self.lr_find_window = LrFindWindow(self, self.start_lr_find, self.stop_lr_find, self.apply_lr_find,
                                               self.close_lr_find)
            self.lr_find_window.set_sweep(self.lr_find)
            self.lr_find_window.show(self.lr_find)
        self.lr_find_window.lift()

    def start_lr_find(self) -> None:
        if self.lr_find.active:
            return
        window, finder = self.lr_find_window, self.lr_find
        try:
            texts = window.sweep_texts()
            finder.min_lr, finder.max_lr, finder.steps = float(texts["min_lr"]), float(texts["max_lr"]), int(
                texts["steps"])
            preview = self.draft.current_preview()
            finder.start()
        except ValueError as error:  # ConfigError included: the draft or the sweep is wrong
            finder.status, finder.message = "failed", f"Not started: {error}"
            window.show(finder, plot=False)
            return
        preset_json = json.loads(json.dumps(preview.preset.to_json_dict()))
        self.lr_find_process = LrFindProcess(preset_json, finder.min_lr, finder.max_lr, finder.steps)
        self.lr_find_process.start()
        window.show(finder)
        self._lr_find_job = self.after(RUN_POLL_MS, self._poll_lr_find)

    def stop_lr_find(self) -> None:
        if self.lr_find_process is not None and self.lr_find.status == "running":
            self.lr_find_process.stop()
            self.lr_find.request_stop()
            self.lr_find_window.show(self.lr_find, plot=False)

    def apply_lr_find(self) -> None:
        text = self.lr_find.apply(self.draft)
        self.field_row("optimizer.lr").set_value(text)
        self.schedule_refresh()
        self._report(f"optimizer.lr set to {text} (the LR range test's suggestion)")

    def _poll_lr_find(self) -> None:
        self._lr_find_job = None
        if self.lr_find_process is None:
            return
        events = self.lr_find_process.events()
        for event in events:
            self.lr_find.handle(event)
        ended = not self.lr_find_process.running
        if events and self.lr_find_window is not None:
            self.lr_find_window.show(self.lr_find)
        if ended:
            self.lr_find_process.join(5)
            self.lr_find_process = None
            return
        self._lr_find_job = self.after(RUN_PLOT_MS if events else RUN_POLL_MS, self._poll_lr_find)

    def close_lr_find(self) -> None:
        """Closing the window ends a running test (it trains a throw-away copy: nothing is lost)."""
        if self.lr_find_process is not None:
            self.lr_find_process.kill()
            self.lr_find_process = None
            self.lr_find.status, self.lr_find.message = "idle", ""
        if self.lr_find_window is not None:
            self.lr_find_window.destroy()
            self.lr_find_window = None

    def destroy(self) -> None:
        for job in (self._refresh_job, self._count_job, self._run_job, self._appearance_job, self._preview_job,
                    self._lr_find_job):
            if job is not None:
                self.after_cancel(job)
        if self.lr_find_process is not None:
            self.lr_find_process.kill()
        super().destroy()

    def close(self) -> None:
        """Closing while training stops it first (checkpoint), then closes."""
        if self.training is not None and self.training.running:
            if not messagebox.askokcancel(
                "Training is running", "Stop training (a checkpoint is written) and close?", parent=self
            ):
                return
            self._closing = True
            self.stop_training()
            return
        self.destroy()


def run_app(preset_path: str | None = None) -> None:
    ctk.set_appearance_mode("system")
    draft = PresetDraft()
    if preset_path:
        draft.load(preset_path)
    app = App(draft)
    app.mainloop()
