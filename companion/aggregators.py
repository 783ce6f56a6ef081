"""Gradient-level aggregation for multi-task learning: per-task gradients, PCGrad, MGDA, CAGrad, UPGrad.

Every method turns a matrix ``G`` of per-task gradients (T tasks x P numbers) into one update direction of
length P. All methods only need the T x T Gramian ``G @ G.T``: they pick a weight per task from it and return
``weights @ G``. The small optimisation problems on the Gramian are solved on the CPU in float64 (the Gramian
is tiny), so the code runs the same on CUDA, MPS or CPU.

Numerics (the same rules for every method):

- Precision: the Gramian and the combination ``weights @ G`` are formed in float64 whatever the input dtype
  (on the input's device; on the CPU for MPS, which has no float64) and the direction is cast back to the
  input dtype. A float32 Gramian is not even positive semi-definite on linearly dependent gradients, and its
  entries overflow beyond |g| ~ 1e19.
- Noise floor: the gradients themselves carry the input's rounding. A relative error of 100 eps in the rows
  (eps: machine epsilon of the input dtype, 1.2e-7 for float32) moves a zero singular value of G to about
  100 eps |G|, so on the trace-normalised Gramian (trace 1) anything below ``delta = (100 eps)^2``, clamped
  to [1e-13, 1e-4], is treated as zero (1.4e-10 for float32; for float64 1e-13, the float64 rounding of the
  Gramian itself; float16/bfloat16 hit the 1e-4 cap, a singular-value ratio of 1e-2):
  eigenvalues in IMTL-G's pseudo-inverse and the "0 is in the hull" test of CAGrad; PCGrad ignores
  conflicts with a cosine above ``-sqrt(delta)``.
- Near-singular systems (duplicate, opposite or linearly dependent gradients) are regularised with a
  Levenberg-Marquardt ridge ``1e-12 * diag(K)`` on the trace-normalised Gramian K used by MGDA, UPGrad and
  CAGrad: each small problem becomes strictly convex, so the weights (not only the direction) are unique
  and do not depend on the task order, and the float64 solves stay accurate. Being proportional to each
  task's squared norm, the ridge keeps UPGrad exactly linear under a positive rescaling of the tasks; its
  price is a conflict of at most ``1e-6 |g_i| |g_j|``. Near stationary points the answer moves in proportion
  to the ridge (by about 1e3 times it on a near-stationary 4 x 2 example), which is why the ridge is not tied
  to the input precision and why we do not use torchjd's ``1e-4 * I`` on the normalised Gramian.

Scale: every method here is positively homogeneous, ``aggregate(a * G) == a * aggregate(G)`` for ``a > 0``
(no absolute epsilon anywhere), so they commute with a loss scale in exact arithmetic. Still, aggregate the
*unscaled* gradients (``G / s``) and write back ``direction * s`` under fp16 loss scaling: it keeps the
float16 gradients themselves away from overflow, and other libraries (torchjd's UPGrad/CAGrad) treat a
Gramian of trace < 1e-4 as zero.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

METHODS = ("mean", "sum", "pcgrad", "cagrad", "mgda", "upgrad", "imtl_g")
_OPTIONS = {"cagrad": ("c",)}  # the keyword options each method accepts
_TOL = 1e-13  # optimality tolerance of the active-set solver on the trace-normalised Gramian (float64)
_RIDGE = 1e-12  # Levenberg-Marquardt ridge on the trace-normalised Gramian, relative to its diagonal
_FLOOR = 1e-13  # float64 rounding of the trace-normalised Gramian: no eigenvalue below this is resolved
_CAP = 1e-4  # the largest noise floor (float16, bfloat16)
_CPU64 = {"device": "cpu", "dtype": torch.float64}


def _noise_floor(eps: float) -> float:
    """Eigenvalue of the trace-normalised Gramian below which it is noise, for gradients of precision eps."""
    return min(max((100 * eps) ** 2, _FLOOR), _CAP)


def gramian(G: Tensor) -> Tensor:
    """Return the T x T Gramian G @ G.T of the task gradients, formed in float64.

    Computed on G's device (on the CPU for MPS, which has no float64); the result stays float64.
    """
    _check_matrix(G)
    G64 = _as64(G)
    return G64 @ G64.T


def min_norm(gram: Tensor) -> Tensor:
    """Weights of the min-norm point of the convex hull of the task gradients, from their Gramian.

    Exact: closed form for two tasks; beyond, an active-set (Lawson-Hanson) non-negative least squares, both on
    the ridge-regularised Gramian (see the module docstring).
    """
    K, scale = _normalise(gram)
    T = K.shape[0]
    w = torch.full((T,), 1.0 / T, **_CPU64) if scale == 0 else _mgda(_ridge(K, _RIDGE))
    return w.to(gram.device, gram.dtype)


def pcgrad(G: Tensor, *, seed: int | torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al. 2020): remove from each gradient its conflicting components, then sum.

    For each task i, in a random order of the others (``seed``: int, torch.Generator, or None for torch's
    global generator): if g_i conflicts with g_j (negative dot product), project g_i onto g_j's normal plane.
    Done on the float64 Gramian (as torchjd does): g_i's projected version is tracked as weights c with
    g_i' = c @ G. A dot product counts as a conflict only below ``-sqrt(delta) |g_i'| |g_j|`` (delta: noise
    floor of G's dtype, see the module docstring), so orthogonal gradients are not projected on rounding noise.
    """
    _check_matrix(G)
    G64 = _as64(G)
    gram = G64 @ G64.T
    if not bool(torch.isfinite(gram).all()):
        return torch.full_like(G[0], float("nan"))
    K, _ = _normalise(gram)
    w = _pcgrad(K, math.sqrt(_noise_floor(torch.finfo(G.dtype).eps)), seed)
    return _combine(w, G64, G)


