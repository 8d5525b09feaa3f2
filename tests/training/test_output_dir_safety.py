"""The output folder is safe (SPEC §6): one training owns it while it runs; a write that fails (full disk,
read-only folder) is one line, leaves no temporary folder and the last complete checkpoint resumable."""

import errno
import os
import subprocess
import sys

import pytest

from modules.errors import ConfigError
from modules.training import checkpoints, paths
from modules.training.output_lock import hold_output_dir
from modules.training.trainer import train
from tests.training.test_train_cli import environment, run, train_command, wait_for, write_preset
from tests.training_helpers import one_thread, tiny_preset  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(preset, **kwargs):
    return train(preset, progress_bar=False, log=lambda message: None, **kwargs)


@pytest.mark.slow
def test_a_second_training_into_a_running_ones_folder_is_refused_and_the_first_is_unaffected(tmp_path):
    preset = write_preset(tmp_path, training={"epochs": 200}, output={"checkpoint_every": 10, "keep_checkpoints": 2})
    output = tmp_path / "out"
    first = subprocess.Popen(train_command(preset), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment())
    wait_for(lambda: (output / "checkpoints").is_dir(), first)

    second = run(train_command(preset))
    resumed = run(train_command(preset, "--resume"))
    assert first.poll() is None  # still training while both were refused

    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "finished" in stdout and (output / "model").is_dir()
    for refused in (second, resumed):
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
        assert refused.stderr.startswith(f"train.py: error: output.dir: '{output}' is in use by another training "
                                         f"(pid {first.pid})")
    assert not (output / paths.LOCK_FILE).exists()  # released when the run ended


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / paths.LOCK_FILE).write_text("999999999\n")  # its process is gone: no flock holds it
    with hold_output_dir(output):
        assert (output / paths.LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match=f"in use by another training \\(pid {os.getpid()}\\)"):
            with hold_output_dir(output):
                pass
    assert os.listdir(output) == []


def test_a_run_refused_before_training_leaves_no_folder(tmp_path):
    preset = tiny_preset(tmp_path, optimizer={"type": "adamw_8bit"})
    with pytest.raises(ConfigError):
        quiet(preset)
    assert not (tmp_path / "out").exists()


def failing_at(monkeypatch, module, name, calls: int, code: int):
    """Make `module.name` raise OSError(code) from its `calls`-th call on."""
    real = getattr(module, name)
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] >= calls:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.slow
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_last_one_stays_resumable(tmp_path, monkeypatch,
                                                                                          code):
    preset = tiny_preset(tmp_path, training={"epochs": 3}, output={"checkpoint_every": 1, "keep_checkpoints": 5})
    output = tmp_path / "out"
    failing_at(monkeypatch, checkpoints.torch, "save", 3 * 2 - 1, code)  # rng + optimizer per checkpoint: the 3rd

    with pytest.raises(ConfigError) as error:
        quiet(preset)

    message = str(error.value)
    assert message.splitlines() == [message] and error.value.key == "output.dir"
    assert f"'{output}'" in message and os.strerror(code) in message
    assert [step for step, _ in checkpoints.complete_checkpoints(output)] == [1, 2]
    assert sorted(os.listdir(output / "checkpoints")) == ["step-00000001", "step-00000002"]  # no temporary folder
    assert not (output / paths.LOCK_FILE).exists()
    monkeypatch.undo()
    result = quiet(preset, resume=True)
    assert result.finished and (output / "model").is_dir()


@pytest.mark.slow
def test_a_final_model_that_cannot_be_written_is_one_line_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from modules.families.unet import UnetFamily

    preset = tiny_preset(tmp_path, output={"checkpoint_every": 1})
    output = tmp_path / "out"
    real = UnetFamily.save_final_model

    def full_disk(self, folder):
        real(self, folder)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(UnetFamily, "save_final_model", full_disk)
    with pytest.raises(ConfigError, match=f"cannot write the final model into '{output}': .*No space left"):
        quiet(preset)
    assert not (output / "model").exists()
    assert [name for name in os.listdir(output) if name.startswith(".")] == []
    newest = checkpoints.newest_checkpoint(output)
    assert newest is not None and not newest.name.startswith(".")
    monkeypatch.undo()
    assert quiet(preset, resume=True).finished and (output / "model").is_dir()
