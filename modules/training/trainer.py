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
- The main process holds output.dir's lock for the whole run
  (`modules.training.output_lock`): a second training into it is refused.
  A checkpoint or final model that cannot be written (full disk, read-only
  folder) is a ConfigError naming output.dir and the OS error; the temporary
  folder is removed, the last complete checkpoint stays as it was.
- One optimizer step is `modules.training.step.optimizer_step` (shared with
  the LR range test). What a checkpoint carries besides the weights is the
  list `modules.training.checkpointed_parts` (optimizer, grad scaler,
  schedule-free train-mode weights); saving and resuming walk it.
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
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from modules.config.preset import DEFAULT_GROUP_NAME, Preset
from modules.errors import ConfigError, PlanChangedError
from modules.training.lr_adapter import set_learning_rates
from modules.schedule.lr_curve import build_lr_curve
from modules.schedule.step_plan import build_step_plan, describe_changes
from modules.training import checkpoints, paths
from modules.data.caches import cache_dir, check_cache_dir, prepare_caches
from modules.data.datasets import build_dataset, training_sizes
from modules.families.base import build_family, family_class
from modules.families.unet_models import check_training_sizes
from modules.training.checkpointed_parts import checkpointed_parts, load_family_weights, load_parts, parts_state
from modules.training.ema import EMA_DECAY_TAG, ema_applied, ema_part, load_final_ema
from modules.training.optimizers import build_optimizer, is_schedule_free, logged_lrs, schedule_free_eval
from modules.training.output_lock import hold_output_dir
from modules.training.precision import (ddp_kwargs, mixed_precision_mode, release_cached_components,
                                        reset_accelerate_state, set_up_memory)
from modules.training.step import optimizer_step, seed_process_rng, window_of
from modules.training.validation import VALIDATION_TAG, build_validation_set, evaluate


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
    # Where output.validate_every falls on this step: the TensorBoard tags logged and their values
    # ("loss/validation", "loss/validation/<concept>", with EMA "loss/validation/non_ema"); else None.
    validation: dict[str, float] | None = None
    ema_decay: float | None = None  # training.ema: the decay d_j of the EMA update after this step, if one


@dataclass
class TrainResult:
    output_dir: Path
    completed_steps: int      # global_step at the end
    total_steps: int
    finished: bool            # reached total_steps (final model saved in output_dir/model)
    checkpoint: Path | None   # last checkpoint written (or None)
    resume_command: str | None  # printed when stopped early


def make_accelerator(preset: Preset):
    """An Accelerator for `training.device` / `training.mixed_precision` (`modules.training.precision`)."""
    from accelerate import Accelerator

    device = preset.training.device
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')", "training.device")
    use_cpu = device == "cpu" or not has_cuda
    reset_accelerate_state()
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision_mode(preset, use_cpu),
                       kwargs_handlers=ddp_kwargs(preset))


def resume_command(checkpoint: Path, num_processes: int) -> str:
    """A command that continues from `checkpoint` (callers that know the real command line pass their own)."""
    interpreter = shlex.quote(sys.executable)
    launcher = f"torchrun --nproc_per_node {num_processes} " if num_processes > 1 else f"{interpreter} "
    return f"{launcher}scripts/train.py {checkpoint / paths.CONFIG_FILE} --resume {checkpoint}"


@dataclass
class Run:
    """What the loop works with, built once by `set_up` (names as in the module docstring)."""

    preset: Preset
    plan: object
    curve: object
    accelerator: object
    output_dir: Path
    family: object
    model: object                 # the prepared loss model (DDP-wrapped on several processes)
    optimizer: object
    parts: list                   # checkpointed parts (modules.training.checkpointed_parts)
    dataset: object
    trained_parameters: list
    say: Callable[[str], None]
    ema: object = None            # training.ema: the EmaPart (also in `parts`)
    validation: object = None     # output.validate_every: the ValidationSet
    tensorboard: object = None

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


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
    accelerator = make_accelerator(preset)
    world = accelerator.num_processes
    if world != plan.num_processes:
        raise ConfigError(
            f"is {plan.num_processes} but {world} processes were launched: "
            f"set training.num_processes={world} (--set training.num_processes={world}) "
            f"or launch {plan.num_processes}",
            "training.num_processes",
        )
    say = log if accelerator.is_main_process else (lambda message: None)
    with ExitStack() as stack:
        _hold_output_dir(stack, accelerator, output_dir)
        folder, loaded, changes = read_resume(preset, curve, output_dir, accelerator.process_index, resume,
                                              rebase_schedule, say)
        if loaded is not None and loaded.state.global_step >= plan.total_steps:
            return finished_already(preset, plan, output_dir, folder, loaded, accelerator.is_main_process, say)
        say(f"plan: {plan.summary()}")
        for warning in plan.warnings:
            say(f"warning: {warning}")
        run = set_up(preset, plan, curve, accelerator, output_dir, loaded, say)
        global_step = restore(run, loaded)
        run.tensorboard = open_outputs(run, folder, loaded, changes, global_step)
        if run.tensorboard is not None:
            stack.callback(run.tensorboard.close)
        if loaded is not None:
            say(f"resuming from '{folder}' at step {global_step} of {plan.total_steps}")
        say(f"model: {plan.model_type} ({preset.training.method}); device: {accelerator.device}, "
            f"processes: {world}, mixed precision: {accelerator.mixed_precision}")
        prepare_caches(preset, run.family, run.dataset, plan, run.rank, global_step, accelerator, say,
                       progress_bar and run.is_main, run.validation.captions if run.validation else ())
        if run.validation is not None:  # before the caches may move the VAE off the device
            run.validation.prepare(run.family, accelerator)
        release_cached_components(preset, run.family, accelerator, say)
        command_for = resume_command_for or (lambda checkpoint: resume_command(checkpoint, world))
        return training_loop(run, global_step, folder, on_step=on_step, should_stop=should_stop,
                             progress_bar=progress_bar, resume_command_for=command_for)


