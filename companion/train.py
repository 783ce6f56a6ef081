"""One training loop for single-task and multi-task models.

`fit` is a thin facade: its loop is in `companion.loop`, the losses and metrics it shares with `evaluate` in
`companion.evaluation`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from . import distributed
from .batches import TensorBatches
from .checkpoints import (
    run_fingerprint,
)
from .device import seeded
from .evaluation import (
    _PRECISIONS,
    LossFn,
)
from .loop import (
    Balancer,
    Callback,
    FitState,
    History,
    LossStep,
    Update,
    WeightedSum,
    _Loop,
    _Record,
)
from .optim import _OPTIMIZERS, _make_optimizer, _make_scheduler
from .plugins import Checkpointer, EarlyStopping, RestoreBest, Validate


def fit(
    model: nn.Module,
    train: Iterable,
    *,
    epochs: int = 1,
    loss_fns: LossFn | dict[str, LossFn] | None = None,
    val: Iterable | None = None,
    balancer: Balancer | None = None,
    regularizer: Callable[[nn.Module], Tensor] | None = None,
    optimizer: str | torch.optim.Optimizer = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    param_groups: list[dict] | None = None,
    scheduler: str | Callable | None = None,
    warmup_steps: int = 0,
    precision: str = "fp32",
    clip_grad: float | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    early_stop: int | None = None,
    monitor: str = "val_loss",
    mode: str | None = None,
    restore_best: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: str = "latest",
    max_steps: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] | None = None,
    loss_step: LossStep | None = None,
) -> History:
    """Train a single- or multi-task model; returns per-epoch metrics per task.

    `train` yields `(x, y)` batches; `y` and the model output are tensors (one task, named "main") or dicts
    keyed by task. Each step (`Update`): per-task losses (`batch_losses`, shared with `evaluate`) ->
    `balancer.backward` (default: their sum) -> optional `regularizer(model)` -> clipping -> optimiser and
    scheduler step. Named optimisers come from timm's factory (the same torch.optim classes). The run is seeded
    with `seed` (Python, NumPy, torch) inside, and the caller's random states are restored on return: a fit call
    neither reseeds nor advances them, and two fits with the same seed give the same weights.

    fit is a facade over small plug-ins (`companion.plugins`), which its keywords build:

    - `val` -> `Validate(val, loss_fns, precision)`: val_* entries (`evaluate`) in each epoch's row;
    - `early_stop` -> `EarlyStopping(early_stop, monitor, mode)`: stop after that many epochs without a better
      `monitor` value; `restore_best` -> `RestoreBest(monitor, mode)`: end on the best epoch's weights. `mode`
      "min" or "max"; None (the default) infers it as before: "max" if "acc" is in `monitor`, else "min";
    - `checkpoint` -> `Checkpointer(checkpoint, checkpoint_every, resume)`: the full training state written
      atomically at each epoch end (and every `checkpoint_every` steps) and resumed from, mid-epoch included, so
      a killed run continues to the same weights. A corrupt checkpoint stops with its path and that of the
      previous good one (`<name>.prev`); `resume="latest-good"` continues from that one;
    - no keyword: `EvaluateEvery(val, steps)` in `callbacks` scores `val` every `steps` optimiser steps, mid-epoch
      included (a convergence curve, in its `rows`).

    Extension point, small and in the spirit of fastai's Learner events or Lightning callbacks:

    - `callbacks`: objects with any of `setup`, `on_fit_start`, `on_epoch_start`, `on_step_start`,
      `on_step_end`, `on_epoch_end`, `on_fit_end`, each called with the `FitState` (see `Callback` for their
      order). Scalars put in `state.logs` during a step are averaged into the epoch's history row; setting
      `state.stop` ends training. The plug-ins above can be passed here too, instead of the keywords. An
      `nn.Module` callback's parameters join the optimiser (a discriminator, say), and a callback's
      `state_dict()` is saved in the checkpoint and restored on resume.
    - `loss_step(model, x, y, state) -> (outputs, losses)` replaces the per-batch loss computation (the default
      is `outputs = model(x)`, one loss per task of y): `outputs` are {task: tensor} for the train metrics,
      `losses` the {name: scalar} handed to the balancer (every name is logged as train_loss/<name>). DANN
      (`dann.DANN`) uses both: its loss_step adds a domain loss through a gradient reversal layer.

    An `optimizer` given as a torch Optimizer holds its own parameter groups: `param_groups` and `weight_decay`
    are then refused. Under `torchrun --nproc_per_node N` (see `companion.distributed`, whose docstring says
    where gradients are averaged and aggregated) each process trains on its share of every batch of a
    `TensorBatches` (sharded here; any other iterable is seen whole by every process: correct, but no faster),
    the model runs in DistributedDataParallel on cuda:LOCAL_RANK or the CPU, rank r seeds with seed + r, the
    history averages the ranks, and rank 0 alone writes the checkpoint.
    """
    _check_fit_args(
        epochs,
        lr,
        precision,
        clip_grad,
        early_stop,
        checkpoint_every,
        max_steps,
        weight_decay,
        seed,
        mode,
        resume,
    )
    _check_objects(optimizer, param_groups, weight_decay, loss_step)
    rank, world, dev = distributed.init(device)
    with seeded(seed + rank, dev):
        model.to(dev)
        balancer = balancer if balancer is not None else WeightedSum()
        distributed.check_balancer(balancer, model)
        train = _shard(train, rank, world)
        plugins = _plugins(
            list(callbacks or []),
            val=val,
            loss_fns=loss_fns,
            precision=precision,
            early_stop=early_stop,
            monitor=monitor,
            mode=mode,
            restore_best=restore_best,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        opt = _make_optimizer(
            optimizer, _param_groups(model, param_groups, balancer, plugins, dev), lr, weight_decay
        )
        _check_optimizer_holds(model, opt)
        if hasattr(train, "__len__") and len(train) == 0:
            raise ValueError(
                f"train is empty (a {type(train).__name__} of 0 batches): fit would take 0 steps; "
                "pass batches to train on"
            )
        steps_per_epoch = len(train) if hasattr(train, "__len__") else None
        total_steps = max_steps or (epochs * steps_per_epoch if steps_per_epoch else 1000)
        settings = run_fingerprint(  # before the scheduler changes the groups' lr
            model, opt, scheduler=scheduler, warmup_steps=warmup_steps, clip_grad=clip_grad
        )
        sched, _ = _make_scheduler(scheduler, opt, total_steps, warmup_steps)
        scaler = _scaler(precision, dev)
        fingerprint = dict(
            seed=seed, lr=lr, epochs=epochs, precision=precision, steps_per_epoch=steps_per_epoch
        )
        fingerprint |= settings
        fingerprint |= {"world_size": world} if world > 1 else {}
        state = FitState(
            model=model,
            optimizer=opt,
            device=dev,
            epochs=epochs,
            total_steps=total_steps,
            history=History(),
            scheduler=sched,
            scaler=scaler,
            balancer=balancer,
            callbacks=plugins,
            fingerprint=fingerprint,
        )
        update = Update(
            opt, balancer, scheduler=sched, scaler=scaler, regularizer=regularizer, clip_grad=clip_grad
        )
        loop = _Loop(
            state,
            train,
            update,
            loss_fns=loss_fns,
            loss_step=loss_step,
            precision=precision,
            max_steps=max_steps,
            progress=progress,
        )
        return loop.run()


def _scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler, its scale tensor already created so that balancers can read it first."""
    if precision != "fp16":
        return None
    scaler = torch.amp.GradScaler(device.type)
    scaler.scale(torch.zeros((), device=device))
    return scaler


