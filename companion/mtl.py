"""Multi-task architectures and loss balancers (taught in notebooks 03, 06, 08 and 10).

Architectures return a dict task -> output and keep the shared representation of their last forward in
`self.shared` (still in the autograd graph), so that a balancer can differentiate the task losses with respect
to it. Balancers follow the contract of `companion.train.fit`: `backward(losses, ctx) -> logs` leaves in `.grad`
the gradient of the *scaled* objective and returns scalars to log, always including the task weights "w/<task>".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .aggregators import METHODS, aggregate, conflict, task_gradients, write_grad
from .models import count_params
from .train import StepContext

__all__ = [
    "DWA",
    "FAMO",
    "CrossStitch",
    "GradAggregation",
    "GradNorm",
    "HardSharing",
    "L2Tied",
    "MMoE",
    "MaskDecoder",
    "Separate",
    "Uncertainty",
    "Weighted",
    "aggregate",
    "compare_models",
    "conv_tower",
    "dwa_weights",
    "head",
    "param_count",
    "separate_models",
    "size_sweep",
    "task_affinity",
]

HEAD_KINDS = ("classification", "regression", "multilabel", "mask")


# ----------------------------------------------------------------------------------------------- helpers


def _check_tasks(names: Iterable[str], what: str) -> list[str]:
    names = list(names)
    if not names:
        raise ValueError(f"{what}: expected at least one task, got none")
    for name in names:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{what}: task names must be non-empty strings without '.', got {name!r}")
    return names


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _check_positive(value, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def _stack_losses(losses: dict[str, Tensor], who: str) -> tuple[list[str], Tensor]:
    tasks = _check_tasks(losses, f"losses ({who})")
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
        raise ValueError(f"state: expected a {who}.state_dict() with keys {sorted(keys)}, got {got}")


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


class _Pool(nn.Module):
    """Global average pooling of B×C×H×W maps to B×C; vectors pass through unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


class MaskDecoder(nn.Module):
    """A small dense head: 3×3 conv, ReLU, 1×1 conv to `out` channels per pixel (notebook 08).

    It works at the feature maps' resolution; the architectures resize its output to the input's height and
    width (bilinear), so a B×C×h×w feature map becomes B×out×H×W logits.
    """

    def __init__(self, in_dim: int, out: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out, 1)
        )

    def forward(self, feats: Tensor) -> Tensor:
        if feats.dim() != 4:
            raise ValueError(f"feats: a mask head needs B×C×H×W feature maps, got shape {tuple(feats.shape)}")
        return self.net(feats)


