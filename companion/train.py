"""One training loop for single-task and multi-task models (taught in notebooks 00 and 01)."""

from __future__ import annotations

import math
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
from .checkpoints import (  # noqa: F401  (checkpoints have their own module; these names stay importable here)
    CheckpointError,
    _own_rng,
    _resume_from,
    _rng_state,
    _set_rng_state,
    load_checkpoint,
    save_checkpoint,
)
from .data import TensorBatches
from .device import pick_device
from .optim import _OPTIMIZERS, _SCHEDULERS, _make_optimizer, _make_scheduler  # noqa: F401


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
    history row, like a balancer's logs (which are in `logs` from on_step_end on). `row` is the history row of
    the epoch just ended (on_epoch_end only). A plug-in sets `stop` to end training: fit finishes the current
    step (when set during a step, the epoch then closes early), closes the epoch (its row, validation,
    checkpoint) and returns. `x`, `y`, `outputs` and `losses` are the current step's batch and results
    (on_step_end; None elsewhere); `sums`/`counts` the epoch's running sums behind its row; `skip` the batches of
    the current epoch a resumed run had already trained. The rest is what the plug-ins need to save a run.
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
    stop: bool = False
    scheduler: object | None = None
    scaler: torch.amp.GradScaler | None = None
    balancer: Balancer | None = None
    callbacks: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)  # what a checkpoint of this run must match (seed, lr, ...)
    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    skip: int = 0
    x: Tensor | None = None
    y: dict | None = None
    outputs: dict | None = None
    losses: dict | None = None

    @property
    def progress(self) -> float:
        """Training progress p = step / total_steps, clipped to [0, 1]."""
        return min(1.0, max(0.0, self.step / max(1, self.total_steps)))


@runtime_checkable
class Callback(Protocol):
    """Hooks fit calls at its boundaries, each with the `FitState` (notebook 09).

    Every method is optional: `setup(state)` (first of all, once: a plug-in that restores saved state, like
    `plugins.Checkpointer`, does it here, so every on_fit_start sees the resumed run), `on_fit_start(state)`,
    `on_epoch_start(state)`, `on_step_start(state)` (before the forward pass), `on_step_end(state)` (after the
    optimiser step), `on_epoch_end(state)` (after the epoch's history row, `state.row`, is made: it may add
    entries) and `on_fit_end(state)`. Callbacks run in the order of their `order` attribute (default 0), then
    as given; fit's own plug-ins sit around them: `Validate` at -10 (its val_* entries are in the row every
    callback sees), fit's history bookkeeping at 10, `EarlyStopping`/`RestoreBest` at 20 and `Checkpointer` at
    30 (last, so a checkpoint holds every callback's update of that step). `state_dict()` / `load_state_dict()`
    are saved in and restored from fit's checkpoints; an `nn.Module` callback's parameters are trained by fit's
    optimiser (e.g. DANN's domain discriminator).
    """


LossStep = Callable[[nn.Module, Tensor, dict, "FitState"], tuple[dict, dict]]


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


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _move(value, device: torch.device):
    if isinstance(value, dict):
        return {k: v.to(device, non_blocking=True) for k, v in value.items()}
    return value.to(device, non_blocking=True)




