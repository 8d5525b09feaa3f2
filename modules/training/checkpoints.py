"""Checkpoints (SPEC §6): written whole or not at all, loaded without pickle.

Writing (`begin_checkpoint` / `finish_checkpoint`): the main process creates
`checkpoints/.step-XXXXXXXX.tmp/`, every process writes its RNG state there,
the main process writes the weights, optimizer, training state and config, then
renames the folder to `checkpoints/step-XXXXXXXX/`. Only after the rename are
checkpoints beyond `keep_checkpoints` (oldest by global_step) deleted, so a
kill at any moment leaves the previous complete checkpoint untouched.

Reading: `newest_checkpoint` picks the complete folder with the highest
global_step (read from its training_state.json, not parsed from the name);
temporary folders are ignored. Every file is checked before anything is
changed; a missing or unreadable one is a ConfigError naming the file.
Tensors are read with safetensors or `torch.load(weights_only=True)`.
"""

import json
import os
import random
import shutil
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from modules.errors import ConfigError
from modules.training import paths


@dataclass(frozen=True)
class TrainingState:
    """training_state.json: where the run stands after `global_step` optimizer steps."""

    global_step: int
    epoch: int
    step_in_epoch: int
    micro_batch_in_epoch: int
    seed: int
    total_steps: int
    num_processes: int
    plan_fingerprint: str
    plan_identity: dict
    format_version: int = paths.TRAINING_STATE_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


# --- RNG state ---------------------------------------------------------------


def capture_rng_state() -> dict:
    """Python, NumPy, torch and CUDA global RNG states, as tensors and plain values (weights_only-safe)."""
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(python_state, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss),
                  float(cached)],
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(int(value) for value in python_state.tolist()), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing -----------------------------------------------------------------


def begin_checkpoint(output_dir: Path, global_step: int) -> Path:
    """Create an empty temporary folder for the checkpoint at `global_step` (main process only)."""
    temporary = paths.temporary_checkpoint_dir(output_dir, global_step)
    if temporary.exists():  # left by a run that was killed while writing
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    return temporary


def write_rng_state(folder: Path, rank: int) -> None:
    torch.save(capture_rng_state(), folder / paths.rng_state_file(rank))


def write_checkpoint_files(folder: Path, *, save_weights, optimizer_state: dict, state: TrainingState,
                           config: dict) -> None:
    """The main process's files. `save_weights(folder)` writes the model family's trainable weights into it."""
    save_weights(folder)
    torch.save(optimizer_state, folder / paths.OPTIMIZER_FILE)
    (folder / paths.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # training_state.json last: a folder holding it has every other file.
    (folder / paths.TRAINING_STATE_FILE).write_text(state.to_json(), encoding="utf-8")


def save_checkpoint(output_dir: Path, state: TrainingState, *, rank: int, is_main: bool, barrier, save_weights,
                    optimizer_state, config: dict, keep: int) -> Path:
    """Write the checkpoint at `state.global_step` from every process; return its final folder.

    `barrier()` waits for every process; `optimizer_state()` (main process only)
    returns the dict for optimizer.pt; `save_weights(folder)` writes the
    trainable weights into the checkpoint folder (the caller wraps it in the
    schedule-free eval switch).
    """
    step = state.global_step
    temporary = paths.temporary_checkpoint_dir(output_dir, step)
    if is_main:
        try:
            begin_checkpoint(output_dir, step)
        except OSError as error:
            shutil.rmtree(temporary, ignore_errors=True)
            raise write_error(output_dir, f"checkpoint step {step}", error) from None
    barrier()
    try:
        write_rng_state(temporary, rank)
    except OSError as error:
        if is_main:
            shutil.rmtree(temporary, ignore_errors=True)
        raise write_error(output_dir, f"checkpoint step {step}", error) from None
    barrier()
    final = paths.checkpoints_dir(output_dir) / paths.checkpoint_name(step)
    if is_main:
        try:
            write_checkpoint_files(temporary, save_weights=save_weights, optimizer_state=optimizer_state(),
                                   state=state, config=config)
            final = finish_checkpoint(output_dir, temporary, step, keep)
        except OSError as error:  # full disk, read-only folder: the previous checkpoints stay as they were
            shutil.rmtree(temporary, ignore_errors=True)
            raise write_error(output_dir, f"checkpoint step {step}", error) from None
    barrier()
    return final


def write_error(output_dir: Path, what: str, error: OSError) -> ConfigError:
    """One line naming output.dir and the OS error of a write that failed."""
    reason = error.strerror or str(error)
    code = f"[Errno {error.errno}] " if error.errno else ""
    return ConfigError(f"cannot write {what} into '{output_dir}': {code}{reason}", "output.dir")


def finish_checkpoint(output_dir: Path, temporary: Path, global_step: int, keep: int) -> Path:
    """Rename the temporary folder into place, then delete checkpoints beyond the `keep` newest."""
    final = paths.checkpoints_dir(output_dir) / paths.checkpoint_name(global_step)
    if final.exists():
        # The same step again (e.g. a resumed run stopped where it started): training is
        # deterministic, so the complete folder already holds this state; keep it untouched.
        shutil.rmtree(temporary)
    else:
        os.replace(temporary, final)
    prune_checkpoints(output_dir, keep)
    return final


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(global_step, folder) of every complete checkpoint, oldest first."""
    root = paths.checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.name.startswith(paths.TEMPORARY_PREFIX) or not folder.is_dir():
            continue
        if not folder.name.startswith(paths.CHECKPOINT_PREFIX):
            continue
        found.append((read_training_state(folder).global_step, folder))
    return sorted(found)


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete the complete checkpoints beyond the `keep` newest (by global_step)."""
    root = paths.checkpoints_dir(output_dir)
    named = [folder for folder in root.iterdir() if folder.name.startswith(paths.CHECKPOINT_PREFIX)]
    if len(named) <= keep:  # nothing to delete: skip reading every training_state.json
        return
    complete = complete_checkpoints(output_dir)
    for _, folder in complete[: max(0, len(complete) - keep)]:
        # Renamed out of the way first: a run killed while deleting leaves a temporary folder
        # (removed at the next start), never a half-deleted one that looks like a checkpoint.
        doomed = folder.with_name(f"{paths.TEMPORARY_PREFIX}{folder.name}.pruned{paths.TEMPORARY_SUFFIX}")
        try:
            os.replace(folder, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)


def remove_temporary_checkpoints(output_dir: Path) -> None:
    """Delete folders of checkpoints whose writing never finished (never resumable)."""
    root = paths.checkpoints_dir(output_dir)
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name.startswith(paths.TEMPORARY_PREFIX) and folder.name.endswith(paths.TEMPORARY_SUFFIX):
                shutil.rmtree(folder, ignore_errors=True)


# --- reading -----------------------------------------------------------------


def newest_checkpoint(output_dir: Path) -> Path | None:
    complete = complete_checkpoints(output_dir)
    return complete[-1][1] if complete else None


def read_training_state(folder: Path) -> TrainingState:
    path = Path(folder) / paths.TRAINING_STATE_FILE
    if not path.is_file():
        raise ConfigError(f"checkpoint file '{path}' is missing (is '{folder}' a checkpoint folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format_version") != paths.TRAINING_STATE_FORMAT_VERSION:
            raise ConfigError(
                f"checkpoint file '{path}' has format version {raw.get('format_version')!r}; "
                f"this program reads version {paths.TRAINING_STATE_FORMAT_VERSION}"
            )
        return TrainingState(**raw)
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"checkpoint file '{path}' cannot be read: {str(error).splitlines()[0]}") from None


