"""Property tests of the gradient aggregators (notebook 10) over generated gradient matrices, with hypothesis.

Each method is held to exactly the properties it promises (its paper, and torchjd's own property tests):

| method | finite, weighted | non-conflicting | permutation invariant | linear under scaling | homogeneous |
|--------|------------------|-----------------|-----------------------|----------------------|-------------|
| mean, sum | yes | no | yes | yes | yes |
| pcgrad (seeded) | yes | two tasks only (it is 2 x UPGrad there) | no | no | yes |
| mgda | yes | yes (g_i.d >= abs(d)^2) | yes | no | yes |
| cagrad | yes | for c >= 1 | yes | no | yes |
| upgrad | yes | yes | yes | yes | yes |
| imtl_g | yes | no | yes | no | yes |

The matrices: T from 1 to 10 tasks, P up to 300, of full or deficient rank, with zero, duplicate and opposite
rows, strongly stationary (a positive combination of the rows is 0) or weakly stationary (a convex one,
with some zero weights), rows of norms spread over up to four decades, an overall scale from 1e-8 to 1e8,
in float32 and float64. Tolerances are relative: to ``|g_i| |G|`` for dot products, to ``max(|G|, |d|)``
for directions, and scale with the input's precision.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.aggregators import METHODS, aggregate

F32, F64 = torch.float32, torch.float64
RTOL = {F32: 1e-4, F64: 1e-8}  # relative tolerance per input dtype (float32 eps = 1.2e-7)
KINDS = ("full", "low_rank", "edited", "strong", "weak")
FAST = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # derandomized: the same examples on every run, nothing written to disk


def orthonormal(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """n x k matrix with orthonormal columns (QR of a Gaussian matrix)."""
    return torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=F64))[0]


@st.composite
def gradients(
    draw,
    kinds: tuple[str, ...] = KINDS,
    min_T: int = 1,
    max_T: int = 10,
    spreads: tuple[float, ...] = (0.0, 1.0, 4.0),
    dtypes: tuple[torch.dtype, ...] = (F32, F64),
) -> torch.Tensor:
    """A T x P gradient matrix; hypothesis draws the structure, a seeded torch generator the numbers."""
    T = draw(st.integers(min_T, max_T))
    P = draw(st.sampled_from([1, 2, 3, 5, 11, 40, 300]))
    kind = draw(st.sampled_from(kinds))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    rank = min(T, P) if kind == "full" else draw(st.integers(1, min(T, P)))
    if kind in ("strong", "weak"):  # rows orthogonal to u >= 0 (u > 0: strong), so u @ G = 0
        u = torch.rand(T, generator=gen, dtype=F64) + 0.1
        if kind == "weak" and T > 1:
            u[: draw(st.integers(1, T - 1))] = 0.0
        u = u / u.norm()
        Q = orthonormal(T, T, gen)
        Q = Q - u[:, None] * (u @ Q)[None, :]  # columns in the complement of u
        s = torch.rand(T, generator=gen, dtype=F64) + 0.1
        G = (Q[:, :rank] * s[:rank]) @ orthonormal(P, rank, gen).T
    else:
        s = torch.rand(rank, generator=gen, dtype=F64) + 0.1
        G = (orthonormal(T, rank, gen) * s) @ orthonormal(P, rank, gen).T
    if kind == "edited" and T > 1:  # zero, duplicate and opposite rows
        for _ in range(draw(st.integers(1, 3))):
            i, j = draw(st.integers(0, T - 1)), draw(st.integers(0, T - 1))
            op = draw(st.sampled_from(["zero", "duplicate", "opposite"]))
            if op == "zero":
                G[i] = 0.0
            elif op == "duplicate":
                G[j] = G[i]
            else:
                G[j] = -draw(st.sampled_from([0.5, 1.0, 3.0])) * G[i]
    spread = draw(st.sampled_from(spreads))  # decades between the smallest and largest row norm
    G = G * 10 ** (spread * (torch.rand(T, 1, generator=gen, dtype=F64) - 0.5))  # keeps stationarity
    scale = 10 ** draw(st.floats(-8, 8))
    return (scale * G).to(draw(st.sampled_from(dtypes)))


def run(G: torch.Tensor, method: str, c: float = 0.4) -> torch.Tensor:
    kw = {"c": c} if method == "cagrad" else {}
    return aggregate(G, method, seed=0, **kw)


def size(G: torch.Tensor, *ds: torch.Tensor) -> float:
    """The scale against which a direction error is measured: max(|G|_F, |d|) in float64."""
    return max([float(G.double().norm())] + [float(d.double().norm()) for d in ds])


def worst_conflict(G: torch.Tensor, d: torch.Tensor) -> float:
    """min_i g_i.d / (|g_i| |G|_F) over the non-zero rows (0 if none), in float64."""
    G64, d64 = G.double(), d.double()
    norms = G64.norm(dim=1)
    keep = norms > 0
    if not bool(keep.any()):
        return 0.0
    return float(((G64 @ d64)[keep] / (norms[keep] * G64.norm())).min())


# --- every method ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@FAST
@given(G=gradients(), c=st.sampled_from([0.4, 1.0, 2.0]))
def test_finite_and_weighted(method: str, G: torch.Tensor, c: float) -> None:
    """The direction is finite, of G's dtype, and a combination of the rows (in their span)."""
    d = run(G, method, c)
    assert d.dtype == G.dtype and bool(torch.isfinite(d).all())
    G64, d64 = G.double(), d.double()
    x = torch.linalg.lstsq(G64.T, d64[:, None], driver="gelsd").solution[:, 0]
    assert float((G64.T @ x - d64).norm()) <= RTOL[G.dtype] * size(G, d)