def head(kind: str, in_dim: int, out: int, hidden: int = 0) -> nn.Module:
    """A task head: linear (or one-hidden-layer MLP) for vector tasks, a small decoder for masks (notebook 03).

    "classification" gives class logits, "regression" raw values, "multilabel" one logit per label; these pool
    B×C×H×W maps to B×C first, so they sit on vector or spatial trunks alike. "mask" gives a `MaskDecoder`.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind: expected one of {HEAD_KINDS}, got {kind!r}")
    _check_positive_int(in_dim, "in_dim")
    _check_positive_int(out, "out")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise ValueError(f"hidden: expected an int >= 0 (0 means a linear head), got {hidden!r}")
    if kind == "mask":
        return MaskDecoder(in_dim, out, hidden or 32)
    if hidden == 0:
        return nn.Sequential(_Pool(), nn.Linear(in_dim, out))
    return nn.Sequential(_Pool(), nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def _run_head(module: nn.Module, feats: Tensor, x: Tensor) -> Tensor:
    out = module(feats)
    if isinstance(module, MaskDecoder) and out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _module_dict(mods: dict[str, nn.Module], what: str) -> nn.ModuleDict:
    if not isinstance(mods, dict):
        raise ValueError(f"{what}: expected a dict task -> nn.Module, got {type(mods).__name__}")
    _check_tasks(mods, what)
    for name, mod in mods.items():
        if not isinstance(mod, nn.Module):
            raise ValueError(f"{what}: entry {name!r} must be an nn.Module, got {type(mod).__name__}")
    return nn.ModuleDict(mods)


param_count = count_params  # the one parameter counter (companion.models), under the name notebooks 03 and 06 use


class Separate(nn.ModuleDict):
    """T independent single-task models side by side, callable like a multi-task model (notebooks 03 and 06).

    A ModuleDict task -> model whose forward runs every model on the input and returns {task: output}; a model
    that returns a dict contributes its entry for its own task. No parameter is shared, so training it with the
    summed loss (as `fit` does) gives every model exactly the gradients of its own task's loss: the same as
    training the T models one at a time on the same batches (Adam's update is per parameter).
    """

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for task, model in self.items():
            y = model(x)
            if isinstance(y, dict):
                if task not in y:
                    raise ValueError(f"model for task {task!r} returned a dict without that task: {sorted(y)}")
                y = y[task]
            out[task] = y
        return out


def separate_models(make_model: Callable[[str], nn.Module], tasks: Iterable[str]) -> Separate:
    """One independent single-task model per task, `make_model(task)`, as a `Separate` (notebooks 03 and 04)."""
    if not callable(make_model):
        raise ValueError(
            f"make_model: expected a callable task -> nn.Module, got {type(make_model).__name__}"
        )
    return Separate(_module_dict({t: make_model(t) for t in _check_tasks(tasks, "tasks")}, "make_model"))


# ----------------------------------------------------------------------------------------- architectures


class HardSharing(nn.Module):
    """Hard parameter sharing: one shared trunk, one head per task (notebook 03).

    `trunk` maps images to B×D features (e.g. `timm.create_model("resnet10t", num_classes=0, in_chans=1)`).
    When a mask head is present (or `spatial=True`) the trunk must give B×C×H×W maps instead: its
    `forward_features` is used if it has one (timm models do), else its forward. Vector heads from `head()` pool
    the maps themselves, and mask outputs are resized to the input's height and width.
    """

    def __init__(self, trunk: nn.Module, heads: dict[str, nn.Module], spatial: bool | None = None):
        super().__init__()
        if not isinstance(trunk, nn.Module):
            raise ValueError(f"trunk: expected an nn.Module, got {type(trunk).__name__}")
        self.trunk = trunk
        self.heads = _module_dict(heads, "heads")
        self.spatial = any(isinstance(h, MaskDecoder) for h in heads.values()) if spatial is None else spatial
        self.shared: Tensor | None = None

    def features(self, x: Tensor) -> Tensor:
        """The trunk's output: B×D vectors, or B×C×H×W maps in spatial mode."""
        if not self.spatial:
            return self.trunk(x)
        feats = self.trunk.forward_features(x) if hasattr(self.trunk, "forward_features") else self.trunk(x)
        if feats.dim() != 4:
            raise ValueError(
                f"trunk: spatial mode needs B×C×H×W feature maps, got shape {tuple(feats.shape)}"
            )
        return feats

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.shared = self.features(x)
        return {t: _run_head(h, self.shared, x) for t, h in self.heads.items()}

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        """The trunk's parameters (used by every task)."""
        return self.trunk.parameters()

    def task_parameters(self, task: str) -> Iterable[nn.Parameter]:
        """The parameters of one task's head."""
        return self.heads[task].parameters()


def conv_tower(in_chans: int, widths: Sequence[int]) -> nn.ModuleList:
    """A small CNN as a list of stages (3×3 conv, batch norm, ReLU, 2×2 max-pool) for soft sharing (notebook 03)."""
    _check_positive_int(in_chans, "in_chans")
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"widths: expected a non-empty list of positive ints, got {widths!r}")
    stages, prev = [], in_chans
    for w in widths:
        _check_positive_int(w, "widths")
        stages.append(
            nn.Sequential(
                nn.Conv2d(prev, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)
            )
        )
        prev = w
    tower = nn.ModuleList(stages)
    tower.num_features = prev
    return tower


def _same_structure(towers: dict[str, nn.Module], what: str) -> None:
    ref_name, ref = next(iter(towers.items()))
    ref_shapes = [(n, p.shape) for n, p in ref.named_parameters()]
    for name, tower in towers.items():
        if [(n, p.shape) for n, p in tower.named_parameters()] != ref_shapes:
            raise ValueError(
                f"{what}: tower {name!r} must have the same parameter names and shapes as {ref_name!r}"
            )


