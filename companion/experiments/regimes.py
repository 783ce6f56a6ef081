"""Sequential vs parallel training of two tasks on one compute budget.

One pair of tasks A, B and three regimes that each make a given number of optimiser steps on full batches of one
size, so every regime sees exactly steps x batch_size examples:

- **sequential** (transfer A -> B): `train_task` on A, then `adapt_task` to B with a strategy from
  `SEQUENTIAL` (full fine-tuning, a frozen trunk, L2-SP, LP-FT). A's old head is kept aside, so accuracy on A
  afterwards (`head_accuracy`, or `companion.transfer.forgetting`) measures forgetting.
- **parallel** (multi-task A + B): one trunk with a head per task (`companion.mtl.HardSharing`) trained on the
  weighted sum of the task losses (`train_multitask`). `to_multitask` and `from_multitask` convert between the two
  model forms, so a trunk trained one way can continue the other way (pretrain on A, then multi-task A + B;
  multi-task A + B, then fine-tune on B).
- **alone**: `train_task` on B from the same random start.

`StepStream` cuts an endless, seeded, reshuffled stream of full batches into passes of a given length; `Monitor`
is a fit callback that evaluates the model every few steps (the accuracy-along-training curves).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .. import checks
from ..batches import TensorBatches
from ..device import pick_device, seeded
from ..evaluation import evaluate
from ..loop import WeightedSum
from ..models import backbone, features, new_head
from ..mtl import HardSharing
from ..train import fit
from ..transfer import l2sp, prepare

__all__ = [
    "SEQUENTIAL",
    "Monitor",
    "StepStream",
    "accuracy",
    "adapt_task",
    "build",
    "from_multitask",
    "head_accuracy",
    "to_multitask",
    "train_multitask",
    "train_task",
]

SEQUENTIAL = ("finetune", "frozen", "l2sp", "lp_ft")


# --------------------------------------------------------------------------------------- batches by steps


class StepStream:
    """Passes of exactly `steps` full batches over an endless, reshuffled stream of epochs.

    fit sees one pass as one epoch. The underlying epochs of `x, y` are shuffled from `seed` (epoch e's order
    depends on (seed, e) only) and the stream carries on across passes and fit calls: change `steps` between two
    fit calls (LP-FT's two phases) and the second phase sees the batches that follow the first's. Every batch
    has exactly `batch_size` examples (the last incomplete batch of an epoch is dropped).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor | Mapping[str, Tensor],
        *,
        steps: int,
        batch_size: int,
        seed: int,
        device=None,
    ):
        checks.integer("steps", steps, 1)
        checks.integer("batch_size", batch_size, 1)
        self.batches = TensorBatches(x, y, batch_size, seed=seed, device=device, drop_last=True)
        self.steps, self.epochs_started, self._it = steps, 0, None

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the stream continues where the previous pass stopped."""

    def __iter__(self) -> Iterator:
        for _ in range(self.steps):
            batch = next(self._it, None) if self._it is not None else None
            if batch is None:
                self.batches.set_epoch(self.epochs_started)
                self.epochs_started += 1
                self._it = iter(self.batches)
                batch = next(self._it)
            yield batch


# ------------------------------------------------------------------------------------------- monitoring


def head_accuracy(model: nn.Module, head: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512) -> float:
    """Accuracy of `head` on the pooled features of a timm `model`, its own classifier bypassed.

    This reads accuracy on A off a model that now carries B's head: A's old head, kept aside, on the current
    trunk. Runs in eval mode on the model's device; the model's train/eval mode is restored.
    """
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    right = 0
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            right += int((head.to(dev)(features(model, xb.to(dev))).argmax(1) == yb.to(dev)).sum())
    model.train(was)
    if y.shape[0] == 0:
        raise ValueError("x, y must hold at least one labelled example")
    return right / y.shape[0]


class Monitor:
    """A fit callback that records `probe()` -> {name: value} every `every` optimiser steps.

    It counts steps itself, so one monitor follows several fit calls (both phases of LP-FT). Rows are
    {"step": offset + steps seen, **probe()}, with one row at the start of the first fit.
    """

    def __init__(self, probe: Callable[[], Mapping[str, float]], every: int, *, offset: int = 0):
        checks.integer("every", every, 1)
        checks.integer("offset", offset, 0)
        self.probe, self.every, self.offset, self.seen, self.rows = probe, every, offset, 0, []

    def on_fit_start(self, state) -> None:
        if not self.rows:
            self.rows.append({"step": self.offset, **self.probe()})

    def on_step_end(self, state) -> None:
        self.seen += 1
        if self.seen % self.every == 0:
            self.rows.append({"step": self.offset + self.seen, **self.probe()})


# ---------------------------------------------------------------------------------------------- models


def build(name: str, *, in_chans: int, num_classes: int, seed: int) -> nn.Module:
    """A timm model with random weights drawn from `seed`: the same start for every regime."""
    checks.integer("seed", seed, 0)
    with seeded(seed):
        return backbone(name, in_chans=in_chans, num_classes=num_classes)


def to_multitask(
    model: nn.Module, classes: Mapping[str, int], *, keep: str | None = None, seed: int = 0
) -> HardSharing:
    """A hard-sharing model on a copy of a timm model's trunk, one linear head per task.

    `keep` names the task whose head is a copy of the model's own classifier (the task it was trained on); the
    other heads are fresh, drawn from `seed`. The model itself is left untouched.
    """
    if not classes or not all(isinstance(k, int) and k >= 1 for k in classes.values()):
        raise ValueError(f"classes must map task names to class counts >= 1, got {dict(classes)!r}")
    if keep is not None and keep not in classes:
        raise ValueError(f"keep must be one of the tasks {sorted(classes)}, got {keep!r}")
    old = model.get_classifier()
    if keep is not None and not (isinstance(old, nn.Linear) and old.out_features == classes[keep]):
        raise ValueError(
            f"keep={keep!r}: the model's classifier must be a Linear with {classes[keep]} outputs"
        )
    trunk = copy.deepcopy(model)
    trunk.reset_classifier(0)
    with seeded(seed):
        heads = {
            t: copy.deepcopy(old) if t == keep else nn.Linear(trunk.num_features, k)
            for t, k in classes.items()
        }
    return HardSharing(trunk, heads).to(next(model.parameters()).device)


def from_multitask(model: HardSharing, num_classes: int, *, seed: int = 0) -> nn.Module:
    """A single-task timm model on a copy of a hard-sharing model's trunk, with a fresh head."""
    if not isinstance(model, HardSharing) or not hasattr(model.trunk, "reset_classifier"):
        raise ValueError(f"model must be a HardSharing model with a timm trunk, got {type(model).__name__}")
    checks.integer("num_classes", num_classes, 1)
    out = copy.deepcopy(model.trunk)
    with seeded(seed):
        new_head(out, num_classes)
    return out.to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------------------- regimes


