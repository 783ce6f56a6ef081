"""The decision map's sweep: task pairs, the five approaches trained on one budget, and `sweep`.

- `synthetic_pair` / `fashion_pair` build one source task and one target task (the synthetic relatedness knob of
  `make_tasks`, or Fashion-MNIST's coarse groups as the source for its fine classes).
- `run_cell` trains the five approaches on one (pair, labels per class, seed) with the same steps and the same
  learning-rate grid chosen on a validation split: the target task alone, transfer by linear probe and by
  fine-tuning, multi-task learning (hard sharing, both tasks from scratch) and pretrain-then-multi-task.
- `sweep` repeats it over labels per class x relatedness x seeds and returns the map's raw numbers as plain data
  (`companion.advice` reads them: `decision_map`, `plot_map`, `cost_table`, `advise`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks
from ..batches import subsample_per_class
from ..data import fashion_groups, load_dataset
from ..mtl import HardSharing
from ..synthetic import make_tasks
from .protocol import per_seed, tune

METHODS = ("alone", "probe", "finetune", "mtl", "pretrain_mtl")


# ------------------------------------------------------------------------------------------- task pairs


@dataclass
class TaskPair:
    """A source task (many labels) and a target task (labels drawn per class from `pool`), with splits."""

    name: str
    relatedness: float | None
    source: tuple[Tensor, Tensor]
    pool: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    source_test: tuple[Tensor, Tensor]
    classes: dict[str, int] = field(default_factory=dict)


def synthetic_pair(
    relatedness: float,
    *,
    seed: int,
    n_source: int = 2000,
    n_pool: int = 1200,
    n_val: int = 20,
    n_test: int = 1000,
    size: int = 16,
    classes: int = 4,
    factors: tuple[str, str] = ("scale", "shape"),
) -> TaskPair:
    """Source task `factors[0]` and target task `factors[1]` of `make_tasks`, tied by `relatedness`.

    Source training images, the target's labelled pool, its validation split (`n_val` per class), and the two test
    sets are independent draws (different seeds derived from `seed`), all at the same relatedness.
    """
    for name, v in (("n_source", n_source), ("n_pool", n_pool), ("n_val", n_val), ("n_test", n_test)):
        checks.integer(name, v)
    src, tgt = factors

    def draw(n: int, k: int) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = make_tasks(
            n,
            seed=10_000 * seed + k,
            num_tasks=2,
            relatedness=relatedness,
            classes=classes,
            size=size,
            factors=(src, tgt),
        )
        return x, y

    xs, ys = draw(n_source, 1)
    xp, yp = draw(n_pool, 2)
    xv, yv = draw(n_val * classes * 3, 3)
    xv, yv = subsample_per_class(xv, yv[tgt], n_val, seed=seed)
    xt, yt = draw(n_test, 4)
    return TaskPair(
        f"r={relatedness:g}",
        float(relatedness),
        (xs, ys[src]),
        (xp, yp[tgt]),
        (xv, yv),
        (xt, yt[tgt]),
        (xt, yt[src]),
        {"source": classes, "target": classes},
    )


def fashion_pair(
    *,
    seed: int,
    n_source: int = 2000,
    n_val: int = 20,
    n_test: int = 1000,
    size: int = 16,
    root: str | os.PathLike | None = None,
) -> TaskPair:
    """Fashion-MNIST: coarse groups (tops, footwear, other) as the source, the 10 fine classes as the target.

    The source images and the target's pool are disjoint parts of the training split; tests from the test split.
    """
    for name, v in (("n_source", n_source), ("n_val", n_val), ("n_test", n_test)):
        checks.integer(name, v)
    x, y = load_dataset("fashion_mnist", "train", root, size=size)
    xt, yt = load_dataset("fashion_mnist", "test", root, size=size)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    src, rest = perm[:n_source], perm[n_source:]
    xv, yv = subsample_per_class(x[rest[:4000]], y[rest[:4000]], n_val, seed=seed)
    pool = rest[4000:12000]
    test = torch.randperm(len(yt), generator=g)[:n_test]
    return TaskPair(
        "fashion coarse->fine",
        None,
        (x[src], fashion_groups(y[src])["coarse"]),
        (x[pool], y[pool]),
        (xv, yv),
        (xt[test], yt[test]),
        (xt[test], fashion_groups(yt[test])["coarse"]),
        {"source": 3, "target": 10},
    )


# ------------------------------------------------------------------------------------------- training


def mlp(in_dim: int, hidden: Sequence[int] = (128, 64)) -> nn.Sequential:
    """The sweep's tiny trunk: flatten, then Linear + ReLU layers."""
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers)


def model_for(pair: TaskPair, hidden: Sequence[int] = (128, 64), seed: int = 0) -> HardSharing:
    """The sweep's model for a pair: the `mlp` trunk and one linear head per task, seeded."""
    torch.manual_seed(seed)
    in_dim = int(np.prod(pair.source[0].shape[1:]))
    return HardSharing(mlp(in_dim, hidden), {t: nn.Linear(hidden[-1], k) for t, k in pair.classes.items()})


