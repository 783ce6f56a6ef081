"""The CAGrad 2-D toy (notebook 10): losses and gradients against autograd and hand values, the two-task closed
forms against companion.aggregators, the Pareto set's first-order condition, and the paths' end points."""

from __future__ import annotations

import math

import pytest
import torch

from companion.aggregators import aggregate
from companion.objectives import (
    STARTS,
    aggregate2,
    distance_to_set,
    pareto_set,
    path_summary,
    toy_losses,
    toy_paths,
)

F64 = torch.float64


def autograd_toy(x: torch.Tensor) -> torch.Tensor:
    """The paper's code, written independently in torch (arXiv:2110.14048, toy.py): the two losses at one point."""
    x1, x2 = x[0], x[1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), 5e-6).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), 5e-6).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    return torch.stack([f1 * c1 + f1_sq * c2, f2 * c1 + f2_sq * c2])


POINTS = [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0), (0.3, -8.36), (2.0, 0.7), (-1.0, -0.4), (5.5, 3.0)]


def test_losses_and_gradients_match_autograd():
    losses, grads = toy_losses(torch.tensor(POINTS, dtype=F64), grad=True)
    assert losses.shape == (len(POINTS), 2) and grads.shape == (len(POINTS), 2, 2)
    for i, point in enumerate(POINTS):
        x = torch.tensor(point, dtype=F64, requires_grad=True)
        ref = autograd_toy(x)
        assert torch.allclose(losses[i], ref.detach(), atol=1e-12)
        for t in range(2):
            (g,) = torch.autograd.grad(ref[t], x, retain_graph=True)
            assert torch.allclose(grads[i, t], g, atol=1e-10), (point, t)


def test_loss_reference_values():
    # at the origin both gates are 0; at x2 -> -inf the bowls' minima are -20 at x1 = +-7
    assert toy_losses((0.0, 0.0)).abs().max().item() == 0.0
    far = toy_losses((7.0, -8.0)).squeeze()
    assert far[0].item() == pytest.approx(-20 * math.tanh(4.0), rel=1e-12)
    assert far[1].item() == pytest.approx((196 / 10 - 20) * math.tanh(4.0), rel=1e-12)
    # the upper valley: task 1's log argument is -x1/2 - 7/2 + tanh(x2); at (-8.5, 7.5) it is 0.75 + tanh(7.5)
    up = toy_losses((-8.5, 7.5)).squeeze()
    assert up[0].item() == pytest.approx(math.tanh(3.75) * (math.log(0.75 + math.tanh(7.5)) + 6), rel=1e-12)


@pytest.mark.parametrize("method", ["mean", "mgda", "pcgrad", "upgrad", "cagrad"])
def test_aggregate2_matches_the_general_aggregators(method):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(200, 2, 5, generator=gen, dtype=F64) * (
        0.1 + 3 * torch.rand(200, 2, 1, generator=gen, dtype=F64)
    )
    g[:20, 1] = -0.5 * g[:20, 0]  # exactly opposed pairs
    g[20:40, 1] = 2.0 * g[20:40, 0]  # parallel pairs
    out = aggregate2(g, method, c=0.5)
    kw = {"c": 0.5} if method == "cagrad" else {}
    for i in range(len(g)):
        ref = aggregate(g[i], method, seed=0, **kw)
        if method == "upgrad":  # for two tasks UPGrad is the mean of the pair's projections: PCGrad / 2
            assert torch.allclose(out[i], aggregate(g[i], "pcgrad", seed=0) / 2, atol=1e-9)
        assert torch.allclose(out[i], ref, atol=1e-7 * (1 + ref.norm().item())), (method, i)


