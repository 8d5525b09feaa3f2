"""The EMA of the trained weights (SPEC §11): a checkpointed part.

diffusers' `EMAModel` (no warmup, `update_after_step` 0) over the trained
parameters in the family's order (`family.parameter_components()` flattened,
which does not depend on how the optimizer groups them): it starts equal to
the weights before the first step; after optimizer step k (1-based) with k a
multiple of `training.ema_update_every`, its j-th update applies
`ema = ema - (1 - d_j) * (ema - w)` with `d_j = min(ema_decay, j / (9 + j))`
(`modules.schedule.ema_decay`, the curve the preview draws). One choice of
ours: diffusers' own `get_decay` gives the first update d = 0 (a copy); the
contract's d_1 = 1/10 is used instead (README, "Contract choices").

Every process keeps its own EMA of the same (synchronised) weights; the main
process writes it into `optimizer.pt` under `ema` (its `state_dict`: the
update count and the shadow tensors), and a resume loads it onto the device.
`applied()` swaps the EMA weights in (samples, validation, the final model)
and puts the trained ones back after, bit for bit.
"""

from contextlib import contextmanager
from pathlib import Path

import torch

from modules.errors import ConfigError
from modules.schedule.ema_decay import decay_at_update

EMA_DECAY_TAG = "ema/decay"  # TensorBoard: the d_j of the update after step k, at step k


def family_parameters(family) -> list[torch.nn.Parameter]:
    """The trained parameters in the family's order (the EMA's shadow order)."""
    return [parameter for _, named in family.parameter_components() for _, parameter in named]


def _ema_model_class():
    from diffusers.training_utils import EMAModel

    class ContractEMAModel(EMAModel):
        """EMAModel with the contract's d_j = min(decay, j / (9 + j)) from the first update on."""

        def get_decay(self, optimization_step: int) -> float:
            return decay_at_update(optimization_step, self.decay)

    return ContractEMAModel


class EmaPart:
    """The EMA as a checkpointed part (`modules.training.checkpointed_parts`)."""

    name = "ema"

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float, update_every: int):
        self.parameters = list(parameters)
        self.update_every = update_every
        self.model = _ema_model_class()(self.parameters, decay=decay, min_decay=0.0, update_after_step=0,
                                        use_ema_warmup=False, foreach=True)

    @property
    def updates(self) -> int:
        return self.model.optimization_step

    def after_step(self, global_step: int) -> float | None:
        """Update after optimizer step `global_step` (1-based) when it is due; the decay used, or None."""
        if global_step % self.update_every:
            return None
        self.model.step(self.parameters)
        return float(self.model.cur_decay_value)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict, folder: Path) -> None:
        shadows = state.get("shadow_params") or []
        if len(shadows) != len(self.parameters) or any(
                shadow.shape != parameter.shape for shadow, parameter in zip(shadows, self.parameters)):
            raise ConfigError(f"the EMA in '{Path(folder)}' does not fit the weights this preset trains "
                              "(model, training.method or lora changed since the checkpoint?)", "training.ema")
        self.model.load_state_dict(state)
        self.model.shadow_params = [shadow.to(device=parameter.device, dtype=parameter.dtype)
                                    for shadow, parameter in zip(self.model.shadow_params, self.parameters)]

    @contextmanager
    def applied(self):
        """The EMA weights in the model for the block; the trained weights back after it."""
        self.model.store(self.parameters)
        self.model.copy_to(self.parameters)
        try:
            yield
        finally:
            self.model.restore(self.parameters)
            self.model.temp_stored_params = None


def ema_part(preset, family) -> EmaPart | None:
    """The EMA of this run (None without training.ema)."""
    training = preset.training
    if not training.ema:
        return None
    return EmaPart(family_parameters(family), training.ema_decay, training.ema_update_every)


@contextmanager
def ema_applied(ema: EmaPart | None):
    """`ema.applied()`, or nothing when there is no EMA."""
    if ema is None:
        yield
    else:
        with ema.applied():
            yield


@contextmanager
def load_final_ema(preset, family, saved_parts: dict, folder):
    """A finished run's final model written again from its last checkpoint: the EMA it holds, applied."""
    ema = ema_part(preset, family)
    if ema is not None and ema.name in saved_parts:
        ema.load_state_dict(saved_parts[ema.name], Path(folder))
        with ema.applied():
            yield
    else:
        yield
