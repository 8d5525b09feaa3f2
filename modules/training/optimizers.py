"""Optimizers, parameter groups, and the one switch into schedule-free eval mode.

Parameter groups (SPEC §3, §7, §13): a model family hands its trainable
parameters as components [(component, [(name, parameter)])] (`unet`, and
`text_encoder`, `text_encoder_2` where they train). A parameter joins the first
group of `optimizer.param_groups` of its component whose `match` regex is
found (re.search) in its name; the rest of a component form the group named
after it (`unet` at `optimizer.lr`, the text encoders at `text_encoder_lr`).
With LoRA+ (`lora.plus_ratio`) a LoRA up matrix (peft's `lora_B`) joins its
group's `<group>_B` instead. Groups are created in the curve's order
(`modules.schedule.lr_curve.build_lr_curve`) and carry their name in
`param_group["name"]`. A named group that matches no parameter, or a `_B`
group left empty, is a ConfigError.

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

from modules.config.preset import (ADAPTIVE_OPTIMIZERS, DEFAULT_GROUP_NAME, LORA_PLUS_SUFFIX, SCHEDULE_FREE_OPTIMIZERS,
                                   lora_plus_ratio)
from modules.errors import ConfigError


def param_groups(model: torch.nn.Module, optimizer_section, components=None, groups=None,
                 plus_ratio: float | None = None) -> list[dict]:
    """[{"name", "params", "lr"}] in group order; ConfigError for a group with no parameter.

    `components`: the family's [(component, [(name, parameter)])] (default: every parameter of `model` in `unet`);
    `groups`: (names, base LRs) in optimizer order (default: the preset's named groups and `unet`);
    `plus_ratio`: LoRA+ is on (`lora_plus_ratio`): each group's lora_B matrices go to its group + '_B'.
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
            name = _group_of(component, parameter_name, named, patterns)
            if plus_ratio is not None and is_lora_b(parameter_name):
                name += LORA_PLUS_SUFFIX
            members[name].append(parameter)
    for index, group in enumerate(named):
        if not members[group.name]:
            raise ConfigError(
                f"group {group.name!r}: match {group.match!r} is found in no parameter name of the "
                f"{group.component}", f"optimizer.param_groups.{index}.match",
            )
    for name in names:  # a group of LoRA A matrices without their B matrices: its match splits the pairs
        base = name.removesuffix(LORA_PLUS_SUFFIX)
        if name != base and base in members and members[base] and not members[name]:
            raise ConfigError(f"group {name.removesuffix(LORA_PLUS_SUFFIX)!r} holds no lora_B matrix, so its LoRA+ "
                              f"group {name!r} would be empty (change its match, or remove lora.plus_ratio)",
                              "lora.plus_ratio")
    return [{"name": name, "params": members[name], "lr": lr} for name, lr in zip(names, lrs)]


def _group_of(component: str, parameter_name: str, named, patterns) -> str:
    """The first named group of `component` whose regex is found in the name; else the component's own group."""
    for group, pattern in zip(named, patterns):
        if group.component == component and pattern.search(parameter_name):
            return group.name
    return component


_LORA_B = re.compile(r"(^|\.)lora_B(\.|$)")


def is_lora_b(parameter_name: str) -> bool:
    """A LoRA up matrix: peft names it `...to_q.lora_B.default.weight`."""
    return bool(_LORA_B.search(parameter_name))


def is_schedule_free(optimizer_type: str) -> bool:
    return optimizer_type in SCHEDULE_FREE_OPTIMIZERS


def build_optimizer(model: torch.nn.Module, preset, warmup_steps: int, components=None,
                    groups=None) -> torch.optim.Optimizer:
    """The optimizer of `preset.optimizer` over `model`'s parameter groups (schedule-free ones in train mode).

    `components` and `groups` as in `param_groups`.
    """
    section = preset.optimizer
    groups = param_groups(model, section, components, groups, lora_plus_ratio(preset))
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