def gramian_weights(gram: Tensor, method: str, *, c: float = 0.4, eps: float | None = None) -> Tensor:
    """Per-task weights of a Gramian-only method: direction = weights @ G.

    ``method`` is one of mean, sum, mgda, upgrad, cagrad, imtl_g (PCGrad is in `pcgrad`). ``c`` is CAGrad's
    radius, as a fraction of the mean gradient's norm. ``eps``: relative precision of the gradients behind
    ``gram`` (default: the machine epsilon of ``gram``'s dtype; pass ``torch.finfo(torch.float32).eps`` for a
    float64 Gramian of float32 gradients, as `aggregate` does).
    """
    names = [m for m in METHODS if m != "pcgrad"]
    if method not in names:
        raise ValueError(f"method must be one of {names}, got {method!r}")
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not c >= 0 or math.isinf(c):
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    return _weights(gram, method, c, _delta(gram, eps)).to(gram.device, gram.dtype)


def aggregate(G: Tensor, method: str, *, seed: int | torch.Generator | None = None, **kw: float) -> Tensor:
    """Combine per-task gradients G (T x P) into one direction of length P with `method`.

    - mean, sum: the plain average / total (in G's dtype).
    - pcgrad (Yu et al. 2020): see `pcgrad`; ``seed`` (int or torch.Generator) fixes the random task order.
      It sums the projected gradients, as in the paper and torchjd (so no conflict -> same as "sum").
    - mgda (Sener & Koltun 2018): the min-norm point of the convex hull of the gradients, not rescaled.
    - cagrad (Liu et al., NeurIPS 2021), option ``c`` (default 0.4): d = g0 + c|g0| g_w/|g_w| with w minimising
      g0.g_w + c|g0||g_w| on the simplex (g0 = mean), as in the paper and torchjd; the official code
      divides by 1 + c^2 by default (rescale=1). If 0 is in the hull and the ball around g0 meets the cone
      {d: G d >= 0} (both up to the noise floor), every d there is optimal (max-min value 0): we return the
      one nearest g0 (torchjd returns 0). Non-conflicting for c >= 1.
    - upgrad (Quinton & Rey 2024, as in torchjd): the mean of the projections of each g_i onto the dual cone
      {d: G d >= 0}, solved exactly on the ridge-regularised Gramian (torchjd adds 1e-4 to the normalised
      Gramian's diagonal; we add 1e-12 * its diagonal, see the module docstring).
    - imtl_g (Liu et al., ICLR 2021, as generalised in torchjd): weights summing to 1 that give the direction
      equal projections on every unit task gradient; the pseudo-inverse drops eigenvalues below the noise
      floor (torch.linalg.pinv's default cut-off, T eps of the Gramian's dtype, inverts float32 rounding
      noise once the Gramian is float64, giving a direction orders of magnitude too short).

    The Gramian and the combination are computed in float64 and the direction is returned in G's dtype.
    Weights come from the trace-normalised Gramian, so every method is positively homogeneous:
    aggregate(a G) = a aggregate(G) for a > 0. A G holding inf/NaN (an overflowed fp16 step) gives an
    all-NaN direction for every method but mean/sum (which propagate it), so a GradScaler skips the step.
    """
    _check_matrix(G)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    extra = sorted(set(kw) - set(_OPTIONS.get(method, ())))
    if extra:
        raise ValueError(f"options {extra} are not accepted by method {method!r}; accepted: {_OPTIONS}")
    if method == "mean":
        return G.mean(dim=0)
    if method == "sum":
        return G.sum(dim=0)
    if method == "pcgrad":
        return pcgrad(G, seed=seed)
    c = kw.get("c", 0.4)
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not c >= 0 or math.isinf(c):
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    G64 = _as64(G)
    gram = G64 @ G64.T
    if not bool(torch.isfinite(gram).all()):  # an inf/NaN in G reaches the Gramian's diagonal
        return torch.full_like(G[0], float("nan"))
    return _combine(_weights(gram, method, c, _noise_floor(torch.finfo(G.dtype).eps)), G64, G)


