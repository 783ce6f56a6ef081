"""Seeded synthetic images with known factors, tunable task relatedness and domain shift.

Everything here is drawn from one `torch.Generator` seeded by `seed` and rendered on the CPU with
vectorised masks (no per-image Python loops), so the same seed gives identical tensors. Move the
results to your device with `.to(device)`; `shift` works on tensors on any device.

- `make_shapes`: coloured shapes with their factors.
- `make_tasks`: several classification tasks with a relatedness knob.
- `shift`: rotation, inversion, blur, noise and texture as domain shift.
- `make_scenes`, `make_multilabel`: a road scene and a multi-label "scan".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.80, 0.20, 0.80),
    "cyan": (0.10, 0.80, 0.85),
}
# Factors a task of `make_tasks` can read; the default order gives tasks "shape", "colour", ...
TASK_FACTORS = ("shape", "colour", "scale", "x", "y", "background")
SCENE_CLASSES = ("car", "pedestrian", "sign", "ball")
# Finding -> prevalence (share of images that show it); drawn independently, so any can co-occur.
FINDINGS = {
    "opacity": 0.30,
    "nodule": 0.20,
    "effusion": 0.12,
    "cardiomegaly": 0.08,
    "pneumothorax": 0.05,
    "device": 0.03,
}

_PALETTE = torch.tensor(list(COLOURS.values()))
_EXTENT = 1.15  # farthest point of any shape from its centre, in units of its scale
# Scene objects: half-width / half-height of each class, and their colours (never grey, sky or grass).
_HALF_WIDTH = torch.tensor([1.6, 0.45, 1.0, 1.0])
_OBJECT_COLOURS = torch.tensor(
    [[0.85, 0.10, 0.10], [0.95, 0.80, 0.10], [0.95, 0.50, 0.05], [0.75, 0.15, 0.70], [0.10, 0.20, 0.80]]
)


# ----------------------------------------------------------------------------------------- checks


def _generator(seed: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _int(value: int, name: str, lo: int, hi: int | None = None) -> int:
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def _float(value: float, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _span(value: tuple[float, float], name: str, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair within [{lo}, {hi}], got {value!r}") from None
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name} must be a (low, high) pair with {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


def _ranges(scale, background, noise) -> tuple[tuple[float, float], ...]:
    return (
        _span(scale, "scale", 0.01, 0.4),
        _span(background, "background", 0, 1),
        _span(noise, "noise", 0, 1),
    )


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [0, 1]: x as 1×1×W, y as 1×H×1."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return c.view(1, 1, size), c.view(1, size, 1)


def _rand(n: int, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


# ----------------------------------------------------------------------------------------- shapes


def _inside(kind: int, u: Tensor, v: Tensor) -> Tensor:
    """Whether offset (u, v), in the shape's own frame and in units of its scale, lies inside shape `kind`."""
    if kind == 0:  # circle
        return u * u + v * v <= 1
    u, v = u.abs_(), v if kind == 2 else v.abs_()
    if kind == 1:  # square
        return torch.maximum(u, v) <= 0.8
    if kind == 2:  # equilateral triangle, apex up, centroid at the origin
        return (v <= 0.5) & (math.sqrt(3.0) * u - v <= 1)
    return ((u <= 1) & (v <= 0.35)) | ((u <= 0.35) & (v <= 1))  # cross