class CrossStitch(nn.Module):
    """Cross-stitch networks (Misra et al. 2016): one tower per task, mixed after every stage (notebook 03).

    After stage k each task's activation becomes a learned combination of all towers' activations,
    h_t <- sum_s A_k[t, s] h_s, with A_k a T×T matrix initialised to `init_self` on the diagonal and
    (1 - init_self) / (T - 1) elsewhere (`init_self=1` gives independent towers). The towers (lists of stages, e.g.
    from `conv_tower`) must have matching shapes. `self.shared` holds the first stage's outputs stacked as
    T×B×..., the first tensor that every task's loss depends on.
    """

    def __init__(
        self, towers: dict[str, Sequence[nn.Module]], heads: dict[str, nn.Module], init_self: float = 0.9
    ):
        super().__init__()
        if not isinstance(towers, dict):
            raise ValueError(f"towers: expected a dict task -> list of stages, got {type(towers).__name__}")
        self.tasks = _check_tasks(towers, "towers")
        if set(heads) != set(self.tasks):
            raise ValueError(f"heads: expected one head per tower {self.tasks}, got {sorted(heads)}")
        if isinstance(init_self, bool) or not isinstance(init_self, (int, float)) or not 0 <= init_self <= 1:
            raise ValueError(f"init_self: expected a number in [0, 1], got {init_self!r}")
        self.towers = _module_dict({t: nn.ModuleList(list(s)) for t, s in towers.items()}, "towers")
        _same_structure(self.towers, "towers")
        self.heads = _module_dict(heads, "heads")
        n_tasks, n_stages = len(self.tasks), len(self.towers[self.tasks[0]])
        off = (1.0 - init_self) / (n_tasks - 1) if n_tasks > 1 else 0.0
        init = torch.full((n_tasks, n_tasks), off)
        init.fill_diagonal_(float(init_self) if n_tasks > 1 else 1.0)
        self.stitches = nn.ParameterList([nn.Parameter(init.clone()) for _ in range(n_stages)])
        self.shared: Tensor | None = None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        hs = [x] * len(self.tasks)
        for k, stitch in enumerate(self.stitches):
            stacked = torch.stack([self.towers[t][k](h) for t, h in zip(self.tasks, hs, strict=True)])
            if k == 0:
                self.shared = stacked
            hs = list(torch.einsum("ts,s...->t...", stitch, stacked).unbind(0))
        return {t: _run_head(self.heads[t], h, x) for t, h in zip(self.tasks, hs, strict=True)}

    def stitch_weights(self) -> list[np.ndarray]:
        """The T×T mixing matrices, one per stage, as numpy arrays (rows: receiving task; notebook 03)."""
        return [s.detach().cpu().numpy().copy() for s in self.stitches]

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        """The cross-stitch units, the only parameters shared by construction."""
        return self.stitches.parameters()

    def task_parameters(self, task: str) -> Iterable[nn.Parameter]:
        """One task's tower and head."""
        return itertools.chain(self.towers[task].parameters(), self.heads[task].parameters())


