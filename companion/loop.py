"""fit's loop: one optimisation step (`Update`), the epoch and step loops, and the contracts
that balancers and plug-ins see (`StepContext`, `Balancer`, `FitState`, `Callback`, `History`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed
from .evaluation import _add, _as_dict, _autocast, _move, accuracy, batch_losses


@dataclass
class StepContext:
    """What a balancer may need for one optimisation step."""

    model: nn.Module
    step: int
    epoch: int
    scale: float = 1.0  # the GradScaler's current loss scale (1.0 without fp16 scaling)

    def scaled(self, loss: Tensor) -> Tensor:
        """Multiply a loss by the current loss scale before calling backward on it."""
        return loss * self.scale if self.scale != 1.0 else loss


@runtime_checkable
class Balancer(Protocol):
    """Turns a dict of task losses into `.grad` on the model's parameters.

    `backward` must leave in `.grad` the gradient of the *scaled* objective (as `ctx.scaled(loss).backward()`
    would), so that fit's GradScaler can unscale it; it returns scalars to log (averaged per epoch). Optional:
    `on_epoch_end(epoch)`; `state_dict()`/`load_state_dict()` (saved in checkpoints); an `nn.Module` balancer's
    parameters are trained by fit's optimiser; `per_task_grads = True` when `backward` differentiates the task
    losses one by one (torch.autograd.grad): under torchrun fit then all-reduces every gradient as autograd
    produces it, so the balancer combines per-task gradients of the global batch (see `companion.distributed`).
    """

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]: ...


class WeightedSum:
    """The default balancer: backward through sum_t w_t * L_t (equal weights unless given)."""

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = dict(weights or {})

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        total = sum(self.weights.get(k, 1.0) * v for k, v in losses.items())
        ctx.scaled(total).backward()
        return {}


@dataclass
class FitState:
    """What fit shows its callbacks and its `loss_step` at every boundary.

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
    fingerprint: dict = field(
        default_factory=dict
    )  # what a checkpoint of this run must match (seed, lr, ...)
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
    """Hooks fit calls at its boundaries, each with the `FitState`.

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
    """Per-epoch rows of metrics (dicts); `series(key)` gives one curve."""

    def series(self, key: str) -> list[float]:
        """Values of one metric over epochs (NaN where a row lacks it)."""
        return [float(row.get(key, float("nan"))) for row in self]

    @property
    def last(self) -> dict[str, float]:
        """The final epoch's row."""
        return self[-1] if self else {}


class Update:
    """One optimisation step from a batch's task losses (fit's step).

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
        self.scheduler, self.scaler, self.regularizer, self.clip_grad = (
            scheduler,
            scaler,
            regularizer,
            clip_grad,
        )

    def backward(
        self, losses: dict[str, Tensor], model: nn.Module, step: int, epoch: int
    ) -> dict[str, float]:
        """Leave the (scaled) objective's gradient in `.grad`; returns the balancer's logs (and "reg")."""
        self.optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(
            model=model, step=step, epoch=epoch, scale=self.scaler.get_scale() if self.scaler else 1.0
        )
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
            if hasattr(self.scheduler, "step_update"):  # timm's schedulers count optimiser steps
                self.scheduler.step_update(step)
            else:
                self.scheduler.step()


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
    """fit's epoch and step loops; everything else is a plug-in called at their boundaries."""

    def __init__(
        self,
        state: FitState,
        train: Iterable,
        update: Update,
        *,
        loss_fns,
        loss_step,
        precision: str,
        max_steps: int | None,
        progress: bool,
    ):
        self.state, self.train, self.update, self.loss_fns, self.loss_step = (
            state,
            train,
            update,
            loss_fns,
            loss_step,
        )
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
        bar = tqdm(
            range(s.epoch, s.epochs),
            desc="epochs",
            disable=not self.progress or not self.sync.is_main,
            leave=False,
        )
        for epoch in bar:
            self.epoch(epoch)
            bar.set_postfix(
                {k: round(v, 4) for k, v in s.row.items() if k in ("train_loss", "val_loss", "val_acc")}
            )
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
        seen = 0
        for i, (x, y) in enumerate(self.train):
            seen += 1
            if i >= s.skip:
                self.step(i, x, y)
                if s.stop:
                    break
        if seen == 0:
            raise ValueError(
                f"train yielded no batches in epoch {epoch + 1}: fit would take 0 steps and report nothing; "
                "pass batches to train on (an iterator is used up after one pass: pass a list or a loader)"
            )
        s.skip = 0
        row = {"epoch": epoch + 1, "step": s.step, "lr": s.optimizer.param_groups[0]["lr"]}
        row.update(distributed.mean_values({k: s.sums[k] / s.counts[k] for k in s.sums}))
        row["train_loss"] = sum(v for k, v in row.items() if k.startswith("train_loss/"))
        s.row = row
        self.emit("on_epoch_end")
        s.sums, s.counts = {}, {}

    def step(self, i: int, x, y) -> None:
        s = self.state
        if getattr(x, "shape", None) is not None and len(x.shape) and x.shape[0] == 0:
            raise ValueError(
                f"batch {i} of train is empty (0 samples, epoch {s.epoch}): its loss would be NaN; drop empty "
                "batches from train"
            )
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
            return batch_losses(
                self.sync.net, x, y, self.loss_fns, device=self.state.device, precision=self.precision
            )
        with _autocast(self.state.device, self.precision):
            out, losses = self.loss_step(self.state.model, x, y, self.state)
        return _as_dict(out), {k: v.float() for k, v in losses.items()}