def batch_losses(
    model: nn.Module,
    x: Tensor,
    y: dict[str, Tensor],
    loss_fns: LossFn | dict[str, LossFn] | None = None,
    *,
    device: torch.device,
    precision: str = "fp32",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One batch through the model: ({task: output}, {task: loss}), one loss per task of y (notebook 01).

    The forward pass runs under `precision`'s autocast, the losses in float32 outside it. fit's step and
    `evaluate` both use it (evaluate under no_grad), so a training loss and a validation loss are one formula.
    """
    with _autocast(device, precision):
        out = _as_dict(model(x))
    fns = loss_fns if isinstance(loss_fns, dict) else dict.fromkeys(y, loss_fns or default_loss)
    missing = set(y) - set(out)
    if missing:
        raise ValueError(f"the model returned no output for task(s) {sorted(missing)}; outputs: {sorted(out)}")
    return out, {t: (fns.get(t) or default_loss)(out[t].float(), y[t]) for t in y}


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
            out, losses = batch_losses(model, x, y, loss_fns, device=dev, precision=precision)
            n = x.shape[0]
            for task, target in y.items():
                _add(sums, counts, f"loss/{task}", losses[task].item(), n)
                acc = accuracy(out[task].float(), target)
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


class Update:
    """One optimisation step from a batch's task losses (notebook 01; fit's step, notebook 09).

    `backward` (inside the step's synchronisation context): zero_grad -> `balancer.backward` (default: the sum)
    -> optional `regularizer(model)`, all on the loss-scaled objective; `apply` (after it): unscale (fp16) ->
    clip the global gradient norm to `clip_grad` -> optimiser step (through the GradScaler under fp16) ->
    scheduler step (timm schedulers get `step_update(step)`).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        balancer: Balancer | None = None,
        *,
        scheduler=None,
        scaler: torch.amp.GradScaler | None = None,
        regularizer: Callable[[nn.Module], Tensor] | None = None,
        clip_grad: float | None = None,
    ):
        self.optimizer, self.balancer = optimizer, balancer if balancer is not None else WeightedSum()
        self.scheduler, self.scaler, self.regularizer, self.clip_grad = scheduler, scaler, regularizer, clip_grad

    def backward(self, losses: dict[str, Tensor], model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        """Leave the (scaled) objective's gradient in `.grad`; returns the balancer's logs (and "reg")."""
        self.optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(model=model, step=step, epoch=epoch, scale=self.scaler.get_scale() if self.scaler else 1.0)
        logs = self.balancer.backward(losses, ctx) or {}
        if self.regularizer is not None:
            reg = self.regularizer(model)
            if reg.requires_grad:
                ctx.scaled(reg).backward()
            logs = {**logs, "reg": reg.item()}
        return logs

    def apply(self, step: int) -> None:
        """Unscale, clip, step the optimiser and then the scheduler; `step` counts this step in."""
        opt, scaler = self.optimizer, self.scaler
        if scaler is not None:
            scaler.unscale_(opt)
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.clip_grad)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if self.scheduler is not None:
            self.scheduler.step_update(step) if hasattr(self.scheduler, "step_update") else self.scheduler.step()


class _Record:
    """fit's own bookkeeping, a plug-in after the given callbacks (order 10): each step's losses, accuracies and
    logs into the epoch's running sums; at epoch end the row's time, the history and the balancer's epoch hook."""

    order = 10

    def on_epoch_start(self, state: FitState) -> None:
        self.t0 = time.perf_counter()

    def on_step_end(self, state: FitState) -> None:
        sums, counts, n = state.sums, state.counts, state.x.shape[0]
        for task, loss in state.losses.items():
            _add(sums, counts, f"train_loss/{task}", loss.item(), n)
            if task in state.outputs and task in state.y:
                acc = accuracy(state.outputs[task].detach().float(), state.y[task])
                if acc is not None:
                    _add(sums, counts, f"train_acc/{task}", acc, n)
        for key, value in state.logs.items():
            _add(sums, counts, key, float(value), 1)

    def on_epoch_end(self, state: FitState) -> None:
        state.row["time_s"] = time.perf_counter() - self.t0
        state.history.append(state.row)
        if hasattr(state.balancer, "on_epoch_end"):
            state.balancer.on_epoch_end(state.epoch)


