"""The EMA decay over a run (SPEC §11): a schedule like the LR, drawn by the preview and the app.

diffusers' `EMAModel` without warmup (`use_ema_warmup=False`, `update_after_step=0`): its j-th
update (j = 1, 2, ...) uses `d_j = min(ema_decay, j / (9 + j))`, and `ema = d_j * ema + (1 - d_j) * w`.
The EMA is updated after every optimizer step k (0-based) with (k + 1) a multiple of
`ema_update_every`. Pure NumPy: the preview imports no torch.
"""

import numpy as np


def ema_decays(total_steps: int, ema_decay: float | None, update_every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(steps k, 0-based, after which the EMA is updated; the decay d_j each of those updates uses).
    Both empty when the EMA is off (`ema_decay` None)."""
    if ema_decay is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps = np.arange(update_every, total_steps + 1, update_every, dtype=np.int64) - 1
    updates = np.arange(1, len(steps) + 1, dtype=np.float64)
    return steps, np.minimum(ema_decay, updates / (9.0 + updates))


def decay_at_update(update: int, ema_decay: float) -> float:
    """d_j of the j-th update (1-based), as the trainer applies it."""
    return min(ema_decay, update / (9.0 + update))
