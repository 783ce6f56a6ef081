"""Auxiliary-task experiments: does adding a task help a main task, and how would we know?

An auxiliary task is trained next to a main task only for the gradients it sends into the shared trunk; the
model is judged on the main task alone. The helpers here keep those comparisons honest:

- `shuffled_labels` builds the control: an auxiliary task with exactly as many labels, of the same classes and
  frequencies, that says nothing about the image (each label belongs to another image);
- `AccuracyEvery` records the main task's test accuracy every few optimiser steps, so "converges faster" can be
  read as steps to a threshold both models reach (`steps_to`);
- `auxiliary_sweep` trains every model on nested training sets for every seed with the same number of steps;
- `images_needed` reads a data-efficiency curve backwards: how many images does a model need for an accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .protocol import parallel_map
from .runners import compare_models, labels_to_reach
from .runners import steps_to as _steps_to


def shuffled_labels(labels: Tensor, seed: int) -> Tensor:
    """The same labels in a random order (seeded): an unrelated task with the same classes and counts.

    Each image receives the label of another image, so the task keeps its label distribution but carries no
    information about the image it is attached to: a model can only memorise it.
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or len(labels) < 2:
        raise ValueError(
            f"labels must be a 1-D tensor of at least 2 labels, got {getattr(labels, 'shape', labels)!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return labels[perm.to(labels.device)]


class AccuracyEvery:
    """A `fit` callback: the test accuracy of one task every `every` optimiser steps.

    After training, `steps` and `acc` hold the step numbers and accuracies (step 0: before the first update).
    Evaluation runs in eval mode without gradients and draws no random numbers, so training is unchanged.
    """

    def __init__(self, x: Tensor, y: Tensor, task: str, every: int, batch_size: int = 1000):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must have the same non-zero length, got {len(x)} and {len(y)}")
        self.x, self.y, self.task, self.every, self.batch_size = x, y, task, every, batch_size
        self.steps: list[int] = []
        self.acc: list[float] = []

    @torch.no_grad()
    def _measure(self, model: nn.Module, device: torch.device, step: int) -> None:
        was_training = model.training
        model.eval()
        correct = 0
        for i in range(0, len(self.x), self.batch_size):
            out = model(self.x[i : i + self.batch_size].to(device))
            out = out[self.task] if isinstance(out, dict) else out
            correct += (out.argmax(-1).cpu() == self.y[i : i + self.batch_size].cpu()).sum().item()
        model.train(was_training)
        self.steps.append(int(step))
        self.acc.append(correct / len(self.x))

    def on_fit_start(self, state) -> None:
        self._measure(state.model, state.device, 0)

    def on_step_end(self, state) -> None:
        if state.step % self.every == 0:
            self._measure(state.model, state.device, state.step)


def steps_to(steps: Sequence[int], acc: Sequence[float], threshold: float) -> float:
    """The first recorded step whose accuracy reaches `threshold`; inf when it never does.

    The curve as two lists, read by `transfer.steps_to` (one rule for every curve)."""
    if len(steps) != len(acc):
        raise ValueError(f"steps and acc must have equal lengths, got {len(steps)} and {len(acc)}")
    step = _steps_to([{"step": s, "acc": a} for s, a in zip(steps, acc)], threshold - 1e-12, key="acc")
    return math.inf if step is None else float(step)


def images_needed(target: float, sizes: Sequence[int], means: Sequence[float]) -> float:
    """Training images a data-efficiency curve needs to reach `target`, interpolated in log(n).

    `sizes` ascending, `means` the curve's accuracy at each size. Returns sizes[0] when the curve starts above the
    target and inf when it never reaches it: `transfer.labels_to_reach` on the curve.
    """
    if len(sizes) != len(means) or not sizes:
        raise ValueError(
            f"sizes and means must have equal, non-zero lengths, got {len(sizes)} and {len(means)}"
        )
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0:
        raise ValueError(f"sizes must be positive, strictly increasing sizes, got {list(sizes)}")
    n = labels_to_reach(dict(zip(sizes, means)), target)
    return math.inf if n is None else n


def _with_probe(
    probes: dict, name: str, x: Tensor, y: Tensor, task: str, every: int
) -> Callable[[nn.Module], dict]:
    """fit arguments adding a fresh AccuracyEvery callback for one model, kept in `probes[name]`."""

    def extra(model: nn.Module) -> dict:
        probes[name] = AccuracyEvery(x, y, task, every)
        return {"callbacks": [probes[name]]}

    return extra


def auxiliary_sweep(
    builders: dict[str, Callable[[], nn.Module]],
    data: Callable[[int], tuple[tuple[Tensor, dict], tuple[Tensor, dict]]],
    sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    main: str,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    curve_size: int | None = None,
    eval_every: int = 25,
    fit_options: dict | None = None,
    workers: int | str | None = None,
) -> list[dict]:
    """Train every model on nested training sets for every seed, judged on the `main` task.

    For every seed, `data(seed)` returns a training pool and a test set ((x, y), y a dict task -> labels). Each
    model trains with `companion.mtl.compare_models` on the pool's first n items for about `steps` optimiser
    steps (epochs = max(1, round(steps * batch_size / n))), same batches and seed for every model. At
    n == `curve_size` the main task's test accuracy is recorded every `eval_every` steps. Returns one row per
    (seed, n, model): {"model", "n", "seed", "epochs", "params", "seconds", "train", "test", "curve"} with
    "curve" = {"steps": [...], "acc": [...]} (empty lists away from curve_size). Every (seed, n) runs as one job
    of `protocol.parallel_map` (`workers` processes; the same numbers whatever the count; "seconds" are then
    measured in the worker).
    """

    sizes, seeds = list(sizes), list(seeds)
    if not sizes or not seeds:
        raise ValueError("sizes and seeds must be non-empty lists")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"sizes must be positive integers, got {sizes}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not callable(data):
        raise ValueError("data must be a callable seed -> ((x, y) pool, (x, y) test)")

    def checked(seed: int) -> tuple:
        (x, y), (xt, yt) = data(seed)
        if main not in y or main not in yt:
            raise ValueError(f"main: task {main!r} is not among the targets {sorted(y)}")
        if max(sizes) > len(x):
            raise ValueError(f"sizes: the largest size {max(sizes)} exceeds the pool of {len(x)} items")
        return (x, y), (xt, yt)

    checked(seeds[0])  # bad arguments stop here, before any training

    def one(job: tuple[int, int]) -> list[dict]:
        seed, n = job
        (x, y), (xt, yt) = checked(seed)
        epochs = max(1, round(steps * batch_size / n))
        probes: dict[str, AccuracyEvery] = {}
        results = compare_models(
            builders,
            (x[:n], {t: v[:n] for t, v in y.items()}),
            (xt, yt),
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            device=device,
            fit_options=fit_options,
            fit_kwargs={name: _with_probe(probes, name, xt, yt[main], main, eval_every) for name in builders}
            if n == curve_size
            else None,
        )
        rows = []
        for name, r in results.items():
            probe = probes.get(name)
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
                    "curve": {"steps": probe.steps if probe else [], "acc": probe.acc if probe else []},
                }
            )
        return rows

    jobs = [(seed, n) for seed in seeds for n in sizes]
    rows = [row for part in parallel_map(one, jobs, workers=workers) for row in part]
    return rows
