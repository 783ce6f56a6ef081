"""Plotting helpers shared by the notebooks: curves, bars with spread, image grids, the TL/MTL diagram."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


def curves(
    histories: dict[str, Sequence[dict]], key: str, *, ax=None, xkey: str = "epoch", ylabel: str | None = None
):
    """One line per labelled history for metric `key` against `xkey`."""
    ax = ax or plt.subplots(figsize=(5, 3.2))[1]
    for label, hist in histories.items():
        xs = [row[xkey] for row in hist if key in row]
        ys = [row[key] for row in hist if key in row]
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set_xlabel(xkey)
    ax.set_ylabel(ylabel or key)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return ax


def bars(
    values: dict[str, float | Sequence[float]], *, ax=None, ylabel: str = "", chance: float | None = None
):
    """Bars of means with min-max whiskers when a list of per-seed values is given."""
    ax = ax or plt.subplots(figsize=(5, 3.2))[1]
    names = list(values)
    data = [np.atleast_1d(np.asarray(values[k], dtype=float)) for k in names]
    means = [d.mean() for d in data]
    err = np.array([[m - d.min() for m, d in zip(means, data)], [d.max() - m for m, d in zip(means, data)]])
    ax.bar(
        names,
        means,
        yerr=err if any(len(d) > 1 for d in data) else None,
        capsize=4,
        color=plt.cm.tab10.colors[: len(names)],
    )
    for i, (m, d) in enumerate(zip(means, data)):  # a negative bar's label goes below its lowest seed
        ax.text(
            i, m if m >= 0 else d.min(), f"{m:.3g}", ha="center", va="bottom" if m >= 0 else "top", fontsize=9
        )
    if chance is not None:
        ax.axhline(chance, ls="--", c="grey", lw=1, label="chance")
        ax.legend(frameon=False)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=15)
    return ax


def grouped_bars(
    values: dict[tuple[str, str], Sequence[float]],
    series: Sequence[str],
    groups: Sequence[str],
    *,
    ax=None,
    ylabel: str = "",
):
    """Bars of per-seed means side by side, one colour per series within each group, with min-max whiskers and
    a dot per seed. `values[(series, group)]` holds the per-seed values."""
    ax = ax or plt.subplots(figsize=(8, 3.4))[1]
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        data = [np.asarray(values[(name, g)], dtype=float) for g in groups]
        means = [d.mean() for d in data]
        err = [[m - d.min() for m, d in zip(means, data)], [d.max() - m for m, d in zip(means, data)]]
        ax.bar(xs, means, width, yerr=err, capsize=2, label=name, alpha=0.85)
        for x, d in zip(xs, data):
            ax.scatter([x] * len(d), d, c="k", s=5, zorder=3)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    return ax


def images(x, labels: Sequence | None = None, *, n: int = 16, cols: int = 8, title: str | None = None):
    """A grid of the first `n` images (N×C×H×W in [0, 1]) with optional labels (every data notebook)."""
    x = np.asarray(x[:n].detach().cpu() if hasattr(x, "detach") else x[:n])
    rows = int(np.ceil(len(x) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.2), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(x):
            img = x[i].transpose(1, 2, 0)
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _box(ax, xy, text, color, w: float = 2.5, h: float = 1.0):
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.05", fc=color, ec="black", lw=1))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=8)


def _arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, lw=1.2))


def pipelines():
    """Diagram: transfer learning as two phases in sequence vs multi-task learning as one parallel phase."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax in (left, right):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 4.2)
        ax.axis("off")
    left.set_title("Transfer learning: sequential")
    _box(left, (0.1, 2.8), "source data\n(large)", "#cfe2ff")
    _box(left, (3.7, 2.8), "phase 1: train\non the source task", "#ffe5b4")
    _box(left, (0.1, 0.5), "target data\n(small)", "#d4edda")
    _box(left, (3.7, 0.5), "phase 2: fine-tune\non the target task", "#ffe5b4")
    _box(left, (7.3, 0.5), "target model", "#f8d7da")
    _arrow(left, (2.6, 3.3), (3.7, 3.3))
    _arrow(left, (2.6, 1.0), (3.7, 1.0))
    _arrow(left, (4.95, 2.8), (4.95, 1.5))
    left.text(5.1, 2.1, "copy weights", fontsize=8)
    _arrow(left, (6.2, 1.0), (7.3, 1.0))
    right.set_title("Multi-task learning: parallel")
    _box(right, (0.1, 2.8), "task A labels", "#cfe2ff")
    _box(right, (0.1, 0.5), "task B labels", "#d4edda")
    _box(right, (3.7, 1.5), "one phase:\nshared trunk,\nloss A + loss B", "#ffe5b4", h=1.2)
    _box(right, (7.3, 2.8), "head A", "#f8d7da")
    _box(right, (7.3, 0.5), "head B", "#f8d7da")
    _arrow(right, (2.6, 3.3), (3.7, 2.4))
    _arrow(right, (2.6, 1.0), (3.7, 1.8))
    _arrow(right, (6.2, 2.4), (7.3, 3.3))
    _arrow(right, (6.2, 1.8), (7.3, 1.0))
    fig.tight_layout()
    return fig


