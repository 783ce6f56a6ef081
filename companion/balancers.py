"""Multi-task loss balancers: fixed weights, uncertainty weighting, DWA, GradNorm, FAMO, gradient aggregation,
and lookahead task affinity.

Balancers follow the contract of `companion.train.fit`: `backward(losses, ctx) -> logs` leaves in `.grad` the
gradient of the *scaled* objective and returns scalars to log, always including the task weights "w/<task>".
Those that differentiate the losses with respect to a shared representation read the model's `shared` tensor
(see `companion.mtl`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import checks
from .aggregators import _OPTIONS, METHODS, aggregate, conflict, task_gradients, write_grad
from .loop import StepContext

__all__ = [
    "DWA",
    "FAMO",
    "GradAggregation",
    "GradNorm",
    "Uncertainty",
    "Weighted",
    "dwa_weights",
    "task_affinity",
]


# ----------------------------------------------------------------------------------------------- helpers


def _stack_losses(losses: dict[str, Tensor], who: str) -> tuple[list[str], Tensor]:
    tasks = checks.task_names(f"losses ({who})", losses)
    return tasks, torch.stack([losses[t].float().reshape(()) for t in tasks])


def _weights_log(tasks: Sequence[str], weights: Tensor | Sequence[float]) -> dict[str, float]:
    values = weights.detach().float().cpu().tolist() if isinstance(weights, Tensor) else list(weights)
    return {f"w/{t}": float(w) for t, w in zip(tasks, values, strict=True)}


def _copy_state(obj):
    """A copy of a balancer's state made of plain containers, with tensors detached and cloned."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_state(v) for v in obj)
    return obj


def _check_state(state, keys: Sequence[str], who: str) -> None:
    if not isinstance(state, dict) or not set(keys) <= set(state):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"state must be a {who}.state_dict() with keys {sorted(keys)}, got {got}")


def _adam_state(param: Tensor | None, lr: float, state: dict | None, **kw) -> torch.optim.Adam | None:
    """A fresh Adam on `param` that continues from `state` (an Adam state_dict) when given."""
    if param is None:
        return None
    opt = torch.optim.Adam([param], lr=lr, **kw)
    if state is not None:
        opt.load_state_dict(_copy_state(state))
    return opt


def _shared_params(model: nn.Module) -> list[nn.Parameter]:
    if hasattr(model, "shared_parameters"):
        return [p for p in model.shared_parameters() if p.requires_grad]
    return [p for p in model.parameters() if p.requires_grad]


# --------------------------------------------------------------------------------------------- balancers


class Weighted:
    """Fixed weights: backward through sum_t w_t L_t (missing tasks weigh 1)."""

    def __init__(self, weights: dict[str, float] | None = None):
        weights = dict(weights or {})
        for t, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or not math.isfinite(w):
                raise ValueError(f"weights must be finite numbers >= 0, got {t!r}: {w!r}")
        self.weights = {t: float(w) for t, w in weights.items()}

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        tasks, values = _stack_losses(losses, "Weighted")
        w = [self.weights.get(t, 1.0) for t in tasks]
        ctx.scaled((values * values.new_tensor(w)).sum()).backward()
        return _weights_log(tasks, w)


