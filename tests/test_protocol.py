"""over_seeds in worker processes: the same numbers as one by one, in the seeds' order."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from companion.experiments.protocol import (
    mean_range,
    over_seeds,
    per_seed,
    seed_stats,
    seed_workers,
    tune,
    tune_each_seed,
)


def _train(seed: int) -> dict[str, float]:
    """A tiny training run that depends on its seed only (data, initialisation, batch order)."""
    from companion.batches import TensorBatches
    from companion.train import fit

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    history = fit(
        model, TensorBatches(x, y, batch_size=32, seed=seed), epochs=2, lr=1e-2, seed=seed, progress=False
    )
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"loss": history[-1]["train_loss"], "weight_sum": float(w.double().sum()), "seed": float(seed)}


@pytest.mark.slow  # worker processes, each loading torch: about 35 s on a busy 2-core machine
def test_workers_give_bit_identical_numbers_in_seed_order():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = over_seeds(_train, [3, 0, 2], workers=1)
    finally:
        torch.set_num_threads(threads)
    parallel = over_seeds(_train, [3, 0, 2], workers=2)
    assert parallel == serial  # floats compared exactly
    assert parallel["seed"] == [3.0, 0.0, 2.0]


def test_worker_count_from_argument_or_environment(monkeypatch):
    monkeypatch.delenv("COMPANION_SEED_WORKERS", raising=False)
    cores = 1 if torch.cuda.is_available() else os.cpu_count()
    assert seed_workers() == cores and seed_workers("auto") == cores and seed_workers(3) == 3
    monkeypatch.setenv("COMPANION_SEED_WORKERS", "auto")
    assert seed_workers() >= 1
    monkeypatch.setenv("COMPANION_SEED_WORKERS", "two")
    with pytest.raises(ValueError, match="COMPANION_SEED_WORKERS must be a positive integer or 'auto'"):
        seed_workers()
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        seed_workers(0)


def test_seed_stats_reference():
    s = seed_stats([0.5, 0.75, 1.0])
    assert s == {"mean": 0.75, "min": 0.5, "max": 1.0, "per_seed": [0.5, 0.75, 1.0]}
    assert mean_range([0.5, 0.75, 1.0]) == "0.750 [0.500, 1.000]"
    with pytest.raises(ValueError, match="values must hold"):
        seed_stats([])


def _score(seed: int) -> float:
    return -_train(seed)["loss"]


def _nested_workers(seed: int) -> int:
    return seed_workers(4)


@pytest.mark.slow  # worker processes, each loading torch
def test_tune_in_workers_picks_the_same_value_with_the_same_scores_and_nesting_stays_in_the_worker():
    assert tune(_score, [3, 0, 2], workers=2) == tune(_score, [3, 0, 2], workers=1)
    assert per_seed(_nested_workers, [0, 1], workers=2) == [
        1,
        1,
    ]  # a run inside a worker starts no more workers
    assert seed_workers(4) == 4  # this process is not a worker


def _job(item):
    seed, name, value = item
    return {"val_acc": -abs(value - (seed + len(name))), "test": (seed, name, value)}


def test_tune_each_seed_picks_every_seed_and_name_from_one_batch_of_jobs():
    out = tune_each_seed(_job, [0, 2], ["a", "bb"], [1, 2, 3, 4], workers=1)
    assert sorted(out) == [(0, "a"), (0, "bb"), (2, "a"), (2, "bb")]
    assert out[0, "a"] == (1, {1: 0.0, 2: -1.0, 3: -2.0, 4: -3.0}, {"val_acc": 0.0, "test": (0, "a", 1)})
    assert [out[key][0] for key in sorted(out)] == [1, 2, 3, 4]  # seed + len(name)
