"""Time from an edit to the redrawn live preview, at 10,000 / 100,000 / 1,000,000 steps.

    python benchmarks/bench_gui.py

One edit = what the app does after its debounce: the draft controller
takes the new text, re-validates and rebuilds the preview
(`PresetDraft.set_text` + `evaluate`, the image count cached as in the
app), then `PreviewPlot.update` replaces the curve and `render` redraws
it on Agg canvases of the app's preview size (the plot, and its legend
when the entries change) (what FigureCanvasTkAgg
renders before copying it to the screen). Two kinds of edit, median of
several each: one that changes only the curve (`scheduler.min_factor`:
the kept axes are restored and the curve drawn over them) and one that
changes the y range (`optimizer.lr`: a full draw).

Baseline, same run, same edits: the same redraw drawing the full curve,
one point per optimizer step, instead of the min/max envelope.
Target: at most 100 ms at 1,000,000 steps. The machine's load average is
printed with the figures: on a shared machine they vary with it.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from _report import print_rows  # benchmarks/ is on sys.path: the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ui.controllers.image_counter import ImageCounter  # noqa: E402
from ui.controllers.preset_draft import PresetDraft  # noqa: E402
from ui.curve_plot import APP_LINE_POINTS, PreviewPlot, make_preview_figure  # noqa: E402

STEP_COUNTS = (10_000, 100_000, 1_000_000)
EDITS = 7
TARGET_MS = 100.0
# The preview canvases in the 1280x800 window, at 100 dpi (ui.views.preview_panel): the plot and its legend.
FIGURE_INCHES = (6.2, 5.7)
LEGEND_INCHES = (2.0, 5.7)


def make_draft(images: Path, total_steps: int) -> PresetDraft:
    raw = {
        "version": 1,
        "data": {"path": str(images)},
        "training": {"max_steps": total_steps, "batch_size": 1, "gradient_accumulation_steps": 2},
        "optimizer": {"lr": 3e-4, "param_groups": [{"name": "attention", "match": "attentions", "lr": 1e-4}]},
        "scheduler": {"type": "cosine_with_hard_restarts", "warmup": "2%", "cycles": 3, "min_factor": 0.05},
        "output": {"checkpoint_every": "10%"},
    }
    draft = PresetDraft(raw, ImageCounter(synchronous=True))
    draft.evaluate()  # the app counts the folder once; edits reuse the count
    return draft


def time_edits(draft: PresetDraft, max_line_points: int, key: str, texts: tuple[str, str]) -> tuple[list[float], int]:
    """Milliseconds of each edit (alternating `texts` in field `key`) and how many took a full draw."""
    figure = make_preview_figure(*FIGURE_INCHES)  # as the app's preview panel makes it
    FigureCanvasAgg(figure)
    legend_figure = Figure(figsize=LEGEND_INCHES, dpi=100)
    FigureCanvasAgg(legend_figure)
    plot = PreviewPlot(figure, max_line_points=max_line_points, blit=True, legend_figure=legend_figure)
    plot.update(draft.evaluate().preview, title="")
    plot.render()
    timings = []
    full_draws = plot.full_draws
    for edit in range(EDITS + 1):
        started = time.perf_counter()
        draft.set_text(key, texts[edit % 2])
        state = draft.evaluate()
        assert state.fresh, state.error
        plot.update(state.preview, title="")
        plot.render()
        timings.append((time.perf_counter() - started) * 1000.0)
        if edit == 0:
            full_draws = plot.full_draws  # the first edit warms caches and is not counted
    return timings[1:], plot.full_draws - full_draws


# (field, the two values an edit alternates between, what the edit redraws)
EDIT_KINDS = (
    ("scheduler.min_factor", ("0.1", "0.05"), "curve only (blit over the kept axes)"),
    ("optimizer.lr", ("0.0006", "0.0003"), "new y range (full draw)"),
)


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        images = Path(folder, "images")
        images.mkdir()
        for index in range(7):
            (images / f"image_{index}.png").write_bytes(b"")  # only listed, never read
        for key, texts, what in EDIT_KINDS:
            for total_steps in STEP_COUNTS:
                draft = make_draft(images, total_steps)
                ours, ours_full = time_edits(draft, APP_LINE_POINTS, key, texts)
                baseline, _ = time_edits(draft, total_steps + 1, key, texts)
                ours_ms, baseline_ms = statistics.median(ours), statistics.median(baseline)
                rows.append({
                    "benchmark": f"gui edit {key} -> redrawn preview, {total_steps:,} steps, {what} "
                                 "(ratio = baseline / ours)",
                    "ours": round(ours_ms, 1),
                    "baseline": round(baseline_ms, 1),
                    "unit": "ms",
                    "ratio": round(baseline_ms / ours_ms, 2),
                    "target": f"<= {TARGET_MS:g} ms",
                    "met": ours_ms <= TARGET_MS,
                    "notes": f"median of {EDITS} edits ({ours_full} full draws); ours: min/max envelope of "
                             f"{APP_LINE_POINTS} bins; baseline: the full curve, one point per step; "
                             "Agg canvases 620x570 px plot + 200x570 px legend (the app's preview); "
                             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                })
    return rows


if __name__ == "__main__":
    sys.exit(print_rows(run()))