def task_gradients(
    losses: dict[str, Tensor],
    params: Iterable[Tensor] | Tensor,
    *,
    mode: str = "params",
    retain_graph: bool = False,
) -> Tensor:
    """Stack one gradient row per task (T x P), w.r.t. shared parameters or a shared feature tensor.

    mode="params": gradients w.r.t. ``params`` (flattened and concatenated; unused -> zeros).
    mode="features": gradients w.r.t. the shared representation ``params`` (e.g. B x D); only the task heads
    are traversed, then `backward_features` sends the aggregated direction through the trunk once (much
    cheaper with many tasks). The graph is retained for all but the last task, so it is freed afterwards, unless
    `retain_graph` (GradAggregation's one-pass features mode walks the heads' graph once more).
    """
    if mode not in ("params", "features"):
        raise ValueError(f"mode must be one of ['params', 'features'], got {mode!r}")
    if not isinstance(losses, dict) or not losses:
        raise ValueError(f"losses must be a non-empty dict of scalar tensors, got {type(losses).__name__}")
    if mode == "features" and not (isinstance(params, Tensor) and params.requires_grad):
        raise ValueError("params must be the shared feature tensor (requires_grad) in mode='features'")
    inputs = [params] if isinstance(params, Tensor) else list(params)
    if not inputs or not all(isinstance(p, Tensor) for p in inputs):
        raise ValueError(f"params must be a tensor or a non-empty list of tensors, got {params!r}")
    for name, loss in losses.items():
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"losses[{name!r}] must be a scalar tensor, got {type(loss).__name__}")
    live = [name for name, loss in losses.items() if loss.requires_grad]
    rows = []
    for name, loss in losses.items():
        if loss.requires_grad:  # keep the graph alive until the last task's backward
            grads = torch.autograd.grad(
                loss, inputs, retain_graph=retain_graph or name != live[-1], allow_unused=True
            )
        else:
            grads = [None] * len(inputs)
        rows.append(
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, inputs)])
        )
    return torch.stack(rows)


