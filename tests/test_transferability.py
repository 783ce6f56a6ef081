"""Transferability scores: brute-force and hand-computed references, closed forms, invariances, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_limits

from companion.transferability import (
    METHODS,
    h_score,
    leep,
    logme,
    logme_evidence,
    logme_fixed_point,
    nce,
    rank_sources,
    score_sources,
    transrate,
)

# The 6-sample example worked by hand: 3 source classes, 2 target classes.
THETA = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.5, 0.5, 0.0],
        [0.1, 0.6, 0.3],
        [0.0, 0.2, 0.8],
        [0.2, 0.2, 0.6],
        [0.6, 0.3, 0.1],
    ]
)
Y6 = np.array([0, 0, 1, 1, 1, 0])


def blobs(n: int, d: int, classes: int, gap: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes whose means sit `gap` apart along the first `classes` axes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.standard_normal((n, d))
    x[:, :classes] += gap * np.eye(classes)[y]
    return x, y


def shuffled(y: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(y)


# ---------------------------------------------------------------------------------------------- LogME
@pytest.mark.parametrize("n, d", [(40, 4), (7, 10)])  # both branches: F^T F (n >= d) and F F^T (n < d)
def test_logme_fixed_point_beats_a_brute_force_grid(n, d):
    rng = np.random.default_rng(0)
    f = rng.standard_normal((n, d))
    y = f @ rng.standard_normal(d) + 0.7 * rng.standard_normal(n)
    fit = logme_fixed_point(f, y)
    # the fast SVD-basis evidence agrees with the direct formula at the fixed point
    assert fit["evidence"] == pytest.approx(logme_evidence(f, y, fit["alpha"], fit["beta"]), abs=1e-10)
    # coarse grid over 6 decades each, then a fine grid around the coarse winner
    best, best_ab = -np.inf, None
    for la in np.linspace(-3, 3, 61):
        for lb in np.linspace(-3, 3, 61):
            e = logme_evidence(f, y, 10**la, 10**lb)
            if e > best:
                best, best_ab = e, (la, lb)
    for la in best_ab[0] + np.linspace(-0.1, 0.1, 41):
        for lb in best_ab[1] + np.linspace(-0.1, 0.1, 41):
            best = max(best, logme_evidence(f, y, 10**la, 10**lb))
    assert fit["evidence"] >= best - 1e-12
    assert fit["evidence"] - best < 1e-4
    # the iteration climbs: it ends above where it started (alpha = beta = 1)
    assert fit["history"][-1] >= fit["history"][0]
    assert fit["steps"] < 1000  # converged, did not hit max_iter
    assert logme(f, y, regression=True) == pytest.approx(fit["evidence"], abs=1e-12)


def slow_logme_column(f: np.ndarray, y: np.ndarray) -> float:
    """The authors' quantity the slow way: max over (alpha, beta) of log N(y; 0, I / beta + F F^T / alpha) per
    sample, with an n x n Cholesky in float64 and a bounded quasi-Newton search over log10 alpha, log10 beta in
    [-8, 14] from four starts (a maximum on the boundary beta = inf or alpha = inf is approached to ~1e-9)."""
    from scipy.optimize import minimize

    n = len(f)
    gram = f @ f.T

    def negative(p):
        try:
            chol = np.linalg.cholesky(np.eye(n) * 10.0 ** -p[1] + gram * 10.0 ** -p[0])
        except np.linalg.LinAlgError:  # numerically singular (beta -> inf with n > d): far from the maximum
            return 1e300
        z = np.linalg.solve(chol, y)
        return (np.sum(np.log(np.diag(chol))) + z @ z / 2) / n + math.log(2 * math.pi) / 2

    starts = [(a, b) for a in (-1.0, 2.0) for b in (-1.0, 2.0)]
    opts = {"ftol": 1e-15, "gtol": 1e-12}
    return -min(
        minimize(negative, s, method="L-BFGS-B", bounds=[(-8, 14)] * 2, options=opts).fun for s in starts
    )


@pytest.mark.parametrize("n, d", [(7, 10), (30, 200), (40, 8)])
def test_logme_equals_the_slow_maximum_for_fewer_or_more_samples_than_dimensions(n, d):
    # n < d used to overflow (beta -> inf: the features fit every one-hot column exactly)
    rng = np.random.default_rng(n * d)
    f = rng.standard_normal((n, d))
    y = np.arange(n) % 3
    columns = [slow_logme_column(f, (y == c).astype(float)) for c in range(3)]
    assert logme(f, y) == pytest.approx(np.mean(columns), abs=1e-6)
    signal = f[:, :2] @ np.array([1.0, -2.0]) + 0.3 * rng.standard_normal(n)  # an interior maximum
    fit = logme_fixed_point(f, signal)
    assert fit["evidence"] == pytest.approx(slow_logme_column(f, signal), abs=1e-6)
    assert all(math.isfinite(h) for h in fit["history"])


def test_logme_classification_is_the_mean_over_one_hot_columns():
    x, y = blobs(60, 5, 3, 2.0, seed=1)
    per_class = [logme_fixed_point(x, (y == c).astype(float))["evidence"] for c in range(3)]
    assert logme(x, y) == pytest.approx(np.mean(per_class), abs=1e-12)
    # regression with the one-hot matrix as a 3-output target gives the same number
    assert logme(x, np.eye(3)[y], regression=True) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_logme_invariances():
    x, y = blobs(80, 6, 3, 2.0, seed=2)
    ref = logme(x, y)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((6, 6)))
    perm = np.random.default_rng(4).permutation(80)
    # the maximised evidence absorbs a feature scale into alpha and is blind to rotations
    assert logme(5.0 * x, y) == pytest.approx(ref, abs=1e-7)
    assert logme(x @ q, y) == pytest.approx(ref, abs=1e-7)
    assert logme(x, np.array([7, 3, 5])[y]) == pytest.approx(ref, abs=1e-12)  # renamed classes
    assert logme(x[perm], y[perm]) == pytest.approx(ref, abs=1e-9)


# ---------------------------------------------------------------------------------------------- LEEP / NCE
def test_leep_by_hand():
    # joint x 6 (rows y, cols z): y=0: [1.8, 1.0, 0.2], y=1: [0.3, 1.0, 1.7]; P(z) x 6 = [2.1, 2.0, 1.9]
    # P(y=0|z) = [6/7, 1/2, 2/19], P(y=1|z) = [1/7, 1/2, 17/19]
    eep = [
        0.7 * 6 / 7 + 0.2 / 2 + 0.1 * 2 / 19,
        0.5 * 6 / 7 + 0.5 / 2 + 0.0,
        0.1 / 7 + 0.6 / 2 + 0.3 * 17 / 19,
        0.0 / 7 + 0.2 / 2 + 0.8 * 17 / 19,
        0.2 / 7 + 0.2 / 2 + 0.6 * 17 / 19,
        0.6 * 6 / 7 + 0.3 / 2 + 0.1 * 2 / 19,
    ]
    assert leep(THETA, Y6) == pytest.approx(sum(map(math.log, eep)) / 6, abs=1e-12)
    assert leep(THETA, Y6) == pytest.approx(-0.3789754414826246, abs=1e-12)


def test_nce_by_hand():
    z = np.array([0, 1, 1, 1, 2, 0])
    # z=0 -> y {0, 0}: certain; z=2 -> y {1}: certain; z=1 -> y {0, 1, 1}: P = 1/3, 2/3, 2/3
    expected = (math.log(1 / 3) + 2 * math.log(2 / 3)) / 6
    assert nce(z, Y6) == pytest.approx(expected, abs=1e-12)
    assert nce(np.eye(3)[z] + 0.1, Y6) == pytest.approx(expected, abs=1e-12)  # scores -> argmax
    assert nce(Y6 + 10, Y6) == 0.0  # labels are a function of the source label: no uncertainty left


def test_leep_with_one_hot_outputs_equals_nce():
    rng = np.random.default_rng(5)
    z = rng.integers(0, 4, 50)
    y = (z + (rng.random(50) < 0.3)) % 3
    assert leep(np.eye(4)[z], y) == pytest.approx(nce(z, y), abs=1e-12)


def test_leep_and_nce_invariances():
    cols = [2, 0, 1]
    relabel = np.array([9, 4])[Y6]
    perm = np.random.default_rng(6).permutation(6)
    ref = leep(THETA, Y6)
    assert leep(THETA[:, cols], Y6) == pytest.approx(ref, abs=1e-12)
    assert leep(THETA, relabel) == pytest.approx(ref, abs=1e-12)
    assert leep(THETA[perm], Y6[perm]) == pytest.approx(ref, abs=1e-12)
    z = np.array([0, 1, 1, 1, 2, 0])
    ref = nce(z, Y6)
    assert nce(np.array([5, 3, 8])[z], relabel) == pytest.approx(ref, abs=1e-12)
    assert nce(z[perm], Y6[perm]) == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------------------------------------- H-score
def exact_blobs(means: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class c = means[c] + noise whose sample mean is exactly 0 and sample covariance (1/n) exactly I."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, mu in enumerate(means):
        e = rng.standard_normal((per_class, len(mu)))
        e -= e.mean(axis=0)
        e = e @ np.linalg.inv(np.linalg.cholesky(e.T @ e / per_class)).T
        xs.append(mu + e)
        ys.append(np.full(per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


def test_h_score_closed_form():
    means = np.array([[2.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 0.5, 0.0]])
    x, y = exact_blobs(means, 30, seed=7)
    centred = means - means.mean(axis=0)
    b = centred.T @ centred / 3  # between-class covariance (balanced classes); total covariance is I + B
    lam = np.linalg.eigvalsh(b)
    expected = float(np.sum(lam / (1 + lam)))  # tr((I + B)^-1 B)
    assert expected == pytest.approx(np.trace(np.linalg.inv(np.eye(4) + b) @ b), abs=1e-12)
    assert h_score(x, y) == pytest.approx(expected, abs=1e-10)


def test_h_score_shrinkage_matches_sklearn_ledoit_wolf():
    x, y = blobs(90, 7, 3, 1.5, seed=8)
    lw = LedoitWolf().fit(x)
    centred = x - x.mean(axis=0)
    g = np.stack([centred[y == c].mean(axis=0) for c in range(3)])[y]  # E[f | y] per sample
    expected = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * g.T @ g / len(x)))
    assert 0 < lw.shrinkage_ < 1
    assert h_score(x, y, shrinkage=True) == pytest.approx(expected, rel=1e-10)


def test_h_score_invariances():
    x, y = blobs(90, 5, 3, 1.5, seed=9)
    a = np.random.default_rng(10).standard_normal((5, 5)) + 3 * np.eye(5)  # invertible mixing
    ref = h_score(x, y)
    assert h_score(x @ a + 4.0, y) == pytest.approx(ref, rel=1e-9)  # any invertible affine map
    assert h_score(x, np.array([2, 0, 1])[y]) == pytest.approx(ref, rel=1e-12)
    ref = h_score(x, y, shrinkage=True)
    assert h_score(3.0 * x - 1.0, y, shrinkage=True) == pytest.approx(ref, rel=1e-9)  # scale and shift
    assert h_score(x, np.array([2, 0, 1])[y], shrinkage=True) == pytest.approx(ref, rel=1e-12)


# ---------------------------------------------------------------------------------------------- TransRate
def rate(z: np.ndarray, eps: float) -> float:
    return 0.5 * np.linalg.slogdet(np.eye(z.shape[1]) + z.T @ z / (len(z) * eps))[1]


def test_transrate_matches_direct_log_dets():
    x, y = blobs(30, 12, 3, 2.0, seed=11)  # 10 samples a class < 12 dims: the Z Z^T shortcut is used
    y = np.where(np.arange(30) < 4, 0, y)  # unbalanced classes
    z = x - x.mean(axis=0)
    expected = rate(z, 0.01) - sum(np.mean(y == c) * rate(z[y == c], 0.01) for c in range(3))
    assert transrate(x, y, eps=0.01) == pytest.approx(expected, abs=1e-9)


def test_transrate_invariances():
    x, y = blobs(60, 6, 3, 2.0, seed=12)
    q, _ = np.linalg.qr(np.random.default_rng(13).standard_normal((6, 6)))
    ref = transrate(x, y)
    assert transrate(x @ q + 2.0, y) == pytest.approx(ref, abs=1e-8)  # rotation and shift
    assert transrate(x, np.array([1, 2, 0])[y]) == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------------------------------------- all scores
def test_every_score_prefers_separated_classes_to_shuffled_labels():
    x, y = blobs(300, 16, 4, 3.0, seed=14)
    noise = shuffled(y, seed=15)
    for method in ("logme", "hscore", "hscore_shrinkage", "transrate"):
        good = score_sources({"x": x}, y, method=method)["x"]
        bad = score_sources({"x": x}, noise, method=method)["x"]
        assert good > bad + 0.05, method
    rng = np.random.default_rng(16)
    logits = 3.0 * np.eye(6)[(y + 4 * (rng.random(300) < 0.2)) % 6] + rng.standard_normal((300, 6))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert leep(probs, y) > leep(probs, noise) + 0.05
    assert nce(probs, y) > nce(probs, noise) + 0.05


def test_torch_input_gives_the_same_numbers():
    x, y = blobs(50, 4, 2, 2.0, seed=17)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y)
    x32 = xt.double().numpy()
    assert logme(xt, yt) == pytest.approx(logme(x32, y), abs=1e-12)
    assert h_score(xt, yt) == pytest.approx(h_score(x32, y), abs=1e-12)
    assert transrate(xt, yt) == pytest.approx(transrate(x32, y), abs=1e-12)
    assert leep(torch.from_numpy(THETA), torch.from_numpy(Y6)) == leep(THETA, Y6)


def test_score_sources_and_rank_sources():
    x, y = blobs(120, 6, 3, 2.5, seed=18)
    sets = {"clean": x, "noisy": x + 2.0 * np.random.default_rng(19).standard_normal(x.shape)}
    for method in METHODS:
        if method in ("leep", "nce"):
            continue
        scores = score_sources(sets, y, method=method)
        assert scores["clean"] > scores["noisy"], method
    assert score_sources(sets, y, "hscore")["clean"] == h_score(x, y)
    # 4 sources, one adjacent pair swapped: 5 concordant, 1 discordant pair -> tau = 4/6
    scores = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.1}
    acc = {"a": 90.0, "b": 80.0, "c": 70.0, "d": 60.0}
    out = rank_sources(scores, acc)
    assert out["tau"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["p_value"] == pytest.approx(
        kendalltau([0.9, 0.5, 0.7, 0.1], [90, 80, 70, 60]).pvalue, abs=1e-12
    )
    assert out["by_score"] == ["a", "c", "b", "d"]
    assert out["by_accuracy"] == ["a", "b", "c", "d"]
    assert rank_sources(acc, {k: -v for k, v in acc.items()})["tau"] == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------- bad input
def _bad_calls():
    x, y = blobs(20, 3, 2, 1.0, seed=20)
    probs = np.full((20, 4), 0.25)
    nan_x = x.copy()
    nan_x[3, 1] = np.nan
    calls = []
    for name, fn, feats in [
        ("logme", logme, x),
        ("hscore", h_score, x),
        ("transrate", transrate, x),
        ("leep", leep, probs),
        ("nce", nce, probs),
    ]:
        calls += [
            (f"{name}-length", fn, feats, y[:-1]),
            (f"{name}-one-class", fn, feats, np.zeros(20, dtype=int)),
            (f"{name}-nan-labels", fn, feats, np.where(np.arange(20) == 0, np.nan, y)),
        ]
    calls += [
        ("logme-nan", logme, nan_x, y),
        ("hscore-nan", h_score, nan_x, y),
        ("transrate-nan", transrate, nan_x, y),
        ("leep-nan", leep, np.where(probs == probs, np.nan, probs), y),
        ("leep-not-probs", leep, x, y),
        ("leep-1d", leep, y, y),
        ("logme-1d", logme, y, y),
        ("logme-fractional-labels", logme, x, y + 0.5),
    ]
    return calls


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_raises_one_line_value_error(case):
    _, fn, a, b = case
    with pytest.raises(ValueError) as err:
        fn(a, b)
    assert "\n" not in str(err.value)


def test_bad_arguments_raise_value_error():
    x, y = blobs(20, 3, 2, 1.0, seed=21)
    with pytest.raises(ValueError, match="method"):
        score_sources({"x": x}, y, method="accuracy")
    with pytest.raises(ValueError, match="feature_sets"):
        score_sources({}, y)
    with pytest.raises(ValueError, match="eps"):
        transrate(x, y, eps=0.0)
    with pytest.raises(ValueError, match="alpha"):
        logme_evidence(x, y.astype(float), alpha=-1.0, beta=1.0)
    with pytest.raises(ValueError, match="same"):
        rank_sources({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0})
    with pytest.raises(ValueError, match="labels"):
        logme(x, np.ones((19, 1)), regression=True)


# ---------------------------------------------------------------------------------------------- scale
def test_10k_by_1280_features_run_in_seconds():
    # 10 classes 3 units apart along 10 axes of 1,280. Population H-score is tr((I + B)^-1 B) with
    # B = 9 (diag(p) - p p^T), p = 1/10: nine eigenvalues 0.9, so 9 * 0.9 / 1.9 = 4.26; estimating 1,280-dim
    # class means from 1,000 samples each adds about (classes - 1) d / n = 1.15 on top.
    x, y = blobs(10_000, 1280, 10, 3.0, seed=22)
    with threadpool_limits(1):  # one BLAS thread: far faster than two contending ones on a shared CPU
        scores = {
            m: score_sources({"x": x}, y, m)["x"]
            for m in ("logme", "hscore", "hscore_shrinkage", "transrate")
        }
        worse = logme(x, shuffled(y, seed=23))
    assert 4.26 < scores["hscore"] < 4.26 + 1.3
    assert 0 < scores["hscore_shrinkage"] < scores["hscore"]
    assert scores["transrate"] > 0
    assert scores["logme"] > worse