def _hold_output_dir(stack: ExitStack, accelerator, output_dir: Path) -> None:
    """The main process takes output.dir's lock for the run; every process of the job learns if it failed."""
    refused = None
    if accelerator.is_main_process:
        try:
            stack.enter_context(hold_output_dir(output_dir))
        except ConfigError as error:
            refused = error
    if accelerator.num_processes > 1 and _any_process(accelerator, refused is not None):
        refused = refused or ConfigError(f"'{output_dir}' is in use by another training", "output.dir")
    if refused is not None:
        raise refused


def _any_process(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on at least one."""
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def read_resume(preset: Preset, curve, output_dir: Path, rank: int, resume, rebase_schedule: bool, say):
    """(folder, loaded checkpoint, plan changes): everything read and checked before anything is touched."""
    folder = _find_checkpoint(resume, output_dir)
    if folder is None:
        _refuse_to_overwrite(output_dir)
    if preset.data.cache_latents or preset.data.cache_text_embeddings:
        check_cache_dir(cache_dir(preset))
    if folder is None:
        return None, None, []
    loaded = checkpoints.load_checkpoint(folder, rank, family_class(preset).read_checkpoint_weights)
    changes = describe_changes(loaded.state.plan_identity, curve.identity())
    if changes and not rebase_schedule:
        raise PlanChangedError(str(folder), changes, loaded.state.global_step)
    if changes:
        say(f"rebasing onto the new plan at step {loaded.state.global_step}: {'; '.join(changes)}")
    return folder, loaded, changes


def finished_already(preset, plan, output_dir: Path, folder: Path, loaded, is_main: bool, say) -> TrainResult:
    """A resume of a finished run: write the final model if it is missing, train nothing."""
    final_model = output_dir / paths.FINAL_MODEL_DIR
    if is_main and not final_model.is_dir():  # written by rename, so a folder there is complete
        family = build_family(preset, plan)
        load_family_weights(family, loaded.weights, folder)  # the eval-mode weights of the last checkpoint
        with load_final_ema(preset, family, loaded.optimizer, folder):
            write_final_model(family, output_dir)
    say(f"this run already finished: {loaded.state.global_step} of {plan.total_steps} steps "
        f"(checkpoint '{folder}'); the final model is in '{final_model}'")
    return TrainResult(output_dir, loaded.state.global_step, plan.total_steps, True, folder, None)


def set_up(preset: Preset, plan, curve, accelerator, output_dir: Path, loaded, say) -> Run:
    """Data, model (with the checkpoint's weights), optimizer, prepared by accelerate; the checkpointed parts."""
    dataset = build_dataset(preset, plan)
    family = build_family(preset, plan)
    check_training_sizes(family.size_multiple(), family.name, training_sizes(dataset), preset.model.resolution)
    if loaded is not None:
        load_family_weights(family, loaded.weights, loaded.folder)
    set_up_memory(preset, family, accelerator)
    optimizer = build_optimizer(family.model, preset, plan.warmup_steps, family.parameter_components(),
                                (curve.group_names, curve.base_lrs))
    model, optimizer = accelerator.prepare(family.model, optimizer)
    ema = ema_part(preset, family)  # after `prepare`: its copy of the weights lives on their device
    parts = checkpointed_parts(optimizer, preset.optimizer.type, accelerator.scaler, family,
                               is_schedule_free(preset.optimizer.type), ema)
    # Listed once: walking a pipeline's module tree for its parameters costs milliseconds per step.
    trained_parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    validation = build_validation_set(preset, plan, family, accelerator.process_index, accelerator.num_processes)
    return Run(preset, plan, curve, accelerator, output_dir, family, model, optimizer, parts, dataset,
               trained_parameters, say, ema, validation)


def restore(run: Run, loaded) -> int:
    """Load every checkpointed part and the RNG state (or seed a fresh run); the step training continues from."""
    if loaded is None:
        seed_process_rng(run.preset.training.seed, run.rank)
        return 0
    load_parts(run.parts, loaded.optimizer, loaded.folder)
    checkpoints.restore_rng_state(loaded.rng)
    return loaded.state.global_step


def open_outputs(run: Run, folder, loaded, changes, global_step: int):
    """Main process: lr_plan.csv, stale temporary checkpoints removed, the TensorBoard writer (else None)."""
    if not run.is_main:
        return None
    output_dir, curve = run.output_dir, run.curve
    output_dir.mkdir(parents=True, exist_ok=True)
    if loaded is not None and changes:  # rebased: the steps before global_step followed the old plan
        earlier = checkpoints.earlier_lr_rows(output_dir, folder, loaded.state, curve.csv_header)
        curve.write_csv(output_dir / paths.LR_PLAN_CSV, from_step=global_step, earlier=earlier)
    else:
        curve.write_csv(output_dir / paths.LR_PLAN_CSV)
    checkpoints.remove_temporary_checkpoints(output_dir)
    from modules.training.tensorboard_log import TensorBoardLog

    return TensorBoardLog(output_dir, purge_step=global_step if loaded is not None else None)


def train_one_step(run: Run, stream, global_step: int):
    """Optimizer step `global_step` at its planned LR, then the EMA update when due: (mean loss over every
    process, logged LRs, effective LRs, the EMA decay applied or None)."""
    set_learning_rates(run.optimizer, run.curve, global_step)
    outcome = optimizer_step(run.accelerator, run.model, run.optimizer, stream, window_of(run.plan, global_step),
                             seed=run.preset.training.seed, rank=run.rank,
                             max_grad_norm=run.preset.training.max_grad_norm, parameters=run.trained_parameters)
    names = run.curve.group_names
    lrs = dict(zip(names, logged_lrs(run.optimizer)))
    effective = dict(zip(names, outcome.effective_lrs)) if outcome.effective_lrs is not None else None
    decay = run.ema.after_step(global_step + 1) if run.ema is not None else None
    loss = outcome.loss
    if run.accelerator.num_processes > 1:
        loss = run.accelerator.reduce(loss, reduction="mean")
    return float(loss), lrs, effective, decay


def training_loop(run: Run, global_step: int, last_checkpoint, *, on_step, should_stop, progress_bar: bool,
                  resume_command_for) -> TrainResult:
    """Steps global_step .. T-1: log, sample, checkpoint; stop at a step boundary when asked."""
    from tqdm.auto import tqdm

    plan, total_steps, say = run.plan, run.plan.total_steps, run.say
    bar = tqdm(total=total_steps, initial=global_step, disable=not (progress_bar and run.is_main),
               unit="step", dynamic_ncols=True)
    first_step, started = global_step, time.perf_counter()
    stream = run.dataset.stream(plan, run.preset.training.seed, run.rank, global_step, run.preset.data.num_workers)
    run.model.train()
    try:
        while global_step < total_steps:
            loss, lrs, effective, decay = train_one_step(run, stream, global_step)
            step, global_step = global_step, global_step + 1
            validation = validate(run) if global_step in plan.validation_steps else None
            if validation is not None:
                say_to_bar(bar, say, f"validation after step {global_step}: loss {validation[VALIDATION_TAG]:.5g}")
            elapsed = time.perf_counter() - started
            eta = elapsed / (global_step - first_step) * (total_steps - global_step)
            if run.is_main:
                run.tensorboard.log_step(step, loss, lrs, effective)
                run.tensorboard.log_scalars(step, {**(validation or {}),
                                                   **({EMA_DECAY_TAG: decay} if decay is not None else {})})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lrs[DEFAULT_GROUP_NAME]:.3g}", refresh=False)
                bar.update(1)
                if on_step is not None:
                    on_step(StepReport(step, total_steps, plan.position(step)[0], loss, lrs, elapsed, eta, effective,
                                       validation, decay))
                if global_step in plan.sample_steps:
                    save_samples(run, global_step)
                if global_step % plan.steps_per_epoch == 0 or global_step == total_steps:
                    log_concept_samples(run, step)
            stop = _agreed_stop(run, should_stop)
            if global_step in plan.checkpoint_steps or (stop and global_step < total_steps):
                if global_step == total_steps:
                    save_final_model(run.accelerator, run.optimizer, run.family, run.output_dir, run.is_main,
                                     run.ema)
                last_checkpoint = save_checkpoint(run, global_step)
                say_to_bar(bar, say, f"checkpoint: {last_checkpoint}")
            if stop and global_step < total_steps:
                command = resume_command_for(last_checkpoint)
                say_to_bar(bar, say, f"stopped at step {global_step} of {total_steps}; resume with: {command}")
                return TrainResult(run.output_dir, global_step, total_steps, False, last_checkpoint, command)
    finally:
        stream.close()
        bar.close()
    say(f"finished {total_steps} steps; final model: {run.output_dir / paths.FINAL_MODEL_DIR}")
    return TrainResult(run.output_dir, global_step, total_steps, True, last_checkpoint, None)


def validate(run: Run) -> dict[str, float]:
    """The validation losses of the weights now, on every process (`modules.training.validation`)."""
    return evaluate(run.validation, run.accelerator, run.model, run.ema, run.optimizer)


def log_concept_samples(run: Run, step: int) -> None:
    """data/samples/<concept> of the epoch that optimizer step `step` ends: the samples of each concept
    in the micro-batches the epoch took (over every process; before and after a resume alike)."""
    plan = run.plan
    epoch = plan.position(step)[0]
    taken = window_of(plan, step).stop - epoch * plan.micro_batches_per_epoch
    run.tensorboard.log_concept_samples(step, run.dataset.concept_counts(plan, run.preset.training.seed, epoch,
                                                                        taken))


def _agreed_stop(run: Run, should_stop) -> bool:
    """`should_stop()`, the same on every process (any process asking stops them all at this step)."""
    stop = bool(should_stop()) if should_stop is not None else False
    if run.accelerator.num_processes > 1:
        stop = _any_process(run.accelerator, stop)
    return stop


def save_checkpoint(run: Run, step: int) -> Path:
    """The checkpoint at optimizer step `step`, from every process (SPEC §6)."""
    plan = run.plan
    epoch, step_in_epoch = plan.position(step)
    state = checkpoints.TrainingState(
        global_step=step, epoch=epoch, step_in_epoch=step_in_epoch,
        micro_batch_in_epoch=step_in_epoch * plan.gradient_accumulation_steps, seed=run.preset.training.seed,
        total_steps=plan.total_steps, num_processes=run.accelerator.num_processes,
        plan_fingerprint=plan.fingerprint, plan_identity=run.curve.identity(),
    )

    def save_weights(target: Path) -> None:
        with schedule_free_eval(run.optimizer, run.accelerator.unwrap_model(run.model)):
            run.family.save_checkpoint_weights(target)

    return checkpoints.save_checkpoint(
        run.output_dir, state, rank=run.rank, is_main=run.is_main, barrier=run.accelerator.wait_for_everyone,
        save_weights=save_weights, optimizer_state=lambda: parts_state(run.parts),
        config=run.preset.to_json_dict(), keep=run.preset.output.keep_checkpoints,
    )


def save_samples(run: Run, step: int) -> None:
    """The family's samples at `step` (schedule-free: from the eval-mode weights) as PNGs and in TensorBoard."""
    from PIL import Image

    unwrapped = run.accelerator.unwrap_model(run.model)
    with schedule_free_eval(run.optimizer, unwrapped), ema_applied(run.ema), torch.no_grad(), \
            run.accelerator.autocast():
        images = run.family.sample(run.preset.training.seed)
    samples_dir = run.output_dir / paths.SAMPLES_DIR
    samples_dir.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray((image * 255).round().clip(0, 255).astype("uint8")).save(
            samples_dir / paths.sample_file(step, index))
    run.tensorboard.log_samples(step, images)


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


def say_to_bar(bar, say, message: str) -> None:
    """Print above a live progress bar without breaking it."""
    if bar.disable:
        say(message)
    else:
        bar.clear()
        say(message)
        bar.refresh()


def save_final_model(accelerator, optimizer, family, output_dir: Path, is_main: bool, ema=None) -> None:
    """output.dir/model: the family's final model (schedule-free: the eval-mode weights; with an EMA: the EMA
    weights), replaced atomically."""
    if is_main:
        with schedule_free_eval(optimizer, family.model), ema_applied(ema):
            write_final_model(family, output_dir)
    accelerator.wait_for_everyone()


def write_final_model(family, output_dir: Path) -> None:
    """The family's final model into a temporary folder, then renamed to output.dir/model.

    A write that fails (full disk, read-only folder) removes the temporary folder and is a
    ConfigError naming output.dir and the OS error.
    """
    final = output_dir / paths.FINAL_MODEL_DIR
    temporary = final.with_name(paths.TEMPORARY_PREFIX + final.name + paths.TEMPORARY_SUFFIX)
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        family.save_final_model(temporary)
        _replace_folder(temporary, final)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise checkpoints.write_error(output_dir, "the final model", error) from None
