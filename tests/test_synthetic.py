"""companion.synthetic: determinism, factors against pixels, the relatedness knob, domain shift, scenes."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn

from companion.synthetic import (
    COLOURS,
    FINDINGS,
    SCENE_CLASSES,
    SHAPES,
    make_multilabel,
    make_scenes,
    make_shapes,
    make_tasks,
    render_shapes,
    shift,
)

PALETTE = torch.tensor(list(COLOURS.values()))
# Area of each shape in units of scale² (circumradius 1): pi, (1.6)², 3*sqrt(3)/4, 2 * 2 * 0.7 - 0.7².
SHAPE_AREA = torch.tensor([math.pi, 2.56, 3 * math.sqrt(3) / 4, 2.31])


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors and tiny BLAS calls run several times faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def foreground(images: torch.Tensor) -> torch.Tensor:
    """Pixels whose channels differ: the shape (palette colours are never grey, backgrounds always are)."""
    return images.amax(1) - images.amin(1) > 1e-6


def centroid(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pixel-centre x and y of each N×H×W mask, as fractions of the side."""
    size = mask.shape[-1]
    c = (torch.arange(size) + 0.5) / size
    m = mask.float()
    area = m.sum((1, 2))
    return (m * c.view(1, 1, -1)).sum((1, 2)) / area, (m * c.view(1, -1, 1)).sum((1, 2)) / area


def flat(out) -> list[torch.Tensor]:
    images, extra = out
    return [images, *(extra.values() if isinstance(extra, dict) else [extra])]


