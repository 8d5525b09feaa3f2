"""Train a preset headless: exactly the step plan's optimizer steps, with TensorBoard and checkpoints.

    python scripts/train.py PRESET [--set KEY=VALUE]... [--resume [CHECKPOINT]] [--rebase-schedule]
    accelerate launch [--cpu] --num_processes N scripts/train.py PRESET --set training.num_processes=N

`accelerate launch --cpu` starts a single process and leaves the rest to
mpirun; without mpirun this script then starts the N gloo worker processes
itself (N from the launcher's --num_processes), so the command above trains on N
CPU processes as written. The world size must equal training.num_processes.

`--resume` alone continues from the newest complete checkpoint in output.dir;
with a folder, from that checkpoint. A changed plan is refused (the changes
are listed) unless `--rebase-schedule` is given. Ctrl+C or SIGTERM finishes
the current optimizer step, writes a checkpoint, prints the resume command
and exits 0; a second Ctrl+C aborts at once (exit 130; the last complete
checkpoint is untouched). Bad input: one line on stderr, exit status 2.
"""

import argparse
import multiprocessing
import os
import shlex
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from _cli import EXIT_BAD_INPUT, OneLineArgumentParser, positive_int, user_errors

from modules.config.preset import load_preset
from modules.errors import ConfigError

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


def launcher_words(pid: int | None = None, depth: int = 4) -> list[str] | None:
    """The `accelerate launch ...` words (flags included, up to this script) of the nearest ancestor
    process that launched this one (Linux /proc), or None when not launched by accelerate."""
    pid = os.getppid() if pid is None else pid
    for _ in range(depth):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        for index, word in enumerate(words[:-1]):
            if Path(word).name == "accelerate" and words[index + 1] == "launch":
                for end in range(index + 2, len(words)):
                    if Path(words[end]).name == Path(__file__).name:
                        return [shell_path(os.path.join(cwd, word)), *words[index + 1:end]]
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent: field 4 of /proc/PID/stat
        if pid <= 1:
            return None
    return None


def cli_resume_command(args) -> str:
    """The command that continues this run: the launcher (or interpreter) actually used, this preset
    and its overrides, --resume."""
    words = launcher_words() or [shell_path(sys.executable)]
    words += [shell_path(__file__), args.preset]
    for override in args.overrides:
        words += ["--set", override]
    words.append("--resume")
    if args.no_progress:
        words.append("--no-progress")
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    workers = cpu_launch_world_size()
    if workers > 1:
        return spawn_cpu_workers(argv, workers)
    return run(args)


def run(args) -> int:
    """Train in this process (one rank of a launched job, or the only process)."""
    stop = StopRequest()
    stop.install()
    is_main = int(os.environ.get("RANK", "0")) == 0
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


# --- `accelerate launch --cpu --num_processes N`: start the N gloo workers here ------------------


def cpu_launch_world_size() -> int:
    """N when `accelerate launch --cpu --num_processes N` started this one process without mpirun, else 1."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes") or "MASTER_ADDR" not in env:
        return 1
    if any(name in env for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return 1
    return launcher_num_processes(os.getppid())


def launcher_num_processes(pid: int) -> int:
    """--num_processes of the `accelerate launch` command line of process `pid` (Linux /proc), else 1."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 1
    for index, word in enumerate(words):
        if word == "--num_processes" and index + 1 < len(words) and words[index + 1].isdigit():
            return int(words[index + 1])
        if word.startswith("--num_processes="):
            value = word.split("=", 1)[1]
            return int(value) if value.isdigit() else 1
    return 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.setpgrp()  # signals reach the workers only through the parent, exactly once each
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="true")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    sys.exit(run(parse_args(argv)))


def spawn_cpu_workers(argv: list[str], world: int) -> int:
    """Run `world` CPU processes (gloo) of this script; forward SIGINT/SIGTERM; return the worst exit status."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, world, port, argv)) for rank in range(world)]
    for process in processes:
        process.start()

    def forward(signum, frame) -> None:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = []
    for process in processes:
        process.join()
        codes.append(process.exitcode)
    for code in codes:  # a user error (2) or an abort wins over success
        if code:
            return code if code > 0 else EXIT_ABORTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
