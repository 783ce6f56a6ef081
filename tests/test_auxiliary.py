"""Auxiliary-task experiments (notebook 06): the shuffled control, step-level accuracy, thresholds, the sweep."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from companion.experiments.auxiliary import (
    AccuracyEvery,
    auxiliary_sweep,
    images_needed,
    shuffled_labels,
    steps_to,
)
from companion.mtl import HardSharing, head


def test_shuffled_labels_is_a_seeded_permutation():
    labels = torch.arange(6)
    assert shuffled_labels(labels, 0).tolist() == [2, 5, 3, 0, 1, 4]  # reference value for seed 0
    assert shuffled_labels(labels, 0).tolist() == shuffled_labels(labels, 0).tolist()
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    assert shuffled_labels(y, 5).bincount().tolist() == y.bincount().tolist()
    with pytest.raises(ValueError, match="labels"):
        shuffled_labels(torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match="seed"):
        shuffled_labels(labels, -1)


def test_steps_to_and_images_needed_reference_values():
    assert steps_to([0, 50, 100], [0.1, 0.3, 0.5], 0.3) == 50.0
    assert steps_to([0, 50, 100], [0.1, 0.3, 0.5], 0.6) == math.inf
    assert images_needed(0.3, [100, 1000], [0.2, 0.4]) == pytest.approx(math.sqrt(100 * 1000))
    assert images_needed(0.1, [100, 1000], [0.2, 0.4]) == 100.0
    assert images_needed(0.5, [100, 1000], [0.2, 0.4]) == math.inf
    with pytest.raises(ValueError, match="sizes"):
        images_needed(0.3, [1000, 100], [0.2, 0.4])
    with pytest.raises(ValueError, match="steps and acc"):
        steps_to([0], [0.1, 0.2], 0.1)


def test_accuracy_every_measures_at_its_steps():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts class 0
    probe = AccuracyEvery(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), "main", every=2)
    for step in (1, 2, 3, 4):
        probe.on_step_end(SimpleNamespace(model=model, device=torch.device("cpu"), step=step))
    assert probe.steps == [2, 4] and probe.acc == [0.5, 0.5]
    with pytest.raises(ValueError, match="every"):
        AccuracyEvery(torch.zeros(4, 2), torch.zeros(4), "main", every=0)


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 4, generator=g)
    y = {"main": (x[:, 0] > 0).long(), "aux": (x[:, 1] > 0).long()}
    return (x[:60], {t: v[:60] for t, v in y.items()}), (x[60:], {t: v[60:] for t, v in y.items()})


def _model(tasks):
    return HardSharing(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU()), {t: head("classification", 8, 2) for t in tasks}
    )


def test_auxiliary_sweep_rows_and_curves():
    builders = {"single": lambda: _model(["main"]), "multi": lambda: _model(["main", "aux"])}
    rows = auxiliary_sweep(
        builders,
        _data,
        [20, 60],
        [0, 1],
        main="main",
        steps=8,
        batch_size=10,
        lr=1e-2,
        device="cpu",
        curve_size=60,
        eval_every=2,
    )
    assert len(rows) == 2 * 2 * 2
    at_curve = [r for r in rows if r["n"] == 60]
    assert all(
        r["curve"]["steps"][0] == 0 and len(r["curve"]["steps"]) == len(r["curve"]["acc"]) for r in at_curve
    )
    assert all(r["curve"]["steps"] == [] for r in rows if r["n"] == 20)
    assert {r["epochs"] for r in rows if r["n"] == 20} == {4}  # round(8 * 10 / 20)
    again = auxiliary_sweep(
        builders, _data, [20], [0], main="main", steps=8, batch_size=10, lr=1e-2, device="cpu"
    )
    assert again[0]["test"]["acc/main"] == rows[0]["test"]["acc/main"]  # seeded: the same run twice
    with pytest.raises(ValueError, match="main"):
        auxiliary_sweep(builders, _data, [20], [0], main="nope", steps=8, device="cpu")
    with pytest.raises(ValueError, match="sizes"):
        auxiliary_sweep(builders, _data, [100], [0], main="main", steps=8, device="cpu")


@pytest.mark.slow  # worker processes, each loading torch
def test_auxiliary_sweep_in_worker_processes_gives_the_same_rows():
    builders = {"single": lambda: _model(["main"]), "multi": lambda: _model(["main", "aux"])}
    kw = dict(main="main", steps=8, batch_size=10, lr=1e-2, device="cpu", curve_size=60, eval_every=2)
    one = auxiliary_sweep(builders, _data, [20, 60], [1, 0], workers=1, **kw)
    two = auxiliary_sweep(builders, _data, [20, 60], [1, 0], workers=2, **kw)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in two] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in one
    ]  # floats compared exactly, rows in (seed, size, model) order
    assert [(r["seed"], r["n"]) for r in one[::2]] == [(1, 20), (1, 60), (0, 20), (0, 60)]