def backward_features(features: Tensor, direction: Tensor) -> None:
    """Back-propagate a feature-space direction (flat or shaped like ``features``) through the trunk.

    Accumulates into the trunk parameters' ``.grad``, like ``loss.backward()``, and frees the trunk's graph.
    """
    if direction.numel() != features.numel():
        raise ValueError(
            f"direction must have {features.numel()} elements (features {tuple(features.shape)}), got {direction.numel()}"
        )
    features.backward(direction.reshape(features.shape).to(features.dtype))


def write_grad(params: Iterable[Tensor] | Tensor, direction: Tensor, *, accumulate: bool = False) -> None:
    """Put a flat direction back into the ``.grad`` of params, in order.

    accumulate=False (default) replaces any existing ``.grad``; accumulate=True adds to it, like backward.
    """
    params = [params] if isinstance(params, Tensor) else list(params)
    total = sum(p.numel() for p in params)
    if direction.ndim != 1 or direction.numel() != total:
        raise ValueError(
            f"direction must be a flat vector of length {total} (all params), got shape {tuple(direction.shape)}"
        )
    offset = 0
    for p in params:
        piece = direction[offset : offset + p.numel()].reshape(p.shape).to(p.device, p.dtype)
        offset += p.numel()
        if p.grad is None:
            p.grad = piece.detach().clone()
        elif accumulate:
            p.grad.add_(piece.detach())
        else:
            p.grad.copy_(piece.detach())


def cosine_matrix(G: Tensor) -> Tensor:
    """Pairwise cosine similarities of the task gradients, T x T (a zero gradient has cosine 0).

    Computed from the float64 Gramian, returned in G's dtype (float32 at least).
    """
    K = gramian(G)
    norms = K.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    cos = torch.where(denom > 0, K / denom.clamp_min(torch.finfo(K.dtype).tiny), 0.0).clamp(-1, 1)
    return cos.to(torch.promote_types(G.dtype, torch.float32))


def conflict(G: Tensor, names: Sequence[str] | None = None) -> dict:
    """Conflict diagnostics: pairwise cosines, any conflicting pair, and the max/min gradient-norm ratio.

    Keys: cosine (T x T tensor), pairs {(a, b): cosine} for a before b, any_conflict (some cosine < 0),
    min_cosine (nan for one task), norms (list), magnitude_ratio (max/min norm; inf if one is zero, nan if all).
    """
    cos = cosine_matrix(G)
    T = len(G)
    labels = list(names) if names is not None else list(range(T))
    if len(labels) != T:
        raise ValueError(f"names must have one entry per task ({T}), got {len(labels)}")
    pairs = {(labels[i], labels[j]): float(cos[i, j]) for i in range(T) for j in range(i + 1, T)}
    norms = gramian(G).diagonal().clamp_min(0).sqrt().tolist()
    big, small = max(norms), min(norms)
    ratio = big / small if small > 0 else (math.inf if big > 0 else math.nan)
    return {
        "cosine": cos,
        "pairs": pairs,
        "any_conflict": any(v < 0 for v in pairs.values()),
        "min_cosine": min(pairs.values()) if pairs else math.nan,
        "norms": norms,
        "magnitude_ratio": ratio,
    }


def benchmark_aggregators(
    T_list: Sequence[int] = (2, 4, 8),
    P: int = 100_000,
    *,
    methods: Sequence[str] = METHODS,
    repeats: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[int, dict[str, float]]:
    """Per-call time of each method relative to "mean", measured side by side in one run.

    Methods are timed in turn within each repeat, on the same random G, and medians are compared.
    """
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"methods must be drawn from {list(METHODS)}, got {name!r}")
    if not (isinstance(repeats, int) and repeats >= 1) or not (isinstance(P, int) and P >= 1):
        raise ValueError(f"repeats and P must be positive integers, got repeats={repeats!r}, P={P!r}")
    dev = torch.device(device)
    names = ["mean", *[m for m in methods if m != "mean"]]
    gen = torch.Generator().manual_seed(seed)
    result: dict[int, dict[str, float]] = {}
    for T in T_list:
        G = torch.randn(T, P, generator=gen).to(dev)
        times: dict[str, list[float]] = {m: [] for m in names}
        for r in range(repeats + 1):  # the first round warms up and is dropped
            for m in names:
                _sync(dev)
                start = time.perf_counter()
                aggregate(G, m, seed=r)
                _sync(dev)
                if r > 0:
                    times[m].append(time.perf_counter() - start)
        base = statistics.median(times["mean"])
        result[T] = {m: statistics.median(t) / base for m, t in times.items()}
    return result


