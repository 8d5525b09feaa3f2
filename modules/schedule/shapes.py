"""Schedule shapes: pure, vectorised formulas for the LR multiplier f(k).

Every function here takes the resolved schedule (all durations already in
optimizer steps, see `modules.schedule.step_plan`) and an integer array of optimizer
steps k (0-based) and returns f(k) as float64. The learning rate of
parameter group g at step k is `base_lr[g] * f(k)`. Nothing here keeps
state and nothing converts units.

Notation (SPEC §2): T total steps, Wu warmup steps, D = max(1, T - Wu),
p = (k - Wu) / D, m = min_factor, g(v) = m + (1 - m) * v.

1. warmup, k < Wu:         s + (1 - s) * k / Wu       (s = warmup_start_factor)
2. after warmup, k >= Wu:  the shape below
3. past the plan, k >= T:  f(T - 1)  (no shape rises, restarts or divides by zero there)

Expressions are written in the same order as `diffusers.optimization` so
that, with m = 0 and s = 0, the curves agree with it to the last bit or so.

Schedule-free optimizers apply their own warmup inside `step()`. For them
`applied_multipliers` is 1 (the param-group LR stays at the base LR) and
`effective_multipliers` is what the optimizer really uses:
AdamW: (k + 1) / Wu for k < Wu, else 1; RAdam: the rectification term
sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
for rho_t > 4, else 0 (schedulefree's `silent_sgd_phase`).
"""

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule with every duration converted to optimizer steps."""

    type: str
    total_steps: int
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    min_factor: float = 0.0
    cycles: float = 1.0
    power: float = 1.0
    period_steps: int = 0
    timescale_steps: int = 0
    decay_steps: int = 0
    decay_shape: str = "linear"
    piecewise: tuple[tuple[int, float], ...] = ()
    schedule_free: str | None = None
    beta2: float = 0.999
    function: str = ""  # custom: "file.py:name" or "module:name"
    function_sha256: str = ""  # custom: digest of the function's source file
    phases: tuple[tuple[str, int, float, float], ...] = ()  # sequence: (shape, end step, from, to)


def _g(schedule: ResolvedSchedule, v: np.ndarray) -> np.ndarray:
    """g(v) = m + (1 - m) * v: scales a 1 -> 0 shape onto 1 -> min_factor."""
    m = schedule.min_factor
    v *= 1.0 - m  # in place: every caller passes a fresh temporary (a million-step plan is 8 MB each)
    v += m
    return v


def _progress(schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
    """p = (k - Wu) / D, D = max(1, T - Wu)."""
    # float(k) - Wu is exact (integers below 2**53), so this equals (k - Wu) / D with one array, not three.
    p = k.astype(np.float64)
    p -= schedule.warmup_steps
    p /= float(max(1, schedule.total_steps - schedule.warmup_steps))
    return p


def _remaining(schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
    """1 - p, computed as (T - k) / D like diffusers' linear schedule."""
    remaining = k.astype(np.float64)
    np.subtract(float(schedule.total_steps), remaining, out=remaining)
    remaining /= float(max(1, schedule.total_steps - schedule.warmup_steps))
    return remaining


def _half_cosine_wave(x: np.ndarray, scale: float) -> np.ndarray:
    """0.5 * (1 + cos(scale * x)), in place on the temporary `x` (same operations, same order)."""
    x *= scale
    np.cos(x, out=x)
    x += 1.0
    x *= 0.5
    return x


def constant(schedule, k):
    """f = 1"""
    return np.ones(k.shape, dtype=np.float64)


def linear(schedule, k):
    """f = g(1 - p)"""
    return _g(schedule, _remaining(schedule, k))


def cosine(schedule, k):
    """f = g(0.5 * (1 + cos(pi * p)))"""
    return _g(schedule, _half_cosine_wave(_progress(schedule, k), np.pi * 0.5 * 2.0))


def cosine_with_restarts(schedule, k):
    """Smooth waves: f = g(0.5 * (1 + cos(2 * pi * c * p)))"""
    return _g(schedule, _half_cosine_wave(_progress(schedule, k), np.pi * float(schedule.cycles) * 2.0))


def cosine_with_hard_restarts(schedule, k):
    """f = g(0.5 * (1 + cos(pi * ((c * p) mod 1))))"""
    phase = _progress(schedule, k)
    phase *= float(schedule.cycles)
    phase -= np.floor(phase)  # (c * p) mod 1, exactly, for c * p >= 0; three times faster than np.mod
    return _g(schedule, _half_cosine_wave(phase, np.pi))


def polynomial(schedule, k):
    """f = g((1 - p) ** q)"""
    remaining = _remaining(schedule, k)
    np.power(remaining, schedule.power, out=remaining)
    return _g(schedule, remaining)