class Uncertainty(nn.Module):
    """Homoscedastic-uncertainty weighting (Kendall et al. 2018) with learned log-variances.

    Objective: sum_t exp(-s_t) L_t + s_t with s_t = log sigma_t^2, starting at 0. The paper writes
    1/(2 sigma^2) L + log sigma for regression, i.e. half of this; we drop the common factor 1/2 (same minimiser,
    task weights exp(-s_t) start at 1 like a plain sum) and use the same form for every task kind. As an
    nn.Module its `log_vars` are trained by fit's optimiser and saved in checkpoints.
    """

    def __init__(self, tasks: Iterable[str]):
        super().__init__()
        self.tasks = checks.task_names("tasks", tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        """sum_t exp(-s_t) L_t + s_t for the given task losses."""
        if set(losses) != set(self.tasks):
            raise ValueError(f"losses must have the tasks {self.tasks}, got {sorted(losses)}")
        values = torch.stack([losses[t].float().reshape(()) for t in self.tasks])
        s = self.log_vars.to(values.device)
        return (torch.exp(-s) * values + s).sum()

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        ctx.scaled(self.objective(losses)).backward()
        logs = _weights_log(self.tasks, torch.exp(-self.log_vars))
        logs.update(
            {f"logvar/{t}": float(s) for t, s in zip(self.tasks, self.log_vars.tolist(), strict=True)}
        )
        return logs


def dwa_weights(history: Sequence[dict[str, float]], temperature: float = 2.0) -> dict[str, float]:
    """Dynamic Weight Average weights from per-epoch mean losses, oldest first (Liu et al. 2019).

    w_t = T exp(r_t / temperature) / sum_s exp(r_s / temperature) with r_t = L_t(last) / L_t(one before);
    with fewer than two epochs every weight is 1.
    """
    checks.positive("temperature", temperature)
    if not history:
        return {}
    tasks = list(history[-1])
    if len(history) < 2:
        return dict.fromkeys(tasks, 1.0)
    last, before = history[-1], history[-2]
    for t in tasks:
        if t not in before or not before[t] > 0:
            raise ValueError(f"history must have a positive loss for task {t!r} in the previous epoch")
    r = torch.tensor([last[t] / before[t] for t in tasks], dtype=torch.float64)
    w = len(tasks) * torch.softmax(r / temperature, dim=0)
    return dict(zip(tasks, w.tolist(), strict=True))


class DWA:
    """Dynamic Weight Average (Liu et al. 2019): tasks whose loss fell least last epoch weigh more.

    Weights change once per epoch, in `on_epoch_end`, from the last two epochs' mean training losses (see
    `dwa_weights`); the first two epochs use equal weights.
    """

    def __init__(self, temperature: float = 2.0):
        self.temperature = checks.positive("temperature", temperature)
        self.history: list[dict[str, float]] = []
        self.weights: dict[str, float] = {}
        self._sums: dict[str, float] = {}
        self._count = 0

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        tasks, values = _stack_losses(losses, "DWA")
        w = [self.weights.get(t, 1.0) for t in tasks]
        ctx.scaled((values * values.new_tensor(w)).sum()).backward()
        for t, v in zip(tasks, values.detach().cpu().tolist(), strict=True):
            self._sums[t] = self._sums.get(t, 0.0) + v
        self._count += 1
        return _weights_log(tasks, w)

    def on_epoch_end(self, epoch: int) -> None:
        """Store this epoch's mean losses and recompute the weights for the next epoch."""
        if self._count == 0:
            return
        self.history.append({t: s / self._count for t, s in self._sums.items()})
        self._sums, self._count = {}, 0
        self.weights = dwa_weights(self.history, self.temperature)

    def state_dict(self) -> dict:
        """Loss history, current weights and this epoch's running loss sums (saved in fit's checkpoints)."""
        return _copy_state(
            {"history": self.history, "weights": self.weights, "sums": self._sums, "count": self._count}
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`: the next steps and epochs weigh tasks as the saved run would have."""
        _check_state(state, ("history", "weights", "sums", "count"), "DWA")
        state = _copy_state(state)
        self.history = [dict(row) for row in state["history"]]
        self.weights, self._sums, self._count = (
            dict(state["weights"]),
            dict(state["sums"]),
            int(state["count"]),
        )


def _pick_layer(model: nn.Module, layer: str | Tensor | None) -> Tensor:
    if isinstance(layer, Tensor):
        return layer
    if isinstance(layer, str):
        named = dict(model.named_parameters())
        if layer not in named:
            raise ValueError(
                f"layer must be a parameter name of the model (e.g. {next(iter(named), '')!r}), got {layer!r}"
            )
        return named[layer]
    if layer is not None:
        raise ValueError(f"layer must be a parameter name, a parameter or None, got {type(layer).__name__}")
    weights = [p for p in _shared_params(model) if p.dim() >= 2]
    if not weights:
        raise ValueError("layer: the model has no shared weight with 2+ dims; pass layer=<parameter name>")
    return weights[-1]


class GradNorm:
    """GradNorm (Chen et al. 2018): learn task weights so gradient norms follow relative training rates.

    On one shared weight W (`layer`: a parameter name or tensor; default the last shared weight with 2+ dims)
    it measures G_t = ||grad_W w_t L_t||, sets targets mean(G) * r_t^alpha with r_t = (L_t / L_t(0)) divided by
    its mean over tasks, and takes one Adam step (lr `lr`) on the weights for sum_t |G_t - target_t| (targets held
    constant); weights are then clipped at `floor` and renormalised to sum to T. The network gets the gradient of
    sum_t w_t L_t. Not an nn.Module on purpose: its weights have their own optimiser, not fit's.
    """

    per_task_grads = True  # differentiates each task's loss: under torchrun, fit all-reduces each gradient

    def __init__(
        self, alpha: float = 1.5, layer: str | Tensor | None = None, lr: float = 0.025, floor: float = 1e-3
    ):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.lr = checks.positive("lr", lr)
        self.floor = checks.positive("floor", floor)
        self.layer = layer
        self.tasks: list[str] | None = None
        self.w: Tensor | None = None
        self.initial: Tensor | None = None
        self._opt: torch.optim.Optimizer | None = None

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        tasks, values = _stack_losses(losses, "GradNorm")
        if self.w is None or self.tasks != tasks:
            self.tasks = tasks
            self.w = torch.ones(len(tasks), device=values.device, requires_grad=True)
            self._opt = torch.optim.Adam([self.w], lr=self.lr)
            self.initial = values.detach().clamp_min(1e-12)
        weight = _pick_layer(ctx.model, self.layer)
        norms = []
        for t in tasks:
            (g,) = torch.autograd.grad(ctx.scaled(losses[t]), weight, retain_graph=True, allow_unused=True)
            norms.append(torch.zeros((), device=values.device) if g is None else g.float().norm() / ctx.scale)
        norms = torch.stack(norms).detach()
        w = self.w
        ctx.scaled((w.detach() * values).sum()).backward()
        gn = w * norms
        rate = values.detach() / self.initial
        target = (gn.mean() * (rate / rate.mean()) ** self.alpha).detach()
        gn_loss = (gn - target).abs().sum()
        if torch.isfinite(gn_loss):
            self._opt.zero_grad()
            w.grad = torch.autograd.grad(gn_loss, w)[0]
            self._opt.step()
            with torch.no_grad():
                w.clamp_(min=self.floor).mul_(len(tasks) / w.sum())
        logs = _weights_log(tasks, w)
        logs["gradnorm/loss"] = float(gn_loss.detach())
        return logs

    def state_dict(self) -> dict:
        """Task order, weights, initial losses and the weights' Adam state (saved in fit's checkpoints)."""
        return _copy_state(
            {
                "tasks": self.tasks,
                "w": self.w,
                "initial": self.initial,
                "optimizer": self._opt.state_dict() if self._opt is not None else None,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()` (its tensors stay on the device they were loaded to)."""
        _check_state(state, ("tasks", "w", "initial", "optimizer"), "GradNorm")
        state = _copy_state(state)
        self.tasks = list(state["tasks"]) if state["tasks"] is not None else None
        self.w = state["w"].requires_grad_(True) if state["w"] is not None else None
        self.initial = state["initial"]
        self._opt = _adam_state(self.w, self.lr, state["optimizer"])


class FAMO:
    """Fast Adaptive Multitask Optimisation (Liu et al. 2023): one backward per step.

    Task weights z = softmax(xi) live on the simplex. The network gets the gradient of
    c * sum_t z_t log L_t with c = 1 / sum_t (z_t / L_t) (so task t's gradient is scaled by c z_t / L_t), which
    aims at an equal rate of decrease of every log loss. At the next step the logits move by one Adam step
    (lr `lr_w`, weight decay `gamma`) along J_z^T delta, delta_t = log L_t(previous step) - log L_t(now): a task
    whose log loss fell less than the z-weighted average gains weight. Consecutive steps see different batches
    here, as in fit; losses must be non-negative.
    """

    def __init__(self, lr_w: float = 0.025, gamma: float = 1e-3, eps: float = 1e-8):
        self.lr_w = checks.positive("lr_w", lr_w)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.eps = checks.positive("eps", eps)
        self.tasks: list[str] | None = None
        self.logits: Tensor | None = None
        self._prev: Tensor | None = None
        self._opt: torch.optim.Optimizer | None = None

    @property
    def weights(self) -> Tensor:
        """The current task weights softmax(xi), on the simplex."""
        if self.logits is None:
            raise ValueError("weights: FAMO has not seen any losses yet")
        return torch.softmax(self.logits.detach(), dim=0)

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        tasks, values = _stack_losses(losses, "FAMO")
        if bool((values.detach() < 0).any()):
            raise ValueError("losses: FAMO needs non-negative losses (it takes their logarithm)")
        if self.logits is None or self.tasks != tasks:
            self.tasks = tasks
            self.logits = torch.zeros(len(tasks), device=values.device, requires_grad=True)
            self._opt = torch.optim.Adam([self.logits], lr=self.lr_w, weight_decay=self.gamma)
            self._prev = None
        log_now = (values.detach() + self.eps).log()
        if self._prev is not None:
            z = self.weights
            delta = self._prev - log_now
            self._opt.zero_grad()
            self.logits.grad = z * (delta - (z * delta).sum())  # J_softmax^T delta
            self._opt.step()
        self._prev = log_now
        z = self.weights
        c = 1.0 / (z / (values.detach() + self.eps)).sum()
        ctx.scaled(c * (z * (values + self.eps).log()).sum()).backward()
        return _weights_log(tasks, z)

    def state_dict(self) -> dict:
        """Task order, logits, last step's log losses and the logits' Adam state (saved in fit's checkpoints)."""
        return _copy_state(
            {
                "tasks": self.tasks,
                "logits": self.logits,
                "prev": self._prev,
                "optimizer": self._opt.state_dict() if self._opt is not None else None,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()` (its tensors stay on the device they were loaded to)."""
        _check_state(state, ("tasks", "logits", "prev", "optimizer"), "FAMO")
        state = _copy_state(state)
        self.tasks = list(state["tasks"]) if state["tasks"] is not None else None
        self.logits = state["logits"].requires_grad_(True) if state["logits"] is not None else None
        self._prev = state["prev"]
        self._opt = _adam_state(self.logits, self.lr_w, state["optimizer"], weight_decay=self.gamma)


class GradAggregation:
    """Gradient-level balancing: combine the per-task gradients with an aggregator.

    mode="params": the rows of G are each task's gradient over all trainable parameters (shared ones first);
    `aggregate(G, method)` gives one direction, written to `.grad`, replacing what is there (a head's block is
    zero in other tasks' rows, so weight-based aggregators give each head w_t times its own gradient).
    mode="features": G holds gradients w.r.t. the model's `shared` tensor (the representation every task reads,
    Sener & Koltun 2018). Every parameter gets the gradient of the mean loss, except that the part flowing back
    through `shared` is the aggregated direction instead; so heads get the mean loss's gradient and the trunk
    gets the aggregated direction.
    mode="auto" (the default): "features" when the model keeps its shared tensor in the graph (`HardSharing`,
    `MMoE`, `CrossStitch`, `L2Tied` do), else "params"; the mode used is in `last_mode`.

    Cost per step, for T tasks (measured in `benchmarks/bench.py`): "params" takes T backward passes through
    the whole network (one per task row) plus the aggregation over all parameters; "features" takes T backward
    passes through the heads only (torch.autograd.grad w.r.t. `shared`, graph kept), then ONE backward pass
    (torch.autograd.backward) that sends the mean loss through the heads and the aggregated direction through
    the trunk, which the autograd engine merges at `shared` before walking the trunk once. With small heads
    that is about one trunk backward, i.e. close to equal weighting's cost at any T.

    A method's own hyperparameters are keyword options passed on to `aggregate`, e.g.
    `GradAggregation("cagrad", c=0.2)` (CAGrad's ball radius; an option the method does not take is refused).
    With method "mean" both modes equal a plain backward of sum_t L_t / T. Logs the effective weights "w/<task>"
    (least-squares coefficients of the direction on the task gradients), and with `log_cosine` the pairwise
    cosines "cos/a|b", "conflict" (1.0 if any is negative) and "grad_ratio" (largest / smallest task-gradient
    norm), computed on the shared block (parameters or representation, per mode), so fit's history gives the
    conflict rate per epoch.
    """

    per_task_grads = True  # differentiates each task's loss: under torchrun, fit all-reduces each gradient

    def torchrun_refusal(self, model: nn.Module) -> str | None:
        """Why this balancer cannot equal its single-process result under torchrun with `model` (None: it can).
        Per-sample gradients of the shared representation ("features" mode) are split across processes, so only
        "params" mode is exact there; `distributed.check_balancer` asks before training."""
        if self.mode == "features" or (self.mode == "auto" and hasattr(model, "shared")):
            return (
                f"GradAggregation(mode={self.mode!r}) aggregates per-sample gradients of the shared representation, "
                "which are split across processes under torchrun; pass GradAggregation(..., mode='params')"
            )
        return None

    def __init__(
        self,
        method: str = "upgrad",
        mode: str = "auto",
        seed: int = 0,
        log_cosine: bool = True,
        **options: float,
    ):
        checks.choice("method", method, METHODS)
        checks.choice("mode", mode, ("auto", "params", "features"))
        if not checks.is_int(seed):
            checks.fail("seed", "an int", seed)
        accepted = _OPTIONS.get(method, ())
        for name in options:
            if name not in accepted:
                checks.fail(name, f"an option of {method!r} (its options: {list(accepted)})", name)
        self.method, self.mode, self.seed, self.log_cosine = method, mode, seed, bool(log_cosine)
        self.options = dict(
            options
        )  # the method's own hyperparameters, e.g. CAGrad's c (aggregators.aggregate)
        self.last_mode: str | None = None

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        tasks = checks.task_names("losses (GradAggregation)", losses)
        scaled = {t: ctx.scaled(losses[t]) for t in tasks}
        model, seed = ctx.model, self.seed + ctx.step  # a new, reproducible draw each step (pcgrad's order)
        z = getattr(model, "shared", None)
        has_shared = isinstance(z, Tensor) and z.requires_grad
        mode = self.mode if self.mode != "auto" else ("features" if has_shared else "params")
        self.last_mode = mode
        if mode == "params":
            shared = _shared_params(model)
            ids = {id(p) for p in shared}
            params = shared + [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
            n_shared = sum(p.numel() for p in shared) or sum(p.numel() for p in params)
            G = task_gradients(scaled, params, mode="params").float() / ctx.scale
            d = aggregate(G, self.method, seed=seed, **self.options)
            write_grad(params, d * ctx.scale)
        else:
            if not has_shared:
                raise ValueError(
                    "mode: 'features' needs a model that keeps its shared tensor (in the graph) in `shared`"
                )
            G = (
                task_gradients(scaled, z, mode="features", retain_graph=True).float() / ctx.scale
            )  # heads only
            n_shared = G.shape[1]
            d = aggregate(G, self.method, seed=seed, **self.options)
            # one engine call: the mean loss reaches `shared` through the heads as mean(G); the extra root adds
            # d - mean(G) there, so the trunk is walked once along d and every other parameter gets the mean loss
            mean_loss = sum(scaled.values()) / len(tasks)
            fix = ((d - G.mean(dim=0)) * ctx.scale).reshape(z.shape).to(z.dtype)
            roots = [mean_loss, z] if mean_loss.requires_grad else [z]
            grads = [torch.ones_like(mean_loss), fix] if mean_loss.requires_grad else [fix]
            torch.autograd.backward(roots, grads)
        return self._logs(tasks, G, d, n_shared)

    def _logs(self, tasks: list[str], G: Tensor, d: Tensor, n_shared: int) -> dict[str, float]:
        G, d = G.detach().double(), d.detach().double()
        if not bool(torch.isfinite(G).all() and torch.isfinite(d).all()):
            return {}  # an overflowed fp16 step, which the GradScaler skips: nothing meaningful to log
        logs = _weights_log(tasks, torch.linalg.pinv(G @ G.T) @ (G @ d))
        if self.log_cosine:
            info = conflict(G[:, :n_shared], tasks)
            logs.update({f"cos/{a}|{b}": c for (a, b), c in info["pairs"].items()})
            logs["conflict"] = 1.0 if info["any_conflict"] else 0.0
            logs["grad_ratio"] = float(info["magnitude_ratio"])
        return logs


def _evaluate_losses(model: nn.Module, loss_fns: dict, x: Tensor, y: dict[str, Tensor]) -> Tensor:
    out = model(x)
    return torch.stack([loss_fns[t](out[t].float(), y[t]).float() for t in loss_fns])


def task_affinity(model: nn.Module, loss_fns: dict, batch: tuple, lr: float) -> np.ndarray:
    """Lookahead task affinity (Fifty et al. 2021, TAG) on one batch, as a T×T numpy array.

    Entry [i, j] = 1 - L_j(after) / L_j(before), where "after" follows one plain SGD step of size `lr` on task
    i's loss alone (all trainable parameters). Positive: a step for task i also helps task j. Rows and columns
    follow the order of `loss_fns`; the model's weights and buffers are restored afterwards. Call it in eval
    mode if the model uses dropout, else before/after losses differ by the dropout draw too.
    """
    if not isinstance(loss_fns, dict) or not loss_fns:
        raise ValueError("loss_fns must be a non-empty dict task -> loss function")
    checks.positive("lr", lr)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not isinstance(batch[1], dict):
        raise ValueError("batch must be (x, y) with y a dict task -> target")
    tasks = checks.task_names("loss_fns", loss_fns)
    device = next(model.parameters()).device
    x, y = batch[0].to(device), {t: batch[1][t].to(device) for t in tasks}
    params = [p for p in model.parameters() if p.requires_grad]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    affinity = np.zeros((len(tasks), len(tasks)))
    try:
        with torch.no_grad():
            before = _evaluate_losses(model, loss_fns, x, y)
        model.load_state_dict(saved)
        for i, t in enumerate(tasks):
            loss = loss_fns[t](model(x)[t].float(), y[t])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.sub_(lr * g)
                after = _evaluate_losses(model, loss_fns, x, y)
            affinity[i] = (1.0 - after / before.clamp_min(1e-12)).cpu().numpy()
            model.load_state_dict(saved)
    finally:
        model.load_state_dict(saved)
    return affinity
