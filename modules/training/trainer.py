"""The training loop: exactly the step plan's T optimizer steps, on accelerate.

Contract (SPEC §1, §2, §4, §5, §6):
- `plan = build_step_plan(preset)` and `curve = build_lr_curve(plan, ...)` are
  built once. Before optimizer step k every group's lr is set with
  `set_learning_rates(optimizer, curve, k)`; no torch LR scheduler exists, so
  nothing can step it once per process.
- Epoch e, step-in-epoch u: micro-batches `plan.micro_batch_window(u)`; each
  micro-batch's loss is divided by the number of micro-batches the window
  really holds (the last window of an epoch may be partial and never spans
  epochs). Gradients are synchronised between processes only on the last
  micro-batch of a window. `training.max_steps` stops mid-epoch.
- Noise, timesteps and flips come from generators seeded with (seed, global
  micro-batch index, rank); the data order from (seed, epoch); the global torch
  RNG (LoRA dropout) is seeded from (seed, rank) when a run starts. A resumed run
  therefore repeats the uninterrupted run bit for bit on CPU; the global RNG
  states (python, numpy, torch, cuda) are still saved and restored per rank.
  Images are decoded ahead by `data.num_workers` DataLoader workers
  (`dataset.stream`), from the resume position on; the count of workers
  changes no bit of the result. With data.cache_latents / cache_text_embeddings
  the caches are checked and completed before the first step
  (`modules.data.caches`) and serve the VAE's and text encoders' output.
- Only the main process writes TensorBoard, lr_plan.csv, samples, checkpoints
  and the final model; every process writes its own RNG state.
- The launched world size must equal `training.num_processes` (the plan is
  built for it): otherwise a ConfigError before training.
- `should_stop()` is polled after each optimizer step (all processes agree on
  the answer); when true a checkpoint is written at that step boundary and
  `train` returns with `finished=False` and a resume command.
- Resume (`resume=True`: newest complete checkpoint in output.dir; a path:
  that checkpoint): a different plan is a ConfigError listing every change,
  unless `rebase_schedule=True`, which keeps the weights, optimizer state and
  global_step and continues on the new plan (its LR curve and data order from
  that step on). A finished run is reported and returns finished=True.
- A fresh run (no resume) refuses an output.dir that already holds a
  complete checkpoint or a final model: nothing of another run is replaced.
- The model is a family (`modules.families`: unet, stable_diffusion,
  stable_diffusion_xl): the loop calls its loss model, parameter components,
  checkpoint weights, final model and samples, and never names a model class.
"""

import os
import shlex
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from modules.config.preset import DEFAULT_GROUP_NAME, Preset
from modules.errors import ConfigError, PlanChangedError
from modules.training.lr_adapter import set_learning_rates
from modules.schedule.lr_curve import build_lr_curve
from modules.schedule.step_plan import build_step_plan, describe_changes
from modules.training import checkpoints, paths
from modules.data.caches import cache_dir, check_cache_dir, prepare_caches
from modules.data.datasets import build_dataset, torch_generator, training_sizes
from modules.families.base import build_family, family_class
from modules.families.unet_models import check_training_sizes
from modules.training.optimizers import (build_optimizer, effective_lrs, is_schedule_free, logged_lrs,
                                         schedule_free_eval)

MIXED_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class StepReport:
    step: int                 # 0-based index k of the optimizer step just taken
    total_steps: int          # plan.total_steps
    epoch: int                # 0-based epoch of that step
    loss: float               # mean loss over the accumulation window
    lrs: dict[str, float]     # group name -> effective LR used by step k (what TensorBoard logs)
    elapsed_seconds: float
    eta_seconds: float | None
    effective_lrs: dict[str, float] | None = None  # prodigy / dadapt_adam: d * lr really applied (lr_effective/)


@dataclass
class TrainResult:
    output_dir: Path
    completed_steps: int      # global_step at the end
    total_steps: int
    finished: bool            # reached total_steps (final model saved in output_dir/model)
    checkpoint: Path | None   # last checkpoint written (or None)
    resume_command: str | None  # printed when stopped early


