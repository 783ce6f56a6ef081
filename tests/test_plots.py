"""Plot helpers draw exactly the numbers they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

from companion.course.plots import bars, curves, grouped_bars, images, pipelines


def test_curves_plot_each_history_against_epochs():
    hist = {
        "a": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}],
        "b": [{"epoch": 1, "loss": 3.0}, {"epoch": 2}],
    }
    ax = curves(hist, "loss")
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}
    assert lines == {"a": ([1, 2], [2.0, 1.5]), "b": ([1], [3.0])}


def test_bars_show_means_and_min_max_whiskers():
    ax = bars({"x": [1.0, 2.0, 6.0], "y": 4.0}, chance=0.5)
    heights = [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]
    assert heights[:2] == [3.0, 4.0]
    whisker = [c for c in ax.containers if hasattr(c, "lines")][0].lines[2][0].get_segments()[0]
    assert np.allclose(whisker[:, 1], [1.0, 6.0])
    assert any(np.allclose(ln.get_ydata(), 0.5) for ln in ax.get_lines())
    labels = {t.get_text(): (t.get_position()[1], t.get_va()) for t in ax.texts}
    assert labels == {"3": (3.0, "bottom"), "4": (4.0, "bottom")}
    negative = bars({"z": [-1.0, -2.0, -6.0]})  # below the lowest seed, so the whisker does not hide it
    assert [(t.get_text(), t.get_position()[1], t.get_va()) for t in negative.texts] == [("-3", -6.0, "top")]


def test_grouped_bars_place_each_series_inside_its_group_with_whiskers_and_seed_dots():
    values = {
        ("a", "g1"): [1.0, 3.0],
        ("b", "g1"): [4.0, 4.0],
        ("a", "g2"): [0.0, 2.0],
        ("b", "g2"): [5.0, 7.0],
    }
    ax = grouped_bars(values, ["a", "b"], ["g1", "g2"], ylabel="acc")
    bars_ = [p for p in ax.patches if isinstance(p, Rectangle)]
    centres = [round(p.get_x() + p.get_width() / 2, 6) for p in bars_]
    assert centres == [-0.2, 0.8, 0.2, 1.2] and [p.get_height() for p in bars_] == [2.0, 1.0, 4.0, 6.0]
    whisker = [c for c in ax.containers if hasattr(c, "lines")][0].lines[2][0].get_segments()[0]
    assert np.allclose(whisker[:, 1], [1.0, 3.0])
    dots = np.concatenate([c.get_offsets() for c in ax.collections if c.get_offsets().shape[0] == 2])
    assert sorted(dots[:, 1].tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 5.0, 7.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g1", "g2"] and ax.get_ylabel() == "acc"


def test_image_grid_shows_the_first_n_images_with_labels():
    x = torch.rand(20, 1, 8, 8)
    fig = images(x, list(range(20)), n=10, cols=5)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10 and shown[3].get_title() == "3"
    assert np.allclose(shown[3].images[0].get_array(), x[3, 0].numpy())


def test_pipelines_diagram_has_both_panels():
    fig = pipelines()
    boxes = [sum(isinstance(p, FancyBboxPatch) for p in ax.patches) for ax in fig.axes]
    assert boxes == [5, 5]
    assert [ax.get_title() for ax in fig.axes] == [
        "Transfer learning: sequential",
        "Multi-task learning: parallel",
    ]