def spread(
    data: dict[str, dict],
    *,
    ax=None,
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    chance: float | None = None,
    xticklabels: dict | None = None,
):
    """One line per series with a min-max band over seeds: data = {label: {x: [values]}}."""
    ax = ax or plt.subplots(figsize=(5.5, 3.4))[1]
    for label, points in data.items():
        xs = sorted(points)
        vals = [np.asarray(points[x], dtype=float) for x in xs]
        means = np.array([v.mean() for v in vals])
        line = ax.plot(xs, means, marker="o", ms=4, label=label)[0]
        if any(len(v) > 1 for v in vals):
            lo, hi = [v.min() for v in vals], [v.max() for v in vals]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if logx:
        ax.set_xscale("log")
    if xticklabels:
        ax.set_xticks(list(xticklabels), [str(v) for v in xticklabels.values()])
        ax.minorticks_off()
    if chance is not None:
        ax.axhline(chance, ls="--", c="grey", lw=1, label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return ax


def embedding(points, labels, *, ax=None, title: str | None = None, names: Sequence[str] | None = None):
    """A 2-D map of samples (t-SNE or PCA of features), one colour per class."""
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    points = np.asarray(points.detach().cpu() if hasattr(points, "detach") else points, dtype=float)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    for i, c in enumerate(np.unique(labels)):
        keep = labels == c
        name = names[int(c)] if names is not None else str(c)
        ax.scatter(points[keep, 0], points[keep, 1], s=6, color=plt.cm.tab10(i % 10), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def heatmaps(
    mats: Sequence,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = ".2f",
    cmap: str = "viridis",
):
    """Small annotated matrices side by side, e.g. cross-stitch mixing weights per stage."""
    mats = [np.asarray(m, dtype=float) for m in mats]
    lo = min(m.min() for m in mats) if vmin is None else vmin
    hi = max(m.max() for m in mats) if vmax is None else vmax
    fig, axes = plt.subplots(1, len(mats), figsize=(2.3 * len(mats) + 0.6, 2.6), squeeze=False)
    for i, (ax, m) in enumerate(zip(axes[0], mats)):
        im = ax.imshow(m, vmin=lo, vmax=hi, cmap=cmap)
        for (r, c), v in np.ndenumerate(m):
            ax.text(
                c,
                r,
                format(v, fmt),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v < lo + 0.5 * (hi - lo) else "black",
            )
        ax.set_xticks(range(m.shape[1]), col_labels, fontsize=8)
        ax.set_yticks(range(m.shape[0]), row_labels if i == 0 else [""] * m.shape[0], fontsize=8)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def overlays(
    x,
    *,
    masks=None,
    points=None,
    labels: Sequence | None = None,
    n: int = 8,
    cols: int = 8,
    title: str | None = None,
    mask_color: str = "red",
):
    """Images with mask outlines and marked points: targets or predictions of dense tasks.

    x: N×C×H×W in [0, 1]; masks: N×1×H×W (0/1 or probabilities, outlined at 0.5); points: N×2 (x, y) as
    fractions of the image side, drawn as crosses; labels: one title per image.
    """

    def arr(t):
        return np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=float)

    x = arr(x[:n])
    rows = int(np.ceil(len(x) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.45), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(x):
            continue
        img = x[i].transpose(1, 2, 0)
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        h, w = img.shape[:2]
        if masks is not None:
            ax.contour(arr(masks[i]).reshape(h, w), levels=[0.5], colors=mask_color, linewidths=1)
        if points is not None:
            px, py = arr(points[i])[:2]
            ax.plot(px * w - 0.5, py * h - 0.5, "+", color="white", ms=8, mew=2)
            ax.plot(px * w - 0.5, py * h - 0.5, "+", color="black", ms=6, mew=1)
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