def _render(factors: dict[str, Tensor], size: int, g: torch.Generator) -> Tensor:
    n = factors["shape"].numel()
    xs, ys = _grid(size)
    f = {k: v.float().view(-1, 1, 1) for k, v in factors.items()}
    theta = torch.deg2rad(f["rotation"])
    cos, sin = theta.cos() / f["scale"], theta.sin() / f["scale"]
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for kind in range(len(SHAPES)):  # one pass per kind of shape, over all images of that kind at once
        idx = (factors["shape"] == kind).nonzero().squeeze(1)
        dx, dy = xs - f["x"][idx], ys - f["y"][idx]
        c, s = cos[idx], sin[idx]
        # Pixel p lies in the shape turned counter-clockwise (on screen) by theta iff R(-theta) p does.
        mask[idx] = _inside(kind, dx * c - dy * s, dx * s + dy * c)
    colour = _PALETTE[factors["colour"]].view(n, 3, 1, 1)
    image = torch.where(mask.unsqueeze(1), colour, f["background"].unsqueeze(1))
    image += torch.randn(image.shape, generator=g) * f["noise"].unsqueeze(1)
    return image.clamp_(0, 1)


def render_shapes(factors: dict[str, Tensor], *, size: int = 32, seed: int = 0) -> Tensor:
    """Render images from a factors dict like `make_shapes` returns, e.g. after editing one.

    With zero noise the result equals `make_shapes`' images; the noise itself is drawn from `seed`.
    """
    _int(size, "size", 8)
    keys = ("shape", "colour", "scale", "x", "y", "rotation", "background", "noise")
    missing = [k for k in keys if k not in factors]
    if missing:
        raise ValueError(f"factors must hold the keys {keys}, missing {missing}")
    f = {k: torch.as_tensor(factors[k]).detach().cpu().reshape(-1) for k in keys}
    if len({v.numel() for v in f.values()}) != 1 or f["shape"].numel() == 0:
        raise ValueError("factors must hold one value per image, the same number for every key")
    f["shape"], f["colour"] = f["shape"].long(), f["colour"].long()
    if not (0 <= f["shape"].min() and f["shape"].max() < len(SHAPES)):
        raise ValueError(f"factors['shape'] must hold indices in [0, {len(SHAPES) - 1}]")
    if not (0 <= f["colour"].min() and f["colour"].max() < len(COLOURS)):
        raise ValueError(f"factors['colour'] must hold indices in [0, {len(COLOURS) - 1}]")
    if not (f["scale"].min() > 0):
        raise ValueError("factors['scale'] must be positive")
    return _render(f, size, _generator(seed))


