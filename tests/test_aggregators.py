"""Gradient aggregation (notebook 10): reference values, optimality certificates, torchjd and scipy cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, nnls
from torch import nn

from companion.aggregators import (
    METHODS,
    aggregate,
    backward_features,
    benchmark_aggregators,
    conflict,
    cosine_matrix,
    gramian,
    gramian_weights,
    min_norm,
    pcgrad,
    task_gradients,
    write_grad,
)

DETERMINISTIC = [m for m in METHODS if m != "pcgrad"]
F64 = torch.float64


def random_g(T: int, P: int, seed: int) -> torch.Tensor:
    """Random gradients with unequal norms (float64)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, P, generator=gen, dtype=F64) * (
        0.2 + 3 * torch.rand(T, 1, generator=gen, dtype=F64)
    )


def degenerate_cases() -> list[torch.Tensor]:
    """Duplicated, zero, opposite, more tasks than dimensions."""
    out = []
    for seed in range(4):
        G = random_g(4, 6, 100 + seed)
        G[1] = G[0]
        out.append(G.clone())
        G = random_g(4, 6, 200 + seed)
        G[3] = 0
        out.append(G.clone())
        G = random_g(3, 6, 300 + seed)
        G[1] = -0.5 * G[0]
        out.append(G.clone())
        out.append(random_g(5, 2, 400 + seed))
    return out


def simplex_min(f, T: int) -> np.ndarray:
    """Reference minimiser of f on the simplex: scipy SLSQP from several starts."""
    best = None
    for x0 in [np.full(T, 1 / T), *(np.eye(T) * 0.9 + 0.1 / T)]:
        res = minimize(
            f,
            x0,
            bounds=[(0, 1)] * T,
            constraints=({"type": "eq", "fun": lambda x: x.sum() - 1},),
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def nnls_upgrad(G: torch.Tensor) -> torch.Tensor:
    """Reference UPGrad: mean of g_i + G'l_i with l_i = argmin_{l>=0} |g_i + G'l| (scipy nnls)."""
    A = G.numpy()
    out = sum(A[i] + A.T @ nnls(A.T, -A[i])[0] for i in range(len(A))) / len(A)
    return torch.from_numpy(out)


# --- Gramian, min-norm --------------------------------------------------------------------------------------


def test_gramian_reference_values() -> None:
    G = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    assert torch.equal(gramian(G), torch.tensor([[5.0, -2.0], [-2.0, 10.0]]))
    assert gramian(G.half()).dtype == F64  # formed in float64 whatever the input dtype
    big = torch.tensor([[3e19, 0.0], [0.0, 1.0]])  # |g|^2 = 9e38 overflows float32 (max 3.4e38)
    assert float(gramian(big)[0, 0]) == float(big[0, 0].double()) ** 2


def test_min_norm_two_tasks_closed_form() -> None:
    # orthogonal unit vectors: the midpoint; g2 = 2 g1: the shorter one; obtuse pair: interior point
    w = min_norm(gramian(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5], dtype=F64))
    w = min_norm(gramian(torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=F64)))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0], dtype=F64))
    G = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=F64)  # a = (K22 - K12) / |g1 - g2|^2 = 4 / 10
    w = min_norm(gramian(G))
    a = torch.linspace(0, 1, 20_001, dtype=F64)
    brute = ((a[:, None] * G[0] + (1 - a[:, None]) * G[1]) ** 2).sum(1)
    assert abs(float(w[0]) - float(a[brute.argmin()])) < 1e-4
    torch.testing.assert_close(w, torch.tensor([0.4, 0.6], dtype=F64))


@pytest.mark.parametrize("T", [3, 5, 8])
def test_min_norm_matches_scipy_and_kkt(T: int) -> None:
    for seed in range(6):
        G = random_g(T, [2, 4, 20][seed % 3], seed)
        K = gramian(G)
        w = min_norm(K)
        assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
        d = w @ G
        # optimality certificate (KKT): d . g_t >= |d|^2 for every task
        assert float((G @ d).min() - d @ d) >= -1e-12 * float(K.trace())
        Kn = K.numpy()
        ref = simplex_min(lambda x, Kn=Kn: x @ Kn @ x, T)
        assert float((d - torch.from_numpy(ref) @ G).norm()) <= 1e-6 * float(K.trace().sqrt())
        assert float(d @ d) <= float(ref @ Kn @ ref) + 1e-12 * float(K.trace())


