"""Train a preset headless: exactly the step plan's optimizer steps, with TensorBoard and checkpoints.

    python scripts/train.py PRESET [--set KEY=VALUE]... [--resume [CHECKPOINT]] [--rebase-schedule]
    accelerate launch [--cpu] --num_processes N scripts/train.py PRESET --set training.num_processes=N

`--resume` alone continues from the newest complete checkpoint in output.dir;
with a folder, from that checkpoint. A changed plan is refused (the changes
are listed) unless `--rebase-schedule` is given. Ctrl+C or SIGTERM finishes
the current optimizer step, writes a checkpoint, prints the resume command
and exits 0; a second Ctrl+C aborts at once (exit 130; the last complete
checkpoint is untouched). Bad input: one line on stderr, exit status 2.
"""

import argparse
import os
import shlex
import signal
import sys

from _cli import user_errors

from modules.config import load_preset

PROGRAM = "train.py"
EXIT_ABORTED = 130


class StopRequest:
    """First SIGINT/SIGTERM: ask the trainer to stop at the next step boundary. Second SIGINT: abort."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            name = signal.Signals(signum).name
            print(f"\n{name}: stopping after the current optimizer step and writing a checkpoint "
                  "(Ctrl+C again to abort at once)", file=sys.stderr, flush=True)

    def __call__(self) -> bool:
        return self.requested


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", help="preset JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value, e.g. --set training.epochs=3")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                        help="continue from the newest complete checkpoint in output.dir, or from CHECKPOINT")
    parser.add_argument("--rebase-schedule", action="store_true",
                        help="resume although the plan changed: keep global_step and continue on the new plan")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def cli_resume_command(args, num_processes: int) -> str:
    words = [] if num_processes == 1 else ["accelerate", "launch", "--num_processes", str(num_processes)]
    words += ["python", "scripts/train.py"] if num_processes == 1 else ["scripts/train.py"]
    words.append(args.preset)
    for override in args.overrides:
        words += ["--set", override]
    words.append("--resume")
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = StopRequest()
    stop.install()
    try:
        with user_errors(PROGRAM):
            preset = load_preset(args.preset, args.overrides)
            from modules.training import train

            result = train(preset, resume=args.resume, rebase_schedule=args.rebase_schedule,
                           should_stop=stop, progress_bar=not args.no_progress)
            is_main = int(os.environ.get("RANK", "0")) == 0
            if not result.finished and is_main:
                print(f"to resume: {cli_resume_command(args, preset.training.num_processes)}", flush=True)
    except KeyboardInterrupt:
        print(f"{PROGRAM}: aborted; the last complete checkpoint is untouched", file=sys.stderr)
        return EXIT_ABORTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
