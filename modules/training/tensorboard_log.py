"""TensorBoard logging (SPEC §5), main process only.

Run folder `output.dir/tensorboard`. At optimizer step k: `lr/<group>` (the
LR step k used: the effective one, `scheduled_lr`, for schedule-free
optimizers) for every group, and `loss/train` (mean over the accumulation
window, averaged over processes); for prodigy and dadapt_adam also
`lr_effective/<group>`, the LR the optimizer really applied (d * lr * f(k)). At the last step of each
epoch (and at the last step of the run), `data/samples/<concept>`: the samples of each concept the
epoch's micro-batches held over every process (SPEC §10). A resumed run opens the writer with
`purge_step` = its first step, so events a killed run wrote past its last
checkpoint are hidden and TensorBoard shows one clean curve.
"""

from pathlib import Path

import numpy as np

from modules.training import paths


class TensorBoardLog:
    def __init__(self, output_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(output_dir) / paths.TENSORBOARD_DIR), purge_step=purge_step)

    def log_step(self, step: int, loss: float, lrs: dict[str, float],
                 effective_lrs: dict[str, float] | None = None) -> None:
        for name, lr in lrs.items():
            self.writer.add_scalar(f"lr/{name}", lr, step)
        for name, lr in (effective_lrs or {}).items():
            self.writer.add_scalar(f"lr_effective/{name}", lr, step)
        self.writer.add_scalar("loss/train", loss, step)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Tag -> value at `step` (the validation losses, ema/decay)."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_concept_samples(self, step: int, counts: dict[str, int]) -> None:
        """`data/samples/<concept>`: the samples of each concept an epoch trained, logged at its last step."""
        for name, count in counts.items():
            self.writer.add_scalar(f"data/samples/{name}", count, step)

    def log_samples(self, step: int, images: np.ndarray) -> None:
        """images: (n, H, W, 3) floats in [0, 1]."""
        self.writer.add_images("samples", images, step, dataformats="NHWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