class _Loop:
    """fit's epoch and step loops; everything else is a plug-in called at their boundaries (notebooks 01, 09)."""

    def __init__(self, state: FitState, train: Iterable, update: Update, *, loss_fns, loss_step, precision: str,
                 max_steps: int | None, progress: bool):
        self.state, self.train, self.update, self.loss_fns, self.loss_step = state, train, update, loss_fns, loss_step
        self.precision, self.max_steps, self.progress = precision, max_steps, progress

    def emit(self, event: str) -> None:
        for cb in self.state.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self.state)

    def run(self) -> History:
        s = self.state
        self.emit("setup")  # a checkpoint is resumed here, before the model is wrapped for torchrun
        per_task = self.loss_step is not None or distributed.per_task_grads(s.balancer)
        params = [p for g in s.optimizer.param_groups for p in g["params"]]
        self.sync = distributed.Sync(s.model, params, per_task=per_task, device=s.device)
        self.emit("on_fit_start")
        bar = tqdm(range(s.epoch, s.epochs), desc="epochs", disable=not self.progress or not self.sync.is_main,
                   leave=False)
        for epoch in bar:
            self.epoch(epoch)
            bar.set_postfix({k: round(v, 4) for k, v in s.row.items() if k in ("train_loss", "val_loss", "val_acc")})
            if s.stop:
                break
        s.row = None
        self.emit("on_fit_end")
        return s.history

    def epoch(self, epoch: int) -> None:
        s = self.state
        s.model.train()
        if hasattr(self.train, "set_epoch"):
            self.train.set_epoch(epoch)
        s.epoch, s.row = epoch, None
        self.emit("on_epoch_start")
        for i, (x, y) in enumerate(self.train):
            if i >= s.skip:
                self.step(i, x, y)
                if s.stop:
                    break
        s.skip = 0
        row = {"epoch": epoch + 1, "step": s.step, "lr": s.optimizer.param_groups[0]["lr"]}
        row.update(distributed.mean_values({k: s.sums[k] / s.counts[k] for k in s.sums}))
        row["train_loss"] = sum(v for k, v in row.items() if k.startswith("train_loss/"))
        s.row = row
        self.emit("on_epoch_end")
        s.sums, s.counts = {}, {}

    def step(self, i: int, x, y) -> None:
        s = self.state
        x, y = _move(x, s.device), _as_dict(_move(y, s.device))
        s.batch, s.logs = i, {}
        self.emit("on_step_start")
        with self.sync.step():  # one process: nothing; under torchrun: how gradients are averaged this step
            out, losses = self.forward(x, y)
            losses = self.sync.losses(losses)
            for task, loss in losses.items():
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss of task '{task}' is {loss.item()} at step {s.step} (epoch {s.epoch}, batch {i}); "
                        "lower lr, set clip_grad, or check the inputs"
                    )
            logs = self.update.backward(losses, s.model, s.step, s.epoch)
        self.update.apply(s.step + 1)
        s.step += 1
        s.x, s.y, s.outputs, s.losses, s.logs = x, y, out, losses, {**logs, **s.logs}
        self.emit("on_step_end")
        s.x = s.y = s.outputs = s.losses = None
        if self.max_steps is not None and s.step >= self.max_steps:
            s.stop = True

    def forward(self, x: Tensor, y: dict) -> tuple[dict, dict]:
        if self.loss_step is None:
            return batch_losses(self.sync.net, x, y, self.loss_fns, device=self.state.device, precision=self.precision)
        with _autocast(self.state.device, self.precision):
            out, losses = self.loss_step(self.state.model, x, y, self.state)
        return _as_dict(out), {k: v.float() for k, v in losses.items()}


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
    """Train a single- or multi-task model; returns per-epoch metrics per task (notebooks 00 and 01).

    `train` yields `(x, y)` batches; `y` and the model output are tensors (one task, named "main") or dicts
    keyed by task. Each step (`Update`): per-task losses (`batch_losses`, shared with `evaluate`) ->
    `balancer.backward` (default: their sum) -> optional `regularizer(model)` -> clipping -> optimiser and
    scheduler step. Named optimisers come from timm's factory (the same torch.optim classes). The run is seeded
    with `seed` (Python, NumPy, torch) inside, and the caller's random states are restored on return: a fit call
    neither reseeds nor advances them, and two fits with the same seed give the same weights.

    fit is a facade over small plug-ins (`companion.plugins`, notebook 09), which its keywords build:

    - `val` -> `Validate(val, loss_fns, precision)`: val_* entries (`evaluate`) in each epoch's row;
    - `early_stop` -> `EarlyStopping(early_stop, monitor, mode)`: stop after that many epochs without a better
      `monitor` value; `restore_best` -> `RestoreBest(monitor, mode)`: end on the best epoch's weights. `mode`
      "min" or "max"; None (the default) infers it as before: "max" if "acc" is in `monitor`, else "min";
    - `checkpoint` -> `Checkpointer(checkpoint, checkpoint_every, resume)`: the full training state written
      atomically at each epoch end (and every `checkpoint_every` steps) and resumed from, mid-epoch included, so
      a killed run continues to the same weights. A corrupt checkpoint stops with its path and that of the
      previous good one (`<name>.prev`); `resume="latest-good"` continues from that one.

    Extension point (notebook 09), small and in the spirit of fastai's Learner events or Lightning callbacks:

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
    _check_fit_args(epochs, lr, precision, clip_grad, early_stop, checkpoint_every, max_steps, weight_decay, seed,
                    mode, resume)
    _check_optimizer(optimizer, param_groups, weight_decay)
    if loss_step is not None and not callable(loss_step):
        raise ValueError(f"loss_step must be a callable (model, x, y, state) -> (outputs, losses), got {loss_step!r}")
    rank, world, dev = distributed.init(device)
    with _own_rng(seed + rank, dev):
        model.to(dev)
        balancer = balancer if balancer is not None else WeightedSum()
        distributed.check_balancer(balancer, model)
        train = _shard(train, rank, world)
        plugins = _plugins(list(callbacks or []), val=val, loss_fns=loss_fns, precision=precision,
                           early_stop=early_stop, monitor=monitor, mode=mode, restore_best=restore_best,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        opt = _make_optimizer(optimizer, _param_groups(model, param_groups, balancer, plugins, dev), lr, weight_decay)
        steps_per_epoch = len(train) if hasattr(train, "__len__") else None
        total_steps = max_steps or (epochs * steps_per_epoch if steps_per_epoch else 1000)
        sched, _ = _make_scheduler(scheduler, opt, total_steps, warmup_steps)
        scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
        if scaler is not None:
            scaler.scale(torch.zeros((), device=dev))  # creates the scale tensor, so balancers can read it first
        fingerprint = {"seed": seed, "lr": lr, "epochs": epochs, "precision": precision,
                       "steps_per_epoch": steps_per_epoch, **({"world_size": world} if world > 1 else {})}
        state = FitState(model=model, optimizer=opt, device=dev, epochs=epochs, total_steps=total_steps,
                         history=History(), scheduler=sched, scaler=scaler, balancer=balancer, callbacks=plugins,
                         fingerprint=fingerprint)
        update = Update(opt, balancer, scheduler=sched, scaler=scaler, regularizer=regularizer, clip_grad=clip_grad)
        loop = _Loop(state, train, update, loss_fns=loss_fns, loss_step=loss_step, precision=precision,
                     max_steps=max_steps, progress=progress)
        return loop.run()


def _shard(train: Iterable, rank: int, world: int) -> Iterable:
    """This process's share of a TensorBatches under torchrun; any other iterable whole (with a warning)."""
    if world > 1 and isinstance(train, TensorBatches) and train.world == 1:
        return train.shard(rank, world)
    if world > 1 and not isinstance(train, TensorBatches):
        warnings.warn(f"train is a {type(train).__name__}, not a TensorBatches: every process sees every batch "
                      "(same result, no speed-up); shard it yourself", stacklevel=3)
    return train


