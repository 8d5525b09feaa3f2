"""Draw one small picture per schedule shape and write the schedule reference page.

    python scripts/draw_schedule_gallery.py [--out DOCS_FOLDER]

Writes `DOCS_FOLDER/schedules/<type>.png` (about 360 x 180 px) for every
`scheduler.type`, plus `schedule_free.png`, and `DOCS_FOLDER/schedules.md`:
each schedule's formula (SPEC §2), the preset fields it reads, the demo
settings and the picture. Every curve comes from the production code
(`modules.schedule.preview.build_preview` on a demo preset), so the pictures are
what the trainer will do, not a redrawing of the formulas.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from modules.config.preset import SCHEDULER_TYPES, validate_preset  # noqa: E402
from modules.schedule.preview import Preview, build_preview  # noqa: E402

DEMO_IMAGES = 10
"""The demo plan: 10 images, batch 1, no accumulation, 10 epochs -> 100 optimizer steps."""
DEMO_TRAINING = {"epochs": 10, "batch_size": 1, "gradient_accumulation_steps": 1}
COMMON = {"warmup": "10%", "min_factor": 0.1}

# type -> (extra scheduler fields for the demo, formula after warmup as in SPEC §2, fields it reads)
SCHEDULES: dict[str, tuple[dict, str, str]] = {
    "constant": ({"min_factor": 0.0, "warmup_start_factor": 0.2}, "f = 1", ""),
    "linear": ({}, "f = g(1 - p)", "`min_factor`"),
    "cosine": ({}, "f = g(0.5 * (1 + cos(pi * p)))", "`min_factor`"),
    "cosine_with_restarts": (
        {"cycles": 2.5},
        "f = g(0.5 * (1 + cos(2 * pi * c * p)))  (smooth waves, c = `cycles` > 0, may be fractional)",
        "`cycles`, `min_factor`",
    ),
    "cosine_with_hard_restarts": (
        {"cycles": 3},
        "f = g(0.5 * (1 + cos(pi * ((c * p) mod 1))))  (c = `cycles`, a whole number >= 1: c - 1 restarts)",
        "`cycles`, `min_factor`",
    ),
    "polynomial": ({"power": 2.0}, "f = g((1 - p) ** q)  (q = `power` > 0; as diffusers with lr_end = m * lr)",
                   "`power`, `min_factor`"),
    "sine": (
        {"period": "3 epochs"},
        "f = g(0.5 * (1 + cos(2 * pi * (k - Wu) / P)))  (P = `period`, a duration >= 2 steps: a full wave "
        "every P steps, starting at the top, exactly m at half period)",
        "`period` (required), `min_factor`",
    ),
    "rex": ({}, "f = g((1 - p) / (0.1 + 0.9 * (1 - p)))", "`min_factor`"),
    "inverse_sqrt": (
        {},
        "f = max(m, 1 / sqrt((k - Wu + t) / t))  (t = `timescale`, a duration; default Wu, or 10000 steps "
        "without warmup, as transformers)",
        "`timescale`, `min_factor`",
    ),
    "warmup_stable_decay": (
        {"decay": "30%", "decay_shape": "cosine"},
        "f = 1 while k < T - Dd; then q = (k - (T - Dd)) / Dd and g(1 - q) (linear), "
        "g(0.5 * (1 + cos(pi * q))) (cosine) or g(1 - sqrt(q)) (sqrt)  (Dd = `decay`, default \"20%\")",
        "`decay`, `decay_shape` (linear | cosine | sqrt), `min_factor`",
    ),
    "piecewise_constant": (
        {"min_factor": 0.0, "steps": [[0, 1.0], ["40%", 0.5], ["75%", 0.15]]},
        "f = the multiplier of the last [boundary, multiplier] entry whose boundary is <= k  "
        "(entries from `steps`; boundaries are durations, the first is 0)",
        "`steps` (required)",
    ),
    "custom": (
        {"warmup": 0, "min_factor": 0.0, "function": "docs/examples/warm_restart_schedule.py:shape"},
        "f = name(k, T)  (your function, `scheduler.function` \"path/to/file.py:name\" or \"package.module:name\", "
        "called once with the int64 array of every step k and the total steps T; one finite value >= 0 per step, "
        "a warning above 1; no warmup or min_factor of its own; its file's source is part of the plan, so a resume "
        "refuses an edited function)",
        "`function` (required)",
    ),
    "sequence": (
        {"warmup": 0, "min_factor": 0.0, "phases": [
            {"shape": "linear", "from": 0, "until": "1 epochs", "to": 1},
            {"shape": "constant", "until": "50%"},
            {"shape": "cosine", "until": "100%", "to": 0.1}]},
        "f = from + (to - from) * s(q)  (phase i runs from the previous `until` (0 first) to its own, a duration "
        "converted in the plan; q the fraction of the phase done; s(q) = q (linear), 0.5 * (1 - cos(pi * q)) "
        "(cosine), 0 (constant: holds `from`); `from` defaults to the previous phase's end factor (1 first), "
        "`to` to `from`; boundaries must increase and the last `until` must be the whole run, \"100%\"; "
        "dashed lines mark the phase starts; warmup and min_factor do not apply)",
        "`phases` (required): a list of {`shape` linear | cosine | constant, `until`, `to`, optional `from`}",
    ),
}
assert set(SCHEDULES) == set(SCHEDULER_TYPES), "every scheduler.type needs a gallery entry"

SCHEDULE_FREE = {
    "optimizer": {"type": "adamw_schedule_free", "lr": 1e-4},
    "scheduler": {"type": "constant", "warmup": "10%"},
}


def demo_preview(scheduler: dict, optimizer: dict | None = None) -> Preview:
    preset = validate_preset({
        "training": DEMO_TRAINING,
        "optimizer": optimizer or {"type": "adamw", "lr": 1e-4},
        "scheduler": scheduler,
    })
    return build_preview(preset, num_images=DEMO_IMAGES)


def scheduler_fields(schedule_type: str) -> dict:
    extra = SCHEDULES[schedule_type][0]
    return {"type": schedule_type, **COMMON, **extra}


def draw(preview: Preview, title: str, path: Path) -> None:
    """The effective multiplier f(k) of every optimizer step, about 360 x 180 px."""
    plan = preview.plan
    multipliers = preview.curve.effective_multipliers
    total = plan.total_steps
    figure = Figure(figsize=(4.0, 2.0), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if plan.warmup_steps:
        axes.axvspan(0, plan.warmup_steps, color="#f2c14e", alpha=0.35, lw=0)
    for step in plan.cycle_starts:  # cycle starts, or phase starts of a sequence
        axes.axvline(step, color="#c0392b", lw=0.7, ls="--", alpha=0.7)
    floor = plan.schedule.min_factor
    if floor > 0 and not plan.schedule.schedule_free:
        axes.axhline(floor, color="#555555", lw=0.7, ls=":")
        axes.text(total, floor, f" m={floor:g}", va="center", ha="left", fontsize=6, color="#555555")
    # steps-post: the multiplier of step k holds from k to k + 1.
    axes.step(np.arange(total + 1), np.append(multipliers, multipliers[-1]), where="post", color="#1f77b4", lw=1.4)
    axes.set_xlim(0, total)
    axes.set_ylim(0, max(1.08, float(multipliers.max()) * 1.05))
    axes.set_yticks([0, 0.5, 1])
    axes.tick_params(labelsize=6, length=2, pad=1)
    axes.set_xlabel("optimizer step", fontsize=6, labelpad=1)
    axes.set_ylabel("f(k)", fontsize=6, labelpad=1)
    axes.set_title(title, fontsize=7.5, pad=2)
    axes.grid(True, alpha=0.3, lw=0.5)
    figure.savefig(path, dpi=90, pil_kwargs={"optimize": True})


def settings_text(scheduler: dict) -> str:
    return ", ".join(f"`{key}` {value!r}".replace("'", '"') for key, value in scheduler.items() if key != "type")


def write_page(docs: Path, pictures: dict[str, Path]) -> None:
    lines = [
        "# Schedules",
        "",
        "<!-- Generated by `python scripts/draw_schedule_gallery.py`; edit that script, not this page. -->",
        "",
        "A schedule gives a multiplier `f(k)` for optimizer step `k` (0-based); the learning rate of parameter",
        "group `g` at step `k` is `base_lr[g] * f(k)` (`optimizer.lr` for the group `unet`, each",
        "`optimizer.param_groups[i].lr` for the named groups). Every duration below (`warmup`, `period`,",
        "`timescale`, `decay`, the boundaries of `steps`) accepts `120`, `\"120 steps\"`, `\"1.5 epochs\"` or",
        "`\"10%\"` and is converted to optimizer steps once, in the step plan, rounded to the nearest step",
        "(halves up).",
        "",
        "Notation: `T` total steps, `Wu` warmup steps (`scheduler.warmup`), `D = max(1, T - Wu)`,",
        "`p = (k - Wu) / D` for `k >= Wu`, `m` = `scheduler.min_factor` (0 <= m < 1),",
        "`g(v) = m + (1 - m) * v` (a shape that falls from 1 to 0 now falls from 1 to `m`).",
        "",
        "- **Warmup** (`k < Wu`, every schedule): linear from `scheduler.warmup_start_factor` `s` (default 0)",
        "  to 1: `f = s + (1 - s) * k / Wu`. A warmup as long as the run is an error.",
        "- **Past the plan** (`k >= T`): `f(k) = f(T - 1)`. No schedule rises after the last step or starts an",
        "  extra cycle.",
        "- With `min_factor` 0 and `warmup_start_factor` 0, `linear`, `cosine`, `cosine_with_restarts`,",
        "  `cosine_with_hard_restarts`, `polynomial`, `constant` and `inverse_sqrt` equal",
        "  `diffusers.optimization` / `transformers` `get_*_schedule_with_warmup` at every step (the tests",
        "  check it).",
        "",
        f"The pictures use one demo plan: {DEMO_IMAGES} images, batch 1, no accumulation, "
        f"{DEMO_TRAINING['epochs']} epochs = 100 optimizer steps, `warmup` \"10%\" (shaded),",
        "`min_factor` 0.1 (dotted line) unless noted; dashed red lines mark cycle starts. They are drawn",
        "from the production curve (`build_preview`), so they show exactly what training does.",
        "",
    ]
    for schedule_type in SCHEDULES:
        _, formula, fields = SCHEDULES[schedule_type]
        lines += [
            f"## `{schedule_type}`",
            "",
            f"`{formula.split('  (')[0]}`" + (f" ({formula.split('  (', 1)[1]}" if "  (" in formula else ""),
            "",
            (f"Preset fields: `scheduler.type` \"{schedule_type}\", {fields}." if schedule_type in ("custom", "sequence")
             else f"Preset fields: `scheduler.type` \"{schedule_type}\", `warmup`, `warmup_start_factor`"
             + (f", {fields}." if fields else ".")),
            f"Demo: {settings_text(scheduler_fields(schedule_type))}.",
            "",
            f"![{schedule_type}]({pictures[schedule_type].relative_to(docs).as_posix()})",
            "",
        ]
    lines += [
        "## Schedule-free optimizers (`adamw_schedule_free`, `radam_schedule_free`)",
        "",
        "A schedule-free optimizer replaces the schedule: `scheduler.type` must be `constant` (anything else is",
        "an error). The plan's warmup becomes the optimizer's own `warmup_steps`, counted in optimizer steps",
        "(`\"1 epochs\"` is one epoch of optimizer steps, whatever the accumulation); the optimizer ramps",
        "`lr * (k + 1) / Wu` for `k < Wu` inside its `step()`. The preview, the CSV and TensorBoard show this",
        "effective LR (`scheduled_lr`), ramp included, while the parameter groups keep `optimizer.lr`.",
        "`radam_schedule_free` needs `warmup` 0: RAdam's rectification is its warmup, and the curve shows it.",
        "`warmup_start_factor` must be 0 and `min_factor` has no effect.",
        "",
        "Demo: `optimizer.type` \"adamw_schedule_free\", `scheduler.type` \"constant\", `warmup` \"10%\".",
        "",
        f"![schedule-free]({pictures['schedule_free'].relative_to(docs).as_posix()})",
        "",
        "## Prodigy and D-Adaptation (`prodigy`, `dadapt_adam`)",
        "",
        "These optimizers learn a step size `d` while training and apply `d * lr * f(k)`: the schedule still",
        "multiplies their `lr` (1.0 is the usual base), so every shape above works with them, and the preview,",
        "the CSV and `lr/<group>` show `lr * f(k)`. The preview cannot know `d` in advance; TensorBoard logs",
        "the LR really applied as `lr_effective/<group>` at every step, and the app's Run tab draws it on its",
        "own axis as training goes. Both train every group at one LR (`param_groups` LRs must equal",
        "`optimizer.lr`). Options: `d_coef` (prodigy), `safeguard_warmup` (prodigy), `use_bias_correction`",
        "(both; it is included in `lr_effective`), `weight_decay` (decoupled).",
        "",
        "## LR scaling",
        "",
        "`optimizer.lr_scaling` `linear` or `sqrt` multiplies every group's base LR by `n` or `sqrt(n)` once, in",
        "the plan, with `n` from `optimizer.lr_scaling_by`: `global_batch` (batch x processes x accumulation,",
        "the default), `batch` (batch x processes) or `accumulation`. The preview, the CSV and TensorBoard show",
        "the scaled LR, and the plan summary says how it was scaled, e.g.",
        "`lr 1e-4 x sqrt(8) = 2.83e-4 (batch 2 x accumulation 4)`.",
        "",
        "## Seeing your own curve",
        "",
        "`python scripts/preview.py PRESET [--set scheduler.type=sine --set scheduler.period=\"0.5 epochs\"]",
        "[--csv lr.csv] [--png lr.png]` prints the step plan (images, micro-batches, steps per epoch, total and",
        "warmup steps, cycle boundaries, checkpoints, warnings) and writes the exact LR of every optimizer step",
        "for every parameter group. It never imports torch: the plan and curve of a 1,000,000-step run take",
        "well under a second (writing that run's 50 MB CSV takes a few seconds more). Bad input exits with",
        "status 2 and one line naming the key.",
        "",
        "These pictures are regenerated with `python scripts/draw_schedule_gallery.py`. The formulas above are",
        "checked by `tests/schedule/test_schedules.py` (hand-worked points and the diffusers / transformers references at",
        "every step), `tests/schedule/test_seed_failures.py` and `tests/schedule/test_properties.py`.",
        "",
    ]
    (docs / "schedules.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="draw_schedule_gallery.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs"),
                        help="docs folder (default: the project's docs/)")
    args = parser.parse_args(argv)
    docs = Path(args.out)
    (docs / "schedules").mkdir(parents=True, exist_ok=True)
    pictures = {}
    for schedule_type in SCHEDULES:
        path = docs / "schedules" / f"{schedule_type}.png"
        draw(demo_preview(scheduler_fields(schedule_type)), schedule_type, path)
        pictures[schedule_type] = path
    path = docs / "schedules" / "schedule_free.png"
    draw(demo_preview(SCHEDULE_FREE["scheduler"], SCHEDULE_FREE["optimizer"]),
         "adamw_schedule_free (effective LR)", path)
    pictures["schedule_free"] = path
    write_page(docs, pictures)
    for path in pictures.values():
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")
    print(f"{docs / 'schedules.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
