"""Draw an LR range test onto a matplotlib axes: loss and smoothed loss against LR (log axis), suggestion marked.

Used by `scripts/lr_find.py` (Agg, to PNG) and the app's Find LR window.
`points` are `modules.training.lr_range_test.RangeTestPoint`s (or anything
with `lr`, `loss` and `smoothed_loss`).
"""

from ui.curve_plot import LIGHT_THEME, style_axes


def draw_range_test(axes, points, suggested_lr: float | None = None, theme: dict = LIGHT_THEME,
                    title: str = "LR range test") -> None:
    axes.clear()
    style_axes(axes, theme)
    colors = theme["colors"]
    lrs = [point.lr for point in points]
    if lrs:
        axes.plot(lrs, [point.loss for point in points], color=colors[0], lw=0.8, alpha=0.35, label="loss")
        axes.plot(lrs, [point.smoothed_loss for point in points], color=colors[0], lw=1.6, label="smoothed loss")
    if suggested_lr is not None:
        axes.axvline(suggested_lr, color=colors[3], lw=1.2, ls="--", label=f"suggested lr {suggested_lr:.3g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("loss")
    axes.set_title(title, fontsize="medium", color=theme["foreground"])
    if lrs:
        legend = axes.legend(loc="upper left", fontsize="small", framealpha=0.8)
        legend.get_frame().set_facecolor(theme["legend"])
        for text in legend.get_texts():
            text.set_color(theme["foreground"])