class L2Tied(nn.Module):
    """Soft sharing by regularisation: separate towers pulled together by an L2 penalty (notebook 03).

    `penalty()` is the sum over task pairs and corresponding parameters of ||theta_i - theta_j||^2. Add it to the
    objective through fit's regulariser hook, e.g. `fit(..., regularizer=lambda m: 1e-3 * m.penalty())`.
    Nothing is hard-shared, so `shared_parameters()` is empty; `self.shared` stacks the towers' outputs (T×B×...),
    and each task's loss depends on its own slice only.
    """

    def __init__(self, towers: dict[str, nn.Module], heads: dict[str, nn.Module]):
        super().__init__()
        self.towers = _module_dict(towers, "towers")
        if set(heads) != set(towers):
            raise ValueError(f"heads: expected one head per tower {sorted(towers)}, got {sorted(heads)}")
        _same_structure(self.towers, "towers")
        self.heads = _module_dict(heads, "heads")
        self.shared: Tensor | None = None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = {t: tower(x) for t, tower in self.towers.items()}
        shapes = {f.shape for f in feats.values()}
        self.shared = torch.stack(list(feats.values())) if len(shapes) == 1 else None
        return {t: _run_head(self.heads[t], feats[t], x) for t in self.towers}

    def penalty(self) -> Tensor:
        """Sum of squared differences between corresponding tower parameters over all task pairs."""
        towers = list(self.towers.values())
        total = torch.zeros((), device=next(self.parameters()).device)
        for a, b in itertools.combinations(towers, 2):
            for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
                total = total + (pa - pb).pow(2).sum()
        return total

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        """None: every parameter belongs to one task."""
        return iter(())

    def task_parameters(self, task: str) -> Iterable[nn.Parameter]:
        """One task's tower and head."""
        return itertools.chain(self.towers[task].parameters(), self.heads[task].parameters())


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al. 2018): shared experts, one softmax gate per task (notebook 03).

    An optional shared `stem` (e.g. a CNN trunk giving B×in_dim) feeds both experts and gates; without it the
    input is flattened. Each expert is Linear(in_dim, expert_dim) + ReLU; task t's head (tower) sees
    sum_e g_t(x)_e * expert_e(x). `self.shared` holds the experts' outputs stacked as B×E×expert_dim.
    """

    def __init__(
        self,
        in_dim: int,
        heads: dict[str, nn.Module],
        num_experts: int = 4,
        expert_dim: int = 32,
        stem: nn.Module | None = None,
    ):
        super().__init__()
        _check_positive_int(in_dim, "in_dim")
        _check_positive_int(num_experts, "num_experts")
        _check_positive_int(expert_dim, "expert_dim")
        self.stem = stem if stem is not None else nn.Flatten(1)
        self.experts = nn.ModuleList(
            [nn.Sequential(nn.Linear(in_dim, expert_dim), nn.ReLU()) for _ in range(num_experts)]
        )
        self.heads = _module_dict(heads, "heads")
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, num_experts) for t in heads})
        self.shared: Tensor | None = None

    def _gates(self, h: Tensor) -> dict[str, Tensor]:
        return {t: torch.softmax(g(h), dim=-1) for t, g in self.gates.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.stem(x)
        self.shared = torch.stack([e(h) for e in self.experts], dim=1)
        out = {}
        for t, g in self._gates(h).items():
            out[t] = self.heads[t]((g.unsqueeze(-1) * self.shared).sum(dim=1))
        return out

    @torch.no_grad()
    def gate_weights(self, x: Tensor) -> dict[str, np.ndarray]:
        """Each task's gate probabilities over experts for a batch, B×E numpy arrays (rows sum to 1; notebook 03)."""
        return {t: g.float().cpu().numpy() for t, g in self._gates(self.stem(x)).items()}

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        """The stem and the experts."""
        return itertools.chain(self.stem.parameters(), self.experts.parameters())

    def task_parameters(self, task: str) -> Iterable[nn.Parameter]:
        """One task's gate and head."""
        return itertools.chain(self.gates[task].parameters(), self.heads[task].parameters())


# --------------------------------------------------------------------------------------------- balancers


class Weighted:
    """Fixed weights: backward through sum_t w_t L_t (missing tasks weigh 1; notebook 06)."""

    def __init__(self, weights: dict[str, float] | None = None):
        weights = dict(weights or {})
        for t, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or not math.isfinite(w):
                raise ValueError(f"weights: expected finite numbers >= 0, got {t!r}: {w!r}")
        self.weights = {t: float(w) for t, w in weights.items()}

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        tasks, values = _stack_losses(losses, "Weighted")
        w = [self.weights.get(t, 1.0) for t in tasks]
        ctx.scaled((values * values.new_tensor(w)).sum()).backward()
        return _weights_log(tasks, w)


class Uncertainty(nn.Module):
    """Homoscedastic-uncertainty weighting (Kendall et al. 2018) with learned log-variances (notebook 10).

    Objective: sum_t exp(-s_t) L_t + s_t with s_t = log sigma_t^2, starting at 0. The paper writes
    1/(2 sigma^2) L + log sigma for regression, i.e. half of this; we drop the common factor 1/2 (same minimiser,
    task weights exp(-s_t) start at 1 like a plain sum) and use the same form for every task kind. As an
    nn.Module its `log_vars` are trained by fit's optimiser and saved in checkpoints.
    """

    def __init__(self, tasks: Iterable[str]):
        super().__init__()
        self.tasks = _check_tasks(tasks, "tasks")
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        """sum_t exp(-s_t) L_t + s_t for the given task losses."""
        if set(losses) != set(self.tasks):
            raise ValueError(f"losses: expected the tasks {self.tasks}, got {sorted(losses)}")
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
    """Dynamic Weight Average weights from per-epoch mean losses, oldest first (Liu et al. 2019; notebook 10).

    w_t = T exp(r_t / temperature) / sum_s exp(r_s / temperature) with r_t = L_t(last) / L_t(one before);
    with fewer than two epochs every weight is 1.
    """
    _check_positive(temperature, "temperature")
    if not history:
        return {}
    tasks = list(history[-1])
    if len(history) < 2:
        return dict.fromkeys(tasks, 1.0)
    last, before = history[-1], history[-2]
    for t in tasks:
        if t not in before or not before[t] > 0:
            raise ValueError(f"history: expected a positive loss for task {t!r} in the previous epoch")
    r = torch.tensor([last[t] / before[t] for t in tasks], dtype=torch.float64)
    w = len(tasks) * torch.softmax(r / temperature, dim=0)
    return dict(zip(tasks, w.tolist(), strict=True))