def test_min_norm_beats_brute_force_grid() -> None:
    G = random_g(3, 5, 7)
    K = gramian(G).numpy()
    n = 300
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    W = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], 1) / n
    grid = np.einsum("ki,ij,kj->k", W, K, W).min()
    w = min_norm(gramian(G)).numpy()
    assert w @ K @ w <= grid + 1e-15
    assert w @ K @ w >= grid - 0.02 * np.trace(K)  # and the grid is close, so not a trivial bound


# --- mean, sum, PCGrad ----------------------------------------------------------------------------------------


def test_mean_sum_reference_values() -> None:
    G = torch.tensor([[1.0, 2.0], [3.0, -4.0], [2.0, 5.0]])
    assert torch.equal(aggregate(G, "mean"), torch.tensor([2.0, 1.0]))
    assert torch.equal(aggregate(G, "sum"), torch.tensor([6.0, 3.0]))
    torch.testing.assert_close(gramian_weights(gramian(G), "mean"), torch.full((3,), 1 / 3, dtype=F64))


def test_pcgrad_two_tasks_hand_example() -> None:
    # conflicting: g1.g2 = -1 < 0; g1' = g1 + g2/2 = (0.5, 0.5), g2' = g2 + g1 = (0, 1)
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    d = pcgrad(G, seed=0)
    torch.testing.assert_close(d, torch.tensor([0.5, 1.5], dtype=F64))
    g1p, g2p = torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    assert float(g1p @ G[1]) == 0 and float(g2p @ G[0]) == 0  # the conflicting components are gone
    # not conflicting: left unchanged, so PCGrad sums
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    assert torch.equal(pcgrad(G, seed=3), G.sum(0))


def test_pcgrad_seeded_and_order_dependent() -> None:
    G = torch.tensor([[1.0, 0.0, 0.0], [-0.9, 1.0, 0.0], [-0.5, -0.8, 1.0]], dtype=F64)
    outs = {tuple(aggregate(G, "pcgrad", seed=s).tolist()) for s in range(20)}
    assert len(outs) > 1  # the random order matters for T = 3 ...
    assert torch.equal(aggregate(G, "pcgrad", seed=5), aggregate(G, "pcgrad", seed=5))  # ... and is seeded
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(pcgrad(G, seed=gen_a), pcgrad(G, seed=gen_b))


# --- cross-check with torchjd ---------------------------------------------------------------------------------


