"""Optimizers, parameter groups, and the one switch into schedule-free eval mode.

Parameter groups (SPEC §3): a parameter joins the first group of
`optimizer.param_groups` whose `match` regex is found (re.search) in its name;
the rest form the group `unet` at `optimizer.lr`. Groups are created in
`preset.optimizer.group_names` order, the order `LrCurve` uses, and carry
their name in `param_group["name"]`. A named group that matches no parameter
is a ConfigError. A model family hands its trainable parameters as components
[(group, [(name, parameter)])]: the regex groups match inside the `unet`
component; the others (`text_encoder`, `text_encoder_2`, SPEC §7) are groups of
their own, after `unet`, at the LR the curve gives them.

Schedule-free optimizers (`schedulefree`): `warmup_steps` is the plan's
warmup in optimizer steps (AdamW variant; the RAdam variant has none). The
optimizer is in train mode while training; `schedule_free_eval` is the only
place that switches it to eval mode (saving, sampling) and back.

Adaptive optimizers (`prodigy` from prodigyopt, `dadapt_adam` from
dadaptation) multiply the scheduled `lr` by their own estimate `d`.
Both packages train every group at one LR (the preset validator requires
equal group LRs for them). `effective_lrs`, read after the LRs are set and
before `step()`, is what that step really applies to each group:
`d * lr * bias_correction`, with the `d` held before the step (the one the
update uses) and a bias correction of 1 unless `use_bias_correction`; that
is `d * lr * f(k)`.

`adamw_8bit` is bitsandbytes' AdamW8bit: it needs that package and a CUDA
device, else a ConfigError.
"""

import re
from contextlib import contextmanager

import torch

from modules.config.preset import ADAPTIVE_OPTIMIZERS, DEFAULT_GROUP_NAME, SCHEDULE_FREE_OPTIMIZERS
from modules.errors import ConfigError


def param_groups(model: torch.nn.Module, optimizer_section, components=None, groups=None) -> list[dict]:
    """[{"name", "params", "lr"}] in group order; ConfigError for a group with no parameter.

    `components`: the family's [(group, [(name, parameter)])] (default: every parameter of `model` in `unet`);
    `groups`: (names, base LRs) in optimizer order (default: the preset's named groups and `unet`).
    """
    named = optimizer_section.param_groups
    patterns = [re.compile(group.match) for group in named]
    names, lrs = groups or (optimizer_section.group_names, optimizer_section.base_lrs)
    members: dict[str, list] = {name: [] for name in names}
    if components is None:
        components = [(DEFAULT_GROUP_NAME, list(model.named_parameters()))]
    for component, named_parameters in components:
        for parameter_name, parameter in named_parameters:
            if not parameter.requires_grad:
                continue
            if component != DEFAULT_GROUP_NAME:
                members[component].append(parameter)
                continue
            _assign(parameter_name, parameter, named, patterns, members)
    for index, group in enumerate(named):
        if not members[group.name]:
            raise ConfigError(
                f"group {group.name!r}: match {group.match!r} is found in no parameter name of the model",
                f"optimizer.param_groups.{index}.match",
            )
    return [{"name": name, "params": members[name], "lr": lr} for name, lr in zip(names, lrs)]


def _assign(parameter_name, parameter, named, patterns, members) -> None:
    """Put a UNet parameter into the first named group whose regex it matches, else into `unet`."""
    for group, pattern in zip(named, patterns):
        if pattern.search(parameter_name):
            members[group.name].append(parameter)
            return
    members[DEFAULT_GROUP_NAME].append(parameter)


def is_schedule_free(optimizer_type: str) -> bool:
    return optimizer_type in SCHEDULE_FREE_OPTIMIZERS


