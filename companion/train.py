"""One training loop for single-task and multi-task models (taught in notebooks 00 and 01)."""

from __future__ import annotations

import math
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed
from .data import TensorBatches
from .device import pick_device, seed_everything
from .files import atomic_write


@dataclass
class StepContext:
    """What a balancer may need for one optimisation step (notebook 10)."""

    model: nn.Module
    step: int
    epoch: int
    scale: float = 1.0  # the GradScaler's current loss scale (1.0 without fp16 scaling)

    def scaled(self, loss: Tensor) -> Tensor:
        """Multiply a loss by the current loss scale before calling backward on it."""
        return loss * self.scale if self.scale != 1.0 else loss


@runtime_checkable
class Balancer(Protocol):
    """Turns a dict of task losses into `.grad` on the model's parameters (notebooks 06 and 10).

    `backward` must leave in `.grad` the gradient of the *scaled* objective (as `ctx.scaled(loss).backward()`
    would), so that fit's GradScaler can unscale it; it returns scalars to log (averaged per epoch). Optional:
    `on_epoch_end(epoch)`; `state_dict()`/`load_state_dict()` (saved in checkpoints); an `nn.Module` balancer's
    parameters are trained by fit's optimiser; `per_task_grads = True` when `backward` differentiates the task
    losses one by one (torch.autograd.grad): under torchrun fit then all-reduces every gradient as autograd
    produces it, so the balancer combines per-task gradients of the global batch (see `companion.distributed`).
    """

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]: ...


class WeightedSum:
    """The default balancer: backward through sum_t w_t * L_t (equal weights unless given; notebook 01)."""

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = dict(weights or {})

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        total = sum(self.weights.get(k, 1.0) * v for k, v in losses.items())
        ctx.scaled(total).backward()
        return {}


LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class FitState:
    """What fit shows its callbacks and its `loss_step` at every boundary (notebook 09).

    `progress` is the share of the planned optimisation steps done, in [0, 1] (the schedule variable of DANN's
    lambda). A callback may put scalars in `logs` during a step: they are averaged over the epoch into the
    history row, like a balancer's logs. `row` is the history row of the epoch just ended (on_epoch_end only).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    epochs: int
    total_steps: int
    history: History
    epoch: int = 0
    step: int = 0
    batch: int = 0
    logs: dict = field(default_factory=dict)
    row: dict | None = None

    @property
    def progress(self) -> float:
        """Training progress p = step / total_steps, clipped to [0, 1]."""
        return min(1.0, max(0.0, self.step / max(1, self.total_steps)))


@runtime_checkable
class Callback(Protocol):
    """Hooks fit calls at its boundaries, in the order the callbacks are given (notebook 09).

    Every method is optional: `on_fit_start(state)`, `on_epoch_start(state)`, `on_step_start(state)` (before the
    forward pass), `on_step_end(state)` (after the optimiser step), `on_epoch_end(state)` (after the epoch's
    history row, `state.row`, is made: it may add entries) and `on_fit_end(state)`. `state_dict()` /
    `load_state_dict()` are saved in and restored from fit's checkpoints; an `nn.Module` callback's parameters are
    trained by fit's optimiser (e.g. DANN's domain discriminator).
    """


LossStep = Callable[[nn.Module, Tensor, dict, "FitState"], tuple[dict, dict]]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt or not a course checkpoint)."""


class History(list):
    """Per-epoch rows of metrics (dicts); `series(key)` gives one curve (notebook 00)."""

    def series(self, key: str) -> list[float]:
        """Values of one metric over epochs (NaN where a row lacks it)."""
        return [float(row.get(key, float("nan"))) for row in self]

    @property
    def last(self) -> dict[str, float]:
        """The final epoch's row."""
        return self[-1] if self else {}


def _as_dict(value, name: str = "main") -> dict:
    return value if isinstance(value, dict) else {name: value}