def _fit(model, stream, *, lr, seed, monitor, device, **kw) -> None:
    cbs = [monitor] if monitor is not None else []
    fit(model, stream, epochs=1, lr=lr, seed=seed, device=device, progress=False, callbacks=cbs, **kw)


def train_task(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    monitor: Monitor | None = None,
    device="auto",
) -> int:
    """Train every weight of a model on one task for `steps` AdamW steps of full batches.

    Returns the examples processed, steps x batch_size (one forward and backward pass each).
    """
    checks.positive("lr", lr)
    dev = pick_device(device)
    stream = StepStream(x, y, steps=steps, batch_size=batch_size, seed=seed, device=dev)
    _fit(model, stream, lr=lr, seed=seed, monitor=monitor, device=dev)
    return steps * batch_size


def adapt_task(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    strategy: str,
    num_classes: int,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    alpha: float = 0.01,
    seed: int = 0,
    monitor: Monitor | None = None,
    device="auto",
) -> int:
    """Adapt a model trained on A to task B in place: a fresh head, then one of SEQUENTIAL.

    finetune: every weight trains. frozen: only the new head (the trunk and its BatchNorm statistics stay fixed).
    l2sp: fine-tuning plus alpha/2 ||w - w_A||^2 towards the trunk weights on entry (Xuhong et al. 2018). lp_ft:
    the new head alone for steps // 2 steps, then every weight for the rest (Kumar et al. 2022). All make
    `steps` AdamW steps at `lr`; returns the examples processed, steps x batch_size.
    """
    if strategy not in SEQUENTIAL:
        raise ValueError(f"strategy must be one of {list(SEQUENTIAL)}, got {strategy!r}")
    checks.integer("steps", steps, 2 if strategy == "lp_ft" else 1)
    checks.integer("num_classes", num_classes, 1)
    checks.positive("lr", lr)
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    dev = pick_device(device)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = steps // 2 if strategy == "lp_ft" else steps
    stream = StepStream(x, y, steps=first, batch_size=batch_size, seed=seed, device=dev)
    kind = "finetune" if strategy in ("finetune", "l2sp") else "linear_probe"
    model, groups = prepare(model, kind, num_classes=num_classes, bn="eval", lr=lr, seed=seed)
    reg = l2sp(model, start, alpha=alpha, beta=0.0) if strategy == "l2sp" else None
    _fit(model, stream, lr=lr, seed=seed, monitor=monitor, device=dev, param_groups=groups, regularizer=reg)
    if strategy == "lp_ft":
        stream.steps = steps - first
        model, groups = prepare(model, "finetune", bn="eval", lr=lr)
        _fit(model, stream, lr=lr, seed=seed + 1, monitor=monitor, device=dev, param_groups=groups)
    return steps * batch_size


def train_multitask(
    model: HardSharing,
    x: Tensor,
    y: Mapping[str, Tensor],
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
    monitor: Monitor | None = None,
    device="auto",
) -> int:
    """Train a hard-sharing model on sum_t w_t L_t for `steps` AdamW steps; every batch carries every task's
    labels. Returns the examples processed, steps x batch_size: one trunk pass serves all tasks.
    """
    checks.positive("lr", lr)
    if not isinstance(y, Mapping) or not y or set(y) - set(model.heads):
        raise ValueError(f"y must map task names among the model's heads {sorted(model.heads)} to labels")
    dev = pick_device(device)
    stream = StepStream(x, dict(y), steps=steps, batch_size=batch_size, seed=seed, device=dev)
    _fit(
        model,
        stream,
        lr=lr,
        seed=seed,
        monitor=monitor,
        device=dev,
        balancer=WeightedSum(dict(weights or {})),
    )
    return steps * batch_size


def accuracy(model: nn.Module, x: Tensor, y: Tensor | Mapping[str, Tensor], *, device="auto") -> float | dict:
    """Test accuracy: a float for a single-task model, {task: accuracy} for a multi-task one."""
    out = evaluate(model, TensorBatches(x, y, 512, shuffle=False), device=device)
    return {t: out[f"acc/{t}"] for t in y} if isinstance(y, Mapping) else out["acc"]