def _draw(
    n: int,
    g: torch.Generator,
    scale: tuple[float, float],
    background: tuple[float, float],
    noise: tuple[float, float],
    fixed: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Sample all factors; `fixed` overrides shape/colour indices or the unit value (in [0, 1)) of the others."""
    fixed = fixed or {}
    unit = {k: fixed.get(k, torch.rand(n, generator=g)) for k in ("scale", "x", "y", "background")}
    shape = fixed.get("shape", torch.randint(len(SHAPES), (n,), generator=g))
    colour = fixed.get("colour", torch.randint(len(COLOURS), (n,), generator=g))
    rotation = _rand(n, g, 0.0, 360.0)
    level = _rand(n, g, *noise)
    s = scale[0] + (scale[1] - scale[0]) * unit["scale"]
    margin = _EXTENT * s  # keeps every shape whole inside the image
    return {
        "shape": shape,
        "colour": colour,
        "scale": s,
        "x": margin + (1 - 2 * margin) * unit["x"],
        "y": margin + (1 - 2 * margin) * unit["y"],
        "rotation": rotation,
        "background": background[0] + (background[1] - background[0]) * unit["background"],
        "noise": level,
    }


def make_shapes(
    n: int,
    *,
    seed: int,
    size: int = 32,
    scale: tuple[float, float] = (0.15, 0.3),
    background: tuple[float, float] = (0.0, 0.4),
    noise: tuple[float, float] = (0.0, 0.05),
) -> tuple[Tensor, dict[str, Tensor]]:
    """One coloured shape per image on a grey background, with every factor returned.

    Returns float32 images N×3×size×size in [0, 1] and a dict of per-image factors:
    "shape" (index into SHAPES), "colour" (index into COLOURS), "scale" (circumradius as a fraction of
    the image side, uniform in `scale`), "x", "y" (centre in [0, 1], y downwards; the shape always fits),
    "rotation" (degrees counter-clockwise, uniform in [0, 360)), "background" (grey level, uniform in
    `background`) and "noise" (std of additive Gaussian pixel noise, uniform in `noise`). Colours are
    never grey, so with zero noise the shape's pixels are exactly those whose channels differ.
    """
    _int(n, "n", 1)
    _int(size, "size", 8)
    g = _generator(seed)
    factors = _draw(n, g, *_ranges(scale, background, noise))
    return _render(factors, size, g), factors


def make_tasks(
    n: int,
    *,
    seed: int,
    num_tasks: int = 2,
    relatedness: float = 1.0,
    classes: int = 4,
    size: int = 32,
    factors: Sequence[str] = TASK_FACTORS,
    scale: tuple[float, float] = (0.15, 0.3),
    background: tuple[float, float] = (0.0, 0.4),
    noise: tuple[float, float] = (0.0, 0.05),
    groups: Sequence[int] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Shape images with `num_tasks` class labels whose relatedness you set.

    Task t reads one visible factor, `factors[t]` (default: "shape", then "colour", "scale", "x", "y",
    "background"), and is named after it; its label in [0, classes) is that factor's index (shape,
    colour) or bin (the others, split into `classes` equal bins with a gap between bins). Each task is
    therefore always fully determined by the image. The knob ties the factors together, per image:

    - draw a shared latent z and, for each task, a private value p_t, all uniform over the classes;
    - with probability `relatedness` the image is "tied" and every task's factor shows z,
      otherwise task t's factor shows its own p_t.

    So relatedness=1 gives identical labels for all tasks, relatedness=0 independent ones, and in
    between P(two tasks agree) = r + (1 - r) / classes, i.e. Cohen's kappa between any two tasks is r
    in expectation. Labels stay uniform over the classes for every r, and factors that no task reads
    vary freely. A network trained on one task thus learns features that serve another one as far
    as r ties their labels.

    `groups` (one integer per task, e.g. (0, 1, 0, 1)) plants a group structure instead: each
    group has its own shared latent, so tasks of one group agree as above and tasks of different groups are
    independent. None (the default) is one group of all tasks, with the same tensors as before it existed.
    """
    _int(n, "n", 1)
    _int(size, "size", 8)
    _int(classes, "classes", 2, len(SHAPES))
    r = _float(relatedness, "relatedness", 0.0, 1.0)
    names = tuple(factors) if not isinstance(factors, str) else (factors,)
    unknown = [f for f in names if f not in TASK_FACTORS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"factors must be distinct names from {TASK_FACTORS}, got {factors!r}")
    _int(num_tasks, "num_tasks", 1, len(names))
    if groups is None:
        groups = (0,) * num_tasks
    if isinstance(groups, str) or not isinstance(groups, Sequence) or len(groups) != num_tasks:
        raise ValueError(f"groups must be one integer >= 0 per task ({num_tasks}), got {groups!r}")
    for k in groups:
        _int(k, "groups (an entry)", 0)
    ranges = _ranges(scale, background, noise)
    g = _generator(seed)
    shared = torch.randint(classes, (n,), generator=g)
    tied = torch.rand(n, generator=g) < r
    kinds = sorted(set(groups))  # the first group keeps `shared`: one group draws exactly what it always drew
    latent = {k: shared if k == kinds[0] else torch.randint(classes, (n,), generator=g) for k in kinds}
    labels, fixed = {}, {}
    for name, k in zip(names[:num_tasks], groups):
        y = torch.where(tied, latent[k], torch.randint(classes, (n,), generator=g))
        labels[name] = y
        if name in ("shape", "colour"):
            fixed[name] = y
        else:  # a unit value in the middle 70% of bin y, so that neighbouring bins never touch
            fixed[name] = (y + 0.15 + 0.7 * torch.rand(n, generator=g)) / classes
    return _render(_draw(n, g, *ranges, fixed=fixed), size, g), labels


# ------------------------------------------------------------------------------------ domain shift


def _rotate(images: Tensor, degrees: float) -> Tensor:
    """Turn every image counter-clockwise (as displayed) about its centre; borders are extended."""
    n, _, h, w = images.shape
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    # Output pixel p samples the input at R(-t) p; normalised coordinates scale x by W/2 and y by H/2.
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3).to(images.device), [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of std `sigma` pixels: kernel cut at 3 std, summing to 1; edges extended."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=images.dtype, device=images.device) / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = images.shape
    x = images.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def shift(
    images: Tensor,
    *,
    rotation: float = 0.0,
    invert: bool = False,
    noise: float = 0.0,
    texture: float = 0.0,
    blur: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """Apply a domain shift to N×C×H×W images in [0, 1] on any device, e.g. MNIST or shapes.

    In this order: `rotation` turns every image by that many degrees counter-clockwise (bilinear, edges
    extended); `invert` maps x to 1 - x; `blur` convolves each channel with a Gaussian of that std in pixels
    (truncated at 3 std, normalised, edges extended; no randomness); `texture` in [0, 1] blends each image
    with a sinusoidal stripe pattern, (1 - texture) * x + texture * stripes, the stripes (period max(H, W) / 8
    pixels) having a random orientation and phase per image; `noise` adds Gaussian noise of that std. The result is
    clamped to [0, 1]. The input is never modified; with all knobs off the output equals the input.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float N×C×H×W tensor, got {got}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must hold values in [0, 1]")
    if isinstance(rotation, bool) or not isinstance(rotation, (int, float)) or not math.isfinite(rotation):
        raise ValueError(f"rotation must be a finite number of degrees, got {rotation!r}")
    if not isinstance(invert, bool):
        raise ValueError(f"invert must be True or False, got {invert!r}")
    noise = _float(noise, "noise", 0.0, math.inf)
    texture = _float(texture, "texture", 0.0, 1.0)
    blur = _float(blur, "blur", 0.0, math.inf)
    g = _generator(seed)
    n, _, h, w = images.shape
    angle, phase = _rand(n, g, 0.0, math.pi), _rand(n, g, 0.0, 2 * math.pi)  # drawn always: stable streams
    out = _rotate(images, rotation) if rotation % 360 else images
    if invert:
        out = 1 - out
    if blur > 0:
        out = _blur(out, blur)
    if texture > 0:
        ys, xs = torch.arange(h).view(1, h, 1).float(), torch.arange(w).view(1, 1, w).float()
        a, p = angle.view(-1, 1, 1), phase.view(-1, 1, 1)
        wave = (xs * a.cos() + ys * a.sin()) * (2 * math.pi / max(3.0, max(h, w) / 8)) + p
        stripes = (0.5 + 0.5 * wave.sin()).unsqueeze(1).to(images.device, images.dtype)
        out = (1 - texture) * out + texture * stripes
    if noise > 0:
        out = out + noise * torch.randn(images.shape, generator=g).to(images.device, images.dtype)
    return out.clamp(0, 1)


# ----------------------------------------------------------------------------- scene data (multi-task)


def make_scenes(
    n: int, *, seed: int, size: int = 32, noise: float = 0.02
) -> tuple[Tensor, dict[str, Tensor]]:
    """Road scenes with one object each, for detection-style multi-task learning.

    A sky above a horizon (at 0.35-0.45 of the height), a road narrowing towards it with a dashed
    centre line, grass beside it, and an overall daylight level in [0.6, 1]. One object stands on the
    ground: nearer objects (lower in the image) tend to be bigger. Targets:
    "cls" (index into SCENE_CLASSES: car = wide box, pedestrian = tall ellipse, sign = diamond,
    ball = disc), "box" (N×3: centre x, centre y and height, as fractions of the image side) and
    "mask" (N×1×H×W float 0/1, the object's pixels). Each object is symmetric about its centre, so
    the mask centroid is the box centre up to pixel rounding. `noise` is the pixel noise std.
    """
    _int(n, "n", 1)
    _int(size, "size", 16)
    noise = _float(noise, "noise", 0.0, 1.0)
    g = _generator(seed)
    cls = torch.randint(len(SCENE_CLASSES), (n,), generator=g)
    colour = _OBJECT_COLOURS[torch.randint(len(_OBJECT_COLOURS), (n,), generator=g)]
    horizon, light, depth = _rand(n, g, 0.35, 0.45), _rand(n, g, 0.6, 1.0), _rand(n, g)
    half = 0.08 + 0.10 * (0.6 * depth + 0.4 * torch.rand(n, generator=g))  # half-height of the object
    bottom = horizon + 0.05 + (0.95 - horizon) * depth  # where it touches the ground
    cy = bottom - half
    reach = _HALF_WIDTH[cls] * half + 0.02
    cx = reach + (1 - 2 * reach) * torch.rand(n, generator=g)

    xs, ys = _grid(size)
    hz, li = horizon.view(-1, 1, 1), light.view(-1, 1, 1, 1)
    t = (ys / hz).clamp(max=1).unsqueeze(1)
    sky = torch.cat([0.45 + 0.25 * t, 0.65 + 0.20 * t, 0.95 + 0 * t], 1)
    d = ((ys - hz) / (1 - hz)).clamp(min=0)
    road = (xs - 0.5).abs() <= 0.08 + 0.5 * d
    lane = road & ((xs - 0.5).abs() <= 0.01 + 0.025 * d) & (torch.frac(6 * d.sqrt()) < 0.5)
    grass = torch.tensor([0.25, 0.50, 0.20]).view(1, 3, 1, 1)
    ground = torch.where(road.unsqueeze(1), 0.40, grass)
    ground = torch.where(lane.unsqueeze(1), 0.95, ground)
    image = li * torch.where((ys < hz).unsqueeze(1), sky, ground)

    u = (xs - cx.view(-1, 1, 1)) / half.view(-1, 1, 1)
    v = (ys - cy.view(-1, 1, 1)) / half.view(-1, 1, 1)
    k = cls.view(-1, 1, 1)
    car = (u.abs() <= 1.6) & (v.abs() <= 1)
    walker = (u / 0.45) ** 2 + v * v <= 1
    sign = u.abs() + v.abs() <= 1
    ball = u * u + v * v <= 1
    mask = torch.where(k == 0, car, torch.where(k == 1, walker, torch.where(k == 2, sign, ball))).unsqueeze(1)
    image = torch.where(mask, colour.view(-1, 3, 1, 1), image)
    image = (image + noise * torch.randn(image.shape, generator=g)).clamp(0, 1)
    box = torch.stack([cx, cy, 2 * half], 1)
    return image, {"cls": cls, "box": box, "mask": mask.float()}


def make_multilabel(
    n: int,
    *,
    seed: int,
    num_labels: int = 5,
    size: int = 32,
    prevalence: Sequence[float] | None = None,
    noise: float = 0.02,
) -> tuple[Tensor, Tensor]:
    """Grey chest-scan-like images with co-occurring findings: multi-label classification.

    Returns images N×3×size×size (grey, in [0, 1]) and float32 labels N×num_labels in {0, 1}, column j
    being the j-th finding of FINDINGS: opacity 30% (soft bright blob in a lung), nodule 20% (small
    bright disc in a lung), effusion 12% (brighter lower lung), cardiomegaly 8% (larger heart),
    pneumothorax 5% (one lung darker), device 3% (a bright line from the top). Each finding is drawn
    independently with its prevalence (override with `prevalence`), so e.g. 6% of images show both
    opacity and nodule. Changing `prevalence` keeps everything else about the images: with prevalence
    all zero you get the same scans, healthy.
    """
    _int(n, "n", 1)
    _int(size, "size", 16)
    _int(num_labels, "num_labels", 1, len(FINDINGS))
    noise = _float(noise, "noise", 0.0, 1.0)
    rates = list(FINDINGS.values())[:num_labels] if prevalence is None else prevalence
    try:
        rates = [float(p) for p in rates]
    except (TypeError, ValueError):
        rates = []
    if len(rates) != num_labels or not all(0 <= p <= 1 for p in rates):
        raise ValueError(
            f"prevalence must be {num_labels} numbers in [0, 1], one per label, got {prevalence!r}"
        )
    g = _generator(seed)
    coin = torch.rand(n, len(FINDINGS), generator=g)  # all columns drawn always: stable streams
    has = (coin[:, :num_labels] < torch.tensor(rates)).float()
    on = {name: has[:, j].view(-1, 1, 1) for j, name in enumerate(list(FINDINGS)[:num_labels])}
    off = torch.zeros(n, 1, 1)
    opacity, nodule, effusion, big_heart, collapse, device = (on.get(name, off) for name in FINDINGS)
    ox, oy = _rand(n, g, -0.03, 0.03).view(-1, 1, 1), _rand(n, g, -0.03, 0.03).view(-1, 1, 1)
    contrast, brightness = _rand(n, g, 0.85, 1.15).view(-1, 1, 1), _rand(n, g, -0.05, 0.05).view(-1, 1, 1)
    side = torch.randint(2, (n, 3), generator=g).float()  # lung of opacity, nodule, pneumothorax
    where = torch.rand(n, 2, 2, generator=g)  # radius and angle of opacity and nodule in their lung
    line_x, line_end = _rand(n, g, 0.46, 0.54).view(-1, 1, 1), _rand(n, g, 0.45, 0.7).view(-1, 1, 1)

    xs, ys = _grid(size)

    def ellipse(cx, cy, rx, ry):
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1

    def lung_point(j):  # a point well inside the lung chosen by side[:, j]
        s = side[:, j].view(-1, 1, 1)
        rho, phi = where[:, j, 0].sqrt().view(-1, 1, 1) * 0.7, where[:, j, 1].view(-1, 1, 1) * 2 * math.pi
        return 0.32 + 0.36 * s + ox + 0.13 * rho * phi.cos(), 0.5 + oy + 0.25 * rho * phi.sin()

    lungs = [ellipse(0.32 + ox, 0.5 + oy, 0.13, 0.25), ellipse(0.68 + ox, 0.5 + oy, 0.13, 0.25)]
    s2 = side[:, 2].view(-1, 1, 1)
    image = torch.where(ellipse(0.5 + ox, 0.55 + oy, 0.42, 0.45), 0.45, 0.05)
    for j, lung in enumerate(lungs):
        dark = collapse * (s2 == j)  # pneumothorax: this lung shows no tissue
        image = torch.where(lung, 0.18 - 0.14 * dark, image)
    heart = 0.10 + 0.06 * big_heart
    image = torch.where(ellipse(0.55 + ox, 0.68 + oy, heart, heart * 0.9), 0.60, image)
    low = (lungs[0] | lungs[1]) & (ys > 0.5 + oy + 0.12)
    image = image + 0.30 * effusion * low
    px, py = lung_point(0)
    image = image + 0.35 * opacity * torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * 0.06**2))
    px, py = lung_point(1)
    image = image + 0.45 * nodule * (((xs - px) ** 2 + (ys - py) ** 2) <= 0.045**2)
    tube = ((xs - line_x).abs() <= 0.02) & (ys <= line_end)
    image = torch.where(tube & (device > 0), 0.90, image)
    image = (contrast * image + brightness).unsqueeze(1).expand(n, 3, size, size)
    image = (image + noise * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    return image.contiguous(), has