@pytest.mark.parametrize("method", METHODS)
@FAST
@given(G=gradients(), k=st.integers(-14, 14), c=st.sampled_from([0.4, 1.0]))
def test_positively_homogeneous(method: str, G: torch.Tensor, k: int, c: float) -> None:
    """aggregate(a G) = a aggregate(G) for a > 0: no absolute epsilon anywhere.

    a = 2^k (1e-4 to 1e4), so that a G is exact in float32 too: another a would round G differently, and near
    stationary points such an input perturbation legitimately moves the direction by more than eps.
    """
    a = 2.0**k
    d, d_a = run(G, method, c).double(), run(a * G, method, c).double()
    assert float((d_a / a - d).norm()) <= RTOL[G.dtype] * size(G, d)


@pytest.mark.parametrize("method", METHODS)
@FAST
@given(G=gradients(max_T=1), c=st.sampled_from([0.4, 1.0]))
def test_one_task(method: str, G: torch.Tensor, c: float) -> None:
    """With one task every method returns the gradient itself, and CAGrad (1 + c) times it."""
    factor = 1 + c if method == "cagrad" else 1.0
    torch.testing.assert_close(run(G, method, c).double(), factor * G[0].double(), rtol=RTOL[G.dtype], atol=0)


@pytest.mark.parametrize("method", ["mean", "sum", "pcgrad", "mgda", "upgrad", "imtl_g"])
@FAST
@given(G=gradients(kinds=("full", "low_rank", "edited"), spreads=(0.0,), dtypes=(F64,)))
def test_float32_input_gives_the_float64_answer(method: str, G: torch.Tensor) -> None:
    """On well-conditioned gradients (linearly dependent or not), rounding G to float32 moves the direction by
    about float32's precision, no more: the float32 rounding noise is not mistaken for a direction.

    CAGrad is left out: where 0 is (nearly) in the hull its optimum is not unique, and float32 rounding may
    legitimately pick another optimal direction.
    """
    d = run(G, method)
    d32 = run(G.float(), method).double()
    assert float((d32 - d).norm()) <= 1e-5 * size(G, d)


# --- promised by some ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mean", "sum", "mgda", "cagrad", "upgrad", "imtl_g"])
@FAST
@given(G=gradients(), c=st.sampled_from([0.4, 1.0]), data=st.data())
def test_permutation_invariant(method: str, G: torch.Tensor, c: float, data: st.DataObject) -> None:
    perm = torch.tensor(data.draw(st.permutations(range(len(G)))))
    d, d_perm = run(G, method, c).double(), run(G[perm], method, c).double()
    assert float((d_perm - d).norm()) <= RTOL[G.dtype] * size(G, d)


@pytest.mark.parametrize("method", ["mgda", "upgrad", "cagrad"])
@FAST
@given(G=gradients(), c=st.sampled_from([1.0, 2.0]))
def test_non_conflicting(method: str, G: torch.Tensor, c: float) -> None:
    """g_i.d >= 0 for every task (CAGrad: for c >= 1); MGDA even g_i.d >= |d|^2."""
    d = run(G, method, c)
    assert worst_conflict(G, d) >= -RTOL[G.dtype]
    if method == "mgda":
        G64, d64 = G.double(), d.double()
        assert float((G64 @ d64).min() - d64 @ d64) >= -RTOL[G.dtype] * size(G) ** 2


@FAST
@given(G=gradients(kinds=("full", "low_rank", "edited"), min_T=2, max_T=2))
def test_pcgrad_two_tasks_is_twice_upgrad(G: torch.Tensor) -> None:
    """With two tasks PCGrad projects each gradient off the other: twice UPGrad, so non-conflicting too."""
    d = run(G, "pcgrad")
    assert float((d.double() - 2 * run(G, "upgrad").double()).norm()) <= RTOL[G.dtype] * size(G, d)
    assert worst_conflict(G, d) >= -RTOL[G.dtype]


@pytest.mark.parametrize("method", ["mean", "sum", "upgrad"])
@FAST
@given(G=gradients(), data=st.data())
def test_linear_under_scaling(method: str, G: torch.Tensor, data: st.DataObject) -> None:
    """A(diag(a c1 + b c2) G) = a A(diag(c1) G) + b A(diag(c2) G) for positive c1, c2, a, b."""
    T = len(G)
    positive = st.floats(0.1, 10.0)
    c1 = torch.tensor(data.draw(st.lists(positive, min_size=T, max_size=T)), dtype=G.dtype)
    c2 = torch.tensor(data.draw(st.lists(positive, min_size=T, max_size=T)), dtype=G.dtype)
    a, b = data.draw(positive), data.draw(positive)
    x1, x2 = run(c1[:, None] * G, method).double(), run(c2[:, None] * G, method).double()
    mixed = (a * c1 + b * c2)[:, None] * G
    x = run(mixed, method).double()
    expected = a * x1 + b * x2
    assert float((x - expected).norm()) <= RTOL[G.dtype] * size(mixed, x, expected)


@pytest.mark.parametrize(("method", "kinds"), [("mgda", ("strong", "weak")), ("upgrad", ("strong",))])
@FAST
@given(data=st.data())
def test_zero_at_stationary_points(method: str, kinds: tuple[str, ...], data: st.DataObject) -> None:
    """MGDA is 0 when a convex combination of the rows is 0; UPGrad when a positive one is."""
    G = data.draw(gradients(kinds=kinds))
    d = run(G, method)
    assert float(d.double().norm()) <= math.sqrt(RTOL[G.dtype]) * size(G)