class DWA:
    """Dynamic Weight Average (Liu et al. 2019): tasks whose loss fell least last epoch weigh more (notebook 10).

    Weights change once per epoch, in `on_epoch_end`, from the last two epochs' mean training losses (see
    `dwa_weights`); the first two epochs use equal weights.
    """

    def __init__(self, temperature: float = 2.0):
        self.temperature = _check_positive(temperature, "temperature")
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
        self.weights, self._sums, self._count = dict(state["weights"]), dict(state["sums"]), int(state["count"])


def _pick_layer(model: nn.Module, layer: str | Tensor | None) -> Tensor:
    if isinstance(layer, Tensor):
        return layer
    if isinstance(layer, str):
        named = dict(model.named_parameters())
        if layer not in named:
            raise ValueError(
                f"layer: expected a parameter name of the model (e.g. {next(iter(named), '')!r}), got {layer!r}"
            )
        return named[layer]
    if layer is not None:
        raise ValueError(f"layer: expected a parameter name, a parameter or None, got {type(layer).__name__}")
    weights = [p for p in _shared_params(model) if p.dim() >= 2]
    if not weights:
        raise ValueError("layer: the model has no shared weight with 2+ dims; pass layer=<parameter name>")
    return weights[-1]


class GradNorm:
    """GradNorm (Chen et al. 2018): learn task weights so gradient norms follow relative training rates (notebook 10).

    On one shared weight W (`layer`: a parameter name or tensor; default the last shared weight with 2+ dims)
    it measures G_t = ||grad_W w_t L_t||, sets targets mean(G) * r_t^alpha with r_t = (L_t / L_t(0)) divided by
    its mean over tasks, and takes one Adam step (lr `lr`) on the weights for sum_t |G_t - target_t| (targets held
    constant); weights are then clipped at `floor` and renormalised to sum to T. The network gets the gradient of
    sum_t w_t L_t. Not an nn.Module on purpose: its weights have their own optimiser, not fit's.
    """

    per_task_grads = True  # differentiates each task's loss: under torchrun, fit all-reduces each gradient

    def __init__(self, alpha: float = 1.5, layer: str | Tensor | None = None, lr: float = 0.025, floor: float = 1e-3):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.lr = _check_positive(lr, "lr")
        self.floor = _check_positive(floor, "floor")
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
    """Fast Adaptive Multitask Optimisation (Liu et al. 2023): one backward per step (notebook 10).

    Task weights z = softmax(xi) live on the simplex. The network gets the gradient of
    c * sum_t z_t log L_t with c = 1 / sum_t (z_t / L_t) (so task t's gradient is scaled by c z_t / L_t), which
    aims at an equal rate of decrease of every log loss. At the next step the logits move by one Adam step
    (lr `lr_w`, weight decay `gamma`) along J_z^T delta, delta_t = log L_t(previous step) - log L_t(now): a task
    whose log loss fell less than the z-weighted average gains weight. Consecutive steps see different batches
    here, as in fit; losses must be non-negative.
    """

    def __init__(self, lr_w: float = 0.025, gamma: float = 1e-3, eps: float = 1e-8):
        self.lr_w = _check_positive(lr_w, "lr_w")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"gamma: expected a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.eps = _check_positive(eps, "eps")
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
    """Gradient-level balancing: combine the per-task gradients with an aggregator (notebook 10).

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

    With method "mean" both modes equal a plain backward of sum_t L_t / T. Logs the effective weights "w/<task>"
    (least-squares coefficients of the direction on the task gradients), and with `log_cosine` the pairwise
    cosines "cos/a|b", "conflict" (1.0 if any is negative) and "grad_ratio" (largest / smallest task-gradient
    norm), computed on the shared block (parameters or representation, per mode), so fit's history gives the
    conflict rate per epoch.
    """

    per_task_grads = True  # differentiates each task's loss: under torchrun, fit all-reduces each gradient

    def __init__(self, method: str = "upgrad", mode: str = "auto", seed: int = 0, log_cosine: bool = True):
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
        if mode not in ("auto", "params", "features"):
            raise ValueError(f"mode: expected 'auto', 'params' or 'features', got {mode!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        self.method, self.mode, self.seed, self.log_cosine = method, mode, seed, bool(log_cosine)
        self.last_mode: str | None = None

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        tasks = _check_tasks(losses, "losses (GradAggregation)")
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
            d = aggregate(G, self.method, seed=seed)
            write_grad(params, d * ctx.scale)
        else:
            if not has_shared:
                raise ValueError(
                    "mode: 'features' needs a model that keeps its shared tensor (in the graph) in `shared`"
                )
            G = task_gradients(scaled, z, mode="features", retain_graph=True).float() / ctx.scale  # heads only
            n_shared = G.shape[1]
            d = aggregate(G, self.method, seed=seed)
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
    """Lookahead task affinity (Fifty et al. 2021, TAG) on one batch, as a T×T numpy array (notebook 10).

    Entry [i, j] = 1 - L_j(after) / L_j(before), where "after" follows one plain SGD step of size `lr` on task
    i's loss alone (all trainable parameters). Positive: a step for task i also helps task j. Rows and columns
    follow the order of `loss_fns`; the model's weights and buffers are restored afterwards. Call it in eval
    mode if the model uses dropout, else before/after losses differ by the dropout draw too.
    """
    if not isinstance(loss_fns, dict) or not loss_fns:
        raise ValueError("loss_fns: expected a non-empty dict task -> loss function")
    _check_positive(lr, "lr")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not isinstance(batch[1], dict):
        raise ValueError("batch: expected (x, y) with y a dict task -> target")
    tasks = _check_tasks(loss_fns, "loss_fns")
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


# ------------------------------------------------------------------------------------------- experiments


def _model_tasks(model: nn.Module, x: Tensor) -> list[str]:
    """The tasks a model outputs, read from one forward pass on two inputs in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    finally:
        model.train(was_training)
    if not isinstance(out, dict):
        raise ValueError(f"builders: each model must return a dict task -> output, got {type(out).__name__}")
    return list(out)


def _check_xy(data, name: str) -> tuple[Tensor, dict[str, Tensor]]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], dict)):
        raise ValueError(f"{name}: expected (x, y) with y a dict task -> targets")
    x, y = data
    if not isinstance(x, Tensor) or len(x) < 2:
        raise ValueError(f"{name}: x must be a tensor of at least 2 inputs")
    for t, v in y.items():
        if len(v) != len(x):
            raise ValueError(f"{name}: targets of task {t!r} have {len(v)} rows, x has {len(x)}")
    return x, y


def compare_models(
    builders: dict[str, Callable[[], nn.Module]],
    train: tuple[Tensor, dict[str, Tensor]],
    test: tuple[Tensor, dict[str, Tensor]],
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "auto",
    loss_fns: dict | None = None,
    fit_kwargs: dict[str, dict | Callable[[nn.Module], dict]] | None = None,
    fit_options: dict | None = None,
    curves: bool = False,
) -> dict[str, dict]:
    """Train several models on the same data, batches and seed, and measure each (notebooks 03, 06 and 08).

    Each builder is called right after `torch.manual_seed(seed)` and must return a model whose forward gives a
    dict task -> output; the model trains with `fit` on the tasks it outputs (a single-task model ignores the
    other targets), with the same shuffling for every model. `fit_kwargs[name]` adds fit arguments for one
    model (a regulariser, a balancer, ...): a dict, or a callable model -> dict for stateful objects that
    must be fresh per model; `fit_options` adds fit arguments for every model (e.g. a scheduler). With `curves=True` the test set is evaluated after every epoch (history keys
    "val_*"). Returns {name: {"model", "history", "tasks", "params", "seconds", "train", "test"}}, where
    "train" and "test" are `evaluate` results (mean loss and accuracy per task, in eval mode) on the whole
    training and test sets.
    """
    import time

    from .data import TensorBatches
    from .device import pick_device
    from .train import evaluate, fit

    if not isinstance(builders, dict) or not builders:
        raise ValueError("builders: expected a non-empty dict name -> callable returning a model")
    x, y = _check_xy(train, "train")
    xt, yt = _check_xy(test, "test")
    fit_kwargs = fit_kwargs or {}
    unknown = sorted(set(fit_kwargs) - set(builders))
    if unknown:
        raise ValueError(f"fit_kwargs: names {unknown} are not among the builders {sorted(builders)}")
    dev = pick_device(device)
    results = {}
    for name, build in builders.items():
        if not callable(build):
            raise ValueError(f"builders: entry {name!r} must be a callable returning a model")
        torch.manual_seed(seed)
        model = build()
        tasks = _model_tasks(model, x)
        missing = [t for t in tasks if t not in y or t not in yt]
        if missing:
            raise ValueError(f"model {name!r} outputs tasks {missing} that train or test lacks targets for")
        extra = fit_kwargs.get(name, {})
        extra = {**(fit_options or {}), **(extra(model) if callable(extra) else dict(extra))}
        batches = TensorBatches(x, {t: y[t] for t in tasks}, batch_size, seed=seed, device=dev)
        test_batches = TensorBatches(xt, {t: yt[t] for t in tasks}, 1000, shuffle=False, device=dev)
        start = time.perf_counter()
        history = fit(
            model, batches, epochs=epochs, lr=lr, seed=seed, device=dev, loss_fns=loss_fns,
            val=test_batches if curves else None, progress=False, **extra,
        )
        seconds = time.perf_counter() - start
        train_eval = TensorBatches(x, {t: y[t] for t in tasks}, 1000, shuffle=False, device=dev)
        results[name] = {
            "model": model,
            "history": history,
            "tasks": tasks,
            "params": param_count(model),
            "seconds": seconds,
            "train": evaluate(model, train_eval, loss_fns, device=dev),
            "test": evaluate(model, test_batches, loss_fns, device=dev),
        }
    return results


def size_sweep(
    builders: dict[str, Callable[[], nn.Module]],
    data: Callable[[int], tuple[tuple[Tensor, dict], tuple[Tensor, dict]]],
    sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    loss_fns: dict | None = None,
    fit_options: dict | None = None,
    curve_size: int | None = None,
) -> list[dict]:
    """Data-efficiency sweep: models trained on nested subsets of several sizes, for several seeds (notebook 06).

    For every seed, `data(seed)` returns a training pool and a test set ((x, y) pairs, y a dict task -> targets);
    for every n in `sizes` the models train (with `compare_models`) on the pool's first n items for about
    `steps` optimiser steps, i.e. epochs = max(1, round(steps * batch_size / n)), so small sets are not
    under-trained; `fit_options` adds fit arguments for every run. At n == `curve_size` the test metrics are recorded after every epoch. Returns one row per
    (seed, n, model): {"model", "n", "seed", "epochs", "params", "seconds", "train", "test", "history"}.
    """
    sizes = [_check_positive_int(n, "sizes") for n in sizes]
    seeds = list(seeds)
    if not sizes or not seeds:
        raise ValueError("sizes and seeds: expected non-empty lists")
    _check_positive_int(steps, "steps")
    _check_positive_int(batch_size, "batch_size")
    if not callable(data):
        raise ValueError("data: expected a callable seed -> ((x, y) pool, (x, y) test)")
    rows = []
    for seed in seeds:
        pool, test = data(seed)
        x, y = _check_xy(pool, "data(seed) pool")
        if max(sizes) > len(x):
            raise ValueError(f"sizes: the largest size {max(sizes)} exceeds the pool of {len(x)} items")
        for n in sizes:
            epochs = max(1, round(steps * batch_size / n))
            results = compare_models(
                builders, (x[:n], {t: v[:n] for t, v in y.items()}), test, epochs=epochs, lr=lr,
                batch_size=batch_size, seed=seed, device=device, loss_fns=loss_fns, fit_options=fit_options,
                curves=n == curve_size,
            )
            for name, r in results.items():
                rows.append({
                    "model": name, "n": n, "seed": seed, "epochs": epochs, "params": r["params"],
                    "seconds": r["seconds"], "train": r["train"], "test": r["test"], "history": r["history"],
                })
    return rows
