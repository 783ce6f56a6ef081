"""Tests for companion.regimes: step-counted batches, the three regimes, forgetting and model conversions."""

from __future__ import annotations

import copy

import pytest
import torch

from companion.batches import TensorBatches
from companion.experiments.regimes import (
    SEQUENTIAL,
    Monitor,
    StepStream,
    accuracy,
    adapt_task,
    build,
    from_multitask,
    head_accuracy,
    to_multitask,
    train_multitask,
    train_task,
)
from companion.mtl import HardSharing
from companion.transfer import forgetting

MODEL = "course_cnn_s"


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 48, seed: int = 0, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()  # learnable: brightness = class
    return x, y


def _trunk_state(model) -> dict[str, torch.Tensor]:
    head = {id(p) for p in model.get_classifier().parameters()}
    params = {n: p for n, p in model.named_parameters() if id(p) not in head}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in params or "running" in k}


def _trained(seed: int = 0, steps: int = 6):
    x, y = _data(seed=seed)
    model = build(MODEL, in_chans=1, num_classes=4, seed=seed)
    train_task(model, x, y, steps=steps, lr=1e-2, batch_size=8, seed=seed, device="cpu")
    return model, x, y


# ------------------------------------------------------------------------------------------- StepStream


def test_step_stream_yields_exactly_steps_full_batches_across_epochs():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    stream = StepStream(
        x, y, steps=7, batch_size=4, seed=3
    )  # 2 full batches per epoch: 7 steps span 4 epochs
    batches = list(stream)
    assert len(stream) == 7 and len(batches) == 7
    assert all(bx.shape[0] == 4 and by.shape[0] == 4 for bx, by in batches)
    # reference values: epoch e's order is TensorBatches' permutation for (seed, e), last partial batch dropped
    ref = TensorBatches(x, y, 4, seed=3, drop_last=True)
    expected = [ref.order(e)[i * 4 : (i + 1) * 4] for e in range(4) for i in range(2)][:7]
    assert [b[1].tolist() for b in batches] == [e.tolist() for e in expected]
    assert stream.epochs_started == 4


def test_step_stream_continues_across_passes_and_is_seeded():
    x, y = torch.randn(20, 3), torch.arange(20)
    one = StepStream(x, y, steps=9, batch_size=3, seed=1)
    two = StepStream(x, y, steps=4, batch_size=3, seed=1)
    first = list(two)
    two.steps = 5  # LP-FT's second phase: the batches that follow the first phase's
    joined = [b[1] for b in first + list(two)]
    assert [b.tolist() for b in joined] == [b[1].tolist() for b in one]
    again = StepStream(x, y, steps=9, batch_size=3, seed=1)
    assert [b[1].tolist() for b in again] == [
        b[1].tolist() for b in StepStream(x, y, steps=9, batch_size=3, seed=1)
    ]
    other = StepStream(x, y, steps=9, batch_size=3, seed=2)
    assert [b[1].tolist() for b in other] != [b[1].tolist() for b in again]


@pytest.mark.parametrize("kw", [{"steps": 0}, {"batch_size": 0}, {"batch_size": 50}])
def test_step_stream_rejects_bad_sizes(kw):
    with pytest.raises(ValueError):
        StepStream(torch.randn(20, 3), torch.arange(20), **{"steps": 3, "batch_size": 4, "seed": 0, **kw})


# ---------------------------------------------------------------------------------------------- regimes