def make_accelerator(preset: Preset):
    """An Accelerator for `training.device` / `training.mixed_precision` (fp32 on CPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    device = preset.training.device
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')", "training.device")
    use_cpu = device == "cpu" or not has_cuda
    mixed_precision = preset.training.mixed_precision
    if use_cpu:
        mixed_precision = "no"
    elif mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process may train several times (tests, the app's worker): start from a clean state.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)


def resume_command(checkpoint: Path, num_processes: int) -> str:
    """A command that continues from `checkpoint` (callers that know the real command line pass their own)."""
    interpreter = shlex.quote(sys.executable)
    launcher = f"accelerate launch --num_processes {num_processes} " if num_processes > 1 else f"{interpreter} "
    return f"{launcher}scripts/train.py {checkpoint / paths.CONFIG_FILE} --resume {checkpoint}"


def _find_checkpoint(resume, output_dir: Path) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        folder = checkpoints.newest_checkpoint(output_dir)
        if folder is None:
            raise ConfigError(
                f"--resume: no complete checkpoint in '{paths.checkpoints_dir(output_dir)}'", "output.dir"
            )
        return folder
    return Path(resume)


def _refuse_to_overwrite(output_dir: Path) -> None:
    """A fresh run never replaces another run's checkpoints or final model."""
    existing = checkpoints.complete_checkpoints(output_dir)
    if existing:
        raise ConfigError(
            f"'{output_dir}' already holds checkpoints of a run (newest: step {existing[-1][0]}): "
            "resume it with --resume, or choose another output.dir (or delete that folder)", "output.dir")
    if (output_dir / paths.FINAL_MODEL_DIR).exists():
        raise ConfigError(
            f"'{output_dir}' already holds a trained model ('{output_dir / paths.FINAL_MODEL_DIR}'): "
            "choose another output.dir (or delete that folder)", "output.dir")


