"""Draw a preview onto a matplotlib `Figure` (no pyplot, no toolkit).

Used by `scripts/preview.py` (Agg, to PNG) and by the app's live preview
(FigureCanvasTkAgg). One curve per parameter group; warmup shaded; epoch
starts as thin lines, cycle starts dashed, checkpoints ticked along the
bottom and validation steps (output.validate_every) along the top. With
training.ema on, the EMA decay d_j of each update (SPEC §11) is drawn over
the run on a second y axis (0..1, on the right). Plans longer than `max_line_points` steps are drawn as a min/max
band (`modules.schedule.preview.envelope`), so a one-step restart spike in a
million-step plan stays visible.

`PreviewPlot` keeps its axes between redraws and only replaces the data
artists, which is what keeps the app's preview fast; `draw_preview` is the
one-shot form for a fresh figure.
"""

import math
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import EngFormatter, Formatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory, offset_copy

from modules.config.preset import LORA_PLUS_SUFFIX
from modules.schedule.ema_decay import decay_at_update
from modules.schedule.preview import Preview, envelope

MAX_LINE_POINTS = 4000
# The app's preview draws fewer bins: about two per horizontal pixel is all the eye can see.
APP_LINE_POINTS = 2000
MAX_MARKS = 300
TITLE_PAD_POINTS = 8  # between the plan's title and the plot
TICK_POINTS = 10  # the length of the checkpoint and validation ticks
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
DARK_COLORS = ("#5aa9e6", "#ffa24c", "#5fd35f", "#ff6b6b", "#c39bef", "#d4a373")

LIGHT_THEME = {
    "background": "#ffffff", "foreground": "#1a1a1a", "grid": "#b0b0b0", "epoch": "#888888",
    "cycle": "#c0392b", "checkpoint": "#2c3e50", "warmup": "#f2c14e", "legend": "#ffffff", "colors": COLORS,
    "validation": "#8e44ad", "ema": "#117a65",
}
DARK_THEME = {
    "background": "#2b2b2b", "foreground": "#dcdcdc", "grid": "#707070", "epoch": "#9a9a9a",
    "cycle": "#ff7b6b", "checkpoint": "#e8e8e8", "warmup": "#b8912a", "legend": "#333333", "colors": DARK_COLORS,
    "validation": "#d7a6f0", "ema": "#48c9b0",
}
EMA_LABEL = "EMA decay (right axis)"
EMA_LIMITS = (0.0, 1.05)  # d_j is in (0, 1): the whole range, so 0.99 and 0.999 stay apart from the LR's scale
LEGEND_GAP_POINTS = 52  # the axes' own legend moves right past the EMA axis' tick labels and label


class LrFormatter(Formatter):
    """LR ticks as users write learning rates: `3e-4`, `1.5e-4`, `0` (plain `0.5`, `2` from 0.01 up)."""

    def __init__(self):
        self._tick_values: list[float] = []

    def set_locs(self, locs) -> None:
        self._tick_values = [float(loc) for loc in locs]  # the style is chosen for the axis, not per tick

    def __call__(self, value, pos=None) -> str:
        largest = max((abs(loc) for loc in self._tick_values), default=abs(value))
        if value == 0:
            return "0"
        if 0.01 <= largest < 1e4:
            return f"{value:.6g}"
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def group_styles(curve) -> list[tuple[int, object]]:
    """(colour index, line style) of each group of `curve`, so that every group stays visible.

    A LoRA+ group `<g>_B` takes g's colour, dash-dotted. A group whose curve equals an earlier
    group's (the same base LR and stop: SDXL's two text encoders at text_encoder_lr) is drawn
    dashed (dotted for a `_B` group) over the earlier one, so the solid line shows between the
    dashes and both are told apart in the legend.
    """
    stops = curve.stop_steps or (None,) * len(curve.group_names)
    colours: dict[str, int] = {}
    seen: set = set()
    styles = []
    for name, base_lr, stop in zip(curve.group_names, curve.base_lrs, stops):
        base = name.removesuffix(LORA_PLUS_SUFFIX)
        lora_b = name != base and base in colours
        if not lora_b:
            colours[name] = len(colours)
        repeated = (base_lr, stop) in seen
        seen.add((base_lr, stop))
        if repeated:
            style = ":" if lora_b else (0, (5, 3))
        else:
            style = "-." if lora_b else "-"
        styles.append((colours[base] if lora_b else colours[name], style))
    return styles


