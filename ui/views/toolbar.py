"""The line above the tabs (preset file actions and the preset's path) and the status line below them.

`Toolbar` asks for the file names (Tk file dialogs) and hands them to the
injected actions; a `ConfigError` or `OSError` from an action is shown in a
message box, a file written is reported through `on_written(notice)`.
`StatusBar` shows the plan summary, or what is wrong and where.
"""

from collections.abc import Callable
from tkinter import filedialog, messagebox

import customtkinter as ctk

from modules.errors import ConfigError
from ui.controllers.preset_draft import PreviewState
from ui.views.fields_panel import ERROR_COLOR, HINT_COLOR

PathAction = Callable[[str], None]


class Toolbar(ctk.CTkFrame):
    def __init__(self, master, load: PathAction, save: PathAction, export_csv: PathAction, export_png: PathAction,
                 may_save: Callable[[], bool], on_written: Callable[[str], None]):
        """`may_save()` is asked before the Save dialog opens (False: no dialog)."""
        super().__init__(master, fg_color="transparent")
        self._load, self._save, self._may_save, self._on_written = load, save, may_save, on_written
        self._export_csv, self._export_png = export_csv, export_png
        for text, command in (("Load preset...", self.load_dialog), ("Save preset...", self.save_dialog),
                              ("Export CSV...", self.export_csv_dialog), ("Export PNG...", self.export_png_dialog)):
            ctk.CTkButton(self, text=text, width=120, command=command).pack(side="left", padx=(0, 6))
        self.path_label = ctk.CTkLabel(self, text="", text_color=HINT_COLOR, anchor="w")
        self.path_label.pack(side="left", padx=8)

    def show_path(self, path, modified: bool) -> None:
        """The preset's file (or "unsaved preset"), marked "(modified)" once the draft differs from it."""
        text = str(path) if path else "unsaved preset"
        self.path_label.configure(text=text + ("  (modified)" if modified else ""))

    def load_dialog(self) -> None:
        path = filedialog.askopenfilename(parent=self.winfo_toplevel(), title="Load preset",
                                          initialdir="training_presets",
                                          filetypes=[("Preset", "*.json"), ("All files", "*")])
        if path:
            try:
                self._load(path)
            except ConfigError as error:
                messagebox.showerror("Load preset", str(error), parent=self.winfo_toplevel())

    def _save_file(self, title: str, extension: str, writer: PathAction) -> None:
        parent = self.winfo_toplevel()
        path = filedialog.asksaveasfilename(parent=parent, title=title, defaultextension=extension,
                                            filetypes=[(extension[1:].upper(), f"*{extension}")])
        if not path:
            return
        try:
            writer(path)
        except ConfigError as error:
            messagebox.showerror(title, f"Not written: {error}", parent=parent)
        except OSError as error:
            messagebox.showerror(title, f"Cannot write {path}: {error.strerror}", parent=parent)
        else:
            self._on_written(f"written: {path}")

    def save_dialog(self) -> None:
        if self._may_save():
            self._save_file("Save preset", ".json", self._save)

    def export_csv_dialog(self) -> None:
        self._save_file("Export curve as CSV", ".csv", self._export_csv)

    def export_png_dialog(self) -> None:
        self._save_file("Export curve as PNG", ".png", self._export_png)


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