class NnlsProjector:
    """A torchjd DualConeProjector solved with scipy's nnls: min v'Gv s.t. v >= u, with no regularisation."""

    def __call__(self, U: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        S, V = np.linalg.eigh(gram.double().numpy())
        A = (V * np.sqrt(np.clip(S, 0, None))).T  # A'A = gram
        W = [u + nnls(A, -A @ u)[0] for u in U.double().numpy()]
        return torch.tensor(np.array(W), dtype=gram.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("T", [2, 3, 5])
def test_matches_torchjd_on_random_matrices(T: int, dtype: torch.dtype) -> None:
    """Same values as torchjd (Mean, Sum, IMTLG, UPGrad with an exact projector, PCGrad, MGDA), float32 and 64."""
    tj = pytest.importorskip("torchjd.aggregation")
    from torchjd.linalg import DualConeProjector

    projector = type("Nnls", (NnlsProjector, DualConeProjector), {})()
    upgrad_tj, mgda_tj = tj.UPGrad(projector=projector), tj.MGDA()
    rtol = 1e-9 if dtype == F64 else 1e-5  # torchjd forms the Gramian in the input dtype
    for seed in range(50):
        G = random_g(T, [3, 10, 40][seed % 3], 1000 * T + seed).to(dtype)
        tol = rtol * float(G.norm())
        torch.testing.assert_close(aggregate(G, "mean"), tj.Mean()(G), rtol=0, atol=tol)
        torch.testing.assert_close(aggregate(G, "sum"), tj.Sum()(G), rtol=0, atol=tol)
        torch.testing.assert_close(aggregate(G, "imtl_g"), tj.IMTLG()(G), rtol=0, atol=100 * tol)
        torch.testing.assert_close(aggregate(G, "upgrad"), upgrad_tj(G), rtol=0, atol=100 * tol)
        # torchjd's PCGrad draws torch.randperm(T) from the global generator once per task, as we do from ours
        torch.manual_seed(seed)
        torch.testing.assert_close(aggregate(G, "pcgrad", seed=seed), tj.PCGrad()(G), rtol=0, atol=tol)
        # torchjd's MGDA is Frank-Wolfe stopped early: ours must be no longer, and |d_tj - d*|^2 <= |d_tj|^2 - |d*|^2
        d, d_tj = aggregate(G, "mgda").double(), mgda_tj(G).double()
        slack = rtol / 10 * float(G.norm()) ** 2
        assert float(d @ d) <= float(d_tj @ d_tj) + slack
        assert float((d_tj - d) @ (d_tj - d)) <= float(d_tj @ d_tj - d @ d) + slack
        assert float((d_tj - d).norm()) <= 0.05 * float(G.norm())


def test_matches_torchjd_on_degenerate_matrices() -> None:
    """Duplicate, zero and opposite rows, more tasks than dimensions (float64, where torchjd is exact too)."""
    tj = pytest.importorskip("torchjd.aggregation")
    from torchjd.linalg import DualConeProjector

    upgrad_tj = tj.UPGrad(projector=type("Nnls", (NnlsProjector, DualConeProjector), {})())
    for k, G in enumerate(degenerate_cases()):
        tol = 1e-7 * float(G.norm())
        torch.testing.assert_close(aggregate(G, "imtl_g"), tj.IMTLG()(G), rtol=0, atol=tol)
        torch.testing.assert_close(aggregate(G, "upgrad"), upgrad_tj(G), rtol=0, atol=tol)
        torch.manual_seed(k)
        torch.testing.assert_close(aggregate(G, "pcgrad", seed=k), tj.PCGrad()(G), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_upgrad_matches_torchjd_default_projector(dtype: torch.dtype) -> None:
    """torchjd[quadprog-projector] (quadprog, qpsolvers); it adds 1e-4 to the normalised Gramian's diagonal,
    hence the loose tolerance."""
    pytest.importorskip("quadprog", reason="needs torchjd[quadprog-projector] (the dev extras)")
    pytest.importorskip("qpsolvers", reason="needs torchjd[quadprog-projector] (the dev extras)")
    from torchjd.aggregation import UPGrad

    for seed in range(20):
        G = random_g([2, 3, 5][seed % 3], 10, seed).to(dtype)
        torch.testing.assert_close(aggregate(G, "upgrad"), UPGrad()(G), rtol=0, atol=1e-2 * float(G.norm()))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("c", [0.5, 1.0])
def test_cagrad_matches_torchjd(c: float, dtype: torch.dtype) -> None:
    """torchjd[cagrad] (cvxpy + clarabel), on matrices where 0 is not in the hull (there torchjd returns 0)."""
    pytest.importorskip("cvxpy", reason="needs torchjd[cagrad] (the dev extras)")
    pytest.importorskip("clarabel", reason="needs torchjd[cagrad] (the dev extras)")
    from torchjd.aggregation import CAGrad

    for seed in range(20):
        G = random_g([2, 3, 5][seed % 3], 10, seed).to(dtype)
        torch.testing.assert_close(
            aggregate(G, "cagrad", c=c), CAGrad(c=c)(G), rtol=0, atol=1e-4 * float(G.norm())
        )


# --- properties of the methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [0.3, 0.9])
def test_cagrad_is_optimal(c: float) -> None:
    """d must lie in the ball |d - g0| <= c|g0| and reach the dual value: min_i g_i.d = min_w g0.g_w + r|g_w|."""
    cases = [random_g(T, P, 10 * T + P) for T in (2, 3, 5) for P in (3, 20)] + degenerate_cases()
    for G in cases:
        G = G / G.norm()
        d, g0 = aggregate(G, "cagrad", c=c), G.mean(0)
        r = c * float(g0.norm())
        K, b = gramian(G).numpy(), (G @ g0).numpy()
        w = simplex_min(lambda x, K=K, b=b, r=r: b @ x + r * math.sqrt(max(x @ K @ x, 0.0)), len(G))
        dual = b @ w + r * math.sqrt(max(w @ K @ w, 0.0))
        assert float((d - g0).norm()) <= r + 1e-12
        assert float((G @ d).min()) >= dual - 1e-8  # weak duality makes this an optimality certificate


def test_cagrad_with_c_zero_is_the_mean() -> None:
    for seed in range(5):
        G = random_g(4, 7, seed)
        torch.testing.assert_close(aggregate(G, "cagrad", c=0.0), G.mean(0), rtol=1e-12, atol=1e-12)


def test_mgda_direction_improves_every_task() -> None:
    for G in [random_g(T, 8, T) for T in (2, 3, 5, 8)] + degenerate_cases():
        d = aggregate(G, "mgda")
        assert float((G @ d).min()) >= float(d @ d) - 1e-12 * float(G.norm()) ** 2


def test_upgrad_properties() -> None:
    for G in [random_g(T, 8, T) for T in (2, 3, 5)] + degenerate_cases():
        d = aggregate(G, "upgrad")
        assert float((G @ d).min()) >= -1e-12 * float(G.norm()) ** 2  # conflicts with no task
        torch.testing.assert_close(d, nnls_upgrad(G), rtol=0, atol=1e-9 * float(G.norm()))
    G = torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0]], dtype=F64)  # no pair conflicts: plain mean
    torch.testing.assert_close(aggregate(G, "upgrad"), G.mean(0))


