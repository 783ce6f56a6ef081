"""Optimisers and learning-rate schedules for `fit`, from timm's factory and torch."""

from __future__ import annotations

from collections.abc import Callable

import torch

_OPTIMIZERS = ("adamw", "adam", "sgd")

_TIMM_NAMES = {"adamw": "adamw", "adam": "adam", "sgd": "momentum"}  # timm's own "sgd" is Nesterov SGD


def _make_optimizer(name, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """A named optimiser from timm's factory, or `name` itself when it is a torch Optimizer.

    `timm.optim.create_optimizer_v2` with the groups passed through (filter_bias_and_bn=False) builds the very
    torch.optim classes fit used to build itself: AdamW, Adam, and for "sgd" classical momentum 0.9 (timm's
    "momentum"; timm's "sgd" adds Nesterov). Same classes, same hyper-parameters, so bit-identical weights
    (tests/test_train.py checks it).
    """
    if isinstance(name, torch.optim.Optimizer):
        return name
    if name not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS} or a torch Optimizer, got {name!r}")
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        params,
        opt=_TIMM_NAMES[name],
        lr=lr,
        weight_decay=weight_decay,
        momentum=0.9,
        filter_bias_and_bn=False,
    )


def _cosine(optimizer, total_steps: int, warmup_steps: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


def _onecycle(optimizer, total_steps: int, warmup_steps: int):
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(2, total_steps))


def _warmup_cosine(optimizer, total_steps: int, warmup_steps: int):
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps),
        warmup_t=warmup_steps,
        warmup_lr_init=1e-6,
        t_in_epochs=False,
    )


# name -> factory(optimizer, total_steps, warmup_steps); every scheduler is stepped once per optimisation step
SCHEDULERS: dict[str, Callable] = {"cosine": _cosine, "onecycle": _onecycle, "warmup_cosine": _warmup_cosine}
_SCHEDULERS = (None, "none", *SCHEDULERS)  # what fit's `scheduler` accepts by name


def _make_scheduler(spec, optimizer, total_steps: int, warmup_steps: int):
    """A scheduler from the `SCHEDULERS` registry (torch's, or timm's for warm-up), or `spec(optimizer,
    total_steps)` when callable; None for no schedule. Returns (scheduler, is_timm): timm's step per update."""
    if callable(spec):
        sched = spec(optimizer, total_steps)
    elif spec in (None, "none"):
        return None, False
    elif spec in SCHEDULERS:
        sched = SCHEDULERS[spec](optimizer, total_steps, warmup_steps)
    else:
        raise ValueError(f"scheduler must be one of {('none', *SCHEDULERS)} or a callable, got {spec!r}")
    return sched, hasattr(sched, "step_update")
