"""Every file and folder name the trainer writes, in one place.

    output.dir/
        lr_plan.csv                      the plan's curve, written at the start of training
        tensorboard/                     SummaryWriter run folder (lr/<group>, loss/train, samples)
        samples/step-XXXXXXXX-N.png      optional samples
        model/                           the final model in diffusers format (see modules.families):
                                         unet: a DDPMPipeline folder; stable_diffusion(_xl): the pipeline
                                         folder (full) or pytorch_lora_weights + lora_kohya.safetensors (lora)
        .training.lock                   held (fcntl.flock) by the training that owns the folder; holds its pid
        checkpoints/step-XXXXXXXX/       one complete checkpoint per folder:
            unet/                        unet family: save_pretrained of the weights (schedule-free: eval mode)
            trainable_weights.safetensors  text-to-image families: the trained tensors only (LoRA: adapters)
            optimizer.pt                 optimizer (+ GradScaler, + schedule-free train-mode weights)
            training_state.json          format version, global_step, epoch, position in the epoch, seed, plan
            rng_state_R.pt               python / numpy / torch / cuda RNG state of process rank R
            config.json                  the resolved preset

A checkpoint is written into `checkpoints/.step-XXXXXXXX.tmp` and renamed into
place; names starting with "." are never resumed from.
"""

from pathlib import Path

from modules.errors import ConfigError

LR_PLAN_CSV = "lr_plan.csv"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
FINAL_MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".training.lock"

CHECKPOINT_PREFIX = "step-"
TEMPORARY_PREFIX = "."
TEMPORARY_SUFFIX = ".tmp"
UNET_DIR = "unet"
OPTIMIZER_FILE = "optimizer.pt"
TRAINING_STATE_FILE = "training_state.json"
RNG_STATE_FILE = "rng_state_{rank}.pt"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
TRAINABLE_WEIGHTS_FILE = "trainable_weights.safetensors"

TRAINING_STATE_FORMAT_VERSION = 1


def checkpoint_name(global_step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{global_step:08d}"


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def temporary_checkpoint_dir(output_dir: Path, global_step: int) -> Path:
    return checkpoints_dir(output_dir) / f"{TEMPORARY_PREFIX}{checkpoint_name(global_step)}{TEMPORARY_SUFFIX}"


def rng_state_file(rank: int) -> str:
    return RNG_STATE_FILE.format(rank=rank)


def sample_file(global_step: int, index: int) -> str:
    return f"{checkpoint_name(global_step)}-{index}.png"


def check_output_dir(output_dir: Path) -> None:
    """ConfigError (key output.dir) when output.dir, or a folder above it, exists but is not a folder."""
    for path in (Path(output_dir), *Path(output_dir).parents):
        if path.exists():
            if not path.is_dir():
                what = "output.dir" if path == Path(output_dir) else f"'{path}' (a folder above it)"
                raise ConfigError(f"'{output_dir}' cannot be the output folder: {what} is a file, not a folder",
                                  "output.dir")
            return
