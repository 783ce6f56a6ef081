"""Loss weighting under a fair protocol: tunable balancers, one tuning budget for all, learned weights over time.

Compare ways to weight the losses of one multi-task network. Each method has its own
hyperparameters (FAMO's weight learning rate, the log-variance learning rate of uncertainty weighting, GradNorm's
learning rate and weight floor); `tune_each` gives every method the same number of tries for them, chosen on a
validation split. `UncertaintyLR` and `GradNormFloor` expose the hyperparameters that `companion.mtl`'s versions
tie to the network's optimiser or fix in code; `Traced` records the learned weights at every step, the
diagnostic that explains a method that still fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .. import checks
from ..balancers import GradNorm, Uncertainty
from ..loop import StepContext
from .protocol import tune


class UncertaintyLR:
    """Uncertainty weighting (Kendall et al. 2018) whose log-variances have their own Adam learning rate.

    Objective sum_t exp(-s_t) L_t + s_t (see `mtl.Uncertainty`). `mtl.Uncertainty` is an nn.Module, so `fit`
    trains its s_t at the network's learning rate; here they get `lr` (a hyperparameter of the method, to be
    tuned like any other), stepped right after the backward pass. s_t starts at `init` (0: every weight 1).
    """

    def __init__(self, tasks: Iterable[str], lr: float = 3e-3, init: float = 0.0):
        self.lr = checks.positive("lr", lr)
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
            raise ValueError(f"init must be a finite number, got {init!r}")
        self.core = Uncertainty(tasks)
        with torch.no_grad():
            self.core.log_vars.fill_(float(init))
        self.tasks = self.core.tasks
        self._opt = torch.optim.Adam(self.core.parameters(), lr=self.lr)

    @property
    def log_vars(self) -> Tensor:
        """The current log-variances s_t, in the order of `tasks`."""
        return self.core.log_vars.detach()

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        device = next(iter(losses.values())).device
        if self.core.log_vars.device != device:
            self.core.to(device)
            self._opt = torch.optim.Adam(self.core.parameters(), lr=self.lr)
        self._opt.zero_grad()
        logs = self.core.backward(losses, ctx)  # grads reach the network and the log-variances
        if ctx.scale != 1.0 and self.core.log_vars.grad is not None:
            self.core.log_vars.grad /= ctx.scale
        self._opt.step()
        return logs


class GradNormFloor(GradNorm):
    """GradNorm (Chen et al. 2018) with the lower bound on a task weight set explicitly.

    `mtl.GradNorm` clips task weights at `floor` (default 1e-3) before renormalising them to sum to T; a task whose
    gradient is 10^4 times the others' needs a weight below 1e-3 to be brought into line, so a caller can name the
    floor it needs. Same update otherwise.
    """

    def __init__(self, alpha: float = 1.5, layer=None, lr: float = 0.025, floor: float = 1e-3):
        super().__init__(alpha=alpha, layer=layer, lr=lr, floor=checks.positive("floor", floor))


class Traced:
    """Wrap a balancer and keep its logged numbers (task weights `w/<task>`, ...) at every step.

    `trace` is a list of {"step": int, **logs}; `series(key)` gives one number per step. The wrapped balancer
    must not be an nn.Module (fit would not see its parameters through the wrapper).
    """

    def __init__(self, balancer):
        if isinstance(balancer, torch.nn.Module):
            raise ValueError(
                "balancer: an nn.Module balancer cannot be traced (fit trains its parameters directly)"
            )
        if not hasattr(balancer, "backward"):
            raise ValueError(
                f"balancer must be an object with a backward method, got {type(balancer).__name__}"
            )
        self.inner = balancer
        self.per_task_grads = bool(
            getattr(balancer, "per_task_grads", False)
        )  # as the wrapped one (torchrun)
        self.trace: list[dict[str, float]] = []

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        logs = self.inner.backward(losses, ctx) or {}
        self.trace.append({"step": ctx.step, **{k: float(v) for k, v in logs.items()}})
        return logs

    def on_epoch_end(self, epoch: int) -> None:
        if hasattr(self.inner, "on_epoch_end"):
            self.inner.on_epoch_end(epoch)

    def series(self, key: str) -> list[float]:
        """The value of `key` at every traced step (ValueError if it was never logged)."""
        if not any(key in row for row in self.trace):
            raise ValueError(
                f"key: {key!r} was never logged; logged keys: {sorted({k for r in self.trace for k in r})}"
            )
        return [row.get(key, float("nan")) for row in self.trace]


def tune_each(
    run: Callable[[str, object], float],
    grids: Mapping[str, Sequence | None],
) -> dict[str, dict]:
    """Give every method the same tuning budget: `run(method, value)` -> validation score (higher is better).

    `grids[method]` lists the values tried for that method's own hyperparameter(s) (a value may be a tuple);
    every non-empty grid must have the same length, so no method gets more tries than another. A method with
    no hyperparameter of its own passes None (or an empty list) and is run once, with value None. Returns
    {method: {"best": value, "scores": {value: score}, "tries": int}}; ties keep the earlier value.
    """
    if not isinstance(grids, Mapping) or not grids:
        raise ValueError("grids must be a non-empty mapping method -> list of values (or None)")
    sizes = {len(g) for g in grids.values() if g}
    if len(sizes) > 1:
        raise ValueError(
            f"grids: every tuned method must get the same number of tries, got sizes {sorted(sizes)}"
        )
    out = {}
    for method, grid in grids.items():
        values = list(grid) if grid else [None]
        best, scores = tune(lambda v, m=method: run(m, v), values, name=f"{method} grid")
        out[method] = {"best": best, "scores": scores, "tries": len(values)}
    return out


def log_loss_score(losses: Mapping[str, float]) -> float:
    """Minus the sum of log task losses: a validation score that does not depend on the tasks' units.

    Multiplying one task's labels by c multiplies its squared-error loss by c^2, which adds a constant to this
    score, the same for every method, so the ranking of methods does not depend on the units.
    """
    if not losses:
        raise ValueError("losses must have at least one task loss")
    bad = {
        t: v for t, v in losses.items() if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v))
    }
    if bad:
        raise ValueError(f"losses must be finite positive numbers, got {bad}")
    return -sum(math.log(v) for v in losses.values())


def scene_scores(
    out: Mapping[str, Tensor], target: Mapping[str, Tensor], box_unit: float = 1.0
) -> dict[str, float]:
    """Test scores of a road-scene perception model: class accuracy, box error, mask IoU.

    `out` holds the model's outputs (`cls` logits, `box` in units of `box_unit` per image side, `mask` logits);
    `target` the labels of `synthetic.make_scenes` (`box` in fractions of the image side, `mask` in {0, 1}).
    The box error is the mean absolute error of (centre x, centre y, height) in pixels of the 32-pixel image;
    the mask IoU is intersection over union of (logit > 0) with the true mask, averaged over images (an image
    whose prediction and truth are both empty scores 0).
    """
    unit = checks.positive("box_unit", box_unit)
    for key in ("cls", "box", "mask"):
        if key not in out or key not in target:
            raise ValueError(f"out and target must have the keys cls, box and mask, {key!r} is missing")
    side = target["mask"].shape[-1]
    pred, true = out["mask"] > 0, target["mask"] > 0.5
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float().clamp_min(1)
    return {
        "class acc": float((out["cls"].argmax(1) == target["cls"]).float().mean()),
        "box error (px)": float(side * (out["box"].float() / unit - target["box"].float()).abs().mean()),
        "mask IoU": float((inter / union).mean()),
    }