# --- helpers -----------------------------------------------------------------------------------------------


def _check_matrix(G: Tensor) -> None:
    if not isinstance(G, Tensor) or G.ndim != 2 or G.shape[0] == 0 or not G.is_floating_point():
        shape = tuple(G.shape) if isinstance(G, Tensor) else type(G).__name__
        raise ValueError(f"G must be a floating-point T x P tensor with T >= 1, got {shape}")


def _as64(G: Tensor) -> Tensor:
    """G in float64, on its device (on the CPU for MPS, which has no float64)."""
    return G.detach().to("cpu" if G.device.type == "mps" else G.device, torch.float64)


def _combine(w: Tensor, G64: Tensor, G: Tensor) -> Tensor:
    """weights @ G in float64, returned in G's dtype and on G's device."""
    return (w.to(G64.device) @ G64).to(G.device, G.dtype)


def _delta(gram: Tensor, eps: float | None) -> float:
    """Noise floor for a Gramian of gradients of relative precision eps (default: gram's machine epsilon)."""
    if eps is None:
        floating = isinstance(gram, Tensor) and gram.is_floating_point()
        return _noise_floor(torch.finfo(gram.dtype).eps) if floating else _FLOOR
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    return _noise_floor(float(eps))


def _normalise(gram: Tensor) -> tuple[Tensor, float]:
    """Symmetrised CPU float64 copy of the Gramian divided by its trace, and that trace (0 if all zero)."""
    if not isinstance(gram, Tensor) or gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"gram must be a square T x T tensor with T >= 1, got {shape}")
    K = gram.detach().to(**_CPU64)
    if not bool(torch.isfinite(K).all()):
        raise ValueError("gram must be finite, got inf or NaN entries")
    K = (K + K.T) / 2
    scale = float(K.trace())
    return (K / scale, scale) if scale > 0 else (K, 0.0)


def _ridge(K: Tensor, delta: float) -> Tensor:
    """K + delta diag(K): the Levenberg-Marquardt ridge, scaled per task by its squared norm (module docstring)."""
    return K + delta * torch.diag(K.diagonal().clamp_min(0))


def _weights(gram: Tensor, method: str, c: float, delta: float) -> Tensor:
    """Float64 CPU weights of a Gramian-only method, with noise floor delta."""
    K, scale = _normalise(gram)
    T = K.shape[0]
    if method == "sum":
        return torch.ones(T, **_CPU64)
    if scale == 0 or method == "mean" or (method == "cagrad" and c == 0):
        return torch.full((T,), 1.0 / T, **_CPU64)  # all-zero gradients, the mean, or CAGrad without a ball
    if method == "imtl_g":
        return _imtl_g(K, delta)
    Kr = _ridge(K, _RIDGE)
    if method == "mgda":
        return _mgda(Kr)
    if method == "upgrad":
        return _upgrad(Kr)
    return _cagrad(K, c, delta)


def _nnls(Q: Tensor, q: Tensor) -> Tensor:
    """Active-set (Lawson-Hanson) solution of min 1/2 u'Qu - q'u subject to u >= 0, for Q = A'A, q = A'b."""
    n = len(q)
    u, free = torch.zeros(n, **_CPU64), torch.zeros(n, dtype=torch.bool)
    for _ in range(10 * n):
        slope = q - Q @ u  # minus the gradient: a bound variable with positive slope should be freed
        slope[free] = -math.inf
        j = int(slope.argmax())
        if slope[j] <= _TOL:
            break
        free[j] = True
        for _ in range(n):  # each pass drops at least one free variable
            z = torch.zeros(n, **_CPU64)
            if bool(free.any()):
                sub = torch.linalg.lstsq(Q[free][:, free], q[free][:, None], driver="gelsd")
                z[free] = sub.solution[:, 0]
            blocked = free & (z <= 0)
            if not bool(blocked.any()):
                break
            step = (u[blocked] / (u[blocked] - z[blocked])).min()  # walk from u towards z until one hits 0
            u = u + step * (z - u)
            free &= u > 1e-14
            u[~free] = 0.0
        u = z.clamp_min(0)
    return u


