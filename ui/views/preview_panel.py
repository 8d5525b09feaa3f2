"""The live preview: an embedded matplotlib Figure (FigureCanvasTkAgg, no pyplot).

`PreviewPanel.show(state)` draws a `PreviewState` from the draft
controller: the curve (via `ui.curve_plot.PreviewPlot`, the same drawing
code as `scripts/preview.py`), the plan's summary line (and its aspect-ratio
buckets, validation steps and EMA decay) and warnings, and,
when the draft is invalid, the validator's message over the last valid
curve. The Figure and axes live as long as the panel; a redraw replaces the
data and asks for `draw_idle`.
"""

import customtkinter as ctk
from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg
from matplotlib.figure import Figure

from modules.schedule.preview import bucket_lines
from ui.controllers.preset_draft import PreviewState, concept_lines, validation_ema_lines
from ui.curve_plot import APP_LINE_POINTS, PreviewPlot, make_preview_figure
from ui.views.fields_panel import ERROR_COLOR, HINT_COLOR

WARNING_COLOR = ("#a04000", "#f0b45a")
PREVIEW_LINE_POINTS = APP_LINE_POINTS


def fixed_font_family() -> str:
    """The system's fixed-width family (the concept table is aligned in columns)."""
    from tkinter import font

    return font.nametofont("TkFixedFont").actual("family")


def is_dark() -> bool:
    return ctk.get_appearance_mode() == "Dark"


CONCEPT_LINES_SHOWN = 6  # the concept list scrolls beyond this many lines, so the curve keeps its height

# The preview's size in the 1280x800 window (Tk resizes the canvas to its cell); the legend sits beside it.
PREVIEW_SIZE_INCHES = (6.2, 5.7)
LEGEND_SIZE_INCHES = (2.0, 5.7)


def make_figure(width_inches: float = PREVIEW_SIZE_INCHES[0],
                height_inches: float = PREVIEW_SIZE_INCHES[1]) -> Figure:
    return make_preview_figure(width_inches, height_inches)


class PreviewPanel(ctk.CTkFrame):
    def __init__(self, master):
        super().__init__(master)
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)
        self.summary = ctk.CTkLabel(self, text="", anchor="w", justify="left", font=ctk.CTkFont(size=13,
                                                                                                 weight="bold"))
        self.summary.grid(row=0, column=0, columnspan=2, sticky="we", padx=8, pady=(8, 2))
        self.figure = make_figure()
        self.canvas = FigureCanvasTkAgg(self.figure, master=self)
        self.legend_figure = Figure(figsize=LEGEND_SIZE_INCHES, dpi=100)
        self.legend_canvas = FigureCanvasTkAgg(self.legend_figure, master=self)
        self.plot = PreviewPlot(self.figure, dark=is_dark(), max_line_points=PREVIEW_LINE_POINTS, blit=True,
                                legend_figure=self.legend_figure)
        self.canvas.get_tk_widget().grid(row=1, column=0, sticky="nsew", padx=(8, 0), pady=4)
        self.legend_canvas.get_tk_widget().grid(row=1, column=1, sticky="ns", padx=(0, 8), pady=4)
        self.message = ctk.CTkLabel(self, text="", anchor="w", justify="left", text_color=ERROR_COLOR)
        self.warnings = ctk.CTkLabel(self, text="", anchor="w", justify="left", text_color=WARNING_COLOR)
        self.warnings.grid(row=4, column=0, columnspan=2, sticky="we", padx=8, pady=(0, 8))
        # One line per concept (name, type, images, repeats or samples, samples per epoch, share), scrolled.
        self.concepts = ctk.CTkTextbox(self, height=20, wrap="none", activate_scrollbars=True,
                                       font=ctk.CTkFont(family=fixed_font_family(), size=11), fg_color="transparent")
        self.concepts.configure(state="disabled")
        self.concept_text = ""
        self.bind("<Configure>", self._rewrap)
        self.shown = None  # the Preview on screen

    def _rewrap(self, event) -> None:
        width = max(200, event.width - 30)
        for label in (self.summary, self.message, self.warnings):
            label.configure(wraplength=width)

    def _fit_legend(self) -> None:
        """The legend's canvas as wide as the legend, so the plot gets the rest of the width."""
        width = self.plot.legend_width_pixels
        widget = self.legend_canvas.get_tk_widget()
        if width is not None and int(widget.cget("width")) != width:
            widget.configure(width=width)

    def show(self, state: PreviewState) -> None:
        dark = is_dark()
        if dark != self.plot.dark:
            self.plot.set_dark(dark)
            self.shown = None
        if state.preview is not None and state.preview is not self.shown:
            self.plot.update(state.preview, title="")
            self._fit_legend()
            self.shown = state.preview
            self.plot.render()
            plan = state.preview.plan
            self.summary.configure(text="\n".join([plan.summary(), *(line.strip() for line in bucket_lines(plan)),
                                                   *validation_ema_lines(state.preview)]))
            self._show_concepts(concept_lines(state.preview))
        if state.fresh:
            self.warnings.configure(text="\n".join(f"warning: {line}" for line in state.warnings))
        if state.error:
            stale = " (the curve shows the last valid settings)" if state.preview is not None else ""
            self.message.configure(text=f"{state.error}{stale}")
            self.message.grid(row=3, column=0, columnspan=2, sticky="we", padx=8)
        elif state.counting:
            self.message.configure(text=f"counting the images in {state.counting} ...", text_color=HINT_COLOR)
            self.message.grid(row=3, column=0, columnspan=2, sticky="we", padx=8)
        else:
            self.message.grid_remove()
        if not state.counting:
            self.message.configure(text_color=ERROR_COLOR)

    def _show_concepts(self, lines: list[str]) -> None:
        """The concept lines under the curve (hidden for one folder). Only a changed text is written, and the
        box is resized only when its number of lines changes: CTkTextbox redraws (and flushes the pending
        full draw of the figure) on every resize."""
        text = "\n".join(lines)
        if text == self.concept_text:
            return
        shown_lines = min(len(lines), CONCEPT_LINES_SHOWN)
        resize = shown_lines != min(self.concept_text.count("\n") + 1, CONCEPT_LINES_SHOWN) or not self.concept_text
        self.concept_text = text
        self.concepts.configure(state="normal")
        self.concepts.delete("1.0", "end")
        self.concepts.insert("1.0", text)
        self.concepts.configure(state="disabled")
        if resize and lines:
            line_pixels = self.concepts.cget("font").metrics("linespace") + 1
            self.concepts.configure(height=line_pixels * shown_lines + 14)
        if lines:
            self.concepts.grid(row=2, column=0, columnspan=2, sticky="we", padx=8, pady=(0, 2))
        else:
            self.concepts.grid_remove()
