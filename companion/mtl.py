"""Multi-task architectures: task heads, separate models, hard sharing, cross-stitch, L2-tied towers and MMoE.

Architectures return a dict task -> output and keep the shared representation of their last forward in
`self.shared` (still in the autograd graph), so that a balancer can differentiate the task losses with respect
to it. The loss balancers live in `companion.balancers` and the experiment runners (`compare_models`,
`size_sweep`) in `companion.experiments.runners`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import checks
from .models import count_params

__all__ = [
    "CrossStitch",
    "HardSharing",
    "L2Tied",
    "MMoE",
    "MaskDecoder",
    "Separate",
    "conv_tower",
    "head",
    "param_count",
    "separate_models",
]

HEAD_KINDS = ("classification", "regression", "multilabel", "mask")


# ----------------------------------------------------------------------------------------------- helpers


class _Pool(nn.Module):
    """Global average pooling of B×C×H×W maps to B×C; vectors pass through unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


class MaskDecoder(nn.Module):
    """A small dense head: 3×3 conv, ReLU, 1×1 conv to `out` channels per pixel.

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
    """A task head: linear (or one-hidden-layer MLP) for vector tasks, a small decoder for masks.

    "classification" gives class logits, "regression" raw values, "multilabel" one logit per label; these pool
    B×C×H×W maps to B×C first, so they sit on vector or spatial trunks alike. "mask" gives a `MaskDecoder`.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
    checks.integer("in_dim", in_dim)
    checks.integer("out", out)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise ValueError(f"hidden must be an int >= 0 (0 means a linear head), got {hidden!r}")
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
    checks.task_names(what, mods)
    for name, mod in mods.items():
        if not isinstance(mod, nn.Module):
            raise ValueError(f"{what}: entry {name!r} must be an nn.Module, got {type(mod).__name__}")
    return nn.ModuleDict(mods)


param_count = (
    count_params  # the one parameter counter (companion.models), under the name the multi-task code uses
)


