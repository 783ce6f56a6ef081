"""Experiment runners: sweeps and comparisons built from the library's pieces, returning rows for plots and
claims (transfer sweeps over strategies and label counts; multi-task comparisons of models and data sizes).

Transfer (on `companion.transfer`): `label_efficiency` (accuracy per strategy, labels per class and seed),
`block_sweep` (Yosinski et al. 2014's copy-n-stages experiment), `steps_to`, `labels_to_reach`, `group_rows`
and `probe_accuracy` (logistic regression on cached features). Multi-task (on `companion.mtl`):
`compare_models` (several models on the same data, batches and seed) and `size_sweep` (data efficiency over
nested subsets).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import checks
from ..batches import TensorBatches, subsample_per_class
from ..device import pick_device
from ..evaluation import evaluate
from ..models import count_params, stages
from ..plugins import EvaluateEvery
from ..train import fit
from ..transfer import BN_POLICIES, STRATEGIES, adapt, check_pair, layer_groups, prepare, transfer_blocks
from .protocol import parallel_map

__all__ = [
    "block_sweep",
    "compare_models",
    "group_rows",
    "label_efficiency",
    "labels_to_reach",
    "probe_accuracy",
    "size_sweep",
    "steps_to",
]


# ------------------------------------------------------------------------------------------ transfer sweeps


def _epochs_for(batches: TensorBatches, epochs: int, min_steps: int) -> int:
    """`epochs` passes, or more where a small set needs them to make at least `min_steps` optimiser steps."""
    return max(epochs, -(-min_steps // len(batches)))


def _lr_of(lr: float | Mapping[str, float], strategy: str) -> float:
    if isinstance(lr, Mapping):
        if strategy not in lr:
            raise ValueError(f"lr must give a rate for strategy {strategy!r}, got rates for {sorted(lr)}")
        lr = lr[strategy]
    return checks.positive("lr", lr)


def label_efficiency(
    source: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    per_class: Iterable[int | None],
    strategies: Iterable[str] = ("scratch", "finetune"),
    seeds: Iterable[int] = (0,),
    epochs: int = 1,
    min_steps: int = 50,
    batch_size: int = 32,
    lr: float | Mapping[str, float] = 1e-3,
    bn: str = "eval",
    val: tuple[Tensor, Tensor] | None = None,
    eval_every: int | None = None,
    device: str | torch.device = "auto",
    workers: int | str | None = 1,
) -> list[dict]:
    """Target accuracy per strategy, labels per class and seed: the label-efficiency sweep.

    Each run copies `source`, subsamples `per_class` labelled images of every class from `train` (None: all of
    them; the subset depends on the seed only, so all strategies of a seed see the same images), adapts with
    `adapt` for `epochs` passes, or as many more as it takes to make `min_steps` optimiser steps, and measures
    accuracy on `test`. lr may map strategy -> rate. With `val`, each run's history has val_acc per epoch, or
    every `eval_every` steps (then the history's "epochs" are chunks of that many steps: a convergence curve).
    Rows: {strategy, seed, per_class (all: the mean per class), label ("all" or the count), n_train, acc,
    epochs, steps, time_s, history}. `workers`: 1 (the default) runs here, one run after another, so time_s
    compares runs on an otherwise quiet machine; None or a count runs every (seed, size, strategy) as one job of
    `protocol.parallel_map` (worker processes, the same numbers; time_s then measured side by side).
    """
    x, y = check_pair("train", train)
    x_test, y_test = check_pair("test", test)
    sizes, names, seed_list = list(per_class), list(strategies), list(seeds)
    for name, values in (("per_class", sizes), ("strategies", names), ("seeds", seed_list)):
        if not values:
            raise ValueError(f"{name} must name at least one value, got an empty list")
    for k in sizes:
        if k is not None:
            checks.integer("per_class", k, 1)
    for s in names:
        checks.choice("strategy", s, STRATEGIES)
        _lr_of(lr, s)
    for s in seed_list:
        checks.integer("seed", s, 0)
    checks.integer("epochs", epochs, 1)
    checks.integer("min_steps", min_steps, 0)
    checks.integer("batch_size", batch_size, 1)
    if eval_every is not None:
        checks.integer("eval_every", eval_every, 1)
        if val is None:
            raise ValueError("eval_every needs val: the (images, labels) to evaluate every eval_every steps")
        several = [s for s in names if s in ("lp_ft", "gradual")]
        if several:
            raise ValueError(
                f"strategies must train in one fit call when eval_every is given, got {several} (they change "
                "phase or frozen stages per epoch); leave eval_every out for them"
            )
    if "lp_ft" in names and epochs < 2 and min_steps < 2:
        raise ValueError(
            "epochs or min_steps must be >= 2 for strategy 'lp_ft' (a probe and a fine-tune phase)"
        )
    dev = pick_device(device)
    num_classes = int(y.max()) + 1
    test_batches = TensorBatches(x_test, y_test, 512, shuffle=False, device=dev)
    val_batches = (
        None if val is None else TensorBatches(*check_pair("val", val), 512, shuffle=False, device=dev)
    )

    def one(job: tuple[int, int | None, str]) -> dict:
        seed, k, strategy = job
        xs, ys = (x, y) if k is None else subsample_per_class(x, y, k, seed=seed)
        batches = TensorBatches(xs, ys, min(batch_size, len(xs)), seed=seed, device=dev)
        n_epochs = _epochs_for(batches, epochs, min_steps)
        curve_kw = {}
        if eval_every is not None:  # whole evaluation intervals: the run ends on an evaluation
            steps = -(-n_epochs * len(batches) // eval_every) * eval_every
            n_epochs, curve_kw["max_steps"] = -(-steps // len(batches)), steps
        curve = EvaluateEvery(val_batches, eval_every) if eval_every is not None else None
        if curve is not None:
            curve_kw["callbacks"] = [curve]
        model = copy.deepcopy(source)
        t0 = time.perf_counter()
        history = adapt(
            model,
            strategy,
            batches,
            val_batches if curve is None else None,
            epochs=max(n_epochs, 2) if strategy == "lp_ft" else n_epochs,
            num_classes=num_classes,
            bn=bn,
            lr=_lr_of(lr, strategy),
            seed=seed,
            device=dev,
            progress=False,
            **curve_kw,
        )
        history = curve.history() if curve is not None else history
        acc = evaluate(model, test_batches, device=dev)["acc"]
        return dict(
            strategy=strategy,
            seed=seed,
            per_class=k if k is not None else round(len(ys) / num_classes),
            label="all" if k is None else str(k),
            n_train=len(ys),
            acc=acc,
            epochs=len(history),
            steps=int(history.last.get("step", 0)),
            time_s=time.perf_counter() - t0,
            history=history,
        )

    jobs = [(seed, k, strategy) for seed in seed_list for k in sizes for strategy in names]
    rows = parallel_map(one, jobs, workers=workers)
    return rows


def block_sweep(
    source: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    ns: Iterable[int] | None = None,
    epochs: int = 1,
    min_steps: int = 50,
    batch_size: int = 32,
    lr: float = 1e-3,
    bn: str = "eval",
    seed: int = 0,
    device: str | torch.device = "auto",
) -> list[dict]:
    """Yosinski et al. (2014)'s sweep: copy the first n source stages, frozen or fine-tuned, train the rest.

    For each n (default 0..len(stages)), a target of the source's architecture is redrawn with `seed` (the same
    random weights for every n), gets a fresh head and the first n stages of `source` (`transfer_blocks`), and
    trains on all of `train` for `epochs` (at least `min_steps` steps). n = 0 copies nothing: the scratch
    baseline, run once and reported for both modes. Rows: {n, frozen, acc, trainable (parameter count)}.
    """
    x, y = check_pair("train", train)
    x_test, y_test = check_pair("test", test)
    depth = len(stages(source))
    ns = list(range(depth + 1)) if ns is None else list(ns)
    if not ns:
        raise ValueError("ns must name at least one stage count, got an empty list")
    for n in ns:
        checks.integer("n", n, 0, depth)
    checks.integer("epochs", epochs, 1)
    checks.integer("min_steps", min_steps, 0)
    checks.integer("batch_size", batch_size, 1)
    checks.positive("lr", lr)
    checks.choice("bn", bn, BN_POLICIES)
    dev = pick_device(device)
    num_classes = int(y.max()) + 1
    batches = TensorBatches(x, y, min(batch_size, len(x)), seed=seed, device=dev)
    test_batches = TensorBatches(x_test, y_test, 512, shuffle=False, device=dev)
    n_epochs = _epochs_for(batches, epochs, min_steps)
    rows, baseline = [], None
    for n in ns:
        for frozen in (True, False):
            if n == 0 and baseline is not None:
                rows.append({**baseline, "frozen": frozen})
                continue
            target, _ = prepare(copy.deepcopy(source), "scratch", num_classes=num_classes, seed=seed)
            transfer_blocks(source, target, n, freeze=frozen, bn=bn)
            groups = layer_groups(target, lr)
            fit(
                target,
                batches,
                epochs=n_epochs,
                lr=lr,
                param_groups=groups,
                seed=seed,
                device=dev,
                progress=False,
            )
            acc = evaluate(target, test_batches, device=dev)["acc"]
            trainable = sum(p.numel() for p in target.parameters() if p.requires_grad)
            row = dict(n=n, frozen=frozen, acc=acc, trainable=trainable)
            rows.append(row)
            if n == 0:
                baseline = row
    return rows


def steps_to(history: Iterable[Mapping], threshold: float, *, key: str = "val_acc") -> int | None:
    """The optimiser step of the first history row whose `key` reaches `threshold`, or None."""
    for row in history:
        value = row.get(key)
        if value is not None and value >= threshold:
            return int(row["step"])
    return None


def labels_to_reach(points: Mapping[float, float], target: float) -> float | None:
    """Labels per class at which an accuracy curve {labels: accuracy} first reaches `target`.

    Interpolated linearly in log(labels) between the last point below and the first point at or above the
    target; the smallest x if it is already there; None if the curve never gets there.
    """
    xs = sorted(points)
    if not xs or min(xs) <= 0:
        raise ValueError(f"points must map positive label counts to accuracies, got {dict(points)!r}")
    for i, x in enumerate(xs):
        if points[x] >= target:
            if i == 0:
                return float(x)
            x0, a0, a1 = xs[i - 1], points[xs[i - 1]], points[x]
            t = (target - a0) / (a1 - a0)
            return float(math.exp(math.log(x0) + t * (math.log(x) - math.log(x0))))
    return None


def group_rows(
    rows: Iterable[Mapping], *, value: str = "acc", series: str = "strategy", x: str = "per_class"
) -> dict[str, dict]:
    """{series: {x: [value of each row]}} from sweep rows, x in increasing order."""
    out: dict[str, dict] = {}
    for row in rows:
        for name in (value, series, x):
            if name not in row:
                raise ValueError(f"every row must have a {name!r} entry, got one with {sorted(row)}")
        out.setdefault(row[series], {}).setdefault(row[x], []).append(row[value])
    return {s: dict(sorted(d.items())) for s, d in out.items()}


def probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> float:
    """Test accuracy of a linear probe (multinomial logistic regression) on frozen features.

    The classic probe on cached features: each feature is standardised with the training mean and std, then a
    linear layer minimises mean cross-entropy + weight_decay / 2 * |W|^2 by full-batch L-BFGS from zero weights
    (a convex problem: the result does not depend on a seed). Runs in float64 on the CPU. Our own rather than
    scikit-learn's LogisticRegression for teaching: the probe is a few torch lines a learner can read and
    rewrite; on the standardised features it minimises scikit-learn's objective with C = 1 / (weight_decay * n).
    """
    checks.positive("weight_decay", weight_decay)
    checks.integer("max_iter", max_iter, 1)
    f, t = check_pair("train", (train_features, train_labels))
    f_test, t_test = check_pair("test", (test_features, test_labels))
    if f.ndim != 2 or f_test.ndim != 2 or f.shape[1] != f_test.shape[1]:
        raise ValueError(
            f"features must be N x D matrices of one width, got {tuple(f.shape)} and {tuple(f_test.shape)}"
        )
    f, f_test = f.detach().cpu().double(), f_test.detach().cpu().double()
    t, t_test = t.detach().cpu().long(), t_test.detach().cpu().long()
    mean, std = f.mean(0), f.std(0, unbiased=False).clamp_min(1e-8)
    a, b = (f - mean) / std, (f_test - mean) / std
    classes = int(max(t.max(), t_test.max())) + 1
    w = torch.zeros(f.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(a @ w + bias, t) + weight_decay / 2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1).eq(t_test).double().mean().item()


# -------------------------------------------------------------------------------- multi-task comparisons


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
    """Train several models on the same data, batches and seed, and measure each.

    Each builder is called right after `torch.manual_seed(seed)` and must return a model whose forward gives a
    dict task -> output; the model trains with `fit` on the tasks it outputs (a single-task model ignores the
    other targets), with the same shuffling for every model. `fit_kwargs[name]` adds fit arguments for one
    model (a regulariser, a balancer, ...): a dict, or a callable model -> dict for stateful objects that
    must be fresh per model; `fit_options` adds fit arguments for every model (e.g. a scheduler). With `curves=True` the test set is evaluated after every epoch (history keys
    "val_*"). Returns {name: {"model", "history", "tasks", "params", "seconds", "train", "test"}}, where
    "train" and "test" are `evaluate` results (mean loss and accuracy per task, in eval mode) on the whole
    training and test sets.
    """
    if not isinstance(builders, dict) or not builders:
        raise ValueError("builders must be a non-empty dict name -> callable returning a model")
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
            model,
            batches,
            epochs=epochs,
            lr=lr,
            seed=seed,
            device=dev,
            loss_fns=loss_fns,
            val=test_batches if curves else None,
            progress=False,
            **extra,
        )
        seconds = time.perf_counter() - start
        train_eval = TensorBatches(x, {t: y[t] for t in tasks}, 1000, shuffle=False, device=dev)
        results[name] = {
            "model": model,
            "history": history,
            "tasks": tasks,
            "params": count_params(model),
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
    """Data-efficiency sweep: models trained on nested subsets of several sizes, for several seeds.

    For every seed, `data(seed)` returns a training pool and a test set ((x, y) pairs, y a dict task -> targets);
    for every n in `sizes` the models train (with `compare_models`) on the pool's first n items for about
    `steps` optimiser steps, i.e. epochs = max(1, round(steps * batch_size / n)), so small sets are not
    under-trained; `fit_options` adds fit arguments for every run. At n == `curve_size` the test metrics are recorded after every epoch. Returns one row per
    (seed, n, model): {"model", "n", "seed", "epochs", "params", "seconds", "train", "test", "history"}.
    """
    sizes = [checks.integer("sizes", n) for n in sizes]
    seeds = list(seeds)
    if not sizes or not seeds:
        raise ValueError("sizes and seeds must be non-empty lists")
    checks.integer("steps", steps)
    checks.integer("batch_size", batch_size)
    if not callable(data):
        raise ValueError("data must be a callable seed -> ((x, y) pool, (x, y) test)")
    rows = []
    for seed in seeds:
        pool, test = data(seed)
        x, y = _check_xy(pool, "data(seed) pool")
        if max(sizes) > len(x):
            raise ValueError(f"sizes: the largest size {max(sizes)} exceeds the pool of {len(x)} items")
        for n in sizes:
            epochs = max(1, round(steps * batch_size / n))
            results = compare_models(
                builders,
                (x[:n], {t: v[:n] for t, v in y.items()}),
                test,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                device=device,
                loss_fns=loss_fns,
                fit_options=fit_options,
                curves=n == curve_size,
            )
            for name, r in results.items():
                rows.append(
                    {
                        "model": name,
                        "n": n,
                        "seed": seed,
                        "epochs": epochs,
                        "params": r["params"],
                        "seconds": r["seconds"],
                        "train": r["train"],
                        "test": r["test"],
                        "history": r["history"],
                    }
                )
    return rows