def _plugins(callbacks: list, *, val, loss_fns, precision, early_stop, monitor, mode, restore_best, checkpoint,
             checkpoint_every, resume) -> list:
    """The callbacks fit calls: the given ones, fit's bookkeeping and the plug-ins its keywords ask for, by order."""
    from .plugins import Checkpointer, EarlyStopping, RestoreBest, Validate

    built = [Validate(val, loss_fns, precision)] if val is not None else []
    built += [*callbacks, _Record()]
    if early_stop is not None:
        built.append(EarlyStopping(early_stop, monitor, mode))
    if restore_best:
        built.append(RestoreBest(monitor, mode))
    if checkpoint is not None:
        built.append(Checkpointer(checkpoint, checkpoint_every, resume))
    return sorted(built, key=lambda cb: getattr(cb, "order", 0))


def _param_groups(model: nn.Module, param_groups, balancer, callbacks: list, device: torch.device) -> list[dict]:
    """The optimiser's groups: `param_groups` (default: the model's trainable parameters), then an `nn.Module`
    balancer's parameters (no weight decay), then each `nn.Module` callback's (all moved to `device`)."""
    params = param_groups if param_groups is not None else [{"params": [p for p in model.parameters() if p.requires_grad]}]
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


def _check_optimizer(optimizer, param_groups, weight_decay) -> None:
    if isinstance(optimizer, torch.optim.Optimizer) and (param_groups is not None or weight_decay):
        raise ValueError(
            f"optimizer must be a name {_OPTIMIZERS} when param_groups or weight_decay is given, got a "
            f"{type(optimizer).__name__} instance, which already holds its parameter groups; pass "
            "param_groups/weight_decay to it, or pass a name"
        )


def _check_fit_args(epochs, lr, precision, clip_grad, early_stop, checkpoint_every, max_steps, weight_decay, seed=0,
                    mode=None, resume="latest") -> None:
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
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode must be None, 'min' or 'max', got {mode!r}")
    if resume not in ("latest", "latest-good"):
        raise ValueError(f"resume must be 'latest' or 'latest-good', got {resume!r}")