def _replace_folder(temporary: Path, final: Path) -> None:
    """Move `temporary` to `final`, replacing an existing folder only once the new one is complete."""
    if final.exists():
        old = final.with_name(f"{paths.TEMPORARY_PREFIX}{final.name}.old{paths.TEMPORARY_SUFFIX}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, final)


def train(preset: Preset, *, resume: bool | str | Path | None = None, rebase_schedule: bool = False,
          on_step: Callable[[StepReport], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          log: Callable[[str], None] = print, progress_bar: bool = True,
          resume_command_for: Callable[[Path], str] | None = None) -> TrainResult:
    """Train `preset` for its plan's T optimizer steps (or resume); see the module docstring.

    `resume_command_for(checkpoint)` gives the command printed (and returned) when stopped early
    (the CLI passes the command line it was really started with); default: `resume_command`.
    """
    plan = build_step_plan(preset)
    curve = build_lr_curve(plan, preset.optimizer)
    output_dir = Path(preset.output.dir)
    paths.check_output_dir(output_dir)
    total_steps = plan.total_steps
    seed = preset.training.seed

    accelerator = make_accelerator(preset)
    world, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if world != plan.num_processes:
        raise ConfigError(
            f"is {plan.num_processes} but {world} processes were launched: "
            f"set training.num_processes={world} (--set training.num_processes={world}) "
            f"or launch {plan.num_processes}",
            "training.num_processes",
        )
    say = log if is_main else (lambda message: None)

    # --- resume: read and check everything before touching anything ---------
    folder = _find_checkpoint(resume, output_dir)
    if folder is None:
        _refuse_to_overwrite(output_dir)
    if preset.data.cache_latents or preset.data.cache_text_embeddings:
        check_cache_dir(cache_dir(preset))
    family_type = family_class(preset)
    loaded = (checkpoints.load_checkpoint(folder, rank, family_type.read_checkpoint_weights)
              if folder is not None else None)
    if loaded is not None:
        changes = describe_changes(loaded.state.plan_identity, curve.identity())
        if changes and not rebase_schedule:
            raise PlanChangedError(str(folder), changes, loaded.state.global_step)
        if changes:
            say(f"rebasing onto the new plan at step {loaded.state.global_step}: {'; '.join(changes)}")
        if loaded.state.global_step >= total_steps:
            final_model = output_dir / paths.FINAL_MODEL_DIR
            if is_main and not final_model.is_dir():  # written by rename, so a folder there is complete
                family = build_family(preset, plan)
                _load_weights(family, loaded.weights, folder)  # the eval-mode weights of the last checkpoint
                write_final_model(family, output_dir)
            say(f"this run already finished: {loaded.state.global_step} of {total_steps} steps "
                f"(checkpoint '{folder}'); the final model is in '{final_model}'")
            return TrainResult(output_dir, loaded.state.global_step, total_steps, True, folder, None)

    say(f"plan: {plan.summary()}")
    for warning in plan.warnings:
        say(f"warning: {warning}")

    # --- data, model, optimizer ----------------------------------------------
    dataset = build_dataset(preset, plan)
    family = build_family(preset, plan)
    check_training_sizes(family.size_multiple(), family.name, training_sizes(dataset), preset.model.resolution)
    model = family.model
    schedule_free = is_schedule_free(preset.optimizer.type)
    if loaded is not None:
        _load_weights(family, loaded.weights, folder)
        if "train_weights" in loaded.optimizer:  # schedule-free: the weights training continues from
            _load_weights(family, loaded.optimizer["train_weights"], folder)
    if accelerator.mixed_precision in MIXED_PRECISION_DTYPES:
        family.cast_for_mixed_precision(MIXED_PRECISION_DTYPES[accelerator.mixed_precision])
    optimizer = build_optimizer(model, preset, plan.warmup_steps, family.parameter_components(),
                                (curve.group_names, curve.base_lrs))
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    device = accelerator.device
    # Listed once: walking a pipeline's module tree for its parameters costs milliseconds per step.
    trained_parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    if loaded is not None:
        try:
            optimizer.load_state_dict(loaded.optimizer["optimizer"])
        except (ValueError, KeyError, RuntimeError):
            raise ConfigError(f"'{folder / paths.OPTIMIZER_FILE}' does not fit optimizer.type "
                              f"'{preset.optimizer.type}' and its param_groups (changed since the checkpoint?)",
                              "optimizer.type") from None
        if accelerator.scaler is not None and "scaler" in loaded.optimizer:
            accelerator.scaler.load_state_dict(loaded.optimizer["scaler"])
        checkpoints.restore_rng_state(loaded.rng)
    else:  # what draws from the global torch RNG (LoRA dropout) starts from (seed, rank); a resume restores it
        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1))
    global_step = loaded.state.global_step if loaded is not None else 0
    group_names = list(curve.group_names)

    tensorboard = None
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if loaded is not None and changes:  # rebased: the steps before global_step followed the old plan
            earlier = checkpoints.earlier_lr_rows(output_dir, folder, loaded.state, curve.csv_header)
            curve.write_csv(output_dir / paths.LR_PLAN_CSV, from_step=global_step, earlier=earlier)
        else:
            curve.write_csv(output_dir / paths.LR_PLAN_CSV)
        checkpoints.remove_temporary_checkpoints(output_dir)
        from modules.training.tensorboard_log import TensorBoardLog

        tensorboard = TensorBoardLog(output_dir, purge_step=global_step if loaded is not None else None)
    if loaded is not None:
        say(f"resuming from '{folder}' at step {global_step} of {total_steps}")
    say(f"model: {plan.model_type} ({preset.training.method}); device: {device}, processes: {world}, "
        f"mixed precision: {accelerator.mixed_precision}")

    prepare_caches(preset, family, unwrapped, dataset, plan, rank, global_step, accelerator, say,
                   progress_bar and is_main)
    config = preset.to_json_dict()

    def optimizer_state() -> dict:
        state = {"optimizer": optimizer.state_dict()}
        if accelerator.scaler is not None:
            state["scaler"] = accelerator.scaler.state_dict()
        if schedule_free:  # the train-mode weights, so training continues bit for bit
            state["train_weights"] = family.trainable_state_dict()
        return state

    def save_weights(target: Path) -> None:
        with schedule_free_eval(optimizer, unwrapped):
            family.save_checkpoint_weights(target)

    def save_checkpoint(step: int) -> Path:
        epoch, step_in_epoch = plan.position(step)
        state = checkpoints.TrainingState(
            global_step=step, epoch=epoch, step_in_epoch=step_in_epoch,
            micro_batch_in_epoch=step_in_epoch * plan.gradient_accumulation_steps, seed=seed,
            total_steps=total_steps, num_processes=world, plan_fingerprint=plan.fingerprint,
            plan_identity=curve.identity(),
        )
        return checkpoints.save_checkpoint(
            output_dir, state, rank=rank, is_main=is_main, barrier=accelerator.wait_for_everyone,
            save_weights=save_weights, optimizer_state=optimizer_state, config=config,
            keep=preset.output.keep_checkpoints,
        )

    def save_samples(step: int) -> None:
        from PIL import Image

        with schedule_free_eval(optimizer, unwrapped), torch.no_grad(), accelerator.autocast():
            images = family.sample(seed)
        samples_dir = output_dir / paths.SAMPLES_DIR
        samples_dir.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            Image.fromarray((image * 255).round().clip(0, 255).astype("uint8")).save(
                samples_dir / paths.sample_file(step, index))
        tensorboard.log_samples(step, images)

    # --- the loop --------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=global_step, disable=not (progress_bar and is_main),
               unit="step", dynamic_ncols=True)
    checkpoint_steps = plan.checkpoint_steps  # the last step included; membership is arithmetic, not a set
    sample_steps = plan.sample_steps
    micro_batches_per_epoch = plan.micro_batches_per_epoch
    last_checkpoint = folder
    first_step, started = global_step, time.perf_counter()
    stream = dataset.stream(plan, seed, rank, global_step, preset.data.num_workers)
    stop_flag = torch.zeros(1, device=device)
    model.train()
    try:
        while global_step < total_steps:
            epoch, step_in_epoch = plan.position(global_step)
            window = plan.micro_batch_window(step_in_epoch)
            in_window = len(window)
            set_learning_rates(optimizer, curve, global_step)
            loss_sum = torch.zeros((), device=device)
            for position, micro_batch in enumerate(window):
                global_micro_batch = epoch * micro_batches_per_epoch + micro_batch
                batch = stream.take(global_micro_batch)
                generator = torch_generator(seed, global_micro_batch, rank)
                last = position == in_window - 1
                with nullcontext() if last else accelerator.no_sync(model):
                    loss = model(batch, generator)  # the family's loss of this micro-batch
                    accelerator.backward(loss / in_window)
                loss_sum += loss.detach()
            if preset.training.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trained_parameters, preset.training.max_grad_norm)
            adaptive = effective_lrs(optimizer)  # before step(): the d this step applies
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lrs = dict(zip(group_names, logged_lrs(optimizer)))
            effective = dict(zip(group_names, adaptive)) if adaptive is not None else None
            mean_loss = loss_sum / in_window
            if world > 1:
                mean_loss = accelerator.reduce(mean_loss, reduction="mean")
            loss_value = float(mean_loss)
            step = global_step
            global_step += 1

            elapsed = time.perf_counter() - started
            eta = elapsed / (global_step - first_step) * (total_steps - global_step)
            if is_main:
                tensorboard.log_step(step, loss_value, lrs, effective)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lrs[DEFAULT_GROUP_NAME]:.3g}", refresh=False)
                bar.update(1)
                if on_step is not None:
                    on_step(StepReport(step, total_steps, epoch, loss_value, lrs, elapsed, eta, effective))
                if global_step in sample_steps:
                    save_samples(global_step)

            stop = bool(should_stop()) if should_stop is not None else False
            if world > 1:  # every process stops at the same step
                stop_flag.fill_(float(stop))
                stop = bool(accelerator.reduce(stop_flag, reduction="sum").item() > 0)
            if global_step in checkpoint_steps or (stop and global_step < total_steps):
                if global_step == total_steps:
                    save_final_model(accelerator, optimizer, family, output_dir, is_main)
                last_checkpoint = save_checkpoint(global_step)
                say_to_bar(bar, say, f"checkpoint: {last_checkpoint}")
            if stop and global_step < total_steps:
                command = (resume_command_for(last_checkpoint) if resume_command_for is not None
                           else resume_command(last_checkpoint, world))
                say_to_bar(bar, say, f"stopped at step {global_step} of {total_steps}; resume with: {command}")
                return TrainResult(output_dir, global_step, total_steps, False, last_checkpoint, command)
    finally:
        stream.close()
        bar.close()
        if tensorboard is not None:
            tensorboard.close()
    say(f"finished {total_steps} steps; final model: {output_dir / paths.FINAL_MODEL_DIR}")
    return TrainResult(output_dir, global_step, total_steps, True, last_checkpoint, None)