def test_train_task_counts_examples_and_is_reproducible():
    a, x, y = _trained(seed=0)
    b, _, _ = _trained(seed=0)
    c, _, _ = _trained(seed=1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
    model = build(MODEL, in_chans=1, num_classes=4, seed=0)
    assert train_task(model, x, y, steps=5, batch_size=8, seed=0, device="cpu") == 40


def test_monitor_counts_steps_across_both_lp_ft_phases():
    model, x, y = _trained()
    start = _trunk_state(model)

    def moved() -> dict[str, float]:
        now = _trunk_state(model)
        return {"moved": float(sum((now[k].float() - start[k].float()).abs().sum() for k in start))}

    mon = Monitor(moved, 1, offset=10)
    assert (
        adapt_task(
            model,
            x,
            y % 2,
            strategy="lp_ft",
            num_classes=2,
            steps=6,
            batch_size=8,
            lr=1e-2,
            monitor=mon,
            device="cpu",
        )
        == 48
    )
    assert [r["step"] for r in mon.rows] == list(range(10, 17))
    # phase 1 (3 steps) trains the head only; phase 2 releases the trunk
    assert [r["moved"] == 0 for r in mon.rows] == [True] * 4 + [False] * 3


def test_frozen_adaptation_keeps_the_trunk_and_a_exactly():
    model, x, y = _trained()
    before = copy.deepcopy(model)
    head_a = copy.deepcopy(model.get_classifier())
    acc_a = head_accuracy(model, head_a, x, y)
    start = _trunk_state(model)
    adapt_task(
        model, x, y % 2, strategy="frozen", num_classes=2, steps=5, batch_size=8, lr=1e-2, device="cpu"
    )
    end = _trunk_state(model)
    assert start.keys() == end.keys() and any("running_mean" in k for k in start)
    assert all(torch.equal(start[k], end[k]) for k in start)  # weights and BatchNorm statistics, bit for bit
    assert model.get_classifier().out_features == 2
    assert head_accuracy(model, head_a, x, y) == acc_a
    drop = forgetting(before, model, TensorBatches(x, y, 16, shuffle=False))
    assert drop["drop"] == 0 and drop["after"] == pytest.approx(acc_a)


def test_finetune_forgets_and_l2sp_stays_closer_to_the_start():
    distance = {}
    for strategy in ("finetune", "l2sp"):
        model, x, y = _trained()
        start = _trunk_state(model)
        adapt_task(
            model,
            x,
            y % 2,
            strategy=strategy,
            num_classes=2,
            steps=8,
            batch_size=8,
            lr=1e-2,
            alpha=100.0,
            device="cpu",
        )
        end = _trunk_state(model)
        distance[strategy] = sum(float((end[k] - start[k]).pow(2).sum()) for k in start if "running" not in k)
    assert distance["finetune"] > 0
    assert distance["l2sp"] < distance["finetune"]


def test_head_accuracy_matches_the_model_on_its_own_head():
    model, x, y = _trained()
    acc = head_accuracy(model, model.get_classifier(), x, y, batch_size=7)
    assert acc == pytest.approx(accuracy(model, x, y, device="cpu"))
    with torch.no_grad():
        ref = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(ref)


@pytest.mark.parametrize("strategy", ["scratch", "linear_probe", ""])
def test_adapt_task_rejects_unknown_strategies(strategy):
    model, x, y = _trained(steps=1)
    assert strategy not in SEQUENTIAL
    with pytest.raises(ValueError, match="strategy"):
        adapt_task(model, x, y, strategy=strategy, num_classes=2, steps=2, device="cpu")


def test_train_multitask_with_zero_weight_leaves_that_head_untouched():
    x, y = _data()
    mt = to_multitask(build(MODEL, in_chans=1, num_classes=4, seed=0), {"A": 4, "B": 2}, seed=0)
    head_b = copy.deepcopy(mt.heads["B"].state_dict())
    head_a = copy.deepcopy(mt.heads["A"].state_dict())
    n = train_multitask(mt, x, {"A": y, "B": y % 2}, steps=4, batch_size=8, weights={"B": 0.0}, device="cpu")
    assert n == 32
    assert all(torch.equal(v, mt.heads["B"].state_dict()[k]) for k, v in head_b.items())
    assert not all(torch.equal(v, mt.heads["A"].state_dict()[k]) for k, v in head_a.items())
    out = accuracy(mt, x, {"A": y, "B": y % 2}, device="cpu")
    assert set(out) == {"A", "B"} and all(0 <= v <= 1 for v in out.values())
    with pytest.raises(ValueError, match="heads"):
        train_multitask(mt, x, {"C": y}, steps=1, batch_size=8, device="cpu")


# ------------------------------------------------------------------------------------------ conversions


def test_to_and_from_multitask_preserve_the_trunk_outputs():
    model, x, _ = _trained()
    model.eval()
    mt = to_multitask(model, {"A": 4, "B": 2}, keep="A", seed=5).eval()
    assert isinstance(mt, HardSharing)
    with torch.no_grad():
        out = mt(x)
        assert torch.equal(out["A"], model(x))  # the kept head on the copied trunk: the same network
        assert out["B"].shape == (x.shape[0], 2)
        back = from_multitask(mt, 3, seed=1).eval()
        assert torch.equal(back.forward_head(back.forward_features(x), pre_logits=True), mt.trunk(x))
        assert back(x).shape == (x.shape[0], 3)
    # copies: training the multi-task model leaves the original untouched
    state = copy.deepcopy(model.state_dict())
    train_multitask(mt, x, {"A": torch.zeros(len(x), dtype=torch.long)}, steps=2, batch_size=8, device="cpu")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # fresh heads are drawn from the seed
    again = to_multitask(model, {"A": 4, "B": 2}, keep="A", seed=5)
    assert torch.equal(
        again.heads["B"].weight, to_multitask(model, {"A": 4, "B": 2}, keep="A", seed=5).heads["B"].weight
    )


def test_to_multitask_checks_the_kept_head():
    model, _, _ = _trained(steps=1)
    with pytest.raises(ValueError, match="keep"):
        to_multitask(model, {"A": 3}, keep="A")
    with pytest.raises(ValueError, match="keep"):
        to_multitask(model, {"A": 4}, keep="B")
    with pytest.raises(ValueError, match="HardSharing"):
        from_multitask(model, 2)


def test_build_is_seeded():
    a, b, c = (build(MODEL, in_chans=1, num_classes=3, seed=s) for s in (4, 4, 5))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
