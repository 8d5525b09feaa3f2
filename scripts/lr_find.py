"""LR range test: train a throw-away copy of the preset with a rising LR and suggest a base LR.

    python scripts/lr_find.py PRESET [--set KEY=VALUE]... [--min-lr 1e-7] [--max-lr 1] [--steps 100]
                              [--loss train|validation] [--csv FILE] [--png FILE]

The LR of `optimizer.lr`'s group rises geometrically from --min-lr to
--max-lr over --steps optimizer steps (other groups keep their ratio to it)
on the preset's own model and data, stopping early once the smoothed loss
passes 4x its minimum. Prints `suggested lr: VALUE`, the LR at the steepest
descent of the smoothed loss. Nothing is written into output.dir: the model
trained here is thrown away. `--csv` writes `step,lr,loss,smoothed_loss`,
`--png` a picture of loss against LR.
"""

import sys
from pathlib import Path

from _cli import OneLineArgumentParser, user_errors, write_output

from modules.config.preset import load_preset
from modules.errors import ConfigError

PROGRAM = "lr_find.py"


def main(argv: list[str] | None = None) -> int:
    from modules.training.lr_range_test import DEFAULT_MAX_LR, DEFAULT_MIN_LR, DEFAULT_STEPS

    parser = OneLineArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", help="preset JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value, e.g. --set training.batch_size=2")
    parser.add_argument("--min-lr", type=float, default=DEFAULT_MIN_LR, help="LR of the first step (default 1e-7)")
    parser.add_argument("--max-lr", type=float, default=DEFAULT_MAX_LR, help="LR of the last step (default 1)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps of the sweep (default 100)")
    parser.add_argument("--loss", choices=("train", "validation"), default="train",
                        help="the loss read after each step: the training loss (default) or the validation loss "
                             "(smoother; needs data.validation_split or a validation concept)")
    parser.add_argument("--csv", metavar="FILE", help="write step,lr,loss,smoothed_loss")
    parser.add_argument("--png", metavar="FILE", help="write a picture of loss against LR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    with user_errors(PROGRAM):
        from modules.training.lr_range_test import check_arguments, lr_range_test

        check_arguments(args.min_lr, args.max_lr, args.steps)
        preset = load_preset(args.preset, args.overrides)
        for path in (args.csv, args.png):
            if path and Path(path).resolve().is_relative_to(Path(preset.output.dir).resolve()):
                raise ConfigError(f"'{path}' is inside output.dir ('{preset.output.dir}'), which the range test "
                                  "leaves untouched: write it elsewhere")
        print(f"LR range test: lr {args.min_lr:g} -> {args.max_lr:g} over {args.steps} steps "
              "(a throw-away copy; nothing is written to output.dir)")
        result = lr_range_test(preset, args.min_lr, args.max_lr, args.steps, progress_bar=not args.no_progress,
                               loss=args.loss)
        last = result.points[-1]
        ended = result.stop_reason or f"ran all {args.steps} steps"
        print(f"{len(result.points)} steps, last lr {last.lr:.3g}: {ended}")
        if args.csv:
            write_output(args.csv, result.write_csv)
            print(f"CSV written to {args.csv}")
        if args.png:
            write_output(args.png, lambda path: _save_png(result, path))
            print(f"picture written to {args.png}")
        if result.lr_scale != 1.0:
            print(f"(optimizer.lr_scaling: the LR applied is optimizer.lr x {result.lr_scale:.4g}; "
                  f"for optimizer.lr use {result.suggested_optimizer_lr:.3g})")
        print(f"suggested lr: {result.suggested_lr:.3g}")
    return 0


def _save_png(result, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ui.lr_find_plot import draw_range_test

    figure = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    draw_range_test(figure.add_subplot(1, 1, 1), result.points, result.suggested_lr,
                    title=f"LR range test: suggested lr {result.suggested_lr:.3g}")
    figure.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
