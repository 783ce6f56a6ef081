"""companion.affinity (task affinity grouping) and the planted groups of companion.synthetic.make_tasks."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from companion.affinity import AffinityMeter, grouping_score, rank_splits, two_group_splits
from companion.balancers import task_affinity
from companion.batches import TensorBatches
from companion.mtl import HardSharing
from companion.synthetic import make_tasks
from companion.train import fit

# Affinity of task i (row) onto task j (column): tasks 0 and 1 help each other, so do 2 and 3.
A = np.array([[1.0, 0.5, 0.1, 0.0], [0.3, 1.0, 0.0, 0.2], [0.1, -0.2, 1.0, 0.4], [0.0, 0.1, 0.6, 1.0]])


def test_grouping_score_reference_values():
    # (0,0,1,1): onto task 0 from 1: 0.3, onto 1 from 0: 0.5, onto 2 from 3: 0.6, onto 3 from 2: 0.4 -> 1.8 / 4
    assert grouping_score(A, (0, 0, 1, 1)) == pytest.approx(0.45)
    assert grouping_score(A, (0, 1, 0, 1)) == pytest.approx((0.1 + 0.1 + 0.1 + 0.2) / 4)
    assert grouping_score(A, (0, 1, 1, 0)) == pytest.approx((0.0 + 0.0 - 0.2 + 0.0) / 4)
    # a task alone scores 0; the others average over their two mates: (0.2 + 0.15 + 0.05 + 0) / 4
    assert grouping_score(A, (0, 0, 0, 1)) == pytest.approx(0.1)
    # one group: column sums off the diagonal (0.4, 0.4, 0.7, 0.6), each over 3 mates, averaged
    assert grouping_score(A, (5, 5, 5, 5)) == pytest.approx(0.175)
    assert grouping_score(A, (0, 1, 2, 3)) == 0.0


def test_two_group_splits_enumerates_each_partition_once():
    assert two_group_splits(4) == [(0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0)]
    assert two_group_splits(3) == [(0, 0, 1), (0, 1, 0), (0, 1, 1)]
    for t in (2, 3, 4, 5, 6):
        every = two_group_splits(t, balanced=False)
        assert len(every) == 2 ** (t - 1) - 1  # Stirling number S(t, 2)
        assert all(g[0] == 0 and 0 < sum(g) < t for g in every)
    assert len(two_group_splits(6)) == math.comb(6, 3) // 2


def test_rank_splits_best_first_and_recovers_planted_blocks():
    ranked = rank_splits(A)
    assert [g for g, _ in ranked] == [(0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0)]
    assert [s for _, s in ranked] == pytest.approx([0.45, 0.125, -0.05])
    every = rank_splits(A, balanced=False)
    assert len(every) == 7 and every[0][0] == (0, 0, 1, 1)
    # a block structure under any task order: the planted split comes first
    rng = np.random.default_rng(0)
    for perm in itertools.permutations(range(4)):
        p = list(perm)
        noisy = A[np.ix_(p, p)] + rng.normal(0, 0.01, (4, 4))
        best = rank_splits(noisy)[0][0]
        planted = tuple(0 if p[k] < 2 else 1 for k in range(4))
        assert best in (planted, tuple(1 - g for g in planted))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: grouping_score(np.ones((3, 2)), (0, 0, 1)), "affinity"),
        (lambda: grouping_score(np.array([[1.0, np.nan], [0.0, 1.0]]), (0, 1)), "affinity"),
        (lambda: grouping_score(A, (0, 1)), "groups"),
        (lambda: grouping_score(A, (0, 1, -1, 0)), "groups"),
        (lambda: two_group_splits(1), "tasks"),
        (lambda: AffinityMeter({"a": None}, lr=0.1), "loss_fns"),
        (lambda: AffinityMeter({"a": None, "b": None}, lr=0), "lr"),
        (lambda: AffinityMeter({"a": None, "b": None}, lr=0.1, every=0), "every"),
    ],
)
def test_bad_inputs_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        call()


def _model(seed: int = 0) -> HardSharing:
    torch.manual_seed(seed)
    return HardSharing(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh()), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)}
    )


def _mse(out, y):
    return ((out.squeeze(-1) - y) ** 2).mean()


def test_affinity_meter_averages_task_affinity_and_leaves_training_alone():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g)
    y = {"a": x.sum(1), "b": x[:, 0] - x[:, 1]}
    loss_fns = {"a": _mse, "b": _mse}
    # by hand: two measurements on two batches are averaged
    net = _model()
    meter = AffinityMeter(loss_fns, lr=0.05, every=2)
    batches = [(x[:8], {t: v[:8] for t, v in y.items()}), (x[8:], {t: v[8:] for t, v in y.items()})]
    for step, (bx, by) in zip((1, 2, 3, 4), batches * 2):
        meter.on_step_end(SimpleNamespace(step=step, model=net, x=bx, y=by))
    expected = np.mean([task_affinity(net, loss_fns, batches[k], 0.05) for k in (1, 1)], axis=0)
    assert meter.count == 2 and np.allclose(meter.mean, expected)
    # inside fit: the weights end where they end without the meter
    plain, measured = _model(), _model()
    for net, cbs in ((plain, None), (measured, [AffinityMeter(loss_fns, lr=0.05, every=3)])):
        fit(
            net,
            TensorBatches(x, y, 8, seed=0),
            epochs=3,
            loss_fns=loss_fns,
            lr=0.01,
            seed=0,
            device="cpu",
            progress=False,
            callbacks=cbs,
        )
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), measured.parameters()))
    assert cbs[0].count == 2 and cbs[0].mean.shape == (2, 2)
    again = AffinityMeter(loss_fns, lr=0.05, every=3)  # a checkpoint carries the running mean
    again.load_state_dict(cbs[0].state_dict())
    assert again.count == 2 and np.array_equal(again.mean, cbs[0].mean)


def test_make_tasks_without_groups_is_unchanged():
    # values computed before `groups` existed
    x, y = make_tasks(50, seed=7, num_tasks=3, relatedness=0.5, size=12)
    assert float(x.double().sum()) == pytest.approx(5250.97211173689, abs=1e-6)
    assert y["shape"][:12].tolist() == [3, 3, 2, 2, 3, 3, 3, 3, 2, 3, 2, 0]
    assert y["colour"][:12].tolist() == [3, 1, 0, 2, 3, 1, 3, 3, 1, 0, 2, 1]
    assert y["scale"][:12].tolist() == [3, 3, 2, 2, 3, 1, 3, 3, 3, 0, 2, 3]
    assert {t: int(v.sum()) for t, v in y.items()} == {"shape": 79, "colour": 64, "scale": 86}
    # one group of all tasks draws exactly the same
    x1, y1 = make_tasks(50, seed=7, num_tasks=3, relatedness=0.5, size=12, groups=(2, 2, 2))
    assert torch.equal(x, x1) and all(torch.equal(y[t], y1[t]) for t in y)


def test_make_tasks_groups_agree_within_and_not_across():
    n, r, k = 20000, 0.8, 4
    _, y = make_tasks(n, seed=1, num_tasks=4, relatedness=r, classes=k, size=8, groups=(0, 1, 0, 1))
    names = list(y)
    for a, b in itertools.combinations(range(4), 2):
        agree = float((y[names[a]] == y[names[b]]).float().mean())
        want = r + (1 - r) / k if (a % 2) == (b % 2) else 1 / k
        assert agree == pytest.approx(want, abs=0.015), (names[a], names[b])
    for v in y.values():  # labels stay uniform
        assert torch.bincount(v, minlength=k).float().div(n).sub(1 / k).abs().max() < 0.015


@pytest.mark.parametrize("groups", [(0, 1), (0, 1, 2, "a"), "0101", (0, -1, 0, 1), (0, 1.0, 0, 1)])
def test_make_tasks_bad_groups(groups):
    with pytest.raises(ValueError, match="^groups"):
        make_tasks(4, seed=0, num_tasks=4, groups=groups)
