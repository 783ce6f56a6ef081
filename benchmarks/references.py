"""Straightforward reference implementations of the transferability scores, written from the papers' formulas.

Each one does the textbook computation in float64 with no shortcut that `companion.transferability` takes, so the
benchmark can check that the fast versions give the same numbers and measure what the shortcuts buy:

- LogME (You et al. 2021): thin SVD of the features (as the authors' code does), then MacKay's fixed point for
  each one-hot column in the SVD basis, to the same convergence tolerance as `companion.logme`.
- H-score (Bao et al. 2019): tr(pinv(cov(f)) cov(E[f | y])) with `np.cov` and `np.linalg.pinv`.
- LEEP (Nguyen et al. 2020): the joint P(y, z) summed class by class, P(y | z), the expected empirical predictor
  theta @ P(y | z)^T, and each sample's own label read from it.
- NCE (Tran et al. 2019): the joint of target and hard source labels counted, then sum P(y, z) log P(y | z).
- TransRate (Huang et al. 2022): 1/2 log det(I + Z^T Z / (n eps)) on d x d matrices for the whole set and for
  every class (classes averaged uniformly, as in the authors' code: equal to companion's n_c / n weighting on
  balanced classes).
"""

from __future__ import annotations

import math

import numpy as np


def logme(f: np.ndarray, y: np.ndarray, tol: float = 1e-10, max_iter: int = 1000) -> float:
    """Mean over one-hot columns of the maximised log evidence per sample (thin SVD, MacKay's fixed point)."""
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)  # F = U S V^T, k = min(n, d) singular values
    s2 = s**2
    scores = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        x = u.T @ t  # coordinates of y on the left singular vectors
        x2 = x**2
        rest = float(t @ t - x2.sum())  # the part of y outside the column space of F
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            gamma = float(np.sum(s2 / (s2 + lam)))
            m2 = float(np.sum(s2 * x2 / (s2 + lam) ** 2))  # |m|^2 of the posterior mean
            res2 = float(np.sum(x2 * (lam / (s2 + lam)) ** 2) + rest)  # |F m - y|^2
            new_alpha, new_beta = gamma / m2, (n - gamma) / res2
            done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        lam = alpha / beta
        m2 = float(np.sum(s2 * x2 / (s2 + lam) ** 2))
        res2 = float(np.sum(x2 * (lam / (s2 + lam)) ** 2) + rest)
        logdet = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s2)) * math.log(alpha)
        evidence = (
            n / 2 * math.log(beta)
            + d / 2 * math.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res2
            - alpha / 2 * m2
            - logdet / 2
        )
        scores.append(evidence / n)
    return float(np.mean(scores))


def h_score(f: np.ndarray, y: np.ndarray) -> float:
    """tr(pinv(cov(f)) cov(g)), g the class mean of each sample's class."""
    cov_f = np.cov(f, rowvar=False)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    cov_g = np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


def leep(theta: np.ndarray, y: np.ndarray) -> float:
    """(1/n) sum_i log sum_z P(y_i | z) theta_z(x_i)."""
    n = len(theta)
    classes = np.unique(y)
    joint = np.stack([theta[y == c].sum(axis=0) for c in classes]) / n  # P(y, z)
    cond = joint / joint.sum(axis=0, keepdims=True)  # P(y | z)
    pred = theta @ cond.T  # (n, target classes)
    codes = np.searchsorted(classes, y)
    return float(np.mean(np.log(pred[np.arange(n), codes])))


def nce(z: np.ndarray, y: np.ndarray) -> float:
    """sum_{y, z} P(y, z) log P(y | z) over the empirical joint of target labels y and hard source labels z."""
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(y)
    cond = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)
    mask = joint > 0
    return float(np.sum(joint[mask] * np.log(cond[mask])))


def _rate(z: np.ndarray, eps: float) -> float:
    n, d = z.shape
    return 0.5 * float(np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1])


def transrate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    """R(Z) - mean over classes of R(Z_c), Z the centred features."""
    z = f - f.mean(axis=0, keepdims=True)
    classes = np.unique(y)
    return _rate(z, eps) - sum(_rate(z[y == c], eps) for c in classes) / len(classes)
