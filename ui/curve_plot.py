"""Draw a preview onto a matplotlib `Figure` (no pyplot, no toolkit).

Used by `scripts/preview.py` (Agg, to PNG) and by the app's live preview
(FigureCanvasTkAgg). One curve per parameter group; warmup shaded; epoch
starts as thin lines, cycle starts dashed, checkpoints ticked along the
bottom. Plans longer than `max_line_points` steps are drawn as a min/max
band (`modules.preview.envelope`), so a one-step restart spike in a
million-step plan stays visible.

`PreviewPlot` keeps its axes between redraws and only replaces the data
artists, which is what keeps the app's preview fast; `draw_preview` is the
one-shot form for a fresh figure.
"""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from modules.preview import Preview, envelope

MAX_LINE_POINTS = 4000
MAX_MARKS = 300
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
DARK_COLORS = ("#5aa9e6", "#ffa24c", "#5fd35f", "#ff6b6b", "#c39bef", "#d4a373")

LIGHT_THEME = {
    "background": "#ffffff", "foreground": "#1a1a1a", "grid": "#b0b0b0", "epoch": "#888888",
    "cycle": "#c0392b", "checkpoint": "#2c3e50", "warmup": "#f2c14e", "legend": "#ffffff", "colors": COLORS,
}
DARK_THEME = {
    "background": "#2b2b2b", "foreground": "#dcdcdc", "grid": "#707070", "epoch": "#9a9a9a",
    "cycle": "#ff7b6b", "checkpoint": "#e8e8e8", "warmup": "#b8912a", "legend": "#333333", "colors": DARK_COLORS,
}


class PreviewPlot:
    """The LR preview on one axes of `figure`, redrawn in place by `update`.

    `actual`, if given, maps a group name to (steps, lrs) really used by a
    training run; they are drawn as dots over the planned curve.
    """

    def __init__(self, figure: Figure, dark: bool = False, max_line_points: int = MAX_LINE_POINTS, axes=None):
        self.figure = figure
        self.max_line_points = max_line_points
        self.axes = axes if axes is not None else figure.add_subplot(1, 1, 1)
        self.curve_artists: dict = {}  # group name -> the line or min/max band drawn for it
        self.axes.set_xlabel("optimizer step")
        self.axes.set_ylabel("learning rate")
        self.axes.yaxis.set_major_formatter(EngFormatter(places=2))
        self.set_dark(dark)

    def set_dark(self, dark: bool) -> None:
        """Switch colours between the light and dark theme (takes effect at the next draw)."""
        self.theme = DARK_THEME if dark else LIGHT_THEME
        theme, axes = self.theme, self.axes
        self.figure.set_facecolor(theme["background"])
        self.dark = dark
        axes.set_facecolor(theme["background"])
        for spine in axes.spines.values():
            spine.set_color(theme["foreground"])
        axes.tick_params(colors=theme["foreground"], which="both")
        axes.xaxis.label.set_color(theme["foreground"])
        axes.yaxis.label.set_color(theme["foreground"])
        axes.title.set_color(theme["foreground"])
        axes.grid(True, alpha=0.35, color=theme["grid"])

    def update(self, preview: Preview, actual: dict | None = None, title: str | None = None):
        """Replace the plotted data with `preview` (and `actual`); return the axes.

        `title` None shows the plan's summary line, "" shows none.
        """
        axes, theme = self.axes, self.theme
        for artist in [*axes.lines, *axes.collections, *axes.patches]:
            artist.remove()
        if axes.get_legend() is not None:
            axes.get_legend().remove()

        plan, curve = preview.plan, preview.curve
        total = plan.total_steps
        # lr[g][k] = base_lr[g] * f(k) with base_lr[g] > 0, so the envelope of f scales to every group.
        steps, low, high = envelope(curve.effective_multipliers, self.max_line_points)

        if plan.warmup_steps:
            axes.axvspan(0, plan.warmup_steps, color=theme["warmup"], alpha=0.3, lw=0, label="warmup")
        epoch_starts = plan.epoch_starts[1:]
        if len(epoch_starts) <= MAX_MARKS:
            for index, step in enumerate(epoch_starts):
                axes.axvline(step, color=theme["epoch"], lw=0.6, alpha=0.6,
                             label="epoch start" if index == 0 else None)
        cycle_starts = plan.cycle_starts
        if len(cycle_starts) <= MAX_MARKS:
            for index, step in enumerate(cycle_starts):
                axes.axvline(step, color=theme["cycle"], lw=0.8, ls="--", alpha=0.7,
                             label="cycle start" if index == 0 else None)

        colors = theme["colors"]
        self.curve_artists = {}
        for index, name in enumerate(curve.group_names):
            color = colors[index % len(colors)]
            base_lr = curve.base_lrs[index]
            if total <= self.max_line_points:
                # steps-post: the LR of step k holds from k to k + 1, so repeat the last value at T.
                (self.curve_artists[name],) = axes.plot(
                    np.append(steps, total), base_lr * np.append(high, high[-1]), color=color, lw=1.6,
                    label=f"lr/{name}", drawstyle="steps-post")
            else:
                # Each bin is a rectangle from its low to its high, held until the next bin starts.
                edges = np.append(steps, total)
                self.curve_artists[name] = axes.fill_between(
                    np.repeat(edges, 2)[1:-1], base_lr * np.repeat(low, 2), base_lr * np.repeat(high, 2),
                    color=color, alpha=0.55, lw=0.8, label=f"lr/{name} (min-max)")
            if actual and name in actual:
                done_steps, done_lrs = actual[name]
                axes.plot(done_steps, done_lrs, ".", color=color, ms=5, markeredgecolor=theme["foreground"],
                          mew=0.4, label=f"lr/{name} used")

        checkpoints = plan.checkpoint_steps
        if checkpoints and len(checkpoints) <= MAX_MARKS:
            axes.plot(checkpoints, [0] * len(checkpoints), "|", color=theme["checkpoint"], ms=10, mew=1.5,
                      label="checkpoint", clip_on=False)

        axes.set_xlim(0, total)
        peak = float(high.max()) * max(curve.base_lrs) if total else 1.0
        axes.set_ylim(0, peak * 1.08 if peak > 0 else 1.0)
        # Beside the axes, so it never hides the curve (constrained layout makes room for it).
        legend = axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small",
                             framealpha=0.85, facecolor=theme["legend"], edgecolor=theme["grid"])
        for text in legend.get_texts():
            text.set_color(theme["foreground"])
        axes.set_title(plan.summary() if title is None else title, fontsize="medium", color=theme["foreground"])
        return axes


def draw_preview(figure: Figure, preview: Preview, actual: dict | None = None, title: str | None = None,
                 dark: bool = False):
    """Draw `preview` on `figure` (cleared first); return the curve axes."""
    figure.clear()
    return PreviewPlot(figure, dark=dark).update(preview, actual, title)