def say_to_bar(bar, say, message: str) -> None:
    """Print above a live progress bar without breaking it."""
    if bar.disable:
        say(message)
    else:
        bar.clear()
        say(message)
        bar.refresh()


def save_final_model(accelerator, optimizer, family, output_dir: Path, is_main: bool) -> None:
    """output.dir/model: the family's final model (schedule-free: the eval-mode weights), replaced atomically."""
    if is_main:
        with schedule_free_eval(optimizer, family.model):
            write_final_model(family, output_dir)
    accelerator.wait_for_everyone()


def write_final_model(family, output_dir: Path) -> None:
    """The family's final model into a temporary folder, then renamed to output.dir/model."""
    final = output_dir / paths.FINAL_MODEL_DIR
    temporary = final.with_name(paths.TEMPORARY_PREFIX + final.name + paths.TEMPORARY_SUFFIX)
    shutil.rmtree(temporary, ignore_errors=True)
    family.save_final_model(temporary)
    _replace_folder(temporary, final)


def _load_weights(family, weights: dict, folder: Path) -> None:
    try:
        family.load_trainable_state_dict(weights)
    except RuntimeError:
        raise ConfigError(f"the weights in '{folder}' do not fit the model of this preset "
                          "(model.config / model.path / model.type / training.method / lora changed since the "
                          "checkpoint)", "model") from None