def sine(schedule, k):
    """A full wave every P steps after warmup, starting at the top, m at half period:
    f = g(0.5 * (1 + cos(2 * pi * (k - Wu) / P)))"""
    # The position in the wave is taken modulo P in integers first, so f(k + P) == f(k) exactly
    # at every k however long the run (float phases drift by ~1e-13 over a thousand waves).
    position = np.mod(k - schedule.warmup_steps, schedule.period_steps)
    phase = position.astype(np.float64)
    phase /= float(schedule.period_steps)
    return _g(schedule, _half_cosine_wave(phase, 2.0 * np.pi))


def rex(schedule, k):
    """f = g((1 - p) / (0.1 + 0.9 * (1 - p)))"""
    remaining = _remaining(schedule, k)
    return _g(schedule, remaining / (0.1 + 0.9 * remaining))


def inverse_sqrt(schedule, k):
    """f = max(m, 1 / sqrt((k - Wu + t) / t)), t = timescale_steps (as transformers)"""
    timescale = float(schedule.timescale_steps)
    shift = timescale - schedule.warmup_steps
    decay = 1.0 / np.sqrt((k + shift) / timescale)
    return np.maximum(schedule.min_factor, decay)


def warmup_stable_decay(schedule, k):
    """1 while k < T - Dd; then q = (k - (T - Dd)) / Dd and
    linear g(1 - q), cosine g(0.5 * (1 + cos(pi * q))) or sqrt g(1 - sqrt(q))."""
    decay_steps = schedule.decay_steps
    result = np.ones(k.shape, dtype=np.float64)
    if decay_steps <= 0:
        return result
    decay_start = schedule.total_steps - decay_steps
    in_decay = k >= decay_start
    q = (k[in_decay] - decay_start).astype(np.float64) / float(decay_steps)
    if schedule.decay_shape == "linear":
        v = 1.0 - q
    elif schedule.decay_shape == "cosine":
        v = 0.5 * (1.0 + np.cos(np.pi * q))
    else:
        v = 1.0 - np.sqrt(q)
    result[in_decay] = _g(schedule, v)
    return result


def piecewise_constant(schedule, k):
    """The multiplier of the last [boundary, multiplier] entry whose boundary is <= k."""
    boundaries = np.array([boundary for boundary, _ in schedule.piecewise], dtype=np.int64)
    values = np.array([value for _, value in schedule.piecewise], dtype=np.float64)
    return values[np.searchsorted(boundaries, k, side="right") - 1]


# custom: the user's values per (function, source digest, T), loaded and checked by the step plan
# (`modules.schedule.custom`); kept here so the shape stays a pure lookup. The newest few plans only.
_CUSTOM_VALUES: dict[tuple[str, str, int], np.ndarray] = {}
_CUSTOM_KEEP = 8


def register_custom_values(schedule: ResolvedSchedule, values: np.ndarray) -> None:
    """Make `values` (one checked multiplier per step of the plan) the curve of `schedule`."""
    key = (schedule.function, schedule.function_sha256, schedule.total_steps)
    _CUSTOM_VALUES.pop(key, None)
    _CUSTOM_VALUES[key] = values
    while len(_CUSTOM_VALUES) > _CUSTOM_KEEP:
        del _CUSTOM_VALUES[next(iter(_CUSTOM_VALUES))]


def custom(schedule, k):
    """The user's function, called once on the whole plan by the step plan: f = values[k]."""
    values = _CUSTOM_VALUES.get((schedule.function, schedule.function_sha256, schedule.total_steps))
    if values is None:
        raise ValueError(f"the values of {schedule.function!r} are not loaded: build the plan with "
                         "modules.schedule.step_plan.build_step_plan")
    return values[k]


def sequence(schedule, k):
    """Phase i covers [end_{i-1}, end_i) (end_{-1} = 0) and moves from `from_i` to `to_i`:
    f = from + (to - from) * s(q), q = (k - start) / (end - start), s(q) = q (linear),
    0.5 * (1 - cos(pi * q)) (cosine), 0 (constant: holds `from`)."""
    ends = np.array([phase[1] for phase in schedule.phases], dtype=np.int64)
    result = np.empty(k.shape, dtype=np.float64)
    ordered = k.size < 2 or bool((k[1:] >= k[:-1]).all())
    if ordered:  # the whole plan: each phase is one slice of k (views, no masks)
        bounds = np.searchsorted(k, ends, side="left")
        pieces = [slice(first, last) for first, last in zip(np.concatenate(([0], bounds[:-1])), bounds)]
    else:
        index = np.searchsorted(ends, k, side="right")  # k < T = ends[-1], so every k has a phase
        pieces = [index == position for position in range(len(ends))]
    start = 0
    for piece, (shape, end, start_factor, end_factor) in zip(pieces, schedule.phases):
        if shape == "constant" or end_factor == start_factor:
            result[piece] = start_factor
        else:
            q = (k[piece] - start).astype(np.float64)
            q /= float(end - start)
            if shape == "cosine":
                q *= np.pi
                np.cos(q, out=q)
                q -= 1.0
                q *= -0.5
            q *= end_factor - start_factor
            q += start_factor
            result[piece] = q
        start = end
    return result


