"""The effective curves of schedule-free optimizers, which apply their own warmup inside `step()`.

For them the param-group LR stays at the base LR (the applied multiplier is 1) and the factor the
optimizer really uses at step k is:

    adamw_schedule_free:  (k + 1) / Wu for k < Wu, else 1
    radam_schedule_free:  the rectification term (see `radam_rectification`), 0 while rho_t <= 4

Each is one object in `SCHEDULE_FREE`, keyed by optimizer.type.
"""

import math

import numpy as np


class ScheduleFreeCurve:
    """The effective multiplier of one schedule-free optimizer at steps k (int64, within the plan)."""

    name = ""

    def effective(self, schedule, k: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def warnings(self, schedule) -> list[str]:
        return ["min_factor has no effect with a schedule-free optimizer"] if schedule.min_factor > 0 else []


class AdamWScheduleFree(ScheduleFreeCurve):
    """(k + 1) / Wu for k < Wu, else 1: schedulefree.AdamWScheduleFree's own warmup."""

    name = "adamw_schedule_free"

    def effective(self, schedule, k):
        if schedule.warmup_steps <= 0:
            return np.ones(k.shape, dtype=np.float64)
        return np.minimum(1.0, (k + 1).astype(np.float64) / float(schedule.warmup_steps))


class RAdamScheduleFree(ScheduleFreeCurve):
    """schedulefree.RAdamScheduleFree's rectification (its silent SGD phase on), with the preset's beta2."""

    name = "radam_schedule_free"

    def effective(self, schedule, k):
        return radam_rectification(k, schedule.beta2)


SCHEDULE_FREE: dict[str, ScheduleFreeCurve] = {
    curve.name: curve for curve in (AdamWScheduleFree(), RAdamScheduleFree())
}


def radam_rectification(k: np.ndarray, beta2: float) -> np.ndarray:
    """schedulefree.RAdamScheduleFree's LR factor at optimizer step k (silent SGD phase on).

    With step = k + 1, in schedulefree's own order of operations:

        beta2_t = beta2 ** step                 rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
               if rho_t > 4, else 0

    The powers (`beta2 ** step` and `** 0.5`) are Python's float `**` (C `pow`), as in the
    optimizer: NumPy's SIMD `power` can differ from it in the last bit, and so would the preview.
    The other operations are IEEE-exact in NumPy too. The correction term 2 * step * beta2_t /
    (1 - beta2_t) falls with the step (x / (e^x - 1) is decreasing); once it is below an eighth of
    rho_inf's last bit, rho_t rounds to rho_inf and rect is exactly 1 (0 if rho_inf <= 4), so only
    the steps before that (about 42,000 for beta2 = 0.999) are computed one by one.
    """
    k = np.asarray(k, dtype=np.int64)
    rho_inf = 2 / (1 - beta2) - 1
    settled = 1.0 if rho_inf > 4.0 else 0.0
    exact_steps = _radam_unsettled_steps(beta2, rho_inf, int(k.max()) + 1 if k.size else 0)
    step = np.arange(1, exact_steps + 1, dtype=np.float64)
    beta2_t = np.array([beta2**s for s in range(1, exact_steps + 1)], dtype=np.float64)
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    ratio = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    prefix = np.array([value**0.5 if rho > 4.0 else 0.0 for value, rho in zip(ratio.tolist(), rho_t.tolist())],
                      dtype=np.float64)
    result = np.full(k.shape, settled, dtype=np.float64)
    early = k < exact_steps
    result[early] = prefix[k[early]]
    return result


def _radam_unsettled_steps(beta2: float, rho_inf: float, steps: int) -> int:
    """How many of the first `steps` steps still have rho_t != rho_inf (bisection on a falling term)."""
    threshold = math.ulp(rho_inf) / 8

    def settled(step: int) -> bool:
        beta2_t = beta2**step
        return 2 * step * beta2_t / (1 - beta2_t) < threshold

    if steps == 0 or settled(1):
        return 0
    low, high = 1, steps  # settled(low) is False; find the first settled step in (low, steps]
    if not settled(high):
        return steps
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if settled(middle) else (middle, high)
    return high - 1