def _required_file(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"checkpoint file '{path}' is missing")
    return path


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The `unet/` save_pretrained folder of a checkpoint (the unet family's weights)."""
    _required_file(Path(folder) / paths.UNET_DIR / "config.json")
    return load_safetensors(Path(folder) / paths.UNET_DIR / paths.WEIGHTS_FILE)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; ConfigError naming it when missing or unreadable."""
    path = _required_file(Path(path))
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for truncated files
        raise ConfigError(f"checkpoint file '{path}' cannot be read: {str(error).splitlines()[0]}") from None


def load_torch_file(path: Path) -> dict:
    _required_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad pickle opcode, ...
        raise ConfigError(f"checkpoint file '{path}' cannot be read: {str(error).splitlines()[0]}") from None


@dataclass
class LoadedCheckpoint:
    folder: Path
    state: TrainingState
    weights: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict


def load_checkpoint(folder: Path, rank: int, read_weights=load_weights) -> LoadedCheckpoint:
    """Read and check every file of `folder` for process `rank`; nothing is applied yet.

    `read_weights(folder)` reads the trainable weights (the model family's `read_checkpoint_weights`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"checkpoint folder '{folder}' does not exist")
    state = read_training_state(folder)
    weights = read_weights(folder)
    optimizer = load_torch_file(folder / paths.OPTIMIZER_FILE)
    # Every process checks every process's RNG file, so a damaged one stops all of them alike.
    rng_states = [load_torch_file(folder / paths.rng_state_file(index)) for index in range(state.num_processes)]
    rng = rng_states[rank] if rank < len(rng_states) else load_torch_file(folder / paths.rng_state_file(rank))
    return LoadedCheckpoint(folder, state, weights, optimizer, rng)


# --- the LR curve a rebased run followed before its resume step --------------------------------


def earlier_lr_rows(output_dir: Path, folder: Path, state: TrainingState, header: str):
    """Text rows 0 .. global_step - 1 of the curve the run followed until its checkpoint `folder`.

    From output.dir/lr_plan.csv as it stands (so a run rebased twice keeps each stretch), when it
    has those rows under the same header; otherwise recomputed from the checkpoint's config.
    """
    steps = state.global_step
    csv_path = Path(output_dir) / paths.LR_PLAN_CSV
    try:
        with open(csv_path, encoding="utf-8") as handle:
            usable = handle.readline().rstrip("\n") == header and sum(1 for _ in islice(handle, steps)) == steps
    except OSError:
        usable = False
    if usable:
        def rows():
            with open(csv_path, encoding="utf-8") as handle:
                handle.readline()
                yield from islice(handle, steps)
        return rows()
    from modules.config.preset import validate_preset
    from modules.schedule.lr_curve import build_lr_curve
    from modules.schedule.step_plan import build_step_plan

    config_path = _required_file(Path(folder) / paths.CONFIG_FILE)
    try:
        preset = validate_preset(json.loads(config_path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise ConfigError(f"checkpoint file '{config_path}' cannot be read: {str(error).splitlines()[0]}") from None
    earlier = build_lr_curve(build_step_plan(preset, num_images=state.plan_identity["images"]), preset.optimizer)
    return earlier.csv_blocks(0, steps)