def _mgda(K: Tensor) -> Tensor:
    """Min-norm weights: closed form for T = 2, else NNLS on K + 11' (Lawson & Hanson's least-distance trick)."""
    T = K.shape[0]
    if T == 1:
        return torch.ones(1, **_CPU64)
    if T == 2:  # the line search of Sener & Koltun between g1 and g2
        gap = K[0, 0] + K[1, 1] - 2 * K[0, 1]  # |g1 - g2|^2
        a = ((K[1, 1] - K[0, 1]) / gap).clamp(0, 1) if gap > 0 else K.new_tensor(0.5)
        return torch.stack([a, 1 - a])
    # the KKT conditions of min |G'u|^2 + (1'u - 1)^2, u >= 0, are those of MGDA for w = u / 1'u
    u = _nnls(K + 1.0, torch.ones(T, **_CPU64))
    return u / u.sum()


def _upgrad(K: Tensor) -> Tensor:
    """UPGrad weights: v_i = argmin v'Kv s.t. v >= e_i projects g_i onto the dual cone; average the v_i."""
    T = K.shape[0]
    eye = torch.eye(T, **_CPU64)
    return sum(eye[i] + _nnls(K, -K[i]) for i in range(T)) / T  # v = e_i + lambda, lambda >= 0


def _cagrad(K: Tensor, c: float, delta: float) -> Tensor:
    """CAGrad weights: w* = argmin_w g0.g_w + r |g_w| on the simplex (r = c |g0|), then d = g0 + r g_w*/|g_w*|.

    For a shift s > 0, the min-norm point of the hull moved by s g0 minimises |g_w|^2 + 2 s g0.g_w; it is the
    CAGrad solution when |g_w| = r s, and r s - |g_w| changes sign only there, so bisect on s (with an exact
    solve on the current support to finish). |g_w|^2 <= delta counts as 0 (0 in the hull up to noise): then
    the answer is g0 projected onto the dual cone, when that lies in the ball (up to delta).
    """
    T = K.shape[0]
    mean_w = torch.full((T,), 1.0 / T, **_CPU64)
    shift = K @ mean_w  # g_i . g0
    g0_sq = max(float(mean_w @ shift), 0.0)
    radius = c * math.sqrt(g0_sq)
    if radius == 0:
        return mean_w

    Kr = _ridge(K, _RIDGE)  # for the solves; the tests on norms use K itself

    def projection() -> Tensor:  # g0 + G'excess is g0 projected onto the dual cone {d: G d >= 0}
        return mean_w + _nnls(Kr, -shift)

    def norm_sq(w: Tensor) -> float:
        return max(float(w @ K @ w), 0.0)

    def grad(w: Tensor) -> Tensor:  # gradient of the CAGrad objective
        return shift + radius * (K @ w) / math.sqrt(max(norm_sq(w), 1e-300))

    def shifted(s: float) -> Tensor:  # min-norm weights of the hull of g_i + s g0
        Ks = K + s * (shift[:, None] + shift[None, :]) + s * s * g0_sq
        return _mgda(_ridge(Ks / Ks.trace(), _RIDGE))

    w = _mgda(Kr)
    if norm_sq(w) <= delta:  # 0 is in the hull: every d has min_i g_i.d <= 0
        proj = projection()
        if norm_sq(proj - mean_w) <= radius**2 + delta:  # the ball meets the cone: the max-min value is 0
            return proj  # and every d in both is optimal; take the one nearest g0 (see aggregate)
    lo, hi = 0.0, 1.0 / radius  # |g_w| <= 1 for the trace-normalised Gramian, so r s - |g_w| >= 0 at hi
    for _ in range(200):
        cand = _polish(K, w, shift, radius)
        if cand is not None and float(cand @ grad(cand) - grad(cand).min()) <= _TOL:  # Frank-Wolfe gap
            w = cand
            break
        if hi - lo <= 1e-15 * hi:
            break
        s = (lo + hi) / 2
        w = shifted(s)
        lo, hi = (s, hi) if radius * s < math.sqrt(norm_sq(w)) else (lo, s)
    if norm_sq(w) <= delta:  # the optimal g_w is noise: its direction is meaningless
        return projection()
    return mean_w + radius / math.sqrt(norm_sq(w)) * w


