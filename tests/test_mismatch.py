"""Reference values for companion.mismatch (notebook 09)."""

import copy

import pytest
import torch

from companion.dann import DANN, dann_lambda, grad_reverse, train_dann
from companion.experiments.mismatch import (
    ADAPTATIONS,
    by_cell,
    corrupt_labels,
    domain_adaptation,
    negative_transfer_gap,
    noisy_source,
    target_sweep,
)
from companion.models import backbone
from companion.synthetic import shift


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
    from scipy import stats

    ref = stats.ttest_rel([0.9, 0.9, 0.9], [0.8, 0.82, 0.81]).confidence_interval()
    assert g["ci"] == pytest.approx([ref.low, ref.high])
    assert g["negative"] and not g["positive"]
    h = negative_transfer_gap([0.7, 0.72, 0.71], [0.8, 0.82, 0.81])
    assert h["mean"] == pytest.approx(-0.1) and h["positive"] and not h["negative"]
    m = negative_transfer_gap([0.7, 0.8], [0.75, 0.74])  # mixed signs: neither
    assert not m["negative"] and not m["positive"]


def test_by_cell_groups_seeds_in_order():
    rows = [
        dict(source="a", strategy="s", seed=0, test_acc=0.5),
        dict(source="a", strategy="s", seed=1, test_acc=0.6),
        dict(source="b", strategy="s", seed=0, test_acc=0.1),
    ]
    assert by_cell(rows, "source", "strategy") == {("a", "s"): [0.5, 0.6], ("b", "s"): [0.1]}
    with pytest.raises(ValueError, match="missing|entries"):
        by_cell(rows, "per_class")


def test_target_sweep_rows_and_transform():
    torch.manual_seed(0)
    x = torch.rand(60, 1, 16, 16)
    y = torch.arange(60) % 3
    net = backbone("course_cnn_s", in_chans=1, num_classes=3)
    kw = dict(
        per_class=[2, 4], strategies=["linear_probe"], seeds=[0, 1], lr_grid=[1e-2], min_steps=1, device="cpu"
    )
    rows = target_sweep({"net": net}, (x, y), (x[:9], y[:9]), (x[:9], y[:9]), **kw)
    assert len(rows) == 2 * 2 * 2  # sizes x (scratch + one source) x seeds
    assert {(r["source"], r["strategy"]) for r in rows} == {("none", "scratch"), ("net", "linear_probe")}
    assert sorted({r["per_class"] for r in rows}) == [2, 4]
    # a transform that blanks every image leaves a constant input: every prediction is one class, 3/9 correct
    flat = target_sweep(
        {"net": net}, (x, y), (x[:9], y[:9]), (x[:9], y[:9]), transform=torch.zeros_like, scratch=False, **kw
    )
    assert all(r["test_acc"] == pytest.approx(1 / 3) for r in flat)


def test_noisy_source_is_cached_and_steps_matched(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "companion.sources.data_root", lambda: tmp_path
    )  # where sources.cached_source keeps it
    model, info = noisy_source(
        "course_cnn_s", "mnist", noise=0.5, n=3, epochs=1, min_steps=5, size=16, device="cpu"
    )
    assert info["steps"] == 5 and not info["cached"]  # 30 images: one batch of 128 per pass, 5 passes
    again, info2 = noisy_source(
        "course_cnn_s", "mnist", noise=0.5, n=3, epochs=1, min_steps=5, size=16, device="cpu"
    )
    assert info2["cached"] and info2["test_acc"] == info["test_acc"] and info2["steps"] == 5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(list((tmp_path / "cache" / "noisy_sources").glob("*.pt"))) == 1


def test_gradient_reversal_and_dann_schedule_reference():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    g = torch.tensor([0.5, 1.0, -4.0])
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)  # identity forward
    y.backward(g)
    assert torch.allclose(x.grad, -0.3 * g)  # backward: -lambda times the incoming gradient
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(0.98661, abs=1e-5)
    assert dann_lambda(1.0) == pytest.approx(0.99991, abs=1e-5)


def _tiny(seed=0, n=48, k=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g), torch.arange(n) % k


