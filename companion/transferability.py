"""Transferability scores: rank pretrained sources for a target task before any fine-tuning.

Each score looks at what a frozen source model gives on the *target* data (features, or softmax outputs over
the source classes) together with the target labels, and returns one number: higher means "this source
should transfer better". None of them trains a network, so ranking ten candidate backbones costs ten forward
passes instead of ten fine-tuning runs. All arithmetic is float64 numpy; torch tensors are accepted.

- LogME (You et al. 2021): evidence of a Bayesian linear model on the features, maximised over its prior
  and noise precisions by a fixed-point iteration.
- LEEP (Nguyen et al. 2020): log-likelihood of the "expected empirical predictor" built from the source
  model's soft predictions.
- NCE (Tran et al. 2019): negative conditional entropy of target labels given the hard source labels.
- H-score (Bao et al. 2019) and its shrinkage-regularised version (Ibrahim et al. 2022).
- TransRate (Huang et al. 2022): coding rate of the features minus their class-conditional coding rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import kendalltau

METHODS = ("logme", "leep", "nce", "hscore", "hscore_shrinkage", "transrate")


# ----------------------------------------------------------------------------------------------- input checks
def _array(x, name: str, ndim: tuple[int, ...], finite: bool = True) -> np.ndarray:
    """A float64 numpy array of `x` (no copy if it is one) with an allowed number of dimensions; with `finite`,
    all entries finite (a caller that checks finiteness itself passes finite=False)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    if a.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    if finite and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return a


def _classes(labels, n: int, name: str = "labels") -> tuple[np.ndarray, int]:
    """Integer class ids 0..C-1 (in sorted order of the given ids) and C, for n samples and C >= 2."""
    y = _array(labels, name, (1,))
    if len(y) != n:
        raise ValueError(f"{name} must have one entry per sample ({n}), got {len(y)}")
    if not np.array_equal(y, np.round(y)):
        raise ValueError(f"{name} must hold integer class ids")
    ids, codes = np.unique(y, return_inverse=True)
    if len(ids) < 2:
        raise ValueError(f"{name} must contain at least 2 classes, got {len(ids)}")
    return codes, len(ids)


def _one_hot(codes: np.ndarray, num: int) -> np.ndarray:
    """An (n, num) float64 matrix with a single 1 per row."""
    out = np.zeros((len(codes), num))
    out[np.arange(len(codes)), codes] = 1.0
    return out


# ------------------------------------------------------------------------------------------------------ LogME
def logme_evidence(features, y, alpha: float, beta: float) -> float:
    """Log evidence per sample of y under y = F w + noise, w ~ N(0, I/alpha), noise ~ N(0, I/beta).

    log p(y | F, alpha, beta) = n/2 log beta + d/2 log alpha - n/2 log 2pi
                                - beta/2 |F m - y|^2 - alpha/2 |m|^2 - 1/2 log det A,
    with A = alpha I + beta F^T F and m = beta A^-1 F^T y the posterior mean of w. Computed directly (no SVD),
    so it is an independent check of the fast path used by `logme`.
    """
    f = _array(features, "features", (2,))
    t = _array(y, "y", (1,))
    if len(t) != len(f):
        raise ValueError(f"y must have one entry per row of features ({len(f)}), got {len(t)}")
    if not (alpha > 0 and beta > 0 and math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"alpha and beta must be positive and finite, got alpha={alpha}, beta={beta}")
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    logdet = np.linalg.slogdet(a)[1]
    fit = np.sum((f @ m - t) ** 2)
    total = (
        n / 2 * math.log(beta)
        + d / 2 * math.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * fit
        - alpha / 2 * m @ m
        - logdet / 2
    )
    return float(total / n)