def wrapped_title(text: str, figure: Figure, fontsize_points: float = 10.0) -> str:
    """`text` with each line wrapped to the figure's width (a long note would run off both edges)."""
    pixels_per_char = 0.6 * fontsize_points * figure.dpi / 72
    width = max(40, int(figure.get_figwidth() * figure.dpi * 0.9 / pixels_per_char))
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def use_step_ticks(axis) -> None:
    """Whole optimizer steps only ("200 k" for long plans, never "200 m" on a short or empty one)."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_major_formatter(EngFormatter())


def ema_decay_points(plan, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(steps k, 0-based, after which the EMA is updated; its decay d_j there): `plan.ema_decays()`, or for a
    plan with more than `max_points` updates, about `max_points` evenly spaced updates and the last (d_j only
    rises, so the line keeps its shape). Both empty when training.ema is off."""
    every = plan.ema_update_every
    count = plan.total_steps // every if plan.ema_decay is not None else 0
    if count <= max_points:
        return plan.ema_decays()
    updates = np.unique(np.linspace(1, count, max_points).astype(np.int64))  # 1-based j; the first and the last
    decays = np.array([decay_at_update(int(update), plan.ema_decay) for update in updates])
    return updates * every - 1, decays


def stopped_envelope(base_lr: float, steps: np.ndarray, low: np.ndarray, high: np.ndarray, total: int,
                     stop_step: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One group's (low, high) LR per bin: base_lr times the multiplier envelope, 0 from `stop_step` on.

    A group with a stop (optimizer.text_encoder_stop_after) trains at LR 0 from that step, as
    `LrCurve.effective_table` says: bins that start at or after it are 0, and a bin that straddles
    it reaches down to 0.
    """
    group_low, group_high = base_lr * low, base_lr * high
    if stop_step is not None and stop_step < total:
        ends = np.append(steps[1:], total)
        group_low = np.where(ends > stop_step, 0.0, group_low)
        group_high = np.where(steps >= stop_step, 0.0, group_high)
    return group_low, group_high


class PreviewPlot:
    """The LR preview on one axes of `figure`, redrawn in place by `update`.

    `actual`, if given, maps a group name to (steps, lrs) really used by a
    training run; they are drawn as dots over the planned curve.

    With `blit=True` (the app's live preview; the figure must have a canvas)
    the data artists are "animated": a full draw renders the axes, ticks,
    grid and legend once and keeps that background, and an edit that leaves
    the limits and the legend as they were only restores the background and
    draws the new curve over it (`render`). Anything else (a new length, a
    new peak LR, other legend entries, a resized canvas) takes a full draw.
    """

    def __init__(self, figure: Figure, dark: bool = False, max_line_points: int = MAX_LINE_POINTS, axes=None,
                 blit: bool = False, legend_figure: Figure | None = None):
        self.figure = figure
        # The legend on a figure of its own is redrawn only when its entries change, not with each new y range.
        self.legend_figure = legend_figure
        self._legend_key = None
        self.max_line_points = max_line_points
        self.blit = blit
        self.axes = axes if axes is not None else figure.add_subplot(1, 1, 1)
        self.curve_artists: dict = {}  # group name -> the line or min/max band drawn for it
        self.ema_axes = None  # the right-hand axis of the EMA decay, made when a plan first has EMA on
        self.data_artists: list = []
        self.full_draws = 0  # how many edits needed a full draw (the benchmark reports it)
        self._static_key = None
        self._background = None
        self._needs_full_draw = True
        self.axes.set_xlabel("optimizer step")
        self.axes.set_ylabel("learning rate")
        self.axes.yaxis.set_major_formatter(LrFormatter())
        use_step_ticks(self.axes.xaxis)  # "200 k" steps rather than an offset "1e6"
        self.legend_width_pixels: int | None = None  # the legend's own width on `legend_figure`
        self.set_dark(dark)
        if blit:
            figure.canvas.mpl_connect("draw_event", self._on_full_draw)

    def set_dark(self, dark: bool) -> None:
        """Switch colours between the light and dark theme (takes effect at the next draw)."""
        self.theme = DARK_THEME if dark else LIGHT_THEME
        theme, axes = self.theme, self.axes
        self.figure.set_facecolor(theme["background"])
        if self.legend_figure is not None:
            self.legend_figure.set_facecolor(theme["background"])
        self.dark = dark
        style_axes(axes, theme)
        if self.ema_axes is not None:
            self._style_ema_axes()
        self._static_key = None

    def update(self, preview: Preview, actual: dict | None = None, title: str | None = None):
        """Replace the plotted data with `preview` (and `actual`); return the axes.

        `title` None shows the plan's summary line, "" shows none.
        """
        axes, theme = self.axes, self.theme
        for artist in self.data_artists:
            artist.remove()
        self.data_artists = []

        plan, curve = preview.plan, preview.curve
        total = plan.total_steps
        # lr[g][k] = base_lr[g] * f(k) with base_lr[g] > 0, so the envelope of f scales to every group.
        # The effective factor is the applied one except for schedule-free optimizers (modules.schedule.lr_curve);
        # the applied one is computed on the whole-plan fast path.
        multipliers = curve.effective_multipliers if plan.schedule.schedule_free else curve.applied_multipliers
        steps, low, high = envelope(multipliers, self.max_line_points)
        added = self._draw_marks(plan)
        added.extend(self._draw_groups(curve, total, steps, low, high, actual))
        added.extend(self._draw_ticks(plan))
        added.extend(self._draw_ema(plan))
        self.data_artists = added

        peak = float(high.max()) * max(curve.base_lrs) if total else 1.0
        limits = ((0, total), (0, peak * 1.08 if peak > 0 else 1.0))
        labels = tuple(artist.get_label() for artist in added if not artist.get_label().startswith("_"))
        title_text = plan.summary() if title is None else title
        if preview.notes and title is None:
            title_text += "\n" + "; ".join(preview.notes)  # adaptive optimizers: the curve is lr x f(k), not d x lr
        title_text = wrapped_title(title_text, self.figure)
        static_key = (limits, labels, title_text, self.dark)
        if static_key != self._static_key or not self.blit:
            axes.set_xlim(*limits[0])
            axes.set_ylim(*limits[1])
            self._draw_legend(added, labels)
            # The validation ticks reach half their length above the top edge: the title keeps clear of them.
            pad = TITLE_PAD_POINTS + (TICK_POINTS / 2 if "validation" in labels else 0)
            axes.set_title(title_text, fontsize="medium", color=theme["foreground"], pad=pad, linespacing=1.3)
            self._static_key = static_key
            self._needs_full_draw = True
        if self.blit:
            for artist in added:
                artist.set_animated(True)
        return axes

    def _draw_marks(self, plan) -> list:
        """The warmup span, the epoch starts and the cycle (or phase) starts."""
        axes, theme = self.axes, self.theme
        added = []
        if plan.warmup_steps:
            added.append(axes.axvspan(0, plan.warmup_steps, color=theme["warmup"], alpha=0.3, lw=0, label="warmup"))
        # Count first: a million-step plan has hundreds of thousands of epoch starts, none of them drawn.
        if plan.num_epochs - 1 <= MAX_MARKS:
            for index, step in enumerate(plan.epoch_starts[1:]):
                added.append(axes.axvline(step, color=theme["epoch"], lw=0.6, alpha=0.6,
                                          label="epoch start" if index == 0 else None))
        cycle_starts = plan.cycle_starts
        if len(cycle_starts) <= MAX_MARKS:
            for index, step in enumerate(cycle_starts):
                added.append(axes.axvline(step, color=theme["cycle"], lw=0.8, ls="--", alpha=0.7,
                                          label=None if index else
                                          "phase start" if plan.schedule.type == "sequence" else "cycle start"))
        return added

    def _draw_ticks(self, plan) -> list:
        """Checkpoints ticked along the bottom, validation steps along the top (at the step count s after
        which each is taken, like the checkpoints)."""
        axes, theme = self.axes, self.theme
        added = []
        checkpoints = plan.checkpoint_steps
        if checkpoints and len(checkpoints) <= MAX_MARKS:
            added.extend(axes.plot(checkpoints, [0] * len(checkpoints), "|", color=theme["checkpoint"], ms=TICK_POINTS,
                                   mew=1.5, label="checkpoint", clip_on=False))
        validations = plan.validation_steps
        if validations and len(validations) <= MAX_MARKS:
            top = blended_transform_factory(axes.transData, axes.transAxes)  # x in steps, y at the top edge
            added.extend(axes.plot(list(validations), [1.0] * len(validations), "|", color=theme["validation"],
                                   ms=TICK_POINTS, mew=1.5, label="validation", clip_on=False, transform=top))
        return added

    def _draw_ema(self, plan) -> list:
        """training.ema: the decay d_j of each EMA update over the run, on the right axis (0..1); the axis is
        hidden when EMA is off."""
        steps, decays = ema_decay_points(plan, self.max_line_points)
        if not len(steps):
            if self.ema_axes is not None:
                self.ema_axes.set_visible(False)
            return []
        if self.ema_axes is None:
            self.ema_axes = self.axes.twinx()
            self._style_ema_axes()
        self.ema_axes.set_visible(True)
        # steps-post, as the LR: the decay of the update after step k holds until the next update.
        return self.ema_axes.plot(np.append(steps, plan.total_steps), np.append(decays, decays[-1]),
                                  color=self.theme["ema"], lw=1.4, drawstyle="steps-post", label=EMA_LABEL)

    def _style_ema_axes(self) -> None:
        theme, axes = self.theme, self.ema_axes
        axes.set_ylim(*EMA_LIMITS)
        axes.set_ylabel("EMA decay", color=theme["ema"])
        axes.tick_params(axis="y", colors=theme["ema"], which="both")
        for spine in axes.spines.values():
            spine.set_color(theme["foreground"])
        axes.spines["right"].set_color(theme["ema"])

    def _draw_groups(self, curve, total: int, steps, low, high, actual: dict | None) -> list:
        """Each group's LR curve (a line, or min-max bins for `total` steps binned) and the LR it really used."""
        axes, theme = self.axes, self.theme
        added = []
        colors = theme["colors"]
        self.curve_artists = {}
        stop_steps = curve.stop_steps or (None,) * len(curve.group_names)
        for index, (name, (colour_index, style)) in enumerate(zip(curve.group_names, group_styles(curve))):
            color = colors[colour_index % len(colors)]
            group_low, group_high = stopped_envelope(curve.base_lrs[index], steps, low, high, total,
                                                     stop_steps[index])
            if total <= self.max_line_points:
                # steps-post: the LR of step k holds from k to k + 1, so repeat the last value at T.
                (self.curve_artists[name],) = axes.plot(
                    np.append(steps, total), np.append(group_high, group_high[-1]), color=color, lw=1.6,
                    ls=style, label=f"lr/{name}", drawstyle="steps-post")
            else:
                # Each bin is a rectangle from its low to its high, held until the next bin starts.
                edges = np.append(steps, total)
                self.curve_artists[name] = axes.fill_between(
                    np.repeat(edges, 2)[1:-1], np.repeat(group_low, 2), np.repeat(group_high, 2),
                    color=color, alpha=0.55, lw=0.8, ls=style, label=f"lr/{name} (min-max)",
                    **({} if style == "-" else {"hatch": "//", "facecolor": "none", "edgecolor": color}))
            added.append(self.curve_artists[name])
            if actual and name in actual:
                done_steps, done_lrs = actual[name]
                added.extend(axes.plot(done_steps, done_lrs, ".", color=color, ms=5,
                                       markeredgecolor=theme["foreground"], mew=0.4, label=f"lr/{name} used"))
        return added

    def _draw_legend(self, artists: list, labels: tuple) -> None:
        theme, axes = self.theme, self.axes
        style = dict(fontsize="small", framealpha=0.85, facecolor=theme["legend"], edgecolor=theme["grid"])
        if self.legend_figure is None:
            if axes.get_legend() is not None:
                axes.get_legend().remove()
            # Beside the axes, so it never hides the curve (constrained layout makes room for it); past the
            # EMA axis' labels when that is shown. The handles of both axes, in drawing order.
            handles = [artist for artist in artists if not artist.get_label().startswith("_")]
            beside = axes.transAxes
            if self.ema_axes is not None and self.ema_axes.get_visible():
                beside = offset_copy(axes.transAxes, fig=self.figure, x=LEGEND_GAP_POINTS, units="points")
            legend = axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                                 bbox_transform=beside, borderaxespad=0.0, **style)
        else:
            if (labels, self.dark) == self._legend_key:
                return
            self._legend_key = (labels, self.dark)
            self.legend_figure.clear()
            handles = [artist for artist in artists if not artist.get_label().startswith("_")]
            legend = self.legend_figure.legend(handles, labels, loc="upper left", borderaxespad=0.2, **style)
            renderer = self.legend_figure.canvas.get_renderer()
            # The view sizes the legend's canvas to this, so no empty strip is left beside it.
            self.legend_width_pixels = math.ceil(legend.get_window_extent(renderer).width) + 6
            self.legend_figure.canvas.draw_idle()
        for text in legend.get_texts():
            text.set_color(theme["foreground"])

    def render(self) -> None:
        """Show the last `update` on the canvas: a blit when the background still fits, else a full draw."""
        canvas = self.figure.canvas
        size = tuple(self.figure.bbox.size)
        if not self.blit or self._needs_full_draw or self._background is None or self._background[0] != size:
            self.full_draws += 1
            canvas.draw_idle()
            return
        canvas.restore_region(self._background[1])
        self._draw_data()
        canvas.blit(self.figure.bbox)

    def _on_full_draw(self, event) -> None:
        # A full draw skipped the animated data artists: keep what it drew, then draw the data over it.
        canvas = self.figure.canvas
        self._background = (tuple(self.figure.bbox.size), canvas.copy_from_bbox(self.figure.bbox))
        self._needs_full_draw = False
        self._draw_data()

    def _draw_data(self) -> None:
        for artist in self.data_artists:
            self.axes.draw_artist(artist)


class ReusedConstrainedLayout(ConstrainedLayoutEngine):
    """Constrained layout, recomputed only when something it depends on changed.

    Laying out the figure costs about as much as rendering it. Between two
    edits usually only the curve changes, so the margins are reused until
    the canvas size, a title or label, the legend entries, the order of
    magnitude of the y range (the width of the tick labels) or the number
    of digits of the x range differ, or an axes is shown or hidden.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._laid_out_for = None

    def execute(self, figure):
        key = self.layout_key(figure)
        if key != self._laid_out_for:
            super().execute(figure)
            self._laid_out_for = key

    @staticmethod
    def layout_key(figure) -> tuple:
        parts: list = [tuple(figure.get_size_inches()), figure.dpi]
        for axes in figure.axes:
            legend = axes.get_legend()
            low, high = axes.get_ylim()
            magnitude = max(abs(low), abs(high))
            parts.append((
                axes.get_visible(),  # the EMA axis, shown or hidden with training.ema
                tuple(text.get_text() for text in legend.get_texts()) if legend is not None else (),
                axes.get_title(), axes.get_xlabel(), axes.get_ylabel(),
                math.floor(math.log10(magnitude)) if magnitude > 0 else None,
                len(str(int(abs(axes.get_xlim()[1])))),
            ))
        return tuple(parts)


def make_preview_figure(width_inches: float, height_inches: float, dpi: int = 100) -> Figure:
    """A Figure for repeated `PreviewPlot.update` calls (the app's live preview)."""
    return Figure(figsize=(width_inches, height_inches), dpi=dpi, layout=ReusedConstrainedLayout())


def draw_preview(figure: Figure, preview: Preview, actual: dict | None = None, title: str | None = None,
                 dark: bool = False):
    """Draw `preview` on `figure` (cleared first); return the curve axes."""
    figure.clear()
    return PreviewPlot(figure, dark=dark).update(preview, actual, title)


def style_axes(axes, theme: dict) -> None:
    """Colour one axes (background, spines, ticks, labels, title, grid) for a light or dark theme."""
    axes.set_facecolor(theme["background"])
    for spine in axes.spines.values():
        spine.set_color(theme["foreground"])
    axes.tick_params(colors=theme["foreground"], which="both")
    axes.xaxis.label.set_color(theme["foreground"])
    axes.yaxis.label.set_color(theme["foreground"])
    axes.title.set_color(theme["foreground"])
    axes.grid(True, alpha=0.35, color=theme["grid"])
