"""Tests for companion.strategies: tuned strategy comparisons and Yosinski's copy-n-stages controls."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import companion.experiments.strategies as S
from companion.batches import TensorBatches, subsample_per_class
from companion.evaluation import evaluate
from companion.models import stages

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("course_cnn_s", in_chans=1, num_classes=3)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes that differ in mean brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.randn(n, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float(), y


def test_tuned_strategies_picks_each_rate_on_validation_and_reports_its_test_accuracy(monkeypatch):
    train, val, test = _data(30, 0), _data(12, 1), _data(12, 2)
    calls = []
    real = S.adapt

    def spy(model, strategy, batches, **kw):
        calls.append((strategy, kw["lr"], kw["seed"], kw["epochs"], batches.x.sum().item()))
        return real(model, strategy, batches, **kw)

    monkeypatch.setattr(S, "adapt", spy)
    rows = S.tuned_strategies(
        _model(),
        train,
        val,
        test,
        strategies=["finetune", "lp_ft"],
        lr_grid=[1e-3, 1e-2],
        seeds=[0, 1],
        per_class=2,
        min_steps=4,
        batch_size=3,
        device="cpu",
    )
    assert [(r["strategy"], r["seed"]) for r in rows] == [
        ("finetune", 0),
        ("lp_ft", 0),
        ("finetune", 1),
        ("lp_ft", 1),
    ]
    # every strategy x rate x seed ran once, with the same images per seed and the same step budget
    assert len(calls) == 8
    assert [c[1] for c in calls[:4]] == [1e-3, 1e-2, 1e-3, 1e-2]
    assert {c[3] for c in calls} == {2}  # 6 images in batches of 3: 2 steps per pass, 2 passes for 4 steps
    seed0 = {c[4] for c in calls if c[2] == 0}
    assert len(seed0) == 1  # same labelled subset for every strategy and rate of a seed
    for r in rows:
        best = max(r["val_scores"].values())
        assert r["val_acc"] == best
        assert r["lr"] == min(
            lr for lr, v in r["val_scores"].items() if v == best
        )  # ties keep the earlier rate
        assert 0 <= r["test_acc"] <= 1


def test_tuned_strategies_test_accuracy_is_that_of_the_chosen_run():
    train, val, test = _data(30, 0), _data(12, 1), _data(12, 2)
    (row,) = S.tuned_strategies(
        _model(),
        train,
        val,
        test,
        strategies=["finetune"],
        lr_grid=[3e-3],
        seeds=[0],
        per_class=2,
        min_steps=4,
        batch_size=3,
        device="cpu",
    )
    # rebuild the same run by hand
    from companion.transfer import adapt

    xs, ys = subsample_per_class(*train, 2, seed=0)
    model = copy.deepcopy(_model())
    adapt(
        model,
        "finetune",
        TensorBatches(xs, ys, 3, seed=0),
        epochs=2,
        num_classes=3,
        lr=3e-3,
        seed=0,
        device="cpu",
        progress=False,
    )
    assert row["test_acc"] == evaluate(model, TensorBatches(*test, 512, shuffle=False), device="cpu")["acc"]


def test_summarize_stacks_per_seed_values():
    rows = [
        {"strategy": "a", "test_acc": 0.5},
        {"strategy": "b", "test_acc": 0.25},
        {"strategy": "a", "test_acc": 1},
    ]
    assert S.summarize(rows) == {"a": [0.5, 1.0], "b": [0.25]}
    with pytest.raises(ValueError, match="every row must have"):
        S.summarize([{"strategy": "a"}])


def test_copy_stages_with_n0_is_scratch_and_is_independent_of_the_source():
    train, test = _data(12, 0), _data(12, 1)
    a = S.copy_stages(_model(0), train, test, 0, min_steps=3, batch_size=4, seed=5, device="cpu")
    b = S.copy_stages(_model(7), train, test, 0, min_steps=3, batch_size=4, seed=5, device="cpu")
    assert a == b  # n = 0 copies nothing: the source's weights do not matter


def test_copy_stages_frozen_keeps_the_copied_stages(monkeypatch):
    train, test = _data(12, 0), _data(12, 1)
    source = _model(3)
    kept = {}
    real = S.evaluate

    def spy(model, batches, **kw):
        kept["stem"] = copy.deepcopy(stages(model)[0].state_dict())
        return real(model, batches, **kw)

    monkeypatch.setattr(S, "evaluate", spy)
    S.copy_stages(source, train, test, 1, frozen=True, min_steps=3, batch_size=4, seed=0, device="cpu")
    for key, value in stages(source)[0].state_dict().items():
        assert torch.equal(kept["stem"][key], value), key


def test_random_and_base_networks():
    like = _model(0)
    r1, r2 = S.random_network(like, seed=1), S.random_network(like, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(r1.state_dict().values(), r2.state_dict().values()))
    assert not torch.equal(
        stages(r1)[0][0].weight
        if isinstance(stages(r1)[0], nn.Sequential)
        else next(stages(r1)[0].parameters()),
        next(stages(like)[0].parameters()),
    )
    train = _data(30, 0)
    base = S.base_network(like, train, min_steps=20, batch_size=10, lr=1e-2, seed=0, device="cpu")
    acc = evaluate(base, TensorBatches(*train, 512, shuffle=False), device="cpu")["acc"]
    assert acc > 0.6  # three brightness levels: learned well above chance (1/3)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(strategies=[]), "strategies must name"),
        (dict(strategies=["probe"]), "strategies must be among"),
        (dict(lr_grid=[0.0]), "lr_grid must hold positive"),
        (dict(per_class=0), "per_class must be an integer"),
        (dict(seeds=[-1]), "seeds must be an integer"),
    ],
)
def test_bad_input_raises_one_line_value_error(kw, match):
    args = dict(strategies=["finetune"], lr_grid=[1e-3], seeds=[0], per_class=2, device="cpu")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        S.tuned_strategies(_model(), _data(12, 0), _data(6, 1), _data(6, 2), **args)
    with pytest.raises(ValueError, match="train must be"):
        S.copy_stages(_model(), (torch.zeros(2, 1, 8, 8),), _data(6, 1), 1, device="cpu")


@pytest.mark.slow  # worker processes, each loading torch
def test_tuned_strategies_in_worker_processes_give_the_same_rows():
    train, val, test = _data(30, 0), _data(12, 1), _data(12, 2)
    kw = dict(
        strategies=["linear_probe", "finetune"],
        lr_grid=[1e-3, 1e-2],
        seeds=[1, 0],
        per_class=2,
        min_steps=4,
        batch_size=3,
        device="cpu",
        extra_tests={"again": test},
    )
    serial = S.tuned_strategies(_model(), train, val, test, workers=1, **kw)
    assert (
        S.tuned_strategies(_model(), train, val, test, workers=2, **kw) == serial
    )  # floats compared exactly
    assert [(r["seed"], r["strategy"]) for r in serial] == [
        (1, "linear_probe"),
        (1, "finetune"),
        (0, "linear_probe"),
        (0, "finetune"),
    ]
    assert all(r["test_acc/again"] == r["test_acc"] for r in serial)