def _spectrum(f: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero squared singular values s_i^2 of F, the squared coordinates c_i^2 = (u_i^T y)^2 of each
    target column on the matching left singular vectors, and the rest |y|^2 - sum_i c_i^2 (the part of y that
    no linear model on F reaches; 0 when n <= d and F has full row rank).

    The thin SVD F = U S V^T is read off the eigen-decomposition of the smaller Gram matrix (F^T F when n >= d,
    else the n x n F F^T), much faster than a full SVD for n = 10,000 and d = 1,280. Singular values below the
    usual rank tolerance (largest * max(n, d) * machine epsilon) count as zero.
    """
    n, d = f.shape
    if n >= d:
        s2, v = np.linalg.eigh(f.T @ f)
        proj = v.T @ (f.T @ targets)  # s_i u_i^T y
    else:
        s2, u = np.linalg.eigh(f @ f.T)
        proj = u.T @ targets  # u_i^T y, over a complete basis of R^n
    keep = s2 > max(s2.max(), 0.0) * max(n, d) * np.finfo(np.float64).eps
    if n >= d:
        c2 = proj[keep] ** 2 / s2[keep, None]
        rest = np.clip(np.sum(targets**2, axis=0) - c2.sum(axis=0), 0.0, None)
    else:
        c2 = proj[keep] ** 2
        rest = np.sum(proj[~keep] ** 2, axis=0)  # no cancellation: the dropped coordinates themselves
    return s2[keep], c2, rest


def _evidence(s2, c2, rest: float, n: int, alpha: float, lam: float) -> float:
    """Total log evidence log N(y; 0, (lam I + F F^T) / alpha), lam = alpha / beta, in the SVD basis.

    Equal to the d-dimensional formula of `logme_evidence` (matrix determinant lemma), but with no beta**2 and
    finite at the boundaries: lam = 0 (beta = inf: y fitted exactly, possible when rest = 0, e.g. n < d) and
    alpha, lam = inf with alpha / lam = beta finite (no signal: y is noise).
    """
    k = len(s2)
    if math.isinf(lam):  # alpha = inf: C = I / beta
        beta = alpha
        return n / 2 * math.log(beta) - beta / 2 * float(np.sum(c2) + rest) - n / 2 * math.log(2 * math.pi)
    total = (
        n / 2 * math.log(alpha)
        - 0.5 * float(np.sum(np.log(lam + s2)))
        - alpha / 2 * float(np.sum(c2 / (lam + s2)))
        - n / 2 * math.log(2 * math.pi)
    )
    if n > k:  # the n - k zero singular values
        total += -(n - k) / 2 * math.log(lam) - alpha / 2 * rest / lam
    return total


def _fixed_point(s2, c2, rest: float, n: int, max_iter: int = 1000, tol: float = 1e-10) -> dict:
    """MacKay's fixed point for the evidence maximum over (alpha, beta), in the SVD basis.

    Repeat until (alpha, beta) stop moving:
        gamma = sum_i beta s_i^2 / (alpha + beta s_i^2)    # effective number of well-determined weights
        alpha = gamma / |m|^2
        beta  = (n - gamma) / |F m - y|^2
    where m = beta A^-1 F^T y is the posterior mean at the current (alpha, beta). It is run on lam = alpha / beta
    (|m|^2, |F m - y|^2 and n - gamma written without cancellation), so it cannot overflow. When the maximum
    lies on a boundary it walks there: lam -> 0 (beta = inf, the features fit y exactly: n < d) or lam -> inf
    (alpha = inf, y looks like noise); once lam is 1e12 times past the spectrum, the boundary value is taken.
    """
    k = len(s2)
    alpha, lam = 1.0, 1.0
    history = []
    bound = (float(s2.min()) if k else 1.0, float(s2.max()) if k else 1.0)
    steps, edge = 0, None
    for _ in range(max_iter):
        history.append(_evidence(s2, c2, rest, n, alpha, lam) / n)
        steps += 1
        t = lam + s2
        gamma = float(np.sum(s2 / t))
        new_alpha = gamma / max(float(np.sum(s2 * c2 / t**2)), 1e-300)
        if n == k and rest == 0:  # n - gamma and |F m - y|^2 both vanish with lam: divide the lam out
            new_lam = new_alpha * lam * float(np.sum(c2 / t**2)) / float(np.sum(1.0 / t))
        else:
            res2 = rest + lam**2 * float(np.sum(c2 / t**2))
            new_lam = new_alpha * res2 / ((n - k) + lam * float(np.sum(1.0 / t)))
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_lam - lam) <= tol * lam
        alpha, lam = new_alpha, new_lam
        if done:
            break
        if k and n == k and rest == 0 and lam < 1e-12 * bound[0]:
            edge = "beta"
            break
        if lam > 1e12 * bound[1] or k == 0 or gamma <= 0:
            edge = "alpha"
            break
    if edge == "beta":  # lam = 0: the alpha that maximises log N(y; 0, F F^T / alpha)
        lam, alpha = 0.0, n / float(np.sum(c2 / s2))
    elif edge == "alpha":  # alpha = inf: the beta that maximises log N(y; 0, I / beta)
        lam, alpha = math.inf, n / max(float(np.sum(c2) + rest), 1e-300)
    evidence = _evidence(s2, c2, rest, n, alpha, lam) / n
    history.append(evidence)
    if edge == "alpha":
        alpha, beta = math.inf, alpha
    else:
        beta = alpha / lam if lam > 0 else math.inf
    return {"alpha": alpha, "beta": beta, "evidence": evidence, "steps": steps, "history": history}


def logme_fixed_point(features, y, max_iter: int = 1000, tol: float = 1e-10) -> dict:
    """Run LogME's fixed point for one target column; return alpha, beta, evidence, steps, history."""
    f = _array(features, "features", (2,))
    t = _array(y, "y", (1,))
    if len(t) != len(f):
        raise ValueError(f"y must have one entry per row of features ({len(f)}), got {len(t)}")
    if not (isinstance(max_iter, int) and max_iter >= 1 and tol > 0):
        raise ValueError(f"max_iter must be a positive int and tol positive, got {max_iter!r} and {tol!r}")
    s2, c2, rest = _spectrum(f, t[:, None])
    return _fixed_point(s2, c2[:, 0], float(rest[0]), len(f), max_iter=max_iter, tol=tol)


def logme(features, labels, regression: bool = False) -> float:
    """LogME: maximised log evidence per sample of a linear model on the features, mean over targets.

    Classification: one target column per class (its one-hot indicator). Regression: labels of shape (n,)
    or (n, k), one column per output. The SVD is computed once and shared by all columns.
    """
    f = _array(features, "features", (2,))
    n, d = f.shape
    if regression:
        targets = _array(labels, "labels", (1, 2))
        if len(targets) != n:
            raise ValueError(f"labels must have one row per sample ({n}), got {len(targets)}")
        targets = targets.reshape(n, -1)
    else:
        codes, num = _classes(labels, n)
        targets = _one_hot(codes, num)
    s2, c2, rest = _spectrum(f, targets)
    scores = [_fixed_point(s2, c2[:, k], float(rest[k]), n)["evidence"] for k in range(targets.shape[1])]
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------------------ LEEP and NCE
def leep(source_probs, labels) -> float:
    """LEEP: mean log-likelihood of the expected empirical predictor from source soft labels.

    With theta(x) the source model's softmax over source classes z:
        P(y, z) = 1/n sum_i theta_z(x_i) [y_i = y],   P(y | z) = P(y, z) / P(z),
        LEEP = 1/n sum_i log sum_z P(y_i | z) theta_z(x_i).
    Cost: two n x C_s x C_t products (the joint, and P(y | z) @ theta^T, of which only each sample's own
    label entry is read) and one min pass for the input check (row sums come from the product); no n x C_s
    temporary.
    """
    theta = _array(source_probs, "source_probs", (2,), finite=False)
    codes, num = _classes(labels, len(theta))
    low = (
        theta.min()
    )  # the one pass over the input: NaN propagates, -inf is < 0, +inf shows in the sums below
    if math.isnan(low):
        raise ValueError("source_probs must be finite (no NaN or inf)")
    if low < 0:
        raise ValueError(
            "source_probs must be probabilities: non-negative rows that sum to 1 (apply softmax)"
        )
    joint = _one_hot(codes, num).T @ theta  # n * P(y, z), (target classes, source classes)
    marginal = joint.sum(axis=0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    pred = cond @ theta.T  # (target classes, n): the expected empirical predictor (this way round is the
    # faster BLAS call for a few target classes and many source classes)
    # sum_y pred[y, i] = sum_z theta_iz [P(z) > 0] = the row sum of theta (a zero-mass z has theta_iz = 0)
    rows = pred.sum(axis=0)
    if not np.isfinite(rows).all():
        raise ValueError("source_probs must be finite (no NaN or inf)")
    if not np.allclose(rows, 1.0, atol=1e-3):
        raise ValueError(
            "source_probs must be probabilities: non-negative rows that sum to 1 (apply softmax)"
        )
    eep = pred[codes, np.arange(len(theta))]  # each sample's own target label
    return float(np.mean(np.log(eep)))


def nce(source_predictions, labels) -> float:
    """NCE: negative conditional entropy -H(Y | Z) of target labels Y given hard source labels Z.

    `source_predictions` is either the source model's hard labels (n,) or its scores (n, classes), in which
    case the argmax is taken. -H(Y | Z) = sum_{y, z} P(y, z) log P(y | z) = 1/n sum_i log P(y_i | z_i).
    """
    z = _array(source_predictions, "source_predictions", (1, 2))
    if z.ndim == 2:
        z = z.argmax(axis=1)
    elif not np.array_equal(z, np.round(z)):
        raise ValueError("source_predictions must be integer source labels (n,) or scores (n, classes)")
    codes, num = _classes(labels, len(z))
    _, zc = np.unique(z, return_inverse=True)
    width = int(zc.max()) + 1
    joint = np.bincount(codes * width + zc, minlength=num * width).reshape(num, width).astype(np.float64)
    cond = joint / joint.sum(axis=0)
    return float(np.mean(np.log(cond[codes, zc])))


# ------------------------------------------------------------------------------------------------ H-score
def h_score(features, labels, shrinkage: bool = False) -> float:
    """H-score tr(cov(f)^-1 cov(E[f | y])): class separation measured in feature-noise units.

    The pseudo-inverse is used, so rank-deficient features are allowed (and d > n, where plain H-score
    becomes unreliable). shrinkage=True is the regularised H-score of Ibrahim et al. 2022:
    tr(cov_a(f)^-1 (1 - a) cov(E[f | y])) with cov_a the Ledoit-Wolf-shrunk covariance (1 - a) S + a mu I and a
    its shrinkage, both from scikit-learn's `ledoit_wolf` (S = f^T f / n, mu = tr(S) / d, and a trades how far S is
    from a scaled identity against how noisy S is as an estimate).
    """
    f = _array(features, "features", (2,))
    codes, num = _classes(labels, len(f))
    f = f - f.mean(axis=0)
    counts = np.bincount(codes, minlength=num).astype(np.float64)
    means = _one_hot(codes, num).T @ f / counts[:, None]  # class means (the overall mean is 0)
    weights = counts / len(f)  # cov(E[f | y]) = sum_c weights_c means_c means_c^T
    if shrinkage:
        from sklearn.covariance import ledoit_wolf  # imported here: scikit-learn is slow to import

        cov, a = ledoit_wolf(f, assume_centered=True)  # f is centred above
        weights = (1 - a) * weights
    else:
        cov = f.T @ f / len(f)
    w, v = np.linalg.eigh(cov)
    keep = w > w.max() * len(w) * np.finfo(np.float64).eps
    proj = means @ v[:, keep]  # tr(cov^+ B) = sum_c weights_c means_c^T cov^+ means_c
    return float(np.sum(weights[:, None] * proj**2 / w[keep]))


# ------------------------------------------------------------------------------------------------ TransRate
def _coding_rate(z: np.ndarray, eps: float) -> float:
    """R(Z, eps) = 1/2 log det(I + Z^T Z / (n eps)), via the smaller of Z^T Z and Z Z^T (same determinant)."""
    n, d = z.shape
    gram = z.T @ z if d <= n else z @ z.T
    return 0.5 * float(np.linalg.slogdet(np.eye(len(gram)) + gram / (n * eps))[1])


def transrate(features, labels, eps: float = 1e-4) -> float:
    """TransRate: R(Z, eps) - sum_c (n_c / n) R(Z_c, eps) on centred features Z.

    The coding rate R approximates the entropy of Z at distortion eps, so the difference estimates the
    mutual information between features and labels: large when the whole set is spread out (complete) and
    each class is compact. The 1/(n eps) scaling follows the authors' code; they average the class rates
    uniformly over classes, which equals the n_c / n weighting used here when classes are balanced.
    """
    z = _array(features, "features", (2,))
    codes, num = _classes(labels, len(z))
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    z = z - z.mean(axis=0)
    rate = _coding_rate(z, eps)
    cond = sum(np.mean(codes == c) * _coding_rate(z[codes == c], eps) for c in range(num))
    return float(rate - cond)


# ------------------------------------------------------------------------------------------------ ranking
_SCORERS: dict[str, Callable[..., float]] = {
    "logme": logme,
    "leep": leep,
    "nce": nce,
    "hscore": h_score,
    "hscore_shrinkage": lambda f, y: h_score(f, y, shrinkage=True),
    "transrate": transrate,
}


def score_sources(feature_sets: dict, labels, method: str = "logme") -> dict[str, float]:
    """Score each candidate source on the same target labels with one method.

    `feature_sets` maps a source name to its features (n, d) on the target data, or to its softmax
    outputs for "leep" and its predictions for "nce".
    """
    if method not in _SCORERS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(feature_sets, dict) or not feature_sets:
        raise ValueError("feature_sets must be a non-empty dict of name -> array")
    return {name: _SCORERS[method](x, labels) for name, x in feature_sets.items()}


def rank_sources(scores: dict[str, float], accuracies: dict[str, float]) -> dict:
    """Kendall's tau between scores and fine-tuned accuracies, its p-value, and both orderings.

    tau = 1 means the score orders the sources exactly as fine-tuning does; the orderings are best first.
    """
    if not isinstance(scores, dict) or not isinstance(accuracies, dict):
        raise ValueError("scores and accuracies must be dicts of source name -> number")
    if set(scores) != set(accuracies) or len(scores) < 2:
        raise ValueError(
            f"scores and accuracies must name the same >= 2 sources, got {sorted(scores)} and {sorted(accuracies)}"
        )
    names = sorted(scores)
    s = [float(scores[k]) for k in names]
    a = [float(accuracies[k]) for k in names]
    if not all(map(math.isfinite, s + a)):
        raise ValueError("scores and accuracies must be finite numbers")
    result = kendalltau(s, a)
    return {
        "tau": float(result.statistic),
        "p_value": float(result.pvalue),
        "by_score": sorted(names, key=lambda k: -scores[k]),
        "by_accuracy": sorted(names, key=lambda k: -accuracies[k]),
    }