def default_loss(out: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for class indices, BCE-with-logits for 0/1 multi-label, MSE otherwise (notebook 01)."""
    if not target.is_floating_point() and out.ndim == target.ndim + 1:
        return nn.functional.cross_entropy(out, target)
    if out.shape == target.shape and out.ndim >= 2 and out.shape[1] > 1 and _is_binary(target):
        return nn.functional.binary_cross_entropy_with_logits(out, target.float())
    return nn.functional.mse_loss(out.float(), target.float().view_as(out))


def _is_binary(t: Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def accuracy(out: Tensor, target: Tensor) -> float | None:
    """Share of correct class predictions, or of correct 0/1 labels for multi-label; None for regression."""
    if not target.is_floating_point() and out.ndim == target.ndim + 1:
        return (out.argmax(1) == target).float().mean().item()
    if out.shape == target.shape and out.ndim >= 2 and out.shape[1] > 1 and _is_binary(target):
        return ((out > 0).float() == target.float()).float().mean().item()
    return None


_PRECISIONS = ("fp32", "bf16", "fp16")
_OPTIMIZERS = ("adamw", "adam", "sgd")
_SCHEDULERS = (None, "none", "cosine", "onecycle", "warmup_cosine")


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _move(value, device: torch.device):
    if isinstance(value, dict):
        return {k: v.to(device, non_blocking=True) for k, v in value.items()}
    return value.to(device, non_blocking=True)


def _make_optimizer(name, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if isinstance(name, torch.optim.Optimizer):
        return name
    if name not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS} or a torch Optimizer, got {name!r}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay)


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
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(2, total_steps)), False
    from timm.scheduler import CosineLRScheduler

    sched = CosineLRScheduler(
        optimizer, t_initial=max(1, total_steps), warmup_t=warmup_steps, warmup_lr_init=1e-6, t_in_epochs=False
    )
    return sched, True


def _rng_state() -> dict:
    import random

    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded with map_location="cuda" holds CUDA tensors
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype("uint32"), *rest))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write a checkpoint atomically (temp file + rename); the previous one is kept as `<name>.prev`."""
    return atomic_write(path, lambda f: torch.save(state, f), keep_previous=True)


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    prev = _previous(path)
    hint = (f"; the previous good checkpoint is kept at {prev}: fit(..., resume=\"latest-good\") continues from it"
            if prev.exists() else "")
    return CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}){hint}")


def _resume_state(path: Path, how: str, map_location) -> tuple[dict, Path]:
    """The state fit resumes from and its file: the checkpoint itself, or with how="latest-good" and a corrupt
    checkpoint, its `.prev` (the corrupt file is kept aside as `<name>.corrupt`, never deleted)."""
    try:
        return load_checkpoint(path, map_location=map_location), path
    except CheckpointError as err:
        prev = _previous(path)
        if how != "latest-good" or "corrupt" not in str(err) or not prev.exists():
            raise
        state = load_checkpoint(prev, map_location=map_location)
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"checkpoint {path} is corrupt (kept as {aside}); resuming from {prev}", stacklevel=4)
        return state, prev


def _resume_from(path: Path, how: str, map_location) -> dict | None:
    """The state to resume from, or None for a fresh start. Under torchrun rank 0 picks the file (and sets a
    corrupt one aside), then every rank loads the file it picked."""
    if distributed.world() == 1:
        return _resume_state(path, how, map_location)[0] if path.exists() else None
    state, source = None, None
    if distributed.is_main() and path.exists():
        state, source = _resume_state(path, how, map_location)
    source = distributed.broadcast(None if source is None else str(source))
    if source is not None and state is None:
        state = load_checkpoint(source, map_location=map_location)
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; a corrupt file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CheckpointError(
                f"checkpoint {path} refused: not a weights-only checkpoint (it pickles Python objects, which can run "
                "code when loaded); companion only loads tensors and plain containers"
            ) from None
        raise _corrupt(path, err) from None
    except Exception as err:
        raise _corrupt(path, err) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a companion checkpoint (no 'model' entry)")
    return state


