"""Optimisers and learning-rate schedules for `fit`, from timm's factory and torch (notebook 01)."""

from __future__ import annotations

import torch

_OPTIMIZERS = ("adamw", "adam", "sgd")
_SCHEDULERS = (None, "none", "cosine", "onecycle", "warmup_cosine")

_TIMM_NAMES = {"adamw": "adamw", "adam": "adam", "sgd": "momentum"}  # timm's own "sgd" is Nesterov SGD


def _make_optimizer(name, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """A named optimiser from timm's factory, or `name` itself when it is a torch Optimizer (notebook 01).

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


def _make_scheduler(spec, optimizer, total_steps: int, warmup_steps: int):
    """torch/timm schedulers stepped once per optimisation step; returns (scheduler, is_timm)."""
    if callable(spec):
        sched = spec(optimizer, total_steps)
        return sched, hasattr(sched, "step_update")
    if spec not in _SCHEDULERS:
        raise ValueError(f"scheduler must be one of {_SCHEDULERS[1:]} or a callable, got {spec!r}")
    if spec in (None, "none"):
        return None, False
    if spec == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps)), False
    if spec == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=max(2, total_steps)
        ), False
    from timm.scheduler import CosineLRScheduler

    sched = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps),
        warmup_t=warmup_steps,
        warmup_lr_init=1e-6,
        t_in_epochs=False,
    )
    return sched, True
