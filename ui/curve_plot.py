"""Draw a preview onto a matplotlib `Figure` (no pyplot, no toolkit).

Used by `scripts/preview.py` (Agg, to PNG) and by the app's live preview
(FigureCanvasTkAgg). One curve per parameter group; warmup shaded; epoch
starts as thin lines, cycle starts dashed, checkpoints ticked along the
bottom. Plans longer than `MAX_LINE_POINTS` are drawn as a min/max band.
"""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from modules.preview import Preview, envelope

MAX_LINE_POINTS = 4000
MAX_MARKS = 300
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def draw_preview(figure: Figure, preview: Preview, actual: dict | None = None, title: str | None = None):
    """Draw `preview` on `figure` (cleared first); return the curve axes.

    `actual`, if given, maps a group name to (steps, lrs) really used by a
    training run; they are drawn as dots over the planned curve.
    """
    figure.clear()
    axes = figure.add_subplot(1, 1, 1)
    plan, curve = preview.plan, preview.curve
    table = curve.effective_table()
    total = plan.total_steps

    if plan.warmup_steps:
        axes.axvspan(0, plan.warmup_steps, color="#f2c14e", alpha=0.25, lw=0, label="warmup")
    epoch_starts = plan.epoch_starts[1:]
    if len(epoch_starts) <= MAX_MARKS:
        for index, step in enumerate(epoch_starts):
            axes.axvline(step, color="#888888", lw=0.6, alpha=0.6, label="epoch start" if index == 0 else None)
    cycle_starts = plan.cycle_starts
    if len(cycle_starts) <= MAX_MARKS:
        for index, step in enumerate(cycle_starts):
            axes.axvline(step, color="#c0392b", lw=0.8, ls="--", alpha=0.6, label="cycle start" if index == 0 else None)

    for index, name in enumerate(curve.group_names):
        color = COLORS[index % len(COLORS)]
        steps, low, high = envelope(table[:, index], MAX_LINE_POINTS)
        if total <= MAX_LINE_POINTS:
            # steps-post: the LR of step k holds from k to k + 1, so repeat the last value at T.
            axes.plot(np.append(steps, total), np.append(high, high[-1]), color=color, lw=1.6,
                      label=f"lr/{name}", drawstyle="steps-post")
        else:
            axes.fill_between(steps, low, high, color=color, alpha=0.5, lw=0.8, step="post", label=f"lr/{name} (min-max)")
        if actual and name in actual:
            done_steps, done_lrs = actual[name]
            axes.plot(done_steps, done_lrs, ".", color=color, ms=4, markeredgecolor="black", mew=0.3,
                      label=f"lr/{name} used")

    checkpoints = plan.checkpoint_steps
    if checkpoints and len(checkpoints) <= MAX_MARKS:
        axes.plot(checkpoints, [0] * len(checkpoints), "|", color="#2c3e50", ms=10, mew=1.5,
                  label="checkpoint", clip_on=False)

    axes.set_xlim(0, total)
    peak = float(table.max()) if table.size else 1.0
    axes.set_ylim(0, peak * 1.08 if peak > 0 else 1.0)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("learning rate")
    axes.yaxis.set_major_formatter(EngFormatter(places=2))
    axes.grid(True, alpha=0.25)
    axes.legend(loc="upper right", fontsize="small", framealpha=0.85)
    axes.set_title(title or plan.summary(), fontsize="medium")
    return axes