GENERATORS = {
    "shapes": lambda seed: make_shapes(64, seed=seed),
    "tasks": lambda seed: make_tasks(64, seed=seed, num_tasks=3, relatedness=0.5),
    "scenes": lambda seed: make_scenes(64, seed=seed),
    "multilabel": lambda seed: make_multilabel(64, seed=seed),
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_same_seed_same_tensors_other_seed_other_tensors(name):
    make = GENERATORS[name]
    a, b, c = flat(make(3)), flat(make(3)), flat(make(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    images = a[0]
    assert images.dtype == torch.float32 and images.shape == (64, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.05  # not a blank picture


def test_shape_factors_ranges_and_balance():
    images, f = make_shapes(3000, seed=0, size=16, scale=(0.1, 0.25), background=(0.1, 0.3), noise=(0.0, 0.1))
    assert set(f) == {"shape", "colour", "scale", "x", "y", "rotation", "background", "noise"}
    assert all(v.shape == (3000,) for v in f.values())
    assert f["scale"].min() >= 0.1 and f["scale"].max() <= 0.25
    assert f["background"].min() >= 0.1 and f["background"].max() <= 0.3
    assert f["noise"].min() >= 0 and f["noise"].max() <= 0.1
    assert f["rotation"].min() >= 0 and f["rotation"].max() < 360
    for axis in ("x", "y"):  # the whole shape fits: 1.15 * scale bounds every shape's reach
        assert (f[axis] - 1.15 * f["scale"]).min() >= 0 and (f[axis] + 1.15 * f["scale"]).max() <= 1
    for key, k in (("shape", len(SHAPES)), ("colour", len(COLOURS))):
        counts = torch.bincount(f[key], minlength=k).float()
        expected = 3000 / k
        assert (counts - expected).abs().max() < 5 * math.sqrt(expected)


def test_shape_pixels_match_their_factors():
    size = 64
    images, f = make_shapes(500, seed=1, size=size, noise=(0.0, 0.0))
    fg = foreground(images)
    pixels = images.permute(0, 2, 3, 1)
    # Every shape pixel has exactly the colour of the colour factor; every other pixel the background grey.
    per_pixel_colour = PALETTE[f["colour"]].view(-1, 1, 1, 3).expand_as(pixels)
    assert torch.allclose(pixels[fg], per_pixel_colour[fg], atol=1e-6)
    per_pixel_grey = f["background"].view(-1, 1, 1, 1).expand_as(pixels)
    assert torch.allclose(pixels[~fg], per_pixel_grey[~fg], atol=1e-6)
    # Centre: the centroid of the shape's pixels (all four shapes have their centroid at their centre).
    cx, cy = centroid(fg)
    assert (cx - f["x"]).abs().max() * size < 0.6 and (cy - f["y"]).abs().max() * size < 0.6
    # Size and kind: pixel area over (scale * side)² matches each shape's analytic area.
    area = fg.sum((1, 2)) / (f["scale"] * size) ** 2
    for k in range(len(SHAPES)):
        assert area[f["shape"] == k].mean() == pytest.approx(SHAPE_AREA[k].item(), rel=0.01)


def test_rotation_factor_turns_counterclockwise_like_shift():
    size = 64
    base = {
        "shape": torch.tensor([2]),
        "colour": torch.tensor([0]),
        "scale": torch.tensor([0.3]),
        "x": torch.tensor([0.5]),
        "y": torch.tensor([0.5]),
        "rotation": torch.tensor([0.0]),
        "background": torch.tensor([0.2]),
        "noise": torch.tensor([0.0]),
    }
    upright = render_shapes(base, size=size)
    # The triangle's apex points up: its top rows are narrower than its bottom rows.
    rows = foreground(upright)[0].sum(1)
    filled = rows.nonzero().squeeze(1)
    assert rows[filled[0]] < rows[filled[-1]]

    turned = shift(upright, rotation=30.0)
    spread = turned.amax(1) - turned.amin(1)
    turned_fg = spread > 0.5 * spread.max()

    def iou(deg: float) -> float:
        fg = foreground(render_shapes({**base, "rotation": torch.tensor([deg])}, size=size))
        return ((fg & turned_fg).sum() / (fg | turned_fg).sum()).item()

    assert iou(30.0) > 0.9
    assert iou(-30.0) < 0.75  # the other way round is a different picture


def test_render_shapes_reproduces_and_edits_images():
    images, f = make_shapes(50, seed=2, noise=(0.0, 0.0))
    assert torch.equal(render_shapes(f), images)
    recoloured = render_shapes({**f, "colour": (f["colour"] + 1) % len(COLOURS)})
    changed = (recoloured != images).any(1)
    assert torch.equal(changed, foreground(images))  # only the shape's own pixels change


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).float().mean().item()


def mutual_information(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Plug-in mutual information (nats) from the contingency table."""
    joint = torch.bincount(a * k + b, minlength=k * k).view(k, k).double()
    p = joint / joint.sum()
    outer = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    nz = p > 0
    return (p[nz] * (p[nz] / outer[nz]).log()).sum().item()


def test_relatedness_one_gives_identical_labels_zero_independent_ones():
    n, k = 4000, 4
    _, same = make_tasks(n, seed=0, num_tasks=3, relatedness=1.0, classes=k, size=8)
    assert list(same) == ["shape", "colour", "scale"]
    assert torch.equal(same["shape"], same["colour"]) and torch.equal(same["shape"], same["scale"])
    assert mutual_information(same["shape"], same["colour"], k) == pytest.approx(math.log(k), abs=0.01)

    _, free = make_tasks(n, seed=0, num_tasks=3, relatedness=0.0, classes=k, size=8)
    for a, b in (("shape", "colour"), ("colour", "scale")):
        assert agreement(free[a], free[b]) == pytest.approx(1 / k, abs=4 * math.sqrt(3 / 16 / n))
        assert mutual_information(free[a], free[b], k) < 0.01  # log(4) = 1.39 when identical
    for labels in (*same.values(), *free.values()):  # every label balanced
        counts = torch.bincount(labels, minlength=k).float()
        assert (counts - n / k).abs().max() < 5 * math.sqrt(n / k)


@pytest.mark.parametrize(("r", "k"), [(0.25, 4), (0.5, 3), (0.75, 2)])
def test_relatedness_in_between_sets_agreement_and_kappa(r, k):
    n = 4000
    _, labels = make_tasks(n, seed=5, relatedness=r, classes=k, size=8)
    a, b = labels.values()
    expected = r + (1 - r) / k  # documented: P(agree) = r + (1 - r) / classes
    p = agreement(a, b)
    assert p == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))
    kappa = (p - 1 / k) / (1 - 1 / k)
    assert kappa == pytest.approx(r, abs=0.05)


def shape_invariants(fg: torch.Tensor) -> torch.Tensor:
    """Scale- and rotation-free descriptors of each mask: polar moment / area², area / max radius²."""
    size = fg.shape[-1]
    cx, cy = centroid(fg)
    c = (torch.arange(size) + 0.5) / size
    r2 = (c.view(1, 1, -1) - cx.view(-1, 1, 1)) ** 2 + (c.view(1, -1, 1) - cy.view(-1, 1, 1)) ** 2
    area = fg.sum((1, 2)) / size**2
    polar = (r2 * fg).sum((1, 2)) / size**2
    reach = (r2 * fg).amax((1, 2))
    return torch.stack([polar / area**2, area / reach], 1)


def test_every_task_label_is_visible_in_the_image():
    size, k, lo, hi = 64, 4, 0.15, 0.3
    order = ("colour", "background", "scale", "x", "y", "shape")
    images, labels = make_tasks(
        300, seed=3, num_tasks=6, relatedness=0.3, classes=k, size=size, factors=order, noise=(0.0, 0.0)
    )
    assert list(labels) == list(order)
    fg = foreground(images)
    pixels = images.permute(0, 2, 3, 1)
    first = fg.flatten(1).float().argmax(1)  # one shape pixel and one background pixel per image
    colour = pixels.flatten(1, 2)[torch.arange(len(images)), first]
    assert torch.equal((colour[:, None] - PALETTE[None]).abs().sum(2).argmin(1), labels["colour"])
    grey = pixels.flatten(1, 2)[torch.arange(len(images)), (~fg).flatten(1).float().argmax(1), 0]
    assert torch.equal((grey / 0.4 * k).floor().long(), labels["background"])

    # Recover each image's scale from its area and shape, then the position bins from the centroid.
    invariants = shape_invariants(fg)
    ref_images, ref = make_shapes(400, seed=4, size=size, noise=(0.0, 0.0))
    ref_inv = shape_invariants(foreground(ref_images))
    means = torch.stack([ref_inv[ref["shape"] == s].mean(0) for s in range(k)])
    spread = ref_inv.std(0)
    guess = ((invariants[:, None] - means[None]) / spread).pow(2).sum(2).argmin(1)
    assert agreement(guess, labels["shape"]) > 0.97
    scale = (fg.sum((1, 2)) / SHAPE_AREA[labels["shape"]]).sqrt() / size
    assert agreement(((scale - lo) / (hi - lo) * k).floor().long(), labels["scale"]) > 0.97
    cx, cy = centroid(fg)
    margin = 1.15 * scale
    for axis, value in (("x", cx), ("y", cy)):
        unit = (value - margin) / (1 - 2 * margin)
        assert agreement((unit * k).floor().long().clamp(0, k - 1), labels[axis]) > 0.97


def probe_after_training(relatedness: float, seed: int) -> tuple[float, float]:
    """Train a small CNN on task A (colour), then fit a logistic-regression probe for B (shape) on its
    frozen features; return A's test accuracy and the probe's test accuracy."""
    n_train, n_test = 768, 512
    images, labels = make_tasks(
        n_train + n_test, seed=seed, relatedness=relatedness, factors=("colour", "shape"), size=16
    )
    a, b = labels["colour"], labels["shape"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        model = nn.Sequential(body, nn.Linear(16, 4))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        order = torch.Generator().manual_seed(seed)
        for _ in range(3):
            perm = torch.randperm(n_train, generator=order)
            for i in range(0, n_train, 32):
                idx = perm[i : i + 32]
                loss = nn.functional.cross_entropy(model(images[idx]), a[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            feats = body(images).numpy()
            acc_a = agreement(model(images[n_train:]).argmax(1), a[n_train:])
    mean, std = feats[:n_train].mean(0), feats[:n_train].std(0) + 1e-6
    z = (feats - mean) / std
    probe = LogisticRegression(max_iter=1000).fit(z[:n_train], b[:n_train].numpy())
    return acc_a, float(probe.score(z[n_train:], b[n_train:].numpy()))


def test_features_learned_for_task_a_transfer_to_b_only_when_related():
    for seed in range(3):
        acc_a0, probe0 = probe_after_training(0.0, seed)
        acc_a1, probe1 = probe_after_training(1.0, seed)
        assert min(acc_a0, acc_a1) > 0.8  # the net did learn task A
        assert probe1 > 0.9  # B is A's labels when fully related
        assert probe0 < 0.6  # shape is poorly read from colour features (chance is 0.25)
        assert probe1 - probe0 > 0.3


def test_shift_off_and_identities():
    images, _ = make_shapes(20, seed=6)
    before = images.clone()
    assert torch.equal(shift(images), images)
    assert torch.equal(shift(images, rotation=0.0), images)
    assert torch.equal(shift(images, rotation=360.0), images)
    assert torch.equal(shift(images, invert=True), 1 - images)
    assert torch.allclose(shift(shift(images, invert=True), invert=True), images, atol=1e-6)
    assert torch.equal(images, before)  # input untouched


def test_shift_rotation_matches_quarter_turns_on_any_channel_count():
    mnist_like = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rgb, _ = make_shapes(5, seed=7)
    for x in (mnist_like, rgb):
        assert torch.allclose(shift(x, rotation=90.0), torch.rot90(x, 1, (2, 3)), atol=1e-5)
        assert torch.allclose(shift(x, rotation=-90.0), torch.rot90(x, -1, (2, 3)), atol=1e-5)
    wide = torch.rand(3, 2, 12, 20, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(shift(wide, rotation=180.0), wide.flip(2, 3), atol=1e-5)
    assert shift(wide, rotation=33.0).shape == wide.shape


def test_shift_noise_has_the_asked_std_and_follows_the_seed():
    grey = torch.full((8, 3, 32, 32), 0.5)
    noisy = shift(grey, noise=0.05, seed=1)
    diff = noisy - grey
    assert diff.std().item() == pytest.approx(0.05, rel=0.03)
    assert abs(diff.mean().item()) < 0.002
    assert torch.equal(noisy, shift(grey, noise=0.05, seed=1))
    assert not torch.equal(noisy, shift(grey, noise=0.05, seed=2))
    loud = shift(grey, noise=2.0, seed=1)
    assert loud.min() == 0 and loud.max() == 1  # clamped


def test_shift_texture_blends_in_stripes():
    images, _ = make_shapes(6, seed=8)
    stripes = shift(torch.zeros_like(images), texture=1.0, seed=3)
    assert torch.equal(stripes, shift(torch.ones_like(images), texture=1.0, seed=3))  # input gone
    assert stripes.mean().item() == pytest.approx(0.5, abs=0.05) and stripes.std() > 0.3
    assert torch.equal(stripes[:, 0], stripes[:, 2])  # same pattern on every channel
    assert torch.allclose(shift(images, texture=0.3, seed=3), 0.7 * images + 0.3 * stripes, atol=1e-6)


def test_scene_targets_match_pixels():
    size = 32
    images, t = make_scenes(1500, seed=2, size=size, noise=0.0)
    cls, box, mask = t["cls"], t["box"], t["mask"]
    assert mask.shape == (1500, 1, size, size) and mask.dtype == torch.float32
    assert cls.dtype == torch.int64 and box.shape == (1500, 3) and box.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert box.min() >= 0 and box.max() <= 1
    m = mask[:, 0].bool()
    assert m.sum((1, 2)).min() > 0
    # The mask is exactly the set of pixels with the object's colour.
    pixels = images.permute(0, 2, 3, 1)
    obj = pixels.flatten(1, 2)[torch.arange(len(images)), m.flatten(1).float().argmax(1)]
    same = (pixels == obj.view(-1, 1, 1, 3)).all(3)
    assert torch.equal(same, m)
    # Box centre = mask centroid; box height: area / (half-height in pixels)² matches each class's area.
    cx, cy = centroid(m)
    assert (cx - box[:, 0]).abs().max() * size < 0.6 and (cy - box[:, 1]).abs().max() * size < 0.6
    area = m.sum((1, 2)) / (box[:, 2] * size / 2) ** 2
    reference = [3.2 * 2, math.pi * 0.45, 2.0, math.pi]  # car box, pedestrian ellipse, sign diamond, ball
    for k, ref in enumerate(reference):
        assert area[cls == k].mean() == pytest.approx(ref, rel=0.02)
    counts = torch.bincount(cls, minlength=len(SCENE_CLASSES)).float()
    assert (counts - 1500 / 4).abs().max() < 5 * math.sqrt(1500 / 4)
    # Perspective: objects lower in the picture are larger.
    assert torch.corrcoef(box[:, 1:].T)[0, 1] > 0.5


def test_multilabel_prevalence_and_co_occurrence():
    n = 4000
    images, y = make_multilabel(n, seed=0, num_labels=6, size=16)
    assert y.shape == (n, 6) and y.dtype == torch.float32 and set(y.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    for j, p in enumerate(FINDINGS.values()):
        assert y[:, j].mean().item() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    both = (y[:, 0] * y[:, 1]).mean().item()  # independent draws: P(both) = 0.30 * 0.20
    assert both == pytest.approx(0.06, abs=4 * math.sqrt(0.06 * 0.94 / n))
    assert (y.sum(1) >= 2).any() and (y.sum(1) == 0).any()


def test_each_finding_is_visible_and_distinct():
    n, k = 100, len(FINDINGS)
    healthy, none = make_multilabel(n, seed=9, num_labels=k, noise=0.0, prevalence=[0.0] * k)
    assert none.sum() == 0
    changes = []
    for j in range(k):
        sick, y = make_multilabel(
            n, seed=9, num_labels=k, noise=0.0, prevalence=[float(i == j) for i in range(k)]
        )
        assert torch.equal(y[:, j], torch.ones(n)) and y.sum() == n
        changed = (sick != healthy).any(1)
        assert changed.flatten(1).any(1).all()  # every image shows it
        changes.append(changed)
    for i in range(k):
        for j in range(i + 1, k):
            assert not torch.equal(changes[i], changes[j])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: make_shapes(0, seed=0), "n"),
        (lambda: make_shapes(4, seed=-1), "seed"),
        (lambda: make_shapes(4, seed=0, size=4), "size"),
        (lambda: make_shapes(4, seed=0, scale=(0.3, 0.1)), "scale"),
        (lambda: make_tasks(4, seed=0, relatedness=1.5), "relatedness"),
        (lambda: make_tasks(4, seed=0, classes=5), "classes"),
        (lambda: make_tasks(4, seed=0, num_tasks=7), "num_tasks"),
        (lambda: make_tasks(4, seed=0, factors=("shape", "shape")), "factors"),
        (lambda: make_tasks(4, seed=0, factors=("hue", "shape")), "factors"),
        (lambda: make_scenes(4, seed=0, size=8), "size"),
        (lambda: make_multilabel(4, seed=0, num_labels=7), "num_labels"),
        (lambda: make_multilabel(4, seed=0, prevalence=[0.5]), "prevalence"),
        (lambda: render_shapes({"shape": torch.tensor([0])}), "factors"),
        (lambda: shift(torch.rand(3, 8, 8)), "images"),
        (lambda: shift(torch.full((1, 1, 4, 4), 2.0)), "images"),
        (lambda: shift(torch.rand(1, 1, 4, 4), texture=1.5), "texture"),
        (lambda: shift(torch.rand(1, 1, 4, 4), noise=-0.1), "noise"),
        (lambda: shift(torch.rand(1, 1, 4, 4), rotation=float("nan")), "rotation"),
        (lambda: shift(torch.rand(1, 1, 4, 4), invert="yes"), "invert"),
    ],
)
def test_bad_input_raises_one_line_naming_the_parameter(call, name):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message.startswith(name) and "\n" not in message