def _shard(train: Iterable, rank: int, world: int) -> Iterable:
    """This process's share of a TensorBatches under torchrun; any other iterable whole (with a warning)."""
    if world > 1 and isinstance(train, TensorBatches) and train.world == 1:
        return train.shard(rank, world)
    if world > 1 and not isinstance(train, TensorBatches):
        warnings.warn(
            f"train is a {type(train).__name__}, not a TensorBatches: every process sees every batch "
            "(same result, no speed-up); shard it yourself",
            stacklevel=3,
        )
    return train


def _plugins(
    callbacks: list,
    *,
    val,
    loss_fns,
    precision,
    early_stop,
    monitor,
    mode,
    restore_best,
    checkpoint,
    checkpoint_every,
    resume,
) -> list:
    """The callbacks fit calls: the given ones, fit's bookkeeping and the plug-ins its keywords ask for, by order."""

    built = [Validate(val, loss_fns, precision)] if val is not None else []
    built += [*callbacks, _Record()]
    if early_stop is not None:
        built.append(EarlyStopping(early_stop, monitor, mode))
    if restore_best:
        built.append(RestoreBest(monitor, mode))
    if checkpoint is not None:
        built.append(Checkpointer(checkpoint, checkpoint_every, resume))
    return sorted(built, key=lambda cb: getattr(cb, "order", 0))