def test_aggregate2_hand_values():
    g = torch.tensor([[[1.0, 0.0], [-1.0, 1.0]]], dtype=F64)  # cosine -1/sqrt(2)
    assert aggregate2(g, "mean").squeeze().tolist() == [0.0, 0.5]
    # PCGrad: g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2 - (g1.g2/|g1|^2) g1 = (0, 1); sum (0.5, 1.5)
    assert torch.allclose(aggregate2(g, "pcgrad").squeeze(), torch.tensor([0.5, 1.5], dtype=F64))
    # MGDA: the min-norm point of the segment is w g1 + (1 - w) g2 with w = (|g2|^2 - g1.g2)/|g1 - g2|^2 = 3/5
    assert torch.allclose(aggregate2(g, "mgda").squeeze(), torch.tensor([0.2, 0.4], dtype=F64))
    # CAGrad with c = 0 is the mean
    assert torch.allclose(aggregate2(g, "cagrad", c=0.0), aggregate2(g, "mean"))


def test_aggregate2_rejects_bad_input():
    with pytest.raises(ValueError):
        aggregate2(torch.zeros(3, 3, 2), "mean")
    with pytest.raises(ValueError):
        aggregate2(torch.zeros(3, 2, 2), "nash")
    with pytest.raises(ValueError):
        aggregate2(torch.zeros(3, 2, 2), "cagrad", c=-1.0)


def test_pareto_set_points_have_anti_parallel_gradients():
    curve = pareto_set(41)
    assert curve[0, 0].item() == pytest.approx(7.0) and curve[-1, 0].item() == pytest.approx(-7.0)
    _, g = toy_losses(curve, grad=True)
    inner = g[1:-1]  # at the ends one gradient vanishes (each task's own minimum)
    cos = torch.nn.functional.cosine_similarity(inner[:, 0], inner[:, 1], dim=1)
    assert torch.allclose(cos, torch.full_like(cos, -1.0), atol=1e-6)
    assert g[0, 0].norm().item() < 1e-6 and g[-1, 1].norm().item() < 1e-6
    # symmetric about x1 = 0, and the middle is the minimum of the mean loss along x1 = 0
    assert torch.allclose(curve[:, 1], curve.flip(0)[:, 1], atol=1e-8)
    mid = curve[20]
    mean = lambda x2: toy_losses((0.0, x2)).mean().item()  # noqa: E731
    assert mean(mid[1].item()) < min(mean(mid[1].item() - 1e-3), mean(mid[1].item() + 1e-3))


def test_distance_to_set():
    curve = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=F64)
    d = distance_to_set(torch.tensor([[0.0, 3.0], [1.0, -4.0]], dtype=F64), curve)
    assert d.tolist() == [3.0, 4.0]


@pytest.mark.slow  # about 30 s on a busy 2-core machine
def test_paths_reproduce_the_papers_picture():
    """The paper's step budget (lr x steps = 100; the paper: Adam, lr 1e-3, 100k steps), shortened as notebook 10
    runs it at quick scale: equal weighting stalls from starts 1 and 3, CAGrad reaches the mean-loss minimum on
    the Pareto set (x1 = 0) from all three, MGDA reaches the set at a start-dependent point."""
    steps = 30_000
    curve = pareto_set()
    run = {
        m: path_summary(toy_paths(m, steps=steps, lr=100 / steps, record_every=1000), curve)
        for m in ("mean", "cagrad", "mgda")
    }
    assert [r["stalled"] for r in run["mean"]] == [True, False, True]
    assert all(r["distance"] < 0.05 and abs(r["end"][0]) < 0.05 for r in run["cagrad"])
    assert not any(r["stalled"] for r in run["mgda"])
    assert [round(r["end"][0]) for r in run["mgda"]] == [-3, -7, 3]
    assert run["mean"][1]["start"] == list(STARTS[1])


def test_paths_validate_and_are_deterministic():
    a = toy_paths("famo", steps=200, record_every=50)
    b = toy_paths("famo", steps=200, record_every=50)
    assert a.shape == (5, 3, 2) and torch.equal(a, b)
    assert torch.equal(
        toy_paths("mean", steps=200, record_every=200), toy_paths("mean", steps=200, lr=0.5, record_every=200)
    )
    with pytest.raises(ValueError):
        toy_paths("sgd")
    with pytest.raises(ValueError):
        toy_paths("mean", steps=0)
