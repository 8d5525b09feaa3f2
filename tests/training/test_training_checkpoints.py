"""modules.training.checkpoints: atomic folders, newest complete, weights_only loading, RNG round trip."""

import json
import random

import numpy as np
import pytest
import torch

from modules.errors import ConfigError
from modules.training import checkpoints, paths


class Custom:
    """An object only pickle can restore: weights_only loading must refuse it."""


def write_fake_checkpoint(output, step: int, keep: int = 10):
    folder = checkpoints.begin_checkpoint(output, step)
    assert folder.name.startswith(".") and folder.name.endswith(".tmp")
    checkpoints.write_rng_state(folder, 0)
    state = checkpoints.TrainingState(global_step=step, epoch=0, step_in_epoch=step, micro_batch_in_epoch=step,
                                      seed=1, total_steps=100, num_processes=1, plan_fingerprint="f",
                                      plan_identity={"total_steps": 100})

    def save_weights(target):
        target = target / paths.UNET_DIR
        target.mkdir()
        (target / "config.json").write_text("{}")
        from safetensors.torch import save_file

        save_file({"weight": torch.full((2,), float(step))}, target / paths.WEIGHTS_FILE)

    checkpoints.write_checkpoint_files(folder, save_weights=save_weights,
                                       optimizer_state={"optimizer": {"state": {}, "param_groups": []}},
                                       state=state, config={"version": 1})
    return checkpoints.finish_checkpoint(output, folder, step, keep)


def test_newest_complete_checkpoint_wins_and_temporary_folders_are_ignored(tmp_path):
    assert checkpoints.newest_checkpoint(tmp_path) is None
    for step in (5, 40, 12):
        write_fake_checkpoint(tmp_path, step)
    half_written = checkpoints.begin_checkpoint(tmp_path, 99)
    (half_written / paths.TRAINING_STATE_FILE).write_text("{")
    newest = checkpoints.newest_checkpoint(tmp_path)
    assert newest.name == "step-00000040"
    loaded = checkpoints.load_checkpoint(newest, rank=0)
    assert loaded.state.global_step == 40 and torch.equal(loaded.weights["weight"], torch.full((2,), 40.0))
    checkpoints.remove_temporary_checkpoints(tmp_path)
    assert not half_written.exists() and newest.exists()


def test_only_the_newest_are_kept_once_the_new_one_is_complete(tmp_path):
    for step in range(1, 6):
        write_fake_checkpoint(tmp_path, step, keep=2)
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-00000004", "step-00000005"]


def test_optimizer_file_is_read_without_pickle(tmp_path):
    folder = write_fake_checkpoint(tmp_path, 3)

    torch.save({"optimizer": Custom()}, folder / paths.OPTIMIZER_FILE)
    with pytest.raises(ConfigError) as error:
        checkpoints.load_checkpoint(folder, rank=0)
    assert str(folder / paths.OPTIMIZER_FILE) in str(error.value)


def test_unknown_format_version_and_a_missing_folder_are_named(tmp_path):
    folder = write_fake_checkpoint(tmp_path, 3)
    state_file = folder / paths.TRAINING_STATE_FILE
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "format_version": 99}))
    with pytest.raises(ConfigError, match="format version 99"):
        checkpoints.load_checkpoint(folder, rank=0)
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoints.load_checkpoint(tmp_path / "nowhere", rank=0)


def test_rng_states_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(checkpoints.capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoints.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_run_killed_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2):
        write_fake_checkpoint(tmp_path, step, keep=2)
    real_rmtree = checkpoints.shutil.rmtree

    def killed_midway(folder, ignore_errors=False):
        (folder / paths.TRAINING_STATE_FILE).unlink()  # the first file goes, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        write_fake_checkpoint(tmp_path, 3, keep=2)
    monkeypatch.setattr(checkpoints.shutil, "rmtree", real_rmtree)
    assert [step for step, _ in checkpoints.complete_checkpoints(tmp_path)] == [2, 3]
    checkpoints.remove_temporary_checkpoints(tmp_path)
    assert sorted(path.name for path in paths.checkpoints_dir(tmp_path).iterdir()) == ["step-00000002",
                                                                                        "step-00000003"]
