"""Train a preset headless: exactly the step plan's optimizer steps, with TensorBoard and checkpoints.

    python scripts/train.py PRESET [--set KEY=VALUE]... [--resume [CHECKPOINT]] [--rebase-schedule]
    torchrun --nproc_per_node N scripts/train.py PRESET --set training.num_processes=N          (CPU, gloo)
    accelerate launch --num_processes N scripts/train.py PRESET --set training.num_processes=N  (GPUs)

This script launches no process itself: a launcher starts the N processes and
accelerate reads their rank and world size from the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). The world size must equal
training.num_processes. The resume command printed names the launcher this
process can see: torchrun (or accelerate launch, whose processes carry
ACCELERATE_MIXED_PRECISION) for several processes, the interpreter for one.

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
import time
from contextlib import contextmanager
from pathlib import Path

from _cli import EXIT_BAD_INPUT, OneLineArgumentParser, positive_int, user_errors

from modules.config.preset import load_preset
from modules.errors import ConfigError

PROGRAM = "train.py"
EXIT_ABORTED = 130


class StopRequest:
    """First SIGINT/SIGTERM: ask the trainer to stop at the next step boundary. Second SIGINT: abort.

    The handler is inherited by the DataLoader workers (forked): there it does nothing, so
    Ctrl+C, which reaches the whole process group, is answered once, by the training process
    (and said once: by rank 0 of a launched job). A SIGINT within `REPEAT_SECONDS` of the first
    is the same Ctrl+C forwarded by the launcher (torchrun), not a second one.
    """

    REPEAT_SECONDS = 1.0

    def __init__(self, speaks: bool = True):
        self.requested = False
        self.speaks = speaks
        self.pid = os.getpid()
        self.first_at = 0.0

    def install(self) -> None:
        self.pid = os.getpid()
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a data worker: the training process answers
            return
        if self.requested:
            if signum == signal.SIGINT and time.monotonic() - self.first_at > self.REPEAT_SECONDS:
                raise KeyboardInterrupt
            return
        self.requested, self.first_at = True, time.monotonic()
        if self.speaks:
            name = signal.Signals(signum).name
            print(f"\n{name}: stopping after the current optimizer step and writing a checkpoint "
                  "(Ctrl+C again to abort at once)", file=sys.stderr, flush=True)

    def __call__(self) -> bool:
        return self.requested


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", help="preset JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value, e.g. --set training.epochs=3")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                        help="continue from the newest complete checkpoint in output.dir, or from CHECKPOINT")
    parser.add_argument("--rebase-schedule", action="store_true",
                        help="resume although the plan changed: keep global_step and continue on the new plan")
    parser.add_argument("--stop-at-step", type=positive_int, metavar="STEP",
                        help="stop at optimizer step STEP as if Ctrl+C were pressed (checkpoint, exit 0); "
                             "for sessions shorter than the run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv: list[str]):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rebase_schedule and args.resume is None:
        parser.error("--rebase-schedule only applies with --resume (it continues a stopped run on a changed plan)")
    return args


def shell_path(path) -> str:
    """`path` as a user pastes it: relative to the current folder when inside it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        relative = str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
    return relative if os.sep in relative else f".{os.sep}{relative}"


def launcher_words() -> list[str]:
    """How this process was started, from what it can see: for a job of several processes
    `torchrun --nproc_per_node N` (with `--nnodes` when WORLD_SIZE spans machines) or, when the
    variables of `accelerate launch` are set, `accelerate launch --num_processes N`;
    for one process the interpreter."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return [shell_path(sys.executable)]
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if "ACCELERATE_MIXED_PRECISION" in os.environ:  # set by accelerate launch for its processes
        return [_next_to_interpreter("accelerate"), "launch", "--num_processes", str(world)]
    words = [_next_to_interpreter("torchrun"), "--nproc_per_node", str(per_node)]
    if per_node != world:
        words += ["--nnodes", str(world // per_node)]
    return words


def _next_to_interpreter(program: str) -> str:
    """`program` of this interpreter's environment when it is there (a venv's bin), else its bare name."""
    path = Path(sys.executable).with_name(program)
    return shell_path(path) if path.exists() else program


def cli_resume_command(args) -> str:
    """The command that continues this run: the launcher (or interpreter), this preset and its overrides,
    --resume."""
    words = launcher_words()
    words += [shell_path(__file__), args.preset]
    for override in args.overrides:
        words += ["--set", override]
    words.append("--resume")
    if args.no_progress:
        words.append("--no-progress")
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run(parse_args(argv))


def run(args) -> int:
    """Train in this process (one rank of a launched job, or the only process)."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    stop = StopRequest(speaks=is_main)
    stop.install()
    reached = [False]

    def on_step(report) -> None:
        if args.stop_at_step is not None and report.step + 1 >= args.stop_at_step:
            reached[0] = True

    try:
        with user_errors(PROGRAM) if is_main else quiet_user_errors():
            preset = load_preset(args.preset, args.overrides)
            from modules.training import train

            train(preset, resume=args.resume, rebase_schedule=args.rebase_schedule,
                  on_step=on_step, should_stop=lambda: stop() or reached[0],
                  progress_bar=not args.no_progress, resume_command_for=lambda checkpoint: cli_resume_command(args))
    except KeyboardInterrupt:
        if is_main:
            print(f"{PROGRAM}: aborted; the last complete checkpoint is untouched", file=sys.stderr)
        return EXIT_ABORTED
    return 0


@contextmanager
def quiet_user_errors():
    """Other processes of a launched job: the same bad input fails them too; only the first one says so."""
    try:
        yield
    except ConfigError:
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