def test_imtl_g_equal_projections() -> None:
    G = random_g(3, 6, 1)
    d = aggregate(G, "imtl_g")
    proj = (G @ d) / G.norm(dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(3))
    assert abs(float(gramian_weights(gramian(G), "imtl_g").sum()) - 1) < 1e-12


# --- float32 and nearly singular Gramians (the failures torchjd's property tests found) ------------------------


def low_rank(T: int, P: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, rank, generator=gen, dtype=F64) @ torch.randn(rank, P, generator=gen, dtype=F64)


def strongly_stationary(T: int, P: int, seed: int) -> torch.Tensor:
    """Rows orthogonal to a positive vector u, so u @ G = 0: a positive combination of the gradients is 0."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(T, generator=gen, dtype=F64) + 0.1
    u /= u.norm()
    M = torch.randn(T, P, generator=gen, dtype=F64)
    return M - u[:, None] * (u @ M)[None, :]


def test_imtl_g_float32_rank_deficient_is_not_shrunk() -> None:
    """In float32 a rank-2 G has tiny rounding eigenvalues; inverting them gave a direction ~1e-9 times too short."""
    for seed in range(10):
        G = low_rank(5, 200, 2, seed)
        d64, d32 = aggregate(G, "imtl_g"), aggregate(G.float(), "imtl_g").double()
        assert float((d32 - d64).norm()) <= 1e-5 * float(d64.norm())
        assert float(d64.norm()) > 0.1 * float(G.norm(dim=1).min())  # and not trivially small


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("c", [1.0, 2.0])
def test_cagrad_stationary_is_finite_and_non_conflicting(c: float, dtype: torch.dtype) -> None:
    """At a stationary point with c >= 1 the ball touches the cone only at 0: it gave NaN in float32."""
    for seed in range(10):
        G = strongly_stationary([3, 5, 7][seed % 3], [2, 3, 13][seed % 3], seed).to(dtype)
        d = aggregate(G, "cagrad", c=c)
        assert bool(torch.isfinite(d).all())
        assert float(d.double().norm()) <= 1e-3 * float(G.double().norm())  # the only optimum is d = 0
        assert float((G.double() @ d.double()).min()) >= -1e-4 * float(G.double().norm()) ** 2


def test_upgrad_order_free_on_nearly_singular_gramians() -> None:
    """Rank-2 float32 gradients (+ 1e-7 noise), scales 1e-8..1e8: the task order moved UPGrad by up to 1e-6 |G|."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        T, P = 3 + trial % 5, 2 + trial % 4
        G = low_rank(T, P, 2, trial) + 1e-7 * (trial % 2) * torch.randn(T, P, generator=gen, dtype=F64)
        G = (G * 10 ** (16 * torch.rand(1, generator=gen, dtype=F64) - 8)).float()
        d = aggregate(G, "upgrad").double()
        for _ in range(3):
            perm = torch.randperm(T, generator=gen)
            moved = float((aggregate(G[perm], "upgrad").double() - d).norm())
            assert moved <= 1e-7 * float(G.double().norm())


