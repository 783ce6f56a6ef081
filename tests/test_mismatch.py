"""Reference values for companion.mismatch (notebook 09)."""

import pytest
import torch

import companion.transfer as transfer
from companion.mismatch import by_cell, corrupt_labels, negative_transfer_gap, noisy_source, target_sweep
from companion.models import backbone


def test_corrupt_labels_changes_exactly_the_fraction_to_other_classes():
    y = torch.arange(1000) % 10
    out = corrupt_labels(y, 0.3, seed=0)
    changed = out != y
    assert int(changed.sum()) == 300  # round(0.3 * 1000), never a label "corrupted" to itself
    assert torch.equal(corrupt_labels(y, 0.3, seed=0), out)  # the seed fixes positions and new labels
    assert not torch.equal(corrupt_labels(y, 0.3, seed=1), out)
    assert torch.equal(corrupt_labels(y, 0.0, seed=0), y)
    assert torch.equal(y, torch.arange(1000) % 10)  # the input is not modified


def test_ninety_percent_of_ten_classes_leaves_no_signal():
    y = torch.zeros(20000, dtype=torch.long)
    y[10000:] = 3
    out = corrupt_labels(y, 0.9, num_classes=10, seed=0)
    for true in (0, 3):
        counts = torch.bincount(out[y == true], minlength=10).float() / 10000
        assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.012)  # every class about equally likely


def test_corrupt_labels_small_reference():
    y = torch.tensor([0, 1, 2, 3])
    out = corrupt_labels(y, 0.5, num_classes=4, seed=0)
    assert int((out != y).sum()) == 2
    with pytest.raises(ValueError, match="fraction"):
        corrupt_labels(y, 1.5)
    with pytest.raises(ValueError, match="num_classes"):
        corrupt_labels(y, 0.5, num_classes=3)


def test_negative_transfer_gap_reference():
    g = negative_transfer_gap([0.9, 0.9, 0.9], [0.8, 0.82, 0.81])
    assert g["gaps"] == pytest.approx([0.1, 0.08, 0.09])
    assert g["mean"] == pytest.approx(0.09)
    assert g["spread"] == pytest.approx(0.02)
    assert g["negative"] and not g["positive"]
    h = negative_transfer_gap([0.7, 0.72, 0.71], [0.8, 0.82, 0.81])
    assert h["mean"] == pytest.approx(-0.1) and h["positive"] and not h["negative"]
    m = negative_transfer_gap([0.7, 0.8], [0.75, 0.74])  # mixed signs: neither
    assert not m["negative"] and not m["positive"]


def test_by_cell_groups_seeds_in_order():
    rows = [dict(source="a", strategy="s", seed=0, test_acc=0.5), dict(source="a", strategy="s", seed=1, test_acc=0.6),
            dict(source="b", strategy="s", seed=0, test_acc=0.1)]
    assert by_cell(rows, "source", "strategy") == {("a", "s"): [0.5, 0.6], ("b", "s"): [0.1]}
    with pytest.raises(ValueError, match="missing|entries"):
        by_cell(rows, "per_class")


def test_target_sweep_rows_and_transform():
    torch.manual_seed(0)
    x = torch.rand(60, 1, 16, 16)
    y = torch.arange(60) % 3
    net = backbone("course_cnn_s", in_chans=1, num_classes=3)
    kw = dict(per_class=[2, 4], strategies=["linear_probe"], seeds=[0, 1], lr_grid=[1e-2], min_steps=1,
              device="cpu")
    rows = target_sweep({"net": net}, (x, y), (x[:9], y[:9]), (x[:9], y[:9]), **kw)
    assert len(rows) == 2 * 2 * 2  # sizes x (scratch + one source) x seeds
    assert {(r["source"], r["strategy"]) for r in rows} == {("none", "scratch"), ("net", "linear_probe")}
    assert sorted({r["per_class"] for r in rows}) == [2, 4]
    # a transform that blanks every image leaves a constant input: every prediction is one class, 3/9 correct
    flat = target_sweep({"net": net}, (x, y), (x[:9], y[:9]), (x[:9], y[:9]), transform=torch.zeros_like,
                        scratch=False, **kw)
    assert all(r["test_acc"] == pytest.approx(1 / 3) for r in flat)


def test_noisy_source_is_cached_and_steps_matched(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "data_root", lambda: tmp_path)  # where transfer.cached_source keeps it
    model, info = noisy_source("course_cnn_s", "mnist", noise=0.5, n=3, epochs=1, min_steps=5, size=16, device="cpu")
    assert info["steps"] == 5 and not info["cached"]  # 30 images: one batch of 128 per pass, 5 passes
    again, info2 = noisy_source("course_cnn_s", "mnist", noise=0.5, n=3, epochs=1, min_steps=5, size=16,
                                device="cpu")
    assert info2["cached"] and info2["test_acc"] == info["test_acc"] and info2["steps"] == 5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(list((tmp_path / "cache" / "noisy_sources").glob("*.pt"))) == 1
