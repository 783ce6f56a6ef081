"""Fair experiment loops over transfer strategies and Yosinski's copy-n-stages controls.

- `tuned_strategies` gives every strategy (scratch, linear probe, fine-tune, LP-FT, ...) the same learning-rate
  grid, picks each one's rate on a validation split (`protocol.tune`, never the test set) and reports the test
  accuracy of that choice, seed by seed: a comparison that credits only the strategy.
- `copy_stages` is one cell of Yosinski et al. (2014)'s experiment: copy the first n stages of any network
  (a trained source, a random network, or the target's own base network), frozen or not, train the rest.
- `base_network` trains the self-transfer base ("BnB": a network trained on the target task itself), the
  control that separates co-adaptation of neighbouring layers from the specificity of features.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import checks
from ..batches import TensorBatches, subsample_per_class
from ..device import pick_device
from ..evaluation import evaluate
from ..train import fit
from ..transfer import STRATEGIES, adapt, check_pair, layer_groups, prepare, transfer_blocks
from .protocol import tune_each_seed

__all__ = ["base_network", "copy_stages", "random_network", "summarize", "tuned_strategies"]


def _epochs(n_batches: int, min_steps: int) -> int:
    """Passes over a set of n_batches batches needed for at least min_steps optimiser steps (and at least 1)."""
    return max(1, -(-min_steps // n_batches))


def tuned_strategies(
    source: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    strategies: Iterable[str],
    lr_grid: Sequence[float],
    seeds: Iterable[int],
    per_class: int,
    min_steps: int = 80,
    batch_size: int = 50,
    bn: str = "eval",
    device: str | torch.device = "auto",
    extra_tests: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    workers: int | str | None = None,
) -> list[dict]:
    """Every strategy with the same learning-rate grid, each rate chosen on `val`, reported on `test`.

    For each seed, `per_class` labelled images of every class are drawn from `train` (the same images for every
    strategy of that seed); each strategy adapts a copy of `source` once per rate of `lr_grid` for the same number
    of optimiser steps (at least `min_steps`; LP-FT spends the first half probing, the second fine-tuning, both at
    the rate), and `protocol.tune` keeps the rate with the best validation accuracy (ties: the earlier rate).
    Keep `val` disjoint from `train`. Rows: {strategy, seed, lr (chosen), val_acc, test_acc, val_scores}.
    `extra_tests` {name: (images, labels)}: more test sets (e.g. shifted ones never trained on),
    each adapted model is also evaluated on them and rows gain "test_acc/<name>" (at the rate chosen on `val`).
    Every (seed, strategy, rate) run is independent: they run in `workers` processes (`protocol.parallel_map`,
    the same numbers whatever the count).
    """
    x, y = check_pair("train", train)
    dev = pick_device(device)
    val_batches = TensorBatches(*check_pair("val", val), 512, shuffle=False, device=dev)
    test_batches = TensorBatches(*check_pair("test", test), 512, shuffle=False, device=dev)
    if extra_tests is not None and not isinstance(extra_tests, Mapping):
        checks.fail("extra_tests", "a mapping of names to (images, labels) pairs", extra_tests)
    extra = {
        str(name): TensorBatches(*check_pair(f"extra_tests[{name!r}]", pair), 512, shuffle=False, device=dev)
        for name, pair in (extra_tests or {}).items()
    }
    names, grid, seed_list = list(strategies), list(lr_grid), list(seeds)
    for label, values in (("strategies", names), ("lr_grid", grid), ("seeds", seed_list)):
        if not values:
            raise ValueError(f"{label} must name at least one value, got an empty list")
    for s in names:
        if s not in STRATEGIES:
            raise ValueError(f"strategies must be among {list(STRATEGIES)}, got {s!r}")
    for lr in grid:
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr_grid must hold positive numbers, got {lr!r}")
    for s in seed_list:
        checks.integer("seeds", s, 0)
    checks.integer("per_class", per_class)
    checks.integer("min_steps", min_steps, 0)
    checks.integer("batch_size", batch_size)
    num_classes = int(y.max()) + 1

    def run(item: tuple[int, str, float]) -> dict:
        seed, strategy, lr = item
        xs, ys = subsample_per_class(
            x, y, per_class, seed=seed
        )  # the same images for every strategy and rate
        batches = TensorBatches(xs, ys, min(batch_size, len(xs)), seed=seed, device=dev)
        n_epochs = _epochs(len(batches), min_steps)
        model = copy.deepcopy(source)
        adapt(
            model,
            strategy,
            batches,
            epochs=max(n_epochs, 2) if strategy == "lp_ft" else n_epochs,
            num_classes=num_classes,
            bn=bn,
            lr=lr,
            seed=seed,
            device=dev,
            progress=False,
        )
        return {
            "test_acc": evaluate(model, test_batches, device=dev)["acc"],
            **{f"test_acc/{name}": evaluate(model, b, device=dev)["acc"] for name, b in extra.items()},
            "val_acc": evaluate(model, val_batches, device=dev)["acc"],
        }

    picked = tune_each_seed(run, seed_list, names, grid, workers=workers)
    rows = []
    for seed in seed_list:
        for strategy in names:
            best, scores, result = picked[seed, strategy]
            result = dict(result)
            val_acc, test_acc = result.pop("val_acc"), result.pop("test_acc")
            rows.append(
                dict(
                    strategy=strategy,
                    seed=seed,
                    lr=best,
                    val_acc=val_acc,
                    test_acc=test_acc,
                    val_scores=scores,
                )
                | result  # the extra test sets' accuracies
            )
    return rows


def summarize(rows: Iterable[dict], value: str = "test_acc") -> dict[str, list[float]]:
    """{strategy: [value at each seed, in the rows' order]} from `tuned_strategies` rows."""
    out: dict[str, list[float]] = {}
    for row in rows:
        if "strategy" not in row or value not in row:
            raise ValueError(
                f"every row must have 'strategy' and {value!r} entries, got one with {sorted(row)}"
            )
        out.setdefault(row["strategy"], []).append(float(row[value]))
    return out


def copy_stages(
    source: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    n: int,
    *,
    frozen: bool = True,
    min_steps: int = 80,
    batch_size: int = 50,
    lr: float = 3e-3,
    bn: str = "eval",
    seed: int = 0,
    device: str | torch.device = "auto",
) -> float:
    """One cell of Yosinski et al. (2014)'s sweep: copy stages 1..n of `source`, train the rest.

    The target has `source`'s architecture, redrawn with `seed` (the same random weights whatever n and source),
    a fresh head, and the first n stages of `source` (frozen or trained further); it trains on all of `train`
    for at least `min_steps` steps at `lr`. `source` may be a trained network (AnB), a random one (the frozen
    random control) or a base network trained on the target itself (BnB). Returns the test accuracy.
    """
    x, y = check_pair("train", train)
    dev = pick_device(device)
    checks.integer("n", n, 0)
    checks.integer("min_steps", min_steps, 0)
    checks.integer("batch_size", batch_size)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    num_classes = int(y.max()) + 1
    batches = TensorBatches(x, y, min(batch_size, len(x)), seed=seed, device=dev)
    target, _ = prepare(copy.deepcopy(source), "scratch", num_classes=num_classes, seed=seed)
    transfer_blocks(source, target, n, freeze=frozen, bn=bn)
    fit(
        target,
        batches,
        epochs=_epochs(len(batches), min_steps),
        lr=lr,
        param_groups=layer_groups(target, lr),
        seed=seed,
        device=dev,
        progress=False,
    )
    return evaluate(
        target, TensorBatches(*check_pair("test", test), 512, shuffle=False, device=dev), device=dev
    )["acc"]


def base_network(
    like: nn.Module,
    train: tuple[Tensor, Tensor],
    *,
    min_steps: int = 80,
    batch_size: int = 50,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> nn.Module:
    """A network of `like`'s architecture trained from random weights on the target set itself.

    Yosinski et al.'s base B: copying its own first n stages back (frozen) into a fresh network and retraining
    the rest (BnB) measures what is lost when co-adapted neighbouring layers are split, with no change of task.
    The random draw uses seed + 1000, so it differs from the draw `copy_stages` makes for its target.
    """
    x, y = check_pair("train", train)
    dev = pick_device(device)
    num_classes = int(y.max()) + 1
    model, groups = prepare(copy.deepcopy(like), "scratch", num_classes=num_classes, lr=lr, seed=seed + 1000)
    batches = TensorBatches(x, y, min(batch_size, len(x)), seed=seed + 1000, device=dev)
    fit(
        model,
        batches,
        epochs=_epochs(len(batches), min_steps),
        lr=lr,
        param_groups=groups,
        seed=seed + 1000,
        device=dev,
        progress=False,
    )
    return model.cpu().eval()


def random_network(like: nn.Module, *, seed: int) -> nn.Module:
    """A copy of `like` with every weight redrawn from its initialisation with `seed`: the control for copied weights."""
    model, _ = prepare(copy.deepcopy(like), "scratch", seed=seed)
    return model.cpu().eval()