def _param_groups(
    model: nn.Module, param_groups, balancer, callbacks: list, device: torch.device
) -> list[dict]:
    """The optimiser's groups: `param_groups` (default: the model's trainable parameters), then an `nn.Module`
    balancer's parameters (no weight decay), then each `nn.Module` callback's (all moved to `device`)."""
    params = (
        param_groups
        if param_groups is not None
        else [{"params": [p for p in model.parameters() if p.requires_grad]}]
    )
    if isinstance(balancer, nn.Module):
        balancer.to(device)
        params = [*params, {"params": list(balancer.parameters()), "weight_decay": 0.0}]
    for cb in callbacks:
        if isinstance(cb, nn.Module):
            cb.to(device)
            extra = [p for p in cb.parameters() if p.requires_grad]
            if extra:
                params = [*params, {"params": extra}]
    return params


def _check_optimizer_holds(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Refuse an optimiser that would leave some of the model's trainable parameters untouched (one built on
    another model's parameters, say): fit would run and report losses while those weights never change."""
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        total = sum(p.requires_grad for p in model.parameters())
        raise ValueError(
            f"optimizer does not hold {len(missing)} of the model's {total} trainable parameters (first: "
            f"{missing[0]!r}), so they would never change; build it on this model's parameters "
            "(model.parameters()), freeze them (requires_grad=False) or pass an optimizer name"
        )


def _check_objects(optimizer, param_groups, weight_decay, loss_step=None) -> None:
    """fit's optimizer (an instance brings its own groups) and loss_step (a callable)."""
    if loss_step is not None and not callable(loss_step):
        raise ValueError(
            f"loss_step must be a callable (model, x, y, state) -> (outputs, losses), got {loss_step!r}"
        )
    if isinstance(optimizer, torch.optim.Optimizer) and (param_groups is not None or weight_decay):
        raise ValueError(
            f"optimizer must be a name {_OPTIMIZERS} when param_groups or weight_decay is given, got a "
            f"{type(optimizer).__name__} instance, which already holds its parameter groups; pass "
            "param_groups/weight_decay to it, or pass a name"
        )


def _check_fit_args(
    epochs,
    lr,
    precision,
    clip_grad,
    early_stop,
    checkpoint_every,
    max_steps,
    weight_decay,
    seed=0,
    mode=None,
    resume="latest",
) -> None:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be None or positive, got {clip_grad!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    for name, value in (
        ("early_stop", early_stop),
        ("checkpoint_every", checkpoint_every),
        ("max_steps", max_steps),
    ):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode must be None, 'min' or 'max', got {mode!r}")
    if resume not in ("latest", "latest-good"):
        raise ValueError(f"resume must be 'latest' or 'latest-good', got {resume!r}")
