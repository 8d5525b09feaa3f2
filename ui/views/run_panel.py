"""The Run tab: Start / Stop / Resume, progress, loss and LR, the two plots and the log.

`RunPanel` only draws a `RunController`: `show(run)` updates the texts and
progress bar, `plot(run)` redraws the planned LR curve with the LR really
used at each step over it (`PreviewPlot.update(actual=...)`) and the loss
beside it, on the same step axis: the training loss, and where validation
ran (SPEC §11) the validation loss at those steps, with EMA also the
trained weights' (non-EMA) validation loss, lighter, and with two validation concepts or
more each concept's loss, dotted. The buttons call the injected callbacks; "Continue on the new
plan" appears only after Resume was refused because the plan changed.
"""

from collections.abc import Callable

import customtkinter as ctk
from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg

from ui.controllers.run_controller import RunController
from ui.controllers.run_history import NON_EMA_VALIDATION_TAG, VALIDATION_TAG
from ui.curve_plot import PreviewPlot, style_axes, use_step_ticks
from ui.views.fields_panel import ERROR_COLOR
from ui.views.preview_panel import PREVIEW_LINE_POINTS, is_dark, make_figure

MAX_RUN_POINTS = 3000  # steps drawn while training; a longer run is thinned evenly for the plot
MAX_CONCEPT_LINES = 6  # validation concepts drawn one by one in the loss plot (the rest: in TensorBoard)


