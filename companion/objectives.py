"""The two-objective 2-D toy of CAGrad (Liu et al. 2021), and optimisation paths on it.

The toy (arXiv:2110.14048, reused by Nash-MTL and FAMO) has two losses of a point x = (x1, x2) in the plane.
Above the x1 axis each loss is a log-valley, below it a wide quadratic bowl; the two valleys and the two bowls
pull in different directions, and the average loss has a flat, misleading plateau. The Pareto set (no point
improves one loss without hurting the other) lies at the bottom: x1 in [-7, 7], x2 between about -8.44 and
-8.36; on it the two gradients are anti-parallel.

Everything here is plain array maths on batches of points (N x 2), float64, with analytic gradients (numpy
inside, since its per-call overhead on such tiny arrays is a fraction of torch's; torch tensors in and out), so
that the paths from several starting points run together in a few seconds. `aggregate2` gives the
two-task closed forms of the aggregators in `companion.aggregators` (tested against them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

LOWER = 5e-6  # the paper's floor inside the logarithm of the upper valleys
STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))  # the paper's three starting points
SHIFT = 20.0  # both losses are > -20 everywhere: L + SHIFT > 0 is what FAMO takes the logarithm of
TOY_METHODS = ("mean", "mgda", "pcgrad", "cagrad", "upgrad", "famo")


def _points(x) -> np.ndarray:
    x = np.array(x.detach().cpu().numpy() if isinstance(x, Tensor) else x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be a point (2,) or a batch of points (N, 2), got shape {tuple(x.shape)}")
    return x


_CENTRE = np.array([7.0, -7.0])
_SIGN = np.array([1.0, -1.0])


def _toy(x: np.ndarray, grad: bool):
    x1, x2 = x[:, 0:1], x[:, 1:2]
    th, th_half = np.tanh(x2), np.tanh(x2 / 2)
    u = -0.5 * x1 + _SIGN * (th - 3.5)  # inside the two logarithms, N x 2
    au = np.abs(u)
    log_part = np.log(np.maximum(au, LOWER)) + 6
    quad = ((x1 - _CENTRE) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    c_up, c_down = np.maximum(th_half, 0), np.maximum(-th_half, 0)
    losses = c_up * log_part + c_down * quad
    if not grad:
        return losses, None
    inv = np.where(au > LOWER, 1.0 / np.where(au > LOWER, u, 1.0), 0.0)
    dhalf = 0.5 * (1 - th_half**2)
    dc_up, dc_down = np.where(th_half > 0, dhalf, 0.0), np.where(th_half < 0, -dhalf, 0.0)
    g1 = -0.5 * c_up * inv + 0.2 * c_down * (x1 - _CENTRE)
    g2 = dc_up * log_part + c_up * _SIGN * (1 - th**2) * inv + dc_down * quad + 0.02 * c_down * (x2 + 8)
    return losses, np.stack([g1, g2], axis=2)


def toy_losses(x, *, grad: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The CAGrad toy's two losses at points x (N x 2): returns N x 2 (and, with grad, N x 2 x 2 gradients,
    [n, task, coordinate]).

    L_1 = c_+(x2) (log max(|-x1/2 - 7/2 + tanh x2|, 5e-6) + 6) + c_-(x2) (((x1 - 7)^2 + 0.1 (x2 + 8)^2)/10 - 20)
    L_2 = c_+(x2) (log max(|-x1/2 + 7/2 - tanh x2|, 5e-6) + 6) + c_-(x2) (((x1 + 7)^2 + 0.1 (x2 + 8)^2)/10 - 20)
    with c_+(x2) = max(tanh(x2/2), 0) and c_-(x2) = max(-tanh(x2/2), 0).
    """
    losses, g = _toy(_points(x), grad)
    return torch.from_numpy(losses) if not grad else (torch.from_numpy(losses), torch.from_numpy(g))


