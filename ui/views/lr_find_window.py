"""The Find LR window: sweep settings, Start / Stop, loss against LR (log axis) and "Use this LR".

`LrFindWindow` owns the LR range test: it starts it in a child process
(`ui.lr_find_process`) on the preview the injected `current_preview()`
returns (a `ConfigError` or a bad sweep value is shown in the window, not
started), polls the child with `after`, and draws the `LrFindController` it
was given (the app keeps the controller, so a reopened window shows the last
sweep). "Use this LR" calls `on_apply()`; closing the window calls
`on_close()`, and `close()` ends a running test (it trains a throw-away
copy: nothing is lost).
"""

import json
from collections.abc import Callable

import customtkinter as ctk
from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg

from modules.schedule.preview import Preview
from ui.controllers.lr_find_controller import LrFindController
from ui.curve_plot import DARK_THEME, LIGHT_THEME
from ui.lr_find_plot import draw_range_test
from ui.lr_find_process import LrFindProcess
from ui.views.fields_panel import ERROR_COLOR, HINT_COLOR
from ui.views.preview_panel import is_dark, make_figure

POLL_MS = 100
PLOT_MS = 500  # after events arrived, the next poll (and redraw) waits this long
# The loss the sweep reads (docs/validation.md: the validation loss is smoother, and needs validation images).
LOSS_CHOICES = {"training": "train", "validation": "validation"}


class LrFindWindow(ctk.CTkToplevel):
    def __init__(self, master, finder: LrFindController, current_preview: Callable[[], Preview],
                 on_apply: Callable[[], None], on_close: Callable[[], None]):
        super().__init__(master)
        self._finder = finder
        self._current_preview = current_preview
        self._process: LrFindProcess | None = None
        self._poll_job = None
        self.title("Find LR: LR range test")
        self.geometry("860x560")
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(2, weight=1)
        self.protocol("WM_DELETE_WINDOW", on_close)

        settings = ctk.CTkFrame(self, fg_color="transparent")
        settings.grid(row=0, column=0, sticky="we", padx=10, pady=(10, 4))
        self.entries = {}
        for key, label in (("min_lr", "min LR"), ("max_lr", "max LR"), ("steps", "steps")):
            ctk.CTkLabel(settings, text=label).pack(side="left", padx=(0, 4))
            entry = ctk.CTkEntry(settings, width=80)
            entry.pack(side="left", padx=(0, 12))
            self.entries[key] = entry
        ctk.CTkLabel(settings, text="loss").pack(side="left", padx=(0, 4))
        self.loss_menu = ctk.CTkOptionMenu(settings, values=list(LOSS_CHOICES), width=110,
                                           command=lambda text: setattr(finder, "loss", LOSS_CHOICES[text]))
        self.loss_menu.set(next(text for text, value in LOSS_CHOICES.items() if value == finder.loss))
        self.loss_menu.pack(side="left", padx=(0, 12))
        self.start_button = ctk.CTkButton(settings, text="Start", width=90, command=self.start)
        self.stop_button = ctk.CTkButton(settings, text="Stop", width=90, command=self.stop, state="disabled")
        self.apply_button = ctk.CTkButton(settings, text="Use this LR", width=110, command=on_apply,
                                          state="disabled")
        for button in (self.start_button, self.stop_button, self.apply_button):
            button.pack(side="left", padx=(0, 8))

        self.message = ctk.CTkLabel(self, text="", anchor="w", justify="left", wraplength=820,
                                    text_color=HINT_COLOR)
        self.message.grid(row=1, column=0, sticky="we", padx=10)
        self.figure = make_figure(8.0, 4.2)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self.canvas = FigureCanvasTkAgg(self.figure, master=self)
        self.canvas.get_tk_widget().grid(row=2, column=0, sticky="nsew", padx=10, pady=(4, 10))
        self._show_sweep()
        self.show()

    def sweep_texts(self) -> dict[str, str]:
        return {key: entry.get() for key, entry in self.entries.items()}

    def _show_sweep(self) -> None:
        for key, entry in self.entries.items():
            entry.delete(0, "end")
            entry.insert(0, f"{getattr(self._finder, key):g}")

    def show(self, plot: bool = True) -> None:
        finder = self._finder
        self.start_button.configure(state="disabled" if finder.active else "normal")
        self.stop_button.configure(state="normal" if finder.status == "running" else "disabled")
        self.apply_button.configure(state="normal" if finder.suggested_optimizer_lr is not None else "disabled",
                                    text="Use this LR" if finder.suggested_optimizer_lr is None
                                    else f"Set optimizer.lr = {finder.suggested_optimizer_lr:.3g}")
        self.message.configure(text=finder.message,
                               text_color=ERROR_COLOR if finder.status == "failed" else HINT_COLOR)
        if plot:
            theme = DARK_THEME if is_dark() else LIGHT_THEME
            self.figure.set_facecolor(theme["background"])
            draw_range_test(self.axes, finder.points, finder.suggested_lr, theme)
            self.canvas.draw_idle()

    # --- the range test in its child process ------------------------------------------------

    def start(self) -> None:
        finder = self._finder
        if finder.active:
            return
        try:
            texts = self.sweep_texts()
            finder.min_lr, finder.max_lr, finder.steps = float(texts["min_lr"]), float(texts["max_lr"]), int(
                texts["steps"])
            preview = self._current_preview()
            finder.start()
        except ValueError as error:  # ConfigError included: the draft or the sweep is wrong
            finder.status, finder.message = "failed", f"Not started: {error}"
            self.show(plot=False)
            return
        preset_json = json.loads(json.dumps(preview.preset.to_json_dict()))
        self._process = LrFindProcess(preset_json, finder.min_lr, finder.max_lr, finder.steps, finder.loss)
        self._process.start()
        self.show()
        self._poll_job = self.after(POLL_MS, self._poll)

    def stop(self) -> None:
        if self._process is not None and self._finder.status == "running":
            self._process.stop()
            self._finder.request_stop()
            self.show(plot=False)

    def _poll(self) -> None:
        self._poll_job = None
        if self._process is None:
            return
        events = self._process.events()
        for event in events:
            self._finder.handle(event)
        ended = not self._process.running
        if events:
            self.show()
        if ended:
            self._process.join(5)
            self._process = None
            return
        self._poll_job = self.after(PLOT_MS if events else POLL_MS, self._poll)

    def close(self) -> None:
        """End a running test (its status goes back to idle) and close the window."""
        if self._process is not None:
            self._process.kill()
            self._process = None
            self._finder.status, self._finder.message = "idle", ""
        self.destroy()

    def destroy(self) -> None:
        if self._poll_job is not None:
            self.after_cancel(self._poll_job)
            self._poll_job = None
        if self._process is not None:
            self._process.kill()
            self._process = None
        super().destroy()
