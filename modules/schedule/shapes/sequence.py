"""sequence: phases written out (`scheduler.phases`), each linear, cosine or constant between two factors."""

import numpy as np

from modules.errors import ConfigError
from modules.schedule.shapes.base import Shape


class Sequence(Shape):
    """Phase i covers [end_{i-1}, end_i) (end_{-1} = 0) and moves from `from_i` to `to_i`:
    f = from + (to - from) * s(q), q = (k - start) / (end - start), s(q) = q (linear),
    0.5 * (1 - cos(pi * q)) (cosine), 0 (constant: holds `from`)."""

    name = "sequence"
    reads = ("phases",)

    def resolve(self, scheduler, steps, total_steps, warmup_steps):
        """scheduler.phases -> (shape, end step, from, to), every `until` converted to steps of this plan."""
        resolved = []
        previous_end, previous_factor = 0, 1.0
        phases = scheduler.phases
        for index, phase in enumerate(phases):
            key = f"scheduler.phases.{index}"
            end = steps(phase.until, f"{key}.until")
            if end <= previous_end:
                raise ConfigError(
                    f"{phase.until!r} is {end} steps in this plan, not after the previous phase's end "
                    f"({previous_end} steps): every phase must end later than the one before", f"{key}.until")
            if end > total_steps:
                raise ConfigError(f"{phase.until!r} is {end} steps, past the end of the run ({total_steps} steps)",
                                  f"{key}.until")
            start_factor = previous_factor if phase.start is None else phase.start
            end_factor = start_factor if phase.to is None else phase.to
            if phase.shape == "constant" and end_factor != start_factor:
                raise ConfigError(
                    f"a constant phase holds its 'from' ({start_factor:g}); 'to' {end_factor:g} would be a jump "
                    "at its end (give the next phase 'from' instead)", f"{key}.to")
            resolved.append((phase.shape, end, float(start_factor), float(end_factor)))
            previous_end, previous_factor = end, end_factor
        if previous_end != total_steps:
            raise ConfigError(
                f"the last phase ends at {phases[-1].until!r} = {previous_end} steps, but the run is {total_steps} "
                'steps: the last phase must end with the run ("100%")', f"scheduler.phases.{len(phases) - 1}.until")
        return {"phases": tuple(resolved)}

    def multipliers(self, schedule, k):
        result = np.empty(k.shape, dtype=np.float64)
        start = 0
        for piece, (shape, end, start_factor, end_factor) in zip(_pieces(schedule, k), schedule.phases):
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

    def warnings(self, schedule):
        peak = max(max(start, end) for _, _, start, end in schedule.phases)
        return [f"the sequence rises to {peak:g} x the base LR (above 1)"] if peak > 1 else []

    def cycle_starts(self, schedule):
        return [end for _, end, _, _ in schedule.phases[:-1]]  # where each phase after the first begins


def _pieces(schedule, k: np.ndarray) -> list:
    """The steps of k in each phase: slices when k is ordered (the whole plan: views, no masks), else masks."""
    ends = np.array([phase[1] for phase in schedule.phases], dtype=np.int64)
    if k.size < 2 or bool((k[1:] >= k[:-1]).all()):
        bounds = np.searchsorted(k, ends, side="left")
        return [slice(first, last) for first, last in zip(np.concatenate(([0], bounds[:-1])), bounds)]
    index = np.searchsorted(ends, k, side="right")  # k < T = ends[-1], so every k has a phase
    return [index == position for position in range(len(ends))]