def pareto_set(n: int = 201) -> Tensor:
    """n points of the toy's Pareto set (x1 from 7 to -7), n x 2.

    Below the axis both losses share the factor c_-(x2), so for each trade-off lambda the minimiser of
    lambda L_1 + (1 - lambda) L_2 has x1 = 7 (2 lambda - 1) and an x2 found by a 1-D golden-section search.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    lam = np.linspace(1, 0, n)
    x1 = 7 * (2 * lam - 1)
    lo, hi = np.full(n, -12.0), np.full(n, -4.0)
    ratio = (math.sqrt(5) - 1) / 2

    def objective(x2: np.ndarray) -> np.ndarray:
        loss = _toy(np.stack([x1, x2], axis=1), False)[0]
        return lam * loss[:, 0] + (1 - lam) * loss[:, 1]

    for _ in range(80):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        left = objective(a) < objective(b)
        lo, hi = np.where(left, lo, a), np.where(left, b, hi)
    return torch.from_numpy(np.stack([x1, (lo + hi) / 2], axis=1))


def distance_to_set(points, curve) -> Tensor:
    """Euclidean distance from each point (N x 2) to the nearest point of a dense curve (M x 2)."""
    p, q = _points(points), _points(curve)
    return torch.from_numpy(np.sqrt(((p[:, None] - q[None]) ** 2).sum(2)).min(1))


def _aggregate2(g: np.ndarray, method: str, c: float) -> np.ndarray:
    g1, g2 = g[:, 0], g[:, 1]
    a, b, d12 = (g1 * g1).sum(1), (g2 * g2).sum(1), (g1 * g2).sum(1)
    tiny = np.finfo(np.float64).tiny
    if method == "mean":
        return (g1 + g2) / 2
    if method == "mgda":
        gap = a + b - 2 * d12
        w = np.where(gap > 0, np.clip((b - d12) / np.maximum(gap, tiny), 0, 1), 0.5)[:, None]
        return w * g1 + (1 - w) * g2
    if method in ("pcgrad", "upgrad"):
        clash = d12 < 0
        p1 = g1 - np.where(clash, d12 / np.maximum(b, tiny), 0.0)[:, None] * g2
        p2 = g2 - np.where(clash, d12 / np.maximum(a, tiny), 0.0)[:, None] * g1
        return p1 + p2 if method == "pcgrad" else (p1 + p2) / 2
    g0 = (g1 + g2) / 2
    r = c * np.sqrt((g0 * g0).sum(1))
    u = g1 - g2  # g_w = g2 + w u; phi'(w) = g0.u + r (g2.u + w |u|^2) / |g_w|, zero where y = g2.u + w |u|^2
    s, p, q = (g0 * u).sum(1), (g2 * u).sum(1), (u * u).sum(1)
    k = -s / np.maximum(r, 1e-200)  # phi' = 0  <=>  y / |g_w| = k, and |g_w|^2 = (y^2 + q |g2|^2 - p^2) / q
    k = np.clip(k, -1e100, 1e100)  # r = 0 (c = 0 or g0 = 0): k is huge, and the optimum is an end point
    inside = k * k < q  # otherwise the optimum sits at an end of the segment
    ratio = k * k * np.maximum(q * b - p * p, 0) / np.where(inside, q - k * k, 1.0)
    y = np.sign(k) * np.sqrt(np.where(inside, ratio, 0.0))
    w = np.where(inside, (y - p) / np.maximum(q, tiny), np.where(k > 0, 1.0, 0.0))
    w = np.where(q > 0, np.clip(w, 0, 1), 0.5)
    gw = g2 + w[:, None] * u
    scale = np.where(r > 0, r / np.maximum(np.sqrt((gw * gw).sum(1)), tiny), 0.0)
    return g0 + scale[:, None] * gw


def aggregate2(g: Tensor, method: str, *, c: float = 0.5) -> Tensor:
    """Two-task closed forms of the aggregators, batched: g is N x 2 (tasks) x P, returns N x P.

    mean: (g1 + g2)/2. mgda: the min-norm point of the segment [g1, g2]. pcgrad: each gradient loses its
    component along the other when they conflict, then the sum. upgrad: the mean of the projections of g1 and
    g2 onto the cone {d: g1.d >= 0, g2.d >= 0}; for two tasks that is exactly pcgrad / 2. cagrad (radius c):
    d = g0 + c |g0| g_w/|g_w| with g_w = w g1 + (1 - w) g2 minimising g0.g_w + c |g0| |g_w| over w in [0, 1]
    (a closed form: the stationarity condition is a quadratic in w). Same results as `companion.aggregators`.
    """
    if not isinstance(g, Tensor) or g.ndim != 3 or g.shape[1] != 2:
        raise ValueError(
            f"g must be an N x 2 x P tensor of two task gradients, got {getattr(g, 'shape', g)!r}"
        )
    if method not in ("mean", "mgda", "pcgrad", "upgrad", "cagrad"):
        raise ValueError(f"method must be one of mean, mgda, pcgrad, upgrad, cagrad, got {method!r}")
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not c >= 0 or math.isinf(c):
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    out = _aggregate2(g.detach().cpu().double().numpy(), method, float(c))
    return torch.from_numpy(out).to(g.dtype)


def toy_paths(
    method: str,
    starts: Sequence[Sequence[float]] = STARTS,
    *,
    steps: int = 30000,
    lr: float | None = None,
    c: float = 0.5,
    famo_lr: float = 0.025,
    famo_decay: float = 1e-3,
    record_every: int = 50,
) -> Tensor:
    """Optimise the toy from each start with Adam on one update rule; returns the paths, K x N x 2.

    method: mean (equal weighting), mgda, pcgrad, cagrad (radius c), upgrad, or famo (weights z = softmax(xi)
    on the log of the shifted losses L + SHIFT, the logits moved by Adam(famo_lr, weight decay famo_decay)
    from the change of the log losses, as `companion.balancers.FAMO`). The paper runs Adam(lr=1e-3) for 100k steps;
    lr=None keeps its budget lr x steps = 100 (a much larger step, e.g. 1e-2 for 10k steps, lets equal weighting
    escape the plateau where the paper's runs stall). Every `record_every` steps (and the last) is kept.
    Deterministic: no randomness anywhere.
    """
    if method not in TOY_METHODS:
        raise ValueError(f"method must be one of {list(TOY_METHODS)}, got {method!r}")
    for name, value in (("steps", steps), ("record_every", record_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    lr = 100 / steps if lr is None else lr
    for name, value in (("lr", lr), ("famo_lr", famo_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0 or math.isinf(c):
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    x = _points(starts)
    b1, b2, eps = 0.9, 0.999, 1e-8
    m, v = np.zeros_like(x), np.zeros_like(x)
    xi, mz, vz = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    prev_log = None
    kept = [x.copy()]
    for t in range(1, steps + 1):
        losses, g = _toy(x, True)
        if method == "famo":
            shifted = losses + SHIFT
            log_now = np.log(shifted)
            if prev_log is not None:  # one Adam step on the logits (L2 decay as in torch's Adam)
                z = np.exp(xi - xi.max(1, keepdims=True))
                z /= z.sum(1, keepdims=True)
                delta = prev_log - log_now
                gz = z * (delta - (z * delta).sum(1, keepdims=True)) + famo_decay * xi
                mz = b1 * mz + (1 - b1) * gz
                vz = b2 * vz + (1 - b2) * gz * gz
                xi = xi - famo_lr * (mz / (1 - b1**t)) / (np.sqrt(vz / (1 - b2**t)) + eps)
            prev_log = log_now
            z = np.exp(xi - xi.max(1, keepdims=True))
            z /= z.sum(1, keepdims=True)
            weight = z / shifted / (z / shifted).sum(1, keepdims=True)  # c z_t / L_t
            d = (weight[:, :, None] * g).sum(1)
        else:
            d = _aggregate2(g, method, float(c))
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        x = x - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        if t % record_every == 0 or t == steps:
            kept.append(x.copy())
    return torch.from_numpy(np.stack(kept))


def path_summary(paths: Tensor, curve: Tensor | None = None, *, on_set: float = 0.1) -> list[dict]:
    """Where each path (from `toy_paths`, K x N x 2) ends: start, final point, both losses, mean loss, distance
    to the Pareto set, path length, distance moved over the last tenth of the path, and `stalled`: ended
    farther than `on_set` from the set.
    """
    if not isinstance(paths, Tensor) or paths.ndim != 3 or paths.shape[2] != 2 or len(paths) < 2:
        raise ValueError(
            f"paths must be a K x N x 2 tensor with K >= 2, got {getattr(paths, 'shape', paths)!r}"
        )
    p = paths.detach().double().numpy()
    curve = pareto_set() if curve is None else curve
    end = p[-1]
    losses = _toy(end, False)[0]
    dist = distance_to_set(end, curve).numpy()
    length = np.sqrt(((p[1:] - p[:-1]) ** 2).sum(2)).sum(0)
    tail = p[-max(2, len(p) // 10)]
    moved = np.sqrt(((end - tail) ** 2).sum(1))
    return [
        {
            "start": p[0, i].tolist(),
            "end": end[i].tolist(),
            "losses": losses[i].tolist(),
            "mean_loss": float(losses[i].mean()),
            "distance": float(dist[i]),
            "length": float(length[i]),
            "moved_last_tenth": float(moved[i]),
            "stalled": bool(dist[i] > on_set),
        }
        for i in range(len(end))
    ]