def test_dann_at_lambda_zero_is_class_loss_training_bit_for_bit():
    """At max_lambda = 0 the domain loss sends exactly no gradient into the network: the weights equal those of
    training on the class loss alone (same source batches, same target batches through BatchNorm)."""
    from companion.batches import TensorBatches
    from companion.train import fit

    src, tgt = _tiny(0), _tiny(1)[0]
    net = backbone("course_cnn_s", in_chans=1, num_classes=3)
    a, b, c = (copy.deepcopy(net) for _ in range(3))
    kw = dict(epochs=2, batch_size=16, lr=1e-2, seed=3, device="cpu", progress=False)
    train_dann(a, src, tgt, max_lambda=0.0, **kw)
    dann = DANN(tgt, b.num_features, batch_size=16, max_lambda=0.0, seed=3)

    def class_only(model, x, y, state):
        out, losses = dann.loss_step(model, x, y, state)
        return out, {"main": losses["main"]}

    fit(
        b,
        TensorBatches(*src, 16, seed=3),
        epochs=2,
        lr=1e-2,
        seed=3,
        device="cpu",
        progress=False,
        callbacks=[dann],
        loss_step=class_only,
    )
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    train_dann(c, src, tgt, max_lambda=1.0, **kw)  # the reversed gradient does change the trunk
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_domain_adaptation_never_reads_target_labels_outside_the_few():
    src, (xt, yt) = _tiny(0), _tiny(1)
    net = backbone("course_cnn_s", in_chans=1, num_classes=3)
    kw = dict(seeds=[0, 1], lr_grid=[1e-3, 1e-2], steps=3, per_class=2, batch_size=8, device="cpu")
    rows = domain_adaptation(net, src, (xt, yt), (xt[:9], yt[:9]), (xt[:12], yt[:12]), **kw)
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for s in (0, 1) for m in ADAPTATIONS]
    assert all(
        r["lr"] in (1e-3, 1e-2) and r["val_scores"][r["lr"]] == max(r["val_scores"].values()) for r in rows
    )
    shuffled = yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(5))]
    again = domain_adaptation(
        net, src, (xt, shuffled), (xt[:9], yt[:9]), (xt[:12], yt[:12]), methods=["source_only", "dann"], **kw
    )
    unsupervised = [r for r in rows if r["method"] != "finetune_few"]
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in unsupervised]  # pool labels unused
    with pytest.raises(ValueError, match="methods"):
        domain_adaptation(net, src, (xt, yt), (xt, yt), (xt, yt), **{**kw, "methods": ["adabn"]})
    with pytest.raises(ValueError, match="steps"):
        domain_adaptation(net, src, (xt, yt), (xt, yt), (xt, yt), **{**kw, "steps": 0})


def test_shift_blur_reference_values():
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 4] = 1.0
    out = shift(point, blur=1.0)
    w = torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2)  # truncated at 3 std
    w = w / w.sum()
    assert torch.allclose(out[0, 0, 1:8, 1:8], torch.outer(w, w), atol=1e-7)  # separable Gaussian, sums to 1
    assert out[0, 0, 4, 4].item() == pytest.approx(
        0.1592411, abs=1e-6
    )  # 1 / (1 + 2(e^-1/2 + e^-2 + e^-9/2))^2
    assert out.sum().item() == pytest.approx(1.0)
    flat = torch.full((2, 3, 5, 7), 0.3)
    assert torch.allclose(shift(flat, blur=2.0), flat)  # edges extended: a constant image stays constant
    grey = torch.full((1, 1, 9, 9), 0.5)  # no randomness: the noise stream is the same with or without blur
    assert torch.allclose(shift(grey, blur=1.0, noise=0.05, seed=3), shift(grey, noise=0.05, seed=3))
    assert torch.equal(shift(point, blur=0.0), point)
    with pytest.raises(ValueError, match="^blur must be"):
        shift(point, blur=-1.0)


def test_extra_tests_add_accuracies_at_the_chosen_rate_and_change_nothing_else():
    torch.manual_seed(0)
    x = torch.rand(60, 1, 16, 16)
    y = torch.arange(60) % 3
    net = backbone("course_cnn_s", in_chans=1, num_classes=3)
    test, val = (x[:30], y[:30]), (x[30:45], y[30:45])
    kw = dict(
        per_class=[4],
        strategies=["linear_probe", "lp_ft"],
        seeds=[0, 1],
        lr_grid=[1e-3, 1e-1],
        min_steps=4,
        device="cpu",
    )
    plain = target_sweep({"net": net}, (x, y), val, test, **kw)
    extra = {"same": test, "blank": (torch.zeros(9, 1, 16, 16), y[:9])}
    rows = target_sweep({"net": net}, (x, y), val, test, extra_tests=extra, **kw)
    for before, after in zip(plain, rows, strict=True):
        assert {
            k: v for k, v in after.items() if not k.startswith("test_acc/")
        } == before  # defaults unchanged
        assert after["test_acc/same"] == after["test_acc"]  # the same set, evaluated at the chosen rate
        assert after["test_acc/blank"] == pytest.approx(1 / 3)  # one class predicted for a constant input
    # extra tests are used as given: the transform shifts train, val and test only
    inv = target_sweep(
        {"net": net},
        (x, y),
        val,
        test,
        transform=lambda t: 1 - t,
        extra_tests={"given": (1 - test[0], test[1])},
        scratch=False,
        **kw,
    )
    assert all(r["test_acc/given"] == r["test_acc"] for r in inv)
    with pytest.raises(ValueError, match="^extra_tests must be"):
        target_sweep({"net": net}, (x, y), val, test, extra_tests=[test], **kw)