def build_optimizer(model: torch.nn.Module, preset, warmup_steps: int, components=None,
                    groups=None) -> torch.optim.Optimizer:
    """The optimizer of `preset.optimizer` over `model`'s parameter groups (schedule-free ones in train mode).

    `components` and `groups` as in `param_groups`.
    """
    section = preset.optimizer
    groups = param_groups(model, section, components, groups)
    if section.type == "adamw":
        return torch.optim.AdamW(groups, lr=section.lr, betas=section.betas, eps=section.eps,
                                 weight_decay=section.weight_decay)
    if section.type == "sgd":
        return torch.optim.SGD(groups, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay)
    if section.type == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, lr=section.lr, betas=section.betas, eps=section.eps, weight_decay=section.weight_decay,
                       d_coef=section.d_coef, safeguard_warmup=section.safeguard_warmup,
                       use_bias_correction=section.use_bias_correction)
    if section.type == "dadapt_adam":
        from dadaptation import DAdaptAdam

        if section.safeguard_warmup:
            raise ConfigError("is not an option of dadapt_adam (prodigy has it)", "optimizer.safeguard_warmup")
        return DAdaptAdam(groups, lr=section.lr, betas=section.betas, eps=section.eps,
                          weight_decay=section.weight_decay, decouple=True,
                          use_bias_correction=section.use_bias_correction)
    if section.type == "adamw_8bit":
        return _adamw_8bit(groups, preset)
    import schedulefree

    if section.type == "adamw_schedule_free":
        optimizer = schedulefree.AdamWScheduleFree(groups, lr=section.lr, betas=section.betas, eps=section.eps,
                                                   weight_decay=section.weight_decay, warmup_steps=warmup_steps)
    elif section.type == "radam_schedule_free":
        optimizer = schedulefree.RAdamScheduleFree(groups, lr=section.lr, betas=section.betas, eps=section.eps,
                                                   weight_decay=section.weight_decay)
    else:  # the preset validator allows nothing else
        raise ConfigError(f"unknown optimizer {section.type!r}", "optimizer.type")
    optimizer.train()
    return optimizer


def _adamw_8bit(groups: list[dict], preset) -> torch.optim.Optimizer:
    section = preset.optimizer
    if preset.training.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError("'adamw_8bit' needs a CUDA device (bitsandbytes' 8-bit optimizer does not run on CPU); "
                          "use 'adamw' here", "optimizer.type")
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError("'adamw_8bit' needs the bitsandbytes package (pip install bitsandbytes); "
                          "use 'adamw' without it", "optimizer.type") from None
    return bitsandbytes.optim.AdamW8bit(groups, lr=section.lr, betas=section.betas, eps=section.eps,
                                        weight_decay=section.weight_decay)


def is_adaptive(optimizer_type: str) -> bool:
    return optimizer_type in ADAPTIVE_OPTIMIZERS


def effective_lrs(optimizer) -> list[float] | None:
    """The LR the next `step()` applies to each group of an adaptive optimizer; None for the others.

    Call it after the LRs are set and before `step()`: d * max(lr) * bias correction (module docstring).
    """
    base = _base_optimizer(optimizer)
    groups = base.param_groups
    if "d" not in groups[0] or ("d_coef" not in groups[0] and "numerator_weighted" not in groups[0]):
        return None  # not prodigy / dadapt_adam
    first = groups[0]
    lr = max(float(group["lr"]) for group in groups)
    correction = 1.0
    if first.get("use_bias_correction"):
        beta1, beta2 = first["betas"]
        step = first["k"] + 1
        correction = ((1 - beta2**step) ** 0.5) / (1 - beta1**step)
    applied = float(first["d"]) * lr * correction
    return [applied for _ in groups]


def logged_lrs(optimizer) -> list[float]:
    """The LR each group used in the step just taken: `scheduled_lr` for schedule-free, else `lr`."""
    return [float(group["scheduled_lr"]) if "scheduled_lr" in group else float(group["lr"])
            for group in optimizer.param_groups]


def _base_optimizer(optimizer):
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer
        optimizer = optimizer.optimizer
    return optimizer


@contextmanager
def schedule_free_eval(optimizer, model: torch.nn.Module):
    """Inside: a schedule-free optimizer is in eval mode (the weights are the averaged x).

    On exit the optimizer is back in train mode and the train-mode weights are
    restored bit for bit from a copy (eval() then train() is not an exact round
    trip in floating point), so saving or sampling never changes training.
    Other optimizers pass straight through.
    """
    base = _base_optimizer(optimizer)
    if not (hasattr(base, "eval") and hasattr(base, "train") and "train_mode" in base.param_groups[0]):
        yield
        return
    saved = [parameter.detach().clone() for parameter in model.parameters()]
    was_training = model.training
    base.eval()
    model.eval()
    try:
        yield
    finally:
        base.train()
        with torch.no_grad():
            for parameter, value in zip(model.parameters(), saved):
                parameter.copy_(value)
        model.train(was_training)