def evaluate(
    model: nn.Module,
    batches: Iterable,
    loss_fns: LossFn | dict[str, LossFn] | None = None,
    *,
    device: str | torch.device = "auto",
    precision: str = "fp32",
) -> dict[str, float]:
    """Mean loss and accuracy per task over batches, in eval mode without gradients (notebook 00).

    The model is moved to `device` (as fit does), so a model trained or loaded elsewhere evaluates where the
    batches go."""
    dev = pick_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for x, y in batches:
            x, y = _move(x, dev), _as_dict(_move(y, dev))
            with _autocast(dev, precision):
                out = _as_dict(model(x))
            fns = loss_fns if isinstance(loss_fns, dict) else dict.fromkeys(y, loss_fns or default_loss)
            n = x.shape[0]
            for task, target in y.items():
                o = out[task].float()
                fn = fns.get(task) or default_loss
                _add(sums, counts, f"loss/{task}", fn(o, target).item(), n)
                acc = accuracy(o, target)
                if acc is not None:
                    _add(sums, counts, f"acc/{task}", acc, n)
    model.train(was_training)
    result = {k: sums[k] / counts[k] for k in sums}
    losses = [v for k, v in result.items() if k.startswith("loss/")]
    accs = [v for k, v in result.items() if k.startswith("acc/")]
    if losses:
        result["loss"] = sum(losses)
    if accs:
        result["acc"] = sum(accs) / len(accs)
    return result