def _steps(
    model: HardSharing,
    batches: dict[str, tuple[Tensor, Tensor]],
    steps: int,
    lr: float,
    *,
    seed: int,
    params: Sequence[nn.Parameter] | None = None,
    batch_size: int = 64,
) -> None:
    """`steps` AdamW steps; each step sums the cross-entropy of one random batch of every task in `batches`."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(
        list(params) if params is not None else model.parameters(), lr=lr, weight_decay=1e-4
    )
    model.train()
    for _ in range(steps):
        feats_loss = 0.0
        for task, (x, y) in batches.items():
            idx = torch.randint(len(y), (min(batch_size, len(y)),), generator=g)
            out = model.heads[task](model.trunk(x[idx]))
            feats_loss = feats_loss + F.cross_entropy(out, y[idx])
        opt.zero_grad(set_to_none=True)
        feats_loss.backward()
        opt.step()


@torch.no_grad()
def _acc(model: HardSharing, task: str, data: tuple[Tensor, Tensor]) -> float:
    model.eval()
    x, y = data
    return float((model.heads[task](model.trunk(x)).argmax(1) == y).float().mean())


def pretrain(
    pair: TaskPair, *, seed: int, steps: int, lr: float = 3e-3, hidden: Sequence[int] = (128, 64)
) -> HardSharing:
    """The source model every transfer approach starts from: the source task alone for `steps` steps."""
    model = model_for(pair, hidden, seed)
    _steps(model, {"source": pair.source}, steps, lr, seed=seed)
    return model


def run_cell(
    pair: TaskPair,
    per_class: int,
    *,
    seed: int,
    steps: int,
    source_steps: int,
    lr_grid: Sequence[float],
    source_model: HardSharing | None = None,
    hidden: Sequence[int] = (128, 64),
    methods: Sequence[str] = METHODS,
) -> dict[str, dict[str, float]]:
    """Train every approach on `per_class` labelled target examples per class.

    Budget, the same for all: `source_steps + steps` optimiser steps in all, each method's learning rate chosen
    from `lr_grid` on the target's validation split. Transfer and pretrain-then-multi-task start from
    `source_model` (`source_steps` on the source), then take `steps`; multi-task from scratch takes
    `source_steps + steps` joint steps; the target alone takes `source_steps + steps` steps. Returns
    {method: {"target": test accuracy, "source": source test accuracy, "lr": chosen, "val": the target's
    validation accuracy at that rate}}; for the target alone and the probe the source task is served by the
    untouched source model (two models, or one trunk and two heads).
    """
    checks.integer("per_class", per_class)
    checks.integer("steps", steps)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods must be names from {METHODS}, got {unknown}")
    source_model = source_model or pretrain(pair, seed=seed, steps=source_steps, hidden=hidden)
    x, y = subsample_per_class(*pair.pool, per_class, seed=seed)
    target = {"target": (x, y)}
    both = {"source": pair.source, "target": (x, y)}
    kept_source = _acc(source_model, "source", pair.source_test)

    def train(method: str, lr: float) -> HardSharing:
        s = seed + 7919 * (1 + METHODS.index(method))
        if method == "alone":
            model = model_for(pair, hidden, s)
            _steps(model, target, source_steps + steps, lr, seed=s)
        elif method == "mtl":
            model = model_for(pair, hidden, s)
            _steps(model, both, source_steps + steps, lr, seed=s)
        else:
            model = copy.deepcopy(source_model)
            torch.manual_seed(s)
            model.heads["target"].reset_parameters()
            if method == "probe":
                _steps(model, target, steps, lr, seed=s, params=model.heads["target"].parameters())
            else:
                _steps(model, target if method == "finetune" else both, steps, lr, seed=s)
        return model

    out = {}
    for method in methods:
        models: dict[float, HardSharing] = {}

        def score(lr: float, method: str = method, models: dict = models) -> float:
            models[lr] = train(method, lr)
            return _acc(models[lr], "target", pair.val)

        best, scores = tune(score, lr_grid, name="lr")
        model = models[best]
        src = kept_source if method in ("alone", "probe") else _acc(model, "source", pair.source_test)
        out[method] = {
            "target": _acc(model, "target", pair.test),
            "source": src,
            "lr": float(best),
            "val": float(scores[best]),
        }
    return out


def sweep(
    pairs: Callable[[int], Sequence[TaskPair]],
    per_class: Sequence[int],
    seeds: Sequence[int],
    *,
    steps: int,
    source_steps: int,
    lr_grid: Sequence[float],
    hidden: Sequence[int] = (128, 64),
    progress: bool = True,
    workers: int | str | None = None,
) -> dict:
    """The decision map's raw numbers as plain data: `pairs(seed)` gives the columns for one seed. The seeds run
    through `protocol.per_seed` (`workers` processes, one torch thread each; the same numbers as one by one).

    Returns {"columns": [{"name", "relatedness"}], "per_class", "seeds", "methods", "steps", "source_steps",
    "lr_grid", "scores": {column: {per_class: {method: {"target", "source", "lr", "val": [per seed]}}}}}.
    """
    per_class = [checks.integer("per_class", n) for n in per_class]
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    data: dict = {
        "per_class": per_class,
        "seeds": seeds,
        "methods": list(METHODS),
        "steps": steps,
        "source_steps": source_steps,
        "lr_grid": list(lr_grid),
        "hidden": list(hidden),
        "scores": {},
    }

    def one_seed(seed: int) -> tuple[list[dict], list[tuple[str, int, dict]]]:
        cols, cells = pairs(seed), []
        for p in cols:
            src = pretrain(p, seed=seed, steps=source_steps, hidden=hidden)
            for n in per_class:
                cell = run_cell(
                    p,
                    n,
                    seed=seed,
                    steps=steps,
                    source_steps=source_steps,
                    lr_grid=lr_grid,
                    source_model=src,
                    hidden=hidden,
                )
                cells.append((p.name, n, cell))
        return [{"name": p.name, "relatedness": p.relatedness} for p in cols], cells

    for columns, cells in per_seed(one_seed, seeds, progress=progress, desc="decision map", workers=workers):
        data["columns"] = columns
        for name, n, cell in cells:
            slot = data["scores"].setdefault(name, {}).setdefault(str(n), {})
            for m, v in cell.items():
                for k in ("target", "source", "lr", "val"):
                    slot.setdefault(m, {}).setdefault(k, []).append(v[k])
    return data
