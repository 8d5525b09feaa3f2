"""The Find LR window: sweep settings, Start / Stop, loss against LR (log axis) and "Use this LR".

`LrFindWindow` only draws an `LrFindController` (`show`) and calls the
injected callbacks; the app runs the test (`ui.lr_find_process`) and polls it.
"""

from collections.abc import Callable

import customtkinter as ctk
from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg

from ui.controllers.lr_find_controller import LrFindController
from ui.curve_plot import DARK_THEME, LIGHT_THEME
from ui.lr_find_plot import draw_range_test
from ui.views.fields_panel import ERROR_COLOR, HINT_COLOR
from ui.views.preview_panel import is_dark, make_figure


class LrFindWindow(ctk.CTkToplevel):
    def __init__(self, master, on_start: Callable[[], None], on_stop: Callable[[], None],
                 on_apply: Callable[[], None], on_close: Callable[[], None]):
        super().__init__(master)
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
        self.start_button = ctk.CTkButton(settings, text="Start", width=90, command=on_start)
        self.stop_button = ctk.CTkButton(settings, text="Stop", width=90, command=on_stop, state="disabled")
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

    def sweep_texts(self) -> dict[str, str]:
        return {key: entry.get() for key, entry in self.entries.items()}

    def set_sweep(self, controller: LrFindController) -> None:
        for key, entry in self.entries.items():
            entry.delete(0, "end")
            entry.insert(0, f"{getattr(controller, key):g}")

    def show(self, controller: LrFindController, plot: bool = True) -> None:
        self.start_button.configure(state="disabled" if controller.active else "normal")
        self.stop_button.configure(state="normal" if controller.status == "running" else "disabled")
        self.apply_button.configure(state="normal" if controller.suggested_optimizer_lr is not None else "disabled",
                                    text="Use this LR" if controller.suggested_optimizer_lr is None
                                    else f"Set optimizer.lr = {controller.suggested_optimizer_lr:.3g}")
        self.message.configure(text=controller.message,
                               text_color=ERROR_COLOR if controller.status == "failed" else HINT_COLOR)
        if plot:
            theme = DARK_THEME if is_dark() else LIGHT_THEME
            self.figure.set_facecolor(theme["background"])
            draw_range_test(self.axes, controller.points, controller.suggested_lr, theme)
            self.canvas.draw_idle()