@pytest.mark.parametrize("method", METHODS)
def test_zero_gradients_give_finite_output(method: str) -> None:
    assert torch.equal(aggregate(torch.zeros(3, 5), method, seed=0), torch.zeros(5))
    G = random_g(3, 5, 0)
    G[1] = 0
    assert torch.isfinite(aggregate(G, method, seed=0)).all()


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_task_permutation_leaves_result_unchanged(method: str) -> None:
    for seed in range(5):
        G = random_g(5, 9, seed)
        perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(aggregate(G[perm], method), aggregate(G, method), rtol=1e-9, atol=1e-12)


def test_pcgrad_two_tasks_is_order_free() -> None:
    G = random_g(2, 6, 3)
    G[1] -= 2 * G[0]  # make them conflict
    torch.testing.assert_close(aggregate(G.flip(0), "pcgrad", seed=1), aggregate(G, "pcgrad", seed=2))


@pytest.mark.parametrize("method", METHODS)
def test_scale_equivariance(method: str) -> None:
    G = random_g(4, 7, 11)
    for a in (1e-8, 1e-3, 7.0, 1e8):  # every method is positively homogeneous (no absolute epsilon)
        torch.testing.assert_close(
            aggregate(a * G, method, seed=0), a * aggregate(G, method, seed=0), rtol=1e-9, atol=0
        )


def test_bad_inputs_raise_one_line_errors() -> None:
    G = random_g(2, 3, 0)
    cases = [
        lambda: aggregate(G, "foo"),
        lambda: aggregate(G, "mgda", c=0.5),
        lambda: aggregate(G, "cagrad", c=-1.0),
        lambda: aggregate(G[0], "mean"),
        lambda: aggregate(G.long(), "mean"),
        lambda: min_norm(torch.ones(2, 3)),
        lambda: gramian_weights(gramian(G), "pcgrad"),
        lambda: write_grad([torch.zeros(2)], torch.zeros(3)),
        lambda: task_gradients({"a": torch.ones(2, requires_grad=True)}, [torch.ones(1)]),
        lambda: task_gradients({}, [torch.ones(1)]),
        lambda: task_gradients({"a": torch.ones((), requires_grad=True)}, [torch.ones(1)], mode="both"),
        lambda: conflict(G, names=["a"]),
    ]
    for call in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"method must be one of \['mean', 'sum', 'pcgrad'"):
        aggregate(G, "foo")


def test_non_finite_gradients_give_nan_direction() -> None:
    G = random_g(3, 4, 0)
    G[0, 1] = math.inf
    for method in METHODS:
        assert not torch.isfinite(aggregate(G, method, seed=0)).all()


# --- per-task gradients and writing back ------------------------------------------------------------------------


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5))
        self.a, self.b = nn.Linear(5, 1), nn.Linear(5, 2)

    def losses(self, x: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        z = self.trunk(x) if features is None else features
        return {"a": self.a(z).pow(2).mean(), "b": self.b(z).sin().sum(), "c": z[:, :2].mean()}


def data() -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


def test_task_gradients_params_match_per_task_backward() -> None:
    model = TwoHeads()
    shared = list(model.trunk.parameters()) + list(model.a.parameters())  # head a: unused by tasks b and c
    G = task_gradients(model.losses(data()), shared)
    assert G.shape == (3, sum(p.numel() for p in shared))
    for row, name in zip(G, ["a", "b", "c"]):
        model.zero_grad(set_to_none=True)
        model.losses(data())[name].backward()
        ref = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in shared])
        torch.testing.assert_close(row, ref)
    n_trunk = sum(p.numel() for p in model.trunk.parameters())
    assert torch.equal(G[1:, n_trunk:], torch.zeros(2, G.shape[1] - n_trunk))  # None grads became zeros


def test_task_gradients_free_the_graph_after_the_last_task() -> None:
    model = TwoHeads()
    losses = model.losses(data())
    losses["constant"] = torch.tensor(2.0)  # no graph: a zero row, and the graph is freed by task "c"
    G = task_gradients(losses, list(model.trunk.parameters()))
    assert torch.equal(G[3], torch.zeros_like(G[3])) and bool(G[2].abs().sum() > 0)
    with pytest.raises(RuntimeError):
        sum(losses.values()).backward()  # freed by the last task's backward, as plain backward would


