"""scripts/train.py as a user runs it: exit codes, SIGTERM, SIGKILL, two CPU processes (subprocesses)."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.config.preset import save_preset
from modules.schedule.preview import build_preview
from modules.training import train
from tests.training_helpers import assert_same_weights, final_weights, one_thread, scalar_events, tiny_preset  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_preset(tmp_path: Path, name: str = "preset.json", **sections) -> Path:
    path = tmp_path / name
    save_preset(tiny_preset(tmp_path, **sections), path)
    return path


def train_command(*args) -> list[str]:
    return [sys.executable, str(SCRIPT), *map(str, args), "--no-progress"]


def shell_path(path) -> str:
    """A path as the printed resume command names it when run from ROOT: relative inside ROOT, else absolute."""
    path = Path(os.path.abspath(path))
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=ROOT)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    preset = write_preset(tmp_path)
    result = run(train_command(preset, "--set", "training.batch_sise=2"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("train.py: error: training.batch_sise") and "batch_size" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--stop-at-step", "0"], "--stop-at-step: expected a whole number >= 1, got 0"),
    (["--stop-at-step", "-1"], "--stop-at-step: expected a whole number >= 1, got -1"),
    (["--stop-at-step", "abc"], "--stop-at-step: expected a whole number >= 1, got 'abc'"),
    (["--rebase-schedule"], "--rebase-schedule only applies with --resume"),
    (["--set", "training.epochs=1000000000000"], "training.epochs: "),
    (["--set", "training.max_steps=1e9"], "training.max_steps: "),
    (["--set", "training.seed=18446744073709551616"], "18446744073709551615"),
    (["--set", "optimizer.lr=Infinity"], "optimizer.lr: must be a finite number"),
    (["--set", "output.dir={tmp}/preset.json"], "output.dir: "),
])
def test_bad_arguments_and_values_are_one_line_and_exit_2_before_training(tmp_path, args, fragment):
    preset = write_preset(tmp_path)
    result = run(train_command(preset, *(arg.format(tmp=tmp_path) for arg in args)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("train.py: error: ") and fragment in result.stderr
    assert not (tmp_path / "out").exists()


def test_unreadable_image_exits_2_naming_the_file(tmp_path):
    preset = write_preset(tmp_path)
    broken = tmp_path / "images_7" / "image_0002.png"
    broken.write_bytes(b"\x89PNG broken")
    result = run(train_command(preset))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "Traceback" not in result.stderr


def newest_step(output: Path) -> int:
    """global_step of the newest complete checkpoint, -1 if none (safe while a run prunes old ones)."""
    steps = [-1]
    for path in (output / "checkpoints").iterdir() if (output / "checkpoints").is_dir() else ():
        try:
            if not path.name.startswith("."):
                steps.append(json.loads((path / "training_state.json").read_text())["global_step"])
        except FileNotFoundError:
            pass
    return max(steps)


def wait_for(condition, process: subprocess.Popen, timeout: float = 90, interval: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


def test_sigterm_then_sigkill_mid_checkpoint_then_resume_equals_a_straight_run(tmp_path):
    sections = {"training": {"epochs": 6}, "output": {"checkpoint_every": 1, "keep_checkpoints": 2}}
    straight = tiny_preset(tmp_path, out="straight", **sections)
    train(straight, progress_bar=False, log=lambda message: None)
    preset = write_preset(tmp_path, **sections)
    output = tmp_path / "out"
    total = build_preview(straight).plan.total_steps

    # 1. SIGTERM: finish the step, write a checkpoint, print how to resume, exit 0.
    process = subprocess.Popen(train_command(preset), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment(), cwd=ROOT)
    wait_for(lambda: newest_step(output) >= 2, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    resume_lines = [line for line in stdout.splitlines() if "resume with: " in line]
    assert len(resume_lines) == 1 and "to resume" not in stdout  # one command, not two
    printed = resume_lines[0].split("resume with: ", 1)[1]
    assert printed == shlex.join([shell_path(sys.executable), "scripts/train.py", str(preset),
                                  "--resume", "--no-progress"])
    stopped_at = newest_step(output)
    assert 2 <= stopped_at < total

    # 2. The printed command, run as a shell would run it, without the virtual environment on PATH; SIGKILL while a later
    #    checkpoint is being written (a random one).
    target = stopped_at + random.randint(2, 8)
    process = subprocess.Popen(shlex.split(printed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**environment(), "PATH": "/usr/bin:/bin", "VIRTUAL_ENV": ""}, cwd=ROOT)

    def writing_target() -> bool:
        try:
            names = os.listdir(output / "checkpoints")
        except FileNotFoundError:
            return False
        return any(name.startswith(".step-") and int(name[6:14]) >= target for name in names)

    wait_for(writing_target, process)
    process.kill()
    process.wait(timeout=30)
    killed_at = newest_step(output)
    assert stopped_at < killed_at < total

    # 3. Resume from the last complete checkpoint to the end: the same weights and one clean LR curve.
    result = run(train_command(preset, "--resume"))
    assert result.returncode == 0, result.stderr
    assert f"resuming from '{output / 'checkpoints' / f'step-{killed_at:08d}'}'" in result.stdout
    assert_same_weights(final_weights(straight.output.dir), final_weights(output))
    events = scalar_events(output)
    assert [step for step, _ in events["lr/unet"]] == list(range(total))
    assert events["lr/unet"] == scalar_events(straight.output.dir)["lr/unet"]


def torchrun_launch(*args) -> list[str]:
    """Two CPU processes (gloo) of scripts/train.py, started by torchrun as a user starts them."""
    return [str(TORCHRUN), "--nproc_per_node", "2", str(SCRIPT), *map(str, args), "--no-progress"]




def test_two_cpu_processes_follow_the_plan_and_resume_exactly(tmp_path):
    sections = {"training": {"num_processes": 2, "epochs": 3}, "output": {"checkpoint_every": None}}
    straight = write_preset(tmp_path, "straight.json", out="straight", **sections)
    stopped = write_preset(tmp_path, "stopped.json", out="stopped", **sections)
    preview = build_preview(tiny_preset(tmp_path, out="straight", **sections))
    total = preview.plan.total_steps
    assert preview.plan.num_processes == 2 and total == 6  # 7 samples over 2 processes: 4 micro-batches, 2 steps

    first = run(torchrun_launch(straight), timeout=180)
    assert first.returncode == 0, first.stderr
    assert "processes: 2" in first.stdout and first.stdout.count("finished 6 steps") == 1

    events = scalar_events(tmp_path / "straight")
    for column, name in enumerate(["attention", "unet"]):
        steps, values = zip(*events[f"lr/{name}"])
        assert list(steps) == list(range(total))
        np.testing.assert_allclose(values, preview.curve.effective_table()[:, column], rtol=1e-6, atol=0)
    optimizer = torch.load(tmp_path / "straight" / "checkpoints" / "step-00000006" / "optimizer.pt",
                           weights_only=True)
    assert {float(state["step"]) for state in optimizer["optimizer"]["state"].values()} == {6.0}
    assert sorted(path.name for path in (tmp_path / "straight" / "checkpoints" / "step-00000006").glob("rng*")) == [
        "rng_state_0.pt", "rng_state_1.pt"]

    second = run(torchrun_launch(stopped, "--stop-at-step", 2), timeout=180)
    assert second.returncode == 0, second.stderr
    resume_lines = [line for line in second.stdout.splitlines() if "resume with: " in line]
    assert len(resume_lines) == 1 and "to resume" not in second.stdout
    printed = shlex.split(resume_lines[0].split("resume with: ", 1)[1])
    # The launcher as this process can know it (WORLD_SIZE, LOCAL_WORLD_SIZE), this script, the preset, --resume.
    assert printed == [shell_path(TORCHRUN), "--nproc_per_node", "2", "scripts/train.py",
                       str(stopped), "--resume", "--no-progress"]
    third = run(printed, timeout=180)
    assert third.returncode == 0, third.stderr
    assert "at step 2 of 6" in third.stdout
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped"))
    assert scalar_events(tmp_path / "stopped") == events


def load_script():
    import importlib.util

    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_signal_requests_a_stop_and_a_second_ctrl_c_aborts():
    script = load_script()
    stop = script.StopRequest()
    assert not stop()
    stop._handle(signal.SIGTERM, None)
    assert stop()
    stop._handle(signal.SIGTERM, None)  # a repeated SIGTERM keeps waiting for the checkpoint
    stop._handle(signal.SIGINT, None)  # at once: the same Ctrl+C forwarded by the launcher (torchrun)
    stop.first_at -= 2 * stop.REPEAT_SECONDS
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)  # a second Ctrl+C, later


@pytest.mark.parametrize("environment_values, launcher", [
    ({}, ["PYTHON"]),
    ({"WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}, ["PYTHON"]),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, ["TORCHRUN", "--nproc_per_node", "2"]),
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, ["TORCHRUN", "--nproc_per_node", "4", "--nnodes", "2"]),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "bf16"},
     ["ACCELERATE", "launch", "--num_processes", "2"]),
])
def test_the_resume_command_names_the_launcher_from_the_environment(monkeypatch, environment_values, launcher):
    script = load_script()
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment_values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    names = {"PYTHON": sys.executable, "TORCHRUN": str(TORCHRUN),
             "ACCELERATE": str(Path(sys.executable).with_name("accelerate"))}
    expected = [shell_path(names[word]) if word in names else word for word in launcher]
    args = script.parse_args(["preset.json", "--set", "training.epochs=2"])
    assert shlex.split(script.cli_resume_command(args)) == [*expected, "scripts/train.py", "preset.json", "--set",
                                                            "training.epochs=2", "--resume"]


def test_a_launched_world_size_other_than_num_processes_is_one_line_exit_2(tmp_path):
    preset = write_preset(tmp_path)  # training.num_processes 1, two processes launched
    result = run(torchrun_launch(preset), timeout=180)
    assert result.returncode != 0
    # Our one line, said by rank 0 only; each process exits 2 (torchrun adds its own report of the failed job).
    errors = [line for line in result.stderr.splitlines() if "train.py: error: " in line]
    assert len(errors) == 1 and "training.num_processes: is 1 but 2 processes were launched" in errors[0]
    assert "exitcode  : 2" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_script_launches_no_process_of_its_own():
    text = SCRIPT.read_text()
    assert "/proc/" not in text and "multiprocessing" not in text


def test_ctrl_c_to_the_process_group_is_said_once_not_once_per_data_worker(tmp_path):
    preset = write_preset(tmp_path, training={"epochs": 200}, data={"num_workers": 2},
                          output={"checkpoint_every": 10, "keep_checkpoints": 2})
    output = tmp_path / "out"
    process = subprocess.Popen(train_command(preset), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment(), cwd=ROOT, start_new_session=True)
    wait_for(lambda: newest_step(output) >= 10, process)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl+C does: the training and its data workers
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert stderr.count("SIGINT: stopping after the current optimizer step") == 1, stderr
    assert stdout.count("resume with: ") == 1