class Separate(nn.ModuleDict):
    """T independent single-task models side by side, callable like a multi-task model.

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
                    raise ValueError(
                        f"model for task {task!r} returned a dict without that task: {sorted(y)}"
                    )
                y = y[task]
            out[task] = y
        return out


def separate_models(make_model: Callable[[str], nn.Module], tasks: Iterable[str]) -> Separate:
    """One independent single-task model per task, `make_model(task)`, as a `Separate`."""
    if not callable(make_model):
        raise ValueError(f"make_model must be a callable task -> nn.Module, got {type(make_model).__name__}")
    models = {t: make_model(t) for t in checks.task_names("tasks", tasks)}
    return Separate(_module_dict(models, "make_model"))


# ----------------------------------------------------------------------------------------- architectures


class HardSharing(nn.Module):
    """Hard parameter sharing: one shared trunk, one head per task.

    `trunk` maps images to B×D features (e.g. `timm.create_model("resnet10t", num_classes=0, in_chans=1)`).
    When a mask head is present (or `spatial=True`) the trunk must give B×C×H×W maps instead: its
    `forward_features` is used if it has one (timm models do), else its forward. Vector heads from `head()` pool
    the maps themselves, and mask outputs are resized to the input's height and width.
    """

    def __init__(self, trunk: nn.Module, heads: dict[str, nn.Module], spatial: bool | None = None):
        super().__init__()
        if not isinstance(trunk, nn.Module):
            raise ValueError(f"trunk must be an nn.Module, got {type(trunk).__name__}")
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


def mlp_trunk(in_features: int, width: int = 128) -> nn.Sequential:
    """A small fully connected trunk: flatten, then two linear layers of `width` units, each with a ReLU.

    Built in that order from torch's default initialisation, so the same seed gives the same weights.
    """
    checks.integer("in_features", in_features)
    checks.integer("width", width)
    return nn.Sequential(
        nn.Flatten(1), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
    )


def mlp_hard_sharing(
    in_features: int, heads: dict[str, tuple[str, int]], width: int = 128, hidden: int = 64
) -> HardSharing:
    """Hard sharing on `mlp_trunk(in_features, width)`, one `head(kind, width, out, hidden)` per task.

    `heads` maps a task to (kind, out), e.g. {"left": ("classification", 10)}. The trunk is built first, then
    the heads in the dict's order, so after `torch.manual_seed` every weight is fixed by the seed.
    """
    if not isinstance(heads, dict) or not heads:
        raise ValueError(f"heads must be a non-empty dict task -> (kind, out), got {heads!r}")
    for task, spec in heads.items():
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(f"heads: entry {task!r} must be a (kind, out) pair, got {spec!r}")
    trunk = mlp_trunk(in_features, width)
    return HardSharing(trunk, {t: head(kind, width, out, hidden) for t, (kind, out) in heads.items()})


def conv_tower(in_chans: int, widths: Sequence[int]) -> nn.ModuleList:
    """A small CNN as a list of stages (3×3 conv, batch norm, ReLU, 2×2 max-pool) for soft sharing."""
    checks.integer("in_chans", in_chans)
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
    stages, prev = [], in_chans
    for w in widths:
        checks.integer("widths", w)
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
    """Cross-stitch networks (Misra et al. 2016): one tower per task, mixed after every stage.

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
            raise ValueError(f"towers must be a dict task -> list of stages, got {type(towers).__name__}")
        self.tasks = checks.task_names("towers", towers)
        if set(heads) != set(self.tasks):
            raise ValueError(f"heads must have one head per tower {self.tasks}, got {sorted(heads)}")
        if isinstance(init_self, bool) or not isinstance(init_self, (int, float)) or not 0 <= init_self <= 1:
            raise ValueError(f"init_self must be a number in [0, 1], got {init_self!r}")
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
        """The T×T mixing matrices, one per stage, as numpy arrays (rows: receiving task)."""
        return [s.detach().cpu().numpy().copy() for s in self.stitches]

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        """The cross-stitch units, the only parameters shared by construction."""
        return self.stitches.parameters()

    def task_parameters(self, task: str) -> Iterable[nn.Parameter]:
        """One task's tower and head."""
        return itertools.chain(self.towers[task].parameters(), self.heads[task].parameters())


class L2Tied(nn.Module):
    """Soft sharing by regularisation: separate towers pulled together by an L2 penalty.

    `penalty()` is the sum over task pairs and corresponding parameters of ||theta_i - theta_j||^2. Add it to the
    objective through fit's regulariser hook, e.g. `fit(..., regularizer=lambda m: 1e-3 * m.penalty())`.
    Nothing is hard-shared, so `shared_parameters()` is empty; `self.shared` stacks the towers' outputs (T×B×...),
    and each task's loss depends on its own slice only.
    """

    def __init__(self, towers: dict[str, nn.Module], heads: dict[str, nn.Module]):
        super().__init__()
        self.towers = _module_dict(towers, "towers")
        if set(heads) != set(towers):
            raise ValueError(f"heads must have one head per tower {sorted(towers)}, got {sorted(heads)}")
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
    """Multi-gate mixture of experts (Ma et al. 2018): shared experts, one softmax gate per task.

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
        checks.integer("in_dim", in_dim)
        checks.integer("num_experts", num_experts)
        checks.integer("expert_dim", expert_dim)
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
        """Each task's gate probabilities over experts for a batch, B×E numpy arrays (rows sum to 1)."""
        return {t: g.float().cpu().numpy() for t, g in self._gates(self.stem(x)).items()}

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        """The stem and the experts."""
        return itertools.chain(self.stem.parameters(), self.experts.parameters())

    def task_parameters(self, task: str) -> Iterable[nn.Parameter]:
        """One task's gate and head."""
        return itertools.chain(self.gates[task].parameters(), self.heads[task].parameters())
