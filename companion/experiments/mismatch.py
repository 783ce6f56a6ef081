"""When transfer goes wrong: corrupted and small sources, shifted targets, the negative transfer gap.

- `corrupt_labels` replaces an exact fraction of labels by a *different* class drawn uniformly: with k classes,
  a fraction (k - 1) / k leaves the labels independent of the images (pure noise).
- `noisy_source` trains a course source network on a dataset with corrupted labels and/or fewer images, once,
  then loads it from a cached checkpoint (like `transfer.source_model`, which has no label noise).
- `target_sweep` runs `strategies.tuned_strategies` for several sources and target sizes (the same labelled
  images, learning-rate grid and steps for every source and strategy of a seed), optionally on a shifted target.
- `negative_transfer_gap` is Wang et al. (2019)'s gap, acc(scratch) - acc(transfer), seed by seed: positive
  means the source made the target worse than training from scratch.
- `domain_adaptation` compares, from one source network, source-only training, DANN (Ganin et al. 2016, with
  unlabelled target images) and fine-tuning on a few labelled target images, each with the same steps and
  learning-rate grid (rate chosen on a labelled validation split).
- `by_cell` regroups sweep rows into per-seed lists for `claims.separated` and the figures.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..batches import TensorBatches, subsample_per_class
from ..dann import train_dann
from ..device import pick_device
from ..evaluation import evaluate
from ..sources import cached_source
from ..train import fit
from .protocol import tune_each_seed
from .strategies import tuned_strategies
from .verdicts import paired

__all__ = [
    "ADAPTATIONS",
    "by_cell",
    "corrupt_labels",
    "domain_adaptation",
    "negative_transfer_gap",
    "noisy_source",
    "target_sweep",
]

_VERSION = 1  # bump to invalidate every cached noisy source


def corrupt_labels(y: Tensor, fraction: float, *, num_classes: int | None = None, seed: int = 0) -> Tensor:
    """A copy of integer labels `y` with round(fraction * n) of them, chosen at random, replaced by a different
    class drawn uniformly among the other num_classes - 1.

    The changed positions and new labels depend only on `seed`. With 10 classes, fraction 0.9 makes every class
    equally likely whatever the true one (labels carry no information); fraction 0 returns an unchanged copy.
    """
    if not isinstance(y, Tensor) or y.ndim != 1 or y.dtype not in (torch.int64, torch.int32):
        raise ValueError("y must be a 1-D tensor of integer class labels")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    k = int(y.max()) + 1 if num_classes is None else num_classes
    if not isinstance(k, int) or k < 2 or (len(y) and int(y.max()) >= k):
        raise ValueError(f"num_classes must be an integer >= 2 above every label, got {num_classes!r}")
    g = torch.Generator().manual_seed(seed)
    n_bad = round(fraction * len(y))
    idx = torch.randperm(len(y), generator=g)[:n_bad]
    offset = torch.randint(1, k, (n_bad,), generator=g)  # 1..k-1: never the same class
    out = y.clone()
    out[idx] = (y[idx] + offset.to(y.dtype)) % k
    return out


def noisy_source(
    name: str,
    dataset: str,
    *,
    noise: float = 0.0,
    n: int | None = None,
    epochs: int = 3,
    min_steps: int = 0,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 128,
    size: int | None = None,
    root: str | Path | None = None,
    device: str | torch.device = "auto",
) -> tuple[nn.Module, dict]:
    """A source network trained on `dataset` with a fraction `noise` of corrupted labels, cached.

    n: training images per class (None: all), drawn before the labels are corrupted. Training runs `epochs`
    passes, or more where a small source needs them to make at least `min_steps` optimiser steps (so that a
    small source is not also an under-trained one). The checkpoint
    `<root or data_root()>/cache/noisy_sources/<key>.pt` is keyed by the whole configuration and read with
    weights_only (`transfer.cached_source`). Returns the model (CPU, eval mode) and {"test_acc" (clean test
    labels), "steps", "key", "path", "cached"}.
    """
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 1:
        raise ValueError(f"noise must be a number in [0, 1], got {noise!r}")
    for label, value in (("epochs", epochs), ("batch_size", batch_size)) + (
        (("n", n),) if n is not None else ()
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if not isinstance(min_steps, int) or isinstance(min_steps, bool) or min_steps < 0:
        raise ValueError(f"min_steps must be a non-negative integer, got {min_steps!r}")
    config = dict(
        model=name,
        dataset=dataset,
        noise=float(noise),
        n=n,
        epochs=epochs,
        min_steps=min_steps,
        seed=seed,
        lr=float(lr),
        batch_size=batch_size,
        size=size,
        version=_VERSION,
    )

    def relabel(y: Tensor, num_classes: int) -> Tensor:
        return corrupt_labels(y, float(noise), num_classes=num_classes, seed=seed)

    return cached_source(
        config, "noisy_sources", root=root, device=device, relabel=relabel, min_steps=min_steps
    )


def target_sweep(
    sources: Mapping[str, nn.Module],
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    per_class: Sequence[int],
    strategies: Iterable[str],
    seeds: Iterable[int],
    lr_grid: Sequence[float],
    scratch: bool = True,
    transform: Callable[[Tensor], Tensor] | None = None,
    **kw,
) -> list[dict]:
    """`tuned_strategies` for every source and target size; rows gain "source" and "per_class".

    Every source, strategy and size of a seed sees the same labelled target images, the same learning-rate
    grid (rate chosen on `val`) and the same number of steps. With `scratch`, one extra row per size and seed
    has source "none", strategy "scratch" (it uses no source weights, only the architecture of the first
    source). `transform` (e.g. a rotation) is applied to the images of train, val and test: a shifted target.
    Other keyword arguments (min_steps, batch_size, bn, device, extra_tests) go to `tuned_strategies`;
    `extra_tests` are used as given (never transformed): e.g. shifted test sets never trained on, whose
    accuracies the rows gain as "test_acc/<name>".
    """
    if not sources:
        raise ValueError("sources must name at least one source network")
    names = list(strategies)
    seed_list = list(seeds)

    def moved(pair):
        return (transform(pair[0]), pair[1]) if transform is not None else pair

    train, val, test = moved(train), moved(val), moved(test)
    rows = []
    for k in per_class:
        common = dict(lr_grid=lr_grid, seeds=seed_list, per_class=k, **kw)
        if scratch:
            first = next(iter(sources.values()))
            for row in tuned_strategies(first, train, val, test, strategies=["scratch"], **common):
                rows.append(dict(row, source="none", per_class=k))
        for label, net in sources.items():
            for row in tuned_strategies(net, train, val, test, strategies=names, **common):
                rows.append(dict(row, source=label, per_class=k))
    return rows


def by_cell(rows: Iterable[dict], *keys: str, value: str = "test_acc") -> dict[tuple, list[float]]:
    """{(row[k] for k in keys): [value at each seed, in the rows' order]} from `target_sweep` rows."""
    out: dict[tuple, list[float]] = {}
    for row in rows:
        missing = [k for k in (*keys, value) if k not in row]
        if missing:
            raise ValueError(f"every row must have {missing} entries, got one with {sorted(row)}")
        out.setdefault(tuple(row[k] for k in keys), []).append(float(row[value]))
    return out


def negative_transfer_gap(scratch: Sequence[float], transfer: Sequence[float]) -> dict:
    """Wang et al. (2019)'s negative transfer gap, acc(scratch) - acc(transfer), paired by seed.

    Returns {"gaps" (per seed), "mean", "ci" (95 % paired interval of the gap), "negative": the source hurt (the
    interval lies above zero), "positive": it helped (below zero), "verdict": `verdicts.paired(scratch, transfer)`}.
    """
    hurt = paired(scratch, transfer)
    return {
        "gaps": hurt["diffs"],
        "mean": hurt["effect"],
        "ci": hurt["ci"],
        "negative": hurt["verdict"] == "supported",
        "positive": hurt["verdict"] == "contradicted",
        "verdict": hurt,
    }


ADAPTATIONS = ("source_only", "dann", "finetune_few")


def domain_adaptation(
    source: nn.Module,
    source_data: tuple[Tensor, Tensor],
    target_pool: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    seeds: Iterable[int],
    lr_grid: Sequence[float],
    steps: int,
    per_class: int,
    methods: Iterable[str] = ADAPTATIONS,
    batch_size: int = 64,
    max_lambda: float = 1.0,
    device: str | torch.device = "auto",
    workers: int | str | None = None,
) -> list[dict]:
    """Source-only training, DANN and few-label fine-tuning from one source network, rates tuned alike.

    Every method starts from a copy of `source` (its head kept: same label space) and makes `steps` optimiser
    steps at each rate of `lr_grid`; `protocol.tune` keeps the rate with the best accuracy on the labelled `val`
    split, and the test accuracy of that rate is reported.

    - "dann": `dann.train_dann` on the labelled `source_data` and the unlabelled images of `target_pool`
      (its labels are never read), adversarial weight `max_lambda * dann_lambda(progress)`.
    - "source_only": the same call with max_lambda = 0: the same source batches, the same target batches through
      the trunk (so BatchNorm's statistics see both domains) and the same discriminator, but no reversed gradient.
    - "finetune_few": `per_class` labelled images per class drawn from `target_pool` with the seed, plain `fit`.

    Rows: {method, seed, lr (chosen), val_acc, test_acc, val_scores}, seeds in order, methods in the given order.
    Every (seed, method, rate) run is independent: they run in `workers` processes (`protocol.parallel_map`, the
    same numbers whatever the count).
    """
    names, grid, seed_list = list(methods), list(lr_grid), list(seeds)
    for label, values in (("methods", names), ("lr_grid", grid), ("seeds", seed_list)):
        if not values:
            raise ValueError(f"{label} must name at least one value, got an empty list")
    bad = [m for m in names if m not in ADAPTATIONS]
    if bad:
        raise ValueError(f"methods must be among {list(ADAPTATIONS)}, got {bad[0]!r}")
    for lr in grid:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr_grid must hold positive numbers, got {lr!r}")
    for label, value, low in (
        ("steps", steps, 1),
        ("per_class", per_class, 1),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seed_list):
        raise ValueError(f"seeds must be non-negative integers, got {seed_list!r}")
    dev = pick_device(device)
    val_b = TensorBatches(*val, 512, shuffle=False, device=dev)
    test_b = TensorBatches(*test, 512, shuffle=False, device=dev)

    def run(item: tuple[int, str, float]) -> dict:
        seed, method, lr = item
        model = copy.deepcopy(source)
        if method == "finetune_few":
            xs, ys = subsample_per_class(*target_pool, per_class, seed=seed)
            batches = TensorBatches(xs, ys, min(batch_size, len(xs)), seed=seed, device=dev)
            fit(
                model,
                batches,
                epochs=-(-steps // len(batches)),
                max_steps=steps,
                lr=lr,
                seed=seed,
                device=dev,
                progress=False,
            )
        else:
            lam = max_lambda if method == "dann" else 0.0
            train_dann(
                model,
                source_data,
                target_pool[0],
                epochs=-(-steps * batch_size // len(source_data[1])),
                max_steps=steps,
                batch_size=batch_size,
                lr=lr,
                max_lambda=lam,
                seed=seed,
                device=dev,
                progress=False,
            )
        return {
            "test_acc": evaluate(model, test_b, device=dev)["acc"],
            "val_acc": evaluate(model, val_b, device=dev)["acc"],
        }

    picked = tune_each_seed(run, seed_list, names, grid, workers=workers)
    rows = []
    for seed in seed_list:
        for method in names:
            best, scores, result = picked[seed, method]
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "lr": best,
                    "val_acc": scores[best],
                    "test_acc": result["test_acc"],
                    "val_scores": scores,
                }
            )
    return rows
