#!/usr/bin/env bash
# GPU check (issue 18, SPEC §12): on a CUDA machine, in under 8 minutes,
#   1. install the CUDA build of the pinned torch (torch==2.13.0 from the PyTorch CUDA index),
#   2. train a real-size SD 1.5 LoRA at 512 px and a real-size SDXL LoRA at 1024 px (published configs,
#      random weights, gradient checkpointing, bf16) for a few steps, ours beside a loop written like
#      diffusers' train_text_to_image_lora(_sdxl).py, and print steps/s and peak VRAM
#      (benchmarks/bench_real_size.py),
#   3. run the CUDA tests (bf16 with fp32 LoRA weights, fp16 with the grad scaler, the cached VAE and
#      text encoders on the CPU, adamw_8bit when bitsandbytes is there).
#
#   scripts/gpu_check.sh                 the real check (needs a CUDA device)
#   scripts/gpu_check.sh --cpu-dry-run   every step but the CUDA install, on CPU, with tiny pipelines
#
# Environment: PYTHON (default .venv/bin/python, else python3), TORCH_CUDA_INDEX (default
# https://download.pytorch.org/whl/cu128), GPU_CHECK_STEPS (timed steps per configuration, default 3),
# GPU_CHECK_WORK (where the pipeline folders are built; default a temporary folder, removed at the end).
# Each part prints its own result; the exit status is non-zero when any part failed.

set -u -o pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
    --cpu-dry-run) DRY_RUN=1 ;;
    "") ;;
    *) echo "gpu_check.sh: error: unknown argument '$1' (use --cpu-dry-run or nothing)" >&2; exit 2 ;;
esac

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TORCH_CUDA_INDEX=${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
STEPS=${GPU_CHECK_STEPS:-3}
WORK=${GPU_CHECK_WORK:-$(mktemp -d -t gpu_check.XXXXXX)}
[[ -n "${GPU_CHECK_WORK:-}" ]] || trap 'rm -rf "$WORK"' EXIT
FAILED=()
started=$(date +%s)

part() { echo; echo "== $* ($(( $(date +%s) - started )) s)"; }

part "1. torch"
if [[ $DRY_RUN == 1 ]]; then
    echo "dry run: the CUDA install is skipped (would run: $PYTHON -m pip install --index-url $TORCH_CUDA_INDEX torch==2.13.0)"
    DEVICE=cpu; SIZE=(--tiny); SD_RESOLUTION=64; SDXL_RESOLUTION=64; TEST_SELECTION="cuda or bf16"
else
    "$PYTHON" -m pip install --quiet --index-url "$TORCH_CUDA_INDEX" torch==2.13.0 || FAILED+=("torch CUDA install")
    DEVICE=cuda; SIZE=(); SD_RESOLUTION=512; SDXL_RESOLUTION=1024; TEST_SELECTION="cuda"
fi
if ! "$PYTHON" - "$DEVICE" <<'EOF'
import sys
import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
sys.exit(1 if sys.argv[1] == "cuda" and not torch.cuda.is_available() else 0)
EOF
then
    echo "no CUDA device with this torch: stopping (run with --cpu-dry-run on a machine without one)"
    exit 1
fi

# The three configurations that matter on a card: the reference with checkpointing, ours with it, and
# ours with it and the caches (the VAE and text encoder off the GPU).
CONFIGURATIONS=("reference, gradient checkpointing" "ours, gradient checkpointing" "ours, gradient checkpointing + caches")

part "2a. SD 1.5 LoRA at $SD_RESOLUTION px, bf16, gradient checkpointing ($DEVICE)"
timeout 300 "$PYTHON" benchmarks/bench_real_size.py "${SIZE[@]}" --model sd15 --device "$DEVICE" \
    --mixed-precision bf16 --resolution "$SD_RESOLUTION" --steps "$STEPS" --keep "$WORK" \
    --only "${CONFIGURATIONS[@]}" || FAILED+=("SD 1.5 benchmark (or a target missed)")

part "2b. SDXL LoRA at $SDXL_RESOLUTION px, bf16, gradient checkpointing ($DEVICE)"
timeout 420 "$PYTHON" benchmarks/bench_real_size.py "${SIZE[@]}" --model sdxl --device "$DEVICE" \
    --mixed-precision bf16 --resolution "$SDXL_RESOLUTION" --steps "$STEPS" --keep "$WORK" \
    --only "${CONFIGURATIONS[@]}" || FAILED+=("SDXL benchmark (or a target missed)")

part "3. tests: -k '$TEST_SELECTION'"
timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/training/test_memory_options.py \
    -k "$TEST_SELECTION" || FAILED+=("CUDA tests")

part "done"
if (( ${#FAILED[@]} )); then
    printf 'failed: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "every part passed"