class RunPanel(ctk.CTkFrame):
    def __init__(self, master, on_start: Callable[[], None], on_stop: Callable[[], None],
                 on_resume: Callable[[], None], on_rebase: Callable[[], None]):
        super().__init__(master, fg_color="transparent")
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(3, weight=3)
        self.grid_rowconfigure(4, weight=1)

        buttons = ctk.CTkFrame(self, fg_color="transparent")
        buttons.grid(row=0, column=0, sticky="we", padx=8, pady=(8, 4))
        self.start_button = ctk.CTkButton(buttons, text="Start", width=110, command=on_start)
        self.stop_button = ctk.CTkButton(buttons, text="Stop (checkpoint)", width=140, command=on_stop,
                                         state="disabled")
        self.resume_button = ctk.CTkButton(buttons, text="Resume", width=110, command=on_resume)
        for button in (self.start_button, self.stop_button, self.resume_button):
            button.pack(side="left", padx=(0, 8))
        self.rebase_button = ctk.CTkButton(buttons, text="Continue on the new plan", width=190, command=on_rebase)
        ctk.CTkLabel(buttons, text="Start trains the settings on screen; Resume continues from the newest "
                                   "checkpoint in the output folder.", anchor="w").pack(side="left", padx=8)

        progress = ctk.CTkFrame(self, fg_color="transparent")
        progress.grid(row=1, column=0, sticky="we", padx=8)
        progress.grid_columnconfigure(0, weight=1)
        self.progress_bar = ctk.CTkProgressBar(progress)
        self.progress_bar.set(0)
        self.progress_bar.grid(row=0, column=0, sticky="we", pady=4)
        self.progress_label = ctk.CTkLabel(progress, text="Not started", anchor="w")
        self.progress_label.grid(row=1, column=0, sticky="we")
        self.values_label = ctk.CTkLabel(progress, text="", anchor="w")
        self.values_label.grid(row=2, column=0, sticky="we")
        self.error_label = ctk.CTkLabel(self, text="", text_color=ERROR_COLOR, anchor="w", justify="left",
                                        wraplength=900)

        self.figure = make_figure(10.0, 3.6)
        lr_axes, self.loss_axes = self.figure.subplots(1, 2, width_ratios=(3, 2))
        self.lr_plot = PreviewPlot(self.figure, dark=is_dark(), max_line_points=PREVIEW_LINE_POINTS, axes=lr_axes)
        (self.loss_line,) = self.loss_axes.plot([], [], lw=1.0, label="loss/train")
        (self.validation_line,) = self.loss_axes.plot([], [], "o-", lw=1.4, ms=4, label="loss/validation")
        (self.non_ema_line,) = self.loss_axes.plot([], [], "o--", lw=1.0, ms=3, alpha=0.45,
                                                   label="loss/validation/non_ema")
        self.concept_lines: dict[str, object] = {}  # loss/validation/<concept> -> its line (2 concepts or more)
        self.loss_axes.set_xlabel("optimizer step")
        self.loss_axes.set_ylabel("loss")
        use_step_ticks(self.loss_axes.xaxis)
        self._style_loss_axes()
        self._show_tick_labels(lr_axes, False)  # nothing to read on an empty plot
        self._show_tick_labels(self.loss_axes, False)
        self.canvas = FigureCanvasTkAgg(self.figure, master=self)
        self.canvas.get_tk_widget().grid(row=3, column=0, sticky="nsew", padx=8, pady=4)

        self.log_box = ctk.CTkTextbox(self, height=120, wrap="word")
        self.log_box.grid(row=4, column=0, sticky="nsew", padx=8, pady=(4, 8))
        self.log_box.configure(state="disabled")

    def _style_loss_axes(self) -> None:
        theme = self.lr_plot.theme
        style_axes(self.loss_axes, theme)
        self.loss_line.set_color(theme["colors"][2])
        for line in (self.validation_line, self.non_ema_line):
            line.set_color(theme["validation"])

    @staticmethod
    def _show_tick_labels(axes, shown: bool, y_shown: bool | None = None) -> None:
        axes.tick_params(labelbottom=shown, labelleft=shown if y_shown is None else y_shown)

    def set_buttons(self, active: bool, can_stop: bool) -> None:
        self.start_button.configure(state="disabled" if active else "normal")
        self.resume_button.configure(state="disabled" if active else "normal")
        self.stop_button.configure(state="normal" if can_stop else "disabled")

    def show(self, run: RunController) -> None:
        self.progress_bar.set(run.fraction)
        self.progress_label.configure(text=run.progress_text())
        self.values_label.configure(text=run.values_text())
        self.set_buttons(run.active, run.status == "running")
        if run.error:
            self.error_label.configure(text=run.error)
            self.error_label.grid(row=2, column=0, sticky="we", padx=8)
        else:
            self.error_label.grid_remove()
        if run.plan_change and not run.active:
            if not self.rebase_button.winfo_manager():
                self.rebase_button.pack(side="left", padx=(0, 8), after=self.resume_button)
        else:
            self.rebase_button.pack_forget()
        lines = run.take_new_log_lines()
        if lines:
            self.log_box.configure(state="normal")
            self.log_box.insert("end", "\n".join(lines) + "\n")
            self.log_box.see("end")
            self.log_box.configure(state="disabled")

    def _plot_effective(self, run: RunController) -> None:
        """Prodigy / D-Adaptation: the LR really applied (d x lr) on its own axis, as training reports it."""
        points = run.effective_lr_points(MAX_RUN_POINTS)
        axes = getattr(self, "effective_axes", None)
        if not points and axes is None:
            return
        if axes is None:
            axes = self.effective_axes = self.lr_plot.axes.twinx()
        axes.clear()
        theme = self.lr_plot.theme
        for index, (name, (steps, lrs)) in enumerate(points.items()):
            axes.plot(steps, lrs, color=theme["colors"][(index + 3) % len(theme["colors"])], lw=1.2, ls="-.",
                      label=f"lr_effective/{name}")
        axes.set_ylabel("effective LR (d x lr)" if points else "", color=theme["foreground"])
        axes.tick_params(colors=theme["foreground"], which="both")
        axes.set_visible(bool(points))
        # With EMA on, the EMA decay's axis is on the right too: this one goes outside it.
        ema_axes = self.lr_plot.ema_axes
        beside = ema_axes is not None and ema_axes.get_visible()
        axes.spines["right"].set_position(("outward", 55 if beside else 0))

    def plot_plan(self, preview) -> None:
        """Before a run: the curve Start would train."""
        self.plot(RunController(planned=preview))

    def plot(self, run: RunController) -> None:
        dark = is_dark()
        if dark != self.lr_plot.dark:
            self.lr_plot.set_dark(dark)
            self._style_loss_axes()
            self.canvas.draw_idle()
        run = run.plotted()
        if run.planned is None:
            return
        title = "learning rate: planned and used" if run.status != "idle" else "learning rate: the plan Start trains"
        self.lr_plot.update(run.planned, actual=run.actual_lrs(MAX_RUN_POINTS), title=title)
        self._plot_effective(run)
        self._plot_losses(run)
        self.canvas.draw_idle()

    def _plot_concepts(self, validation: dict) -> None:
        """With two validation concepts or more (up to MAX_CONCEPT_LINES), each concept's loss, thin and
        dotted in its own colour; with one, it is the validation loss itself and is not drawn again."""
        prefix = VALIDATION_TAG + "/"
        tags = [tag for tag in validation if tag.startswith(prefix) and tag != NON_EMA_VALIDATION_TAG]
        tags = tags[:MAX_CONCEPT_LINES] if len(tags) > 1 else []
        for tag in [tag for tag in self.concept_lines if tag not in tags]:
            self.concept_lines.pop(tag).remove()
        theme = self.lr_plot.theme
        taken = {theme["validation"], self.loss_line.get_color()}  # never a colour another loss line has
        colors = [color for color in theme["colors"][1:] if color not in taken]
        for index, tag in enumerate(tags):
            if tag not in self.concept_lines:
                (self.concept_lines[tag],) = self.loss_axes.plot([], [], ".:", lw=0.9, ms=3, label=tag)
            self.concept_lines[tag].set_color(colors[index % len(colors)])
            self.concept_lines[tag].set_data(*validation[tag])

    def _plot_losses(self, run: RunController) -> None:
        """The training loss; the validation loss (and with EMA the non-EMA one) at the steps it was taken."""
        steps, losses = run.loss_points(MAX_RUN_POINTS)
        validation = run.validation_points(MAX_RUN_POINTS)
        self._show_tick_labels(self.lr_plot.axes, True)
        self._show_tick_labels(self.loss_axes, True, y_shown=bool(steps))
        self.loss_line.set_data(steps, losses)
        self.validation_line.set_data(*validation.get(VALIDATION_TAG, ([], [])))
        self.non_ema_line.set_data(*validation.get(NON_EMA_VALIDATION_TAG, ([], [])))
        self._plot_concepts(validation)
        self.loss_axes.set_xlim(0, max(run.planned.plan.total_steps, 1))
        values = [*losses, *(value for tag in (VALIDATION_TAG, NON_EMA_VALIDATION_TAG, *self.concept_lines)
                             for value in validation.get(tag, ([], []))[1])]
        if values:
            low, high = min(values), max(values)
            margin = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
            self.loss_axes.set_ylim(low - margin, high + margin)
        else:
            self.loss_axes.set_ylim(0, 1)
        theme = self.lr_plot.theme
        self.loss_axes.set_title("loss", fontsize="medium", color=theme["foreground"])
        legend = self.loss_axes.get_legend()
        if legend is not None:
            legend.remove()
        shown = [line for line in (self.loss_line, self.validation_line, self.non_ema_line,
                                   *self.concept_lines.values()) if len(line.get_xdata())]
        if len(shown) > 1:  # the training loss alone needs no legend
            legend = self.loss_axes.legend(handles=shown, loc="best", fontsize="small", framealpha=0.85,
                                           facecolor=theme["legend"], edgecolor=theme["grid"])
            for text in legend.get_texts():
                text.set_color(theme["foreground"])