def _polish(K: Tensor, w: Tensor, shift: Tensor, radius: float) -> Tensor | None:
    """Exact CAGrad weights on the support S of w: K_SS w + s shift_S = mu 1, 1'w = 1, |G'w| = radius s."""
    S = w > 1e-10
    n = int(S.sum())
    M = torch.zeros(n + 1, n + 1, **_CPU64)
    M[:n, :n], M[:n, n], M[n, :n] = K[S][:, S], -1.0, 1.0
    rhs = torch.zeros(n + 1, 2, **_CPU64)
    rhs[n, 0], rhs[:n, 1] = 1.0, -shift[S]
    # w(s) = w0 + s w1 is affine in s on a fixed support
    sol = torch.linalg.lstsq(M, rhs, driver="gelsd").solution
    w0, w1 = torch.zeros(len(w), **_CPU64), torch.zeros(len(w), **_CPU64)
    w0[S], w1[S] = sol[:n, 0], sol[:n, 1]
    a = radius**2 - float(w1 @ K @ w1)  # |G'w(s)|^2 = (radius s)^2, a quadratic in s
    b, c = float(w0 @ K @ w1), float(w0 @ K @ w0)
    if a <= 0 or b * b + a * c < 0:
        return None
    cand = w0 + (b + math.sqrt(b * b + a * c)) / a * w1
    if bool((cand < -1e-12).any()) or not bool(torch.isfinite(cand).all()):
        return None
    cand = cand.clamp_min(0)
    return cand / cand.sum()


def _imtl_g(K: Tensor, delta: float) -> Tensor:
    """IMTL-G weights: K w proportional to the gradient norms (equal projections on unit gradients), sum w = 1.

    K's pseudo-inverse keeps only eigenvalues above delta (trace-normalised K): below, an eigenvalue is the
    input's rounding noise, and inverting it gives a direction orders of magnitude too short.
    """
    lam, U = torch.linalg.eigh(K)
    inv = torch.where(lam > delta, 1.0 / lam.clamp_min(delta), torch.zeros_like(lam))
    v = U @ (inv * (U.T @ K.diagonal().clamp_min(0).sqrt()))
    total = float(v.sum())
    return v / total if abs(total) > 1e-12 * float(v.abs().sum()) else torch.zeros_like(v)


def _pcgrad(K: Tensor, tol: float, seed: int | torch.Generator | None) -> Tensor:
    """PCGrad's weights on the trace-normalised Gramian: c_i tracks g_i's projected version c_i @ G."""
    gen = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
    T = K.shape[0]
    total = torch.zeros(T, **_CPU64)
    for i in range(T):
        ci = torch.zeros(T, **_CPU64)
        ci[i] = 1.0
        for j in torch.randperm(T, generator=gen).tolist():  # a fresh random task order per task
            if j == i:
                continue
            dot = float(K[j] @ ci)
            size = math.sqrt(max(float(ci @ K @ ci), 0.0) * max(float(K[j, j]), 0.0))
            if dot < -tol * size and float(K[j, j]) > 0:  # a conflict: project g_i' off g_j
                ci[j] -= dot / float(K[j, j])
        total += ci
    return total


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()