def _add(sums: dict, counts: dict, key: str, value: float, n: int) -> None:
    sums[key] = sums.get(key, 0.0) + value * n
    counts[key] = counts.get(key, 0) + n


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
    restore_best: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: str = "latest",
    max_steps: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] | None = None,
    loss_step: LossStep | None = None,
) -> History:
    """Train a single- or multi-task model; returns per-epoch metrics per task (notebooks 00 and 01).

    `train` yields `(x, y)` batches; `y` and the model output are tensors (one task, named "main") or dicts
    keyed by task. Each step: per-task losses -> `balancer.backward` (default: their sum) -> optional
    `regularizer(model)` -> clipping -> optimiser and scheduler step. With `checkpoint`, the full training state
    is written atomically at each epoch end (and every `checkpoint_every` steps) and an existing checkpoint is
    resumed from, mid-epoch included, so a killed run continues to the same weights. A corrupt checkpoint stops
    with its path and that of the previous good one (`<name>.prev`); `resume="latest-good"` continues from that one.

    Extension point (notebook 09), small and in the spirit of fastai's Learner events or Lightning callbacks:

    - `callbacks`: objects with any of `on_fit_start`, `on_epoch_start`, `on_step_start`, `on_step_end`,
      `on_epoch_end`, `on_fit_end`, each called with the `FitState` (model, optimizer, epoch, step, progress,
      logs, history; `row` at epoch end). Scalars put in `state.logs` during a step are averaged into the epoch's
      history row. An `nn.Module` callback's parameters join the optimiser (a discriminator, say), and a
      callback's `state_dict()` is saved in the checkpoint and restored on resume.
    - `loss_step(model, x, y, state) -> (outputs, losses)` replaces the per-batch loss computation (the default
      is `outputs = model(x)`, one loss per task of y): `outputs` are {task: tensor} for the train metrics,
      `losses` the {name: scalar} handed to the balancer (every name is logged as train_loss/<name>). DANN
      (`transfer.DANN`) uses both: its loss_step adds a domain loss through a gradient reversal layer.

    Without callbacks and loss_step, fit runs exactly as before (same random draws, same weights).

    Under `torchrun --nproc_per_node N` (see `companion.distributed`, whose docstring says where gradients are
    averaged and aggregated) each process trains on its share of every batch of a `TensorBatches` (sharded
    here; any other iterable is seen whole by every process: correct, but no faster), the model runs in
    DistributedDataParallel on cuda:LOCAL_RANK or the CPU, rank r seeds with seed + r, the history averages the
    ranks, and rank 0 alone writes the checkpoint.
    """
    _check_fit_args(epochs, lr, precision, clip_grad, early_stop, checkpoint_every, max_steps, weight_decay)
    rank, world, dev = distributed.init(device)
    seed_everything(seed + rank)
    model.to(dev)
    balancer = balancer if balancer is not None else WeightedSum()
    distributed.check_balancer(balancer, model)
    if world > 1 and isinstance(train, TensorBatches) and train.world == 1:
        train = train.shard(rank, world)
    elif world > 1 and not isinstance(train, TensorBatches):
        warnings.warn(f"train is a {type(train).__name__}, not a TensorBatches: every process sees every batch "
                      "(same result, no speed-up); shard it yourself", stacklevel=2)
    if isinstance(balancer, nn.Module):
        balancer.to(dev)
    params = param_groups if param_groups is not None else [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if isinstance(balancer, nn.Module):
        params = [*params, {"params": list(balancer.parameters()), "weight_decay": 0.0}]
    callbacks = list(callbacks or [])
    if loss_step is not None and not callable(loss_step):
        raise ValueError(f"loss_step must be a callable (model, x, y, state) -> (outputs, losses), got {loss_step!r}")
    for cb in callbacks:
        if isinstance(cb, nn.Module):
            cb.to(dev)
            extra = [p for p in cb.parameters() if p.requires_grad]
            if extra:
                params = [*params, {"params": extra}]
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    steps_per_epoch = len(train) if hasattr(train, "__len__") else None
    total_steps = max_steps or (epochs * steps_per_epoch if steps_per_epoch else 1000)
    sched, sched_is_timm = _make_scheduler(scheduler, opt, total_steps, warmup_steps)
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    if scaler is not None:
        scaler.scale(torch.zeros((), device=dev))  # creates the scale tensor, so balancers can read it first
    history = History()
    start_epoch, step, skip, best, bad_epochs, best_state, running = 0, 0, 0, None, 0, None, {}
    fingerprint = {"seed": seed, "lr": lr, "epochs": epochs, "precision": precision, "steps_per_epoch": steps_per_epoch}
    if world > 1:
        fingerprint["world_size"] = world

    if resume not in ("latest", "latest-good"):
        raise ValueError(f"resume must be 'latest' or 'latest-good', got {resume!r}")
    state = _resume_from(Path(checkpoint), resume, dev) if checkpoint is not None else None
    if state is not None:
        for key, value in {**fingerprint, "world_size": world}.items():
            written = state.get("fingerprint", {}).get(key, 1 if key == "world_size" else None)
            if written != value:
                raise ValueError(
                    f"checkpoint {checkpoint} was written with {key}={written!r}, "
                    f"this run has {key}={value!r}; pass another checkpoint path or delete it"
                )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if hasattr(balancer, "load_state_dict") and state.get("balancer") is not None:
            balancer.load_state_dict(state["balancer"])
        for cb, cb_state in zip(callbacks, state.get("callbacks") or []):
            if cb_state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(cb_state)
        history = History(state["history"])
        start_epoch, step, skip = state["epoch"], state["step"], state["batch_in_epoch"]
        best, bad_epochs = state.get("best"), state.get("bad_epochs", 0)
        own = state["ranks"][rank] if world > 1 else state  # each rank's own random state and running sums
        running = own.get("running", {})
        _set_rng_state(own["rng"])
    sync = distributed.Sync(
        model,
        [p for g in opt.param_groups for p in g["params"]],
        per_task=loss_step is not None or distributed.per_task_grads(balancer),
        device=dev,
    )

    def snapshot(epoch: int, batch_in_epoch: int, running: dict) -> None:
        ranks = distributed.gather({"rng": _rng_state(), "running": running}) if world > 1 else None
        if not sync.is_main:
            distributed.barrier()  # rank 0 writes the checkpoint alone; the others wait for it here
            return
        save_checkpoint(
            checkpoint,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "balancer": balancer.state_dict() if hasattr(balancer, "state_dict") else None,
                "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in callbacks],
                "rng": _rng_state(),
                "epoch": epoch,
                "step": step,
                "batch_in_epoch": batch_in_epoch,
                "running": running,
                "history": list(history),
                "best": best,
                "bad_epochs": bad_epochs,
                "fingerprint": fingerprint,
                **({"ranks": ranks} if ranks is not None else {}),
            },
        )
        distributed.barrier()

    fs = FitState(model=model, optimizer=opt, device=dev, epochs=epochs, total_steps=total_steps, history=history)

    def emit(event: str) -> None:
        for cb in callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(fs)

    fs.epoch, fs.step = start_epoch, step
    emit("on_fit_start")
    bar = tqdm(range(start_epoch, epochs), desc="epochs", disable=not progress or not sync.is_main, leave=False)
    stop = False
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        sums, counts = dict(running.get("sums", {})), dict(running.get("counts", {}))
        fs.epoch, fs.step, fs.row = epoch, step, None
        emit("on_epoch_start")
        for i, (x, y) in enumerate(train):
            if i < skip:
                continue
            x, y = _move(x, dev), _as_dict(_move(y, dev))
            fs.batch, fs.step, fs.logs = i, step, {}
            emit("on_step_start")
            with sync.step():  # one process: nothing; under torchrun: how gradients are averaged this step
                if loss_step is not None:
                    with _autocast(dev, precision):
                        out, losses = loss_step(model, x, y, fs)
                    out = _as_dict(out)
                    losses = {k: v.float() for k, v in losses.items()}
                else:
                    with _autocast(dev, precision):
                        out = _as_dict(sync.net(x))
                    fns = loss_fns if isinstance(loss_fns, dict) else dict.fromkeys(y, loss_fns or default_loss)
                    missing = set(y) - set(out)
                    if missing:
                        raise ValueError(
                            f"the model returned no output for task(s) {sorted(missing)}; outputs: {sorted(out)}"
                        )
                    losses = {t: (fns.get(t) or default_loss)(out[t].float(), y[t]) for t in y}
                losses = sync.losses(losses)
                for task, loss in losses.items():
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"loss of task '{task}' is {loss.item()} at step {step} (epoch {epoch}, batch {i}); "
                            "lower lr, set clip_grad, or check the inputs"
                        )
                opt.zero_grad(set_to_none=True)
                ctx = StepContext(model=model, step=step, epoch=epoch, scale=scaler.get_scale() if scaler else 1.0)
                logs = balancer.backward(losses, ctx) or {}
                if regularizer is not None:
                    reg = regularizer(model)
                    if reg.requires_grad:
                        ctx.scaled(reg).backward()
                    logs = {**logs, "reg": reg.item()}
            if scaler is not None:
                scaler.unscale_(opt)
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip_grad)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            step += 1
            if sched is not None:
                sched.step_update(step) if sched_is_timm else sched.step()
            fs.step = step
            emit("on_step_end")
            logs = {**logs, **fs.logs}
            n = x.shape[0]
            for task, loss in losses.items():
                _add(sums, counts, f"train_loss/{task}", loss.item(), n)
                if task in out and task in y:
                    acc = accuracy(out[task].detach().float(), y[task])
                    if acc is not None:
                        _add(sums, counts, f"train_acc/{task}", acc, n)
            for key, value in logs.items():
                _add(sums, counts, key, float(value), 1)
            if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
                snapshot(epoch, i + 1, {"sums": sums, "counts": counts})
            if max_steps is not None and step >= max_steps:
                stop = True
                break
        skip, running = 0, {}
        row: dict[str, float] = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"]}
        row.update(distributed.mean_values({k: sums[k] / counts[k] for k in sums}))
        row["train_loss"] = sum(v for k, v in row.items() if k.startswith("train_loss/"))
        if val is not None:
            row.update({f"val_{k}": v for k, v in evaluate(model, val, loss_fns, device=dev, precision=precision).items()})
        fs.row = row
        emit("on_epoch_end")
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
        if hasattr(balancer, "on_epoch_end"):
            balancer.on_epoch_end(epoch)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k in ("train_loss", "val_loss", "val_acc")})
        if early_stop is not None or restore_best:
            if monitor not in row:
                raise ValueError(f"monitor={monitor!r} is not in the history row; available: {sorted(row)}")
            value = row[monitor]
            better = best is None or (value > best if "acc" in monitor else value < best)
            if better:
                best, bad_epochs = value, 0
                if restore_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            if early_stop is not None and bad_epochs >= early_stop:
                stop = True
        if checkpoint is not None:
            snapshot(epoch + 1, 0, {})
        if stop:
            break
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    fs.epoch, fs.step, fs.row = fs.epoch, step, None
    emit("on_fit_end")
    return history


def _check_fit_args(epochs, lr, precision, clip_grad, early_stop, checkpoint_every, max_steps, weight_decay) -> None:
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
    for name, value in (("early_stop", early_stop), ("checkpoint_every", checkpoint_every), ("max_steps", max_steps)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