def test_features_mode_and_backward_through_trunk() -> None:
    model = TwoHeads()
    x = data()
    features = model.trunk(x)
    losses = model.losses(x, features)
    G = task_gradients(losses, features, mode="features")
    assert G.shape == (3, features.numel())
    ref = torch.autograd.grad(losses["b"], features, retain_graph=True)[0]
    torch.testing.assert_close(G[1], ref.reshape(-1))
    # the aggregated feature direction sent once through the trunk = d(sum of losses)/d(trunk) (chain rule)
    model.zero_grad(set_to_none=True)
    backward_features(features, aggregate(G, "sum"))
    got = [p.grad.clone() for p in model.trunk.parameters()]
    model.zero_grad(set_to_none=True)
    sum(model.losses(x).values()).backward()
    for g, p in zip(got, model.trunk.parameters()):
        torch.testing.assert_close(g, p.grad)
    with pytest.raises(RuntimeError):
        features.sum().backward()  # the trunk's graph is freed too


def test_write_grad_replaces_or_accumulates() -> None:
    params = [torch.zeros(2, 2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    direction = torch.arange(7.0)
    write_grad(params, direction)
    assert torch.equal(params[0].grad, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(params[1].grad, torch.tensor([4.0, 5.0, 6.0]))
    write_grad(params, direction)  # replace (default)
    assert torch.equal(params[1].grad, torch.tensor([4.0, 5.0, 6.0]))
    write_grad(params, direction, accumulate=True)
    assert torch.equal(params[1].grad, torch.tensor([8.0, 10.0, 12.0]))
    direction[4] = 100.0
    assert float(params[1].grad[0]) == 8.0  # .grad does not alias the direction


# --- diagnostics -----------------------------------------------------------------------------------------------


def test_cosine_matrix_and_conflict_reference_values() -> None:
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    s = 1 / math.sqrt(2)
    ref = torch.tensor([[1.0, 0.0, -s], [0.0, 1.0, s], [-s, s, 1.0]])
    torch.testing.assert_close(cosine_matrix(G), ref)
    info = conflict(G, names=["x", "y", "z"])
    assert info["any_conflict"] is True
    assert info["pairs"][("x", "z")] == pytest.approx(-s)
    assert info["pairs"][("x", "y")] == pytest.approx(0.0)
    assert info["min_cosine"] == pytest.approx(-s)
    assert info["magnitude_ratio"] == pytest.approx(2.0)
    assert info["norms"] == pytest.approx([1.0, 2.0, math.sqrt(2)])
    calm = conflict(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert calm["any_conflict"] is False and calm["pairs"][(0, 1)] == pytest.approx(s)
    zero = conflict(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert zero["magnitude_ratio"] == math.inf and zero["pairs"][(0, 1)] == 0.0


# --- mixed precision ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_loss_scale_contract(method: str) -> None:
    """Scaled losses -> G_s; aggregate G_s / s, write back d * s; GradScaler unscales: same as without scaling.

    Our methods are positively homogeneous, so aggregating G_s directly would also work here; torchjd's
    UPGrad/CAGrad are not (they return 0 below a Gramian trace of 1e-4), which is why balancers unscale first.
    """
    model = TwoHeads()
    params = list(model.trunk.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    opt = torch.optim.SGD(params, lr=0.0)
    s = scaler.get_scale()
    G_s = task_gradients({k: scaler.scale(v) for k, v in model.losses(data()).items()}, params)
    write_grad(params, aggregate(G_s / s, method, seed=0) * s)
    scaler.unscale_(opt)
    got = torch.cat([p.grad.reshape(-1) for p in params])
    ref = aggregate(task_gradients(model.losses(data()), params), method, seed=0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


# --- benchmark ----------------------------------------------------------------------------------------------------


def test_benchmark_returns_ratios_to_mean() -> None:
    out = benchmark_aggregators(T_list=(2, 3), P=64, methods=["mgda", "pcgrad"], repeats=1)
    assert set(out) == {2, 3}
    for ratios in out.values():
        assert set(ratios) == {"mean", "mgda", "pcgrad"} and ratios["mean"] == 1.0
        assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    with pytest.raises(ValueError, match="methods must be drawn from"):
        benchmark_aggregators(methods=["nope"])