SHAPES = {
    "constant": constant,
    "linear": linear,
    "cosine": cosine,
    "cosine_with_restarts": cosine_with_restarts,
    "cosine_with_hard_restarts": cosine_with_hard_restarts,
    "polynomial": polynomial,
    "sine": sine,
    "rex": rex,
    "inverse_sqrt": inverse_sqrt,
    "warmup_stable_decay": warmup_stable_decay,
    "piecewise_constant": piecewise_constant,
    "custom": custom,
    "sequence": sequence,
}


def _as_steps(schedule: ResolvedSchedule, steps) -> np.ndarray:
    """Steps as int64, clipped to the plan: k >= T is read as T - 1."""
    if steps is None:
        return np.arange(schedule.total_steps, dtype=np.int64)
    k = np.asarray(steps, dtype=np.int64)
    if k.size and k.min() < 0:
        raise ValueError(f"optimizer steps are 0-based, got {int(k.min())}")
    return np.minimum(k, schedule.total_steps - 1)


def _warmup(schedule: ResolvedSchedule, k: np.ndarray) -> np.ndarray:
    """k < Wu: s + (1 - s) * k / Wu, s = warmup_start_factor."""
    s = schedule.warmup_start_factor
    return s + (1.0 - s) * (k.astype(np.float64) / float(max(1, schedule.warmup_steps)))


def applied_multipliers(schedule: ResolvedSchedule, steps=None) -> np.ndarray:
    """f(k): the factor written into each param group's lr before optimizer step k.

    `steps` defaults to every step of the plan, 0 .. T - 1.
    """
    k = _as_steps(schedule, steps)
    if schedule.schedule_free:
        return np.ones(k.shape, dtype=np.float64)
    result = np.empty(k.shape, dtype=np.float64)
    warmup_steps = schedule.warmup_steps
    if steps is None:
        # The whole plan, k = 0 .. T - 1 in order: the two phases are slices (views), which
        # spares a million-step plan the masked copies of the general path below.
        result[:warmup_steps] = _warmup(schedule, k[:warmup_steps])
        result[warmup_steps:] = SHAPES[schedule.type](schedule, k[warmup_steps:])
        return result
    in_warmup = k < warmup_steps
    if in_warmup.any():
        result[in_warmup] = _warmup(schedule, k[in_warmup])
    after = ~in_warmup
    if after.any():
        result[after] = SHAPES[schedule.type](schedule, k[after])
    return result


def effective_multipliers(schedule: ResolvedSchedule, steps=None) -> np.ndarray:
    """The factor the optimizer really uses at step k: what preview and TensorBoard show.

    Equal to `applied_multipliers` except for schedule-free optimizers, whose
    own warmup (AdamW) or rectification (RAdam) is applied inside `step()`.
    """
    if schedule.schedule_free not in ("adamw_schedule_free", "radam_schedule_free"):
        return applied_multipliers(schedule, steps)  # `steps` as given: None takes the whole-plan path
    k = _as_steps(schedule, steps)
    if schedule.schedule_free == "adamw_schedule_free":
        if schedule.warmup_steps <= 0:
            return np.ones(k.shape, dtype=np.float64)
        return np.minimum(1.0, (k + 1).astype(np.float64) / float(schedule.warmup_steps))
    return radam_rectification(k, schedule.beta2)


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


def cycle_starts(schedule: ResolvedSchedule) -> list[int]:
    """Optimizer steps at which a new cycle (restart shapes and sine) or phase (sequence) begins; [] otherwise.

    Derived from the same expression the curve uses, so the marks in the
    preview fall exactly where the curve jumps.
    """
    total, warmup_steps = schedule.total_steps, schedule.warmup_steps
    if schedule.schedule_free:
        return []
    if schedule.type == "sine":
        return list(range(warmup_steps + schedule.period_steps, total, schedule.period_steps))
    if schedule.type == "sequence":
        return [end for _, end, _, _ in schedule.phases[:-1]]  # where each phase after the first begins
    if schedule.type in ("cosine_with_restarts", "cosine_with_hard_restarts"):
        k = np.arange(warmup_steps, total, dtype=np.int64)
        cycle_index = np.floor(float(schedule.cycles) * _progress(schedule, k))
        return [int(step) for step in k[1:][np.diff(cycle_index) > 0]]
    return []
