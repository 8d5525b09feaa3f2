"""Preview a preset's step plan and learning-rate curve without training.

    python scripts/preview.py PRESET [--set KEY=VALUE]... [--csv FILE] [--png FILE]

Prints the plan (images, micro-batches, steps per epoch, total steps,
warmup, cycle boundaries, warnings); `--csv` writes `step,lr/<group>...`
for every optimizer step, `--png` a picture of the curve. Does not import
torch.
"""

import sys
from pathlib import Path

from _cli import OneLineArgumentParser, user_errors, write_output

from modules.config.preset import load_preset
from modules.errors import ConfigError
from modules.schedule.preview import build_preview

PROGRAM = "preview.py"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", help="preset JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value, e.g. --set scheduler.warmup=10%%")
    parser.add_argument("--csv", metavar="FILE", help="write the curve as CSV (one row per optimizer step)")
    parser.add_argument("--png", metavar="FILE", help="write a picture of the curve")
    args = parser.parse_args(argv)

    with user_errors(PROGRAM):
        if args.csv:
            _check_output_file(args.csv, "--csv", None)
        if args.png:
            _check_output_file(args.png, "--png", ".png")
        preset = load_preset(args.preset, args.overrides)
        preview = build_preview(preset)
        print("\n".join(preview.report_lines()))
        if args.csv:
            write_output(args.csv, preview.curve.write_csv)
            print(f"curve written to {args.csv}")
        if args.png:
            write_output(args.png, lambda path: _save_png(preview, path))
            print(f"picture written to {args.png}")
    return 0


def _check_output_file(path: str, flag: str, suffix: str | None) -> None:
    """Refuse a folder, or a name without the suffix the format needs, before any work is done."""
    if path.endswith(("/", "\\")) or Path(path).is_dir():
        example = f" such as '{Path(path) / ('curve' + (suffix or '.csv'))}'"
        raise ConfigError(f"{flag}: '{path}' is a folder; give a file name{example}")
    if suffix and Path(path).suffix.lower() != suffix:
        raise ConfigError(f"{flag}: '{path}' must end in {suffix} (the picture is written as PNG)")


def _save_png(preview, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ui.curve_plot import draw_preview

    figure = Figure(figsize=(10, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    draw_preview(figure, preview)
    if preview.plan.warnings:
        figure.get_layout_engine().set(h_pad=0.1)
        figure.supxlabel("warnings: " + "; ".join(preview.plan.warnings), fontsize="x-small", color="#a04000",
                         wrap=True)
    figure.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
