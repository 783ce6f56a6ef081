"""Datasets as tensors: the readers, the tensor cache, `load_dataset`, `resize`, the multi-task targets and
the text set `load_texts`.

`load_dataset` decodes a dataset's files once and caches the tensors in `<data root>/cache/`, reading straight
from the read-only mirror when the data root lacks the dataset. Where the files live and how they are
fetched and checked is `companion.store`; seeded mini-batches, `split` and `subsample_per_class` are
`companion.batches` (`split` is also reachable here as `data.split`).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import batches as _batches
from . import checks
from .files import atomic_write
from .store import (
    _INFO,
    DATASETS,
    TEXT_DATASETS,
    _dataset_of,
    _inside,
    _locate,
    _mirror,
    _reading,
    _verified,
    data_root,
)

SPLITS = ("train", "test", "all")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
FASHION_GROUPS = ("tops", "footwear", "other")
_FASHION_COARSE = (0, 2, 0, 2, 0, 1, 0, 1, 2, 1)  # fine class -> index into FASHION_GROUPS
TEXT_CATEGORIES = ("fresh", "rotten", "plot")  # rotten_tomatoes' category column
TEXT_TASKS = ("polarity", "subjectivity")
ANIMAL_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")

_CACHE_VERSION = 2  # 2: the stamp holds each source file's size, mtime and sha256
_TEST_FRACTION = (
    0.2  # of the sets that come without an official split (digits, mnist test-only, animal_mnist)
)
_SPLIT_SEED = 0  # fixed forever: the split must not change between runs or machines
_OMNIGLOT_TRAIN_DRAWERS = 15  # drawers 1-15 of each character train, 16-20 test


# ------------------------------------------------------------------------------------------------- readers


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST format, optionally gzipped) into a uint8 array (DamagedFileError if it is not one)."""
    with _reading(path):
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
        magic = int.from_bytes(raw[:4], "big")
        if magic >> 8 != 0x08:
            raise ValueError(f"not an idx file of unsigned bytes: magic {magic:#x}")
        ndim = magic & 0xFF
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _fixed_split(labels: np.ndarray, n_test: int, seed: int = _SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) indices, shuffled, with exactly n_test test items; a pure function of its inputs."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n_test / len(labels)
    quota = np.floor(share).astype(int)
    extra = np.argsort(-(share - quota), kind="stable")[: n_test - quota.sum()]
    quota[extra] += 1
    test = np.zeros(len(labels), bool)
    for c, q in zip(classes, quota):
        test[perm[labels[perm] == c][:q]] = True
    return perm[~test[perm]], perm[test[perm]]


def _parts(x: np.ndarray, y: np.ndarray, n_test: int) -> dict[str, Tensor]:
    train, test = _fixed_split(y, n_test)
    return {
        "train_x": torch.from_numpy(x[train]),
        "train_y": torch.from_numpy(y[train].astype(np.int64)),
        "test_x": torch.from_numpy(x[test]),
        "test_y": torch.from_numpy(y[test].astype(np.int64)),
    }


def _read_digits() -> dict[str, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)
    return _parts(x, y, round(_TEST_FRACTION * len(y)))


def _read_idx_set(files: dict[str, Path]) -> dict[str, Tensor]:
    if "train_x" not in files:  # MNIST test set only: a fixed 8k/2k split of it
        x, y = _read_idx(files["test_x"]), _read_idx(files["test_y"])
        return _parts(x, y, round(_TEST_FRACTION * len(y)))
    out = {}
    for key, path in files.items():
        arr = _read_idx(path)
        out[key] = torch.from_numpy(arr if key.endswith("_x") else arr.astype(np.int64))
    return out


def _read_usps(files: dict[str, Path]) -> dict[str, Tensor]:
    out = {}
    for split, path in files.items():
        with _reading(path):
            if path.suffix == ".gz":  # ESL text: label then 256 values in [-1, 1] per line
                with gzip.open(path, "rb") as f:
                    table = np.array(f.read().split(), dtype=np.float32).reshape(-1, 257)
                x = ((table[:, 1:] + 1) / 2).clip(0, 1).reshape(-1, 16, 16)
                y = table[:, 0].astype(np.int64)
            else:  # torchvision's LIBSVM copy
                import torchvision.datasets as tvd

                ds = tvd.USPS(str(path.parent), train=split == "train", download=False)
                x, y = ds.data, np.asarray(ds.targets, dtype=np.int64)
        out[f"{split}_x"], out[f"{split}_y"] = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    return out


def _read_animal(files: dict[str, Path]) -> dict[str, Tensor]:
    with _reading(files["npz"]), np.load(files["npz"], allow_pickle=False) as d:
        x, y = d["x"], d["y"]
    return _parts(x, y, round(_TEST_FRACTION * len(y)))


def _omniglot_index(files: dict[str, Path]) -> list[tuple[str, str, str, int, Path]]:
    """(alphabet, character, member, drawer, zip) per distinct image, sorted; Greek and Latin are in both zips."""
    seen: dict[tuple[str, str, str], tuple[str, Path]] = {}
    for zpath in files.values():
        with _reading(zpath), zipfile.ZipFile(zpath) as z:
            for member in z.namelist():
                parts = member.split("/")
                if member.endswith(".png") and len(parts) == 4:
                    seen.setdefault((parts[1], parts[2], parts[3]), (member, zpath))
    return [(a, c, m, int(f[:-4].split("_")[-1]), z) for (a, c, f), (m, z) in sorted(seen.items())]


def _omniglot_meta(files: dict[str, Path]) -> dict[str, Tensor | list[str]]:
    index = _omniglot_index(files)
    alphabets = sorted({a for a, *_ in index})
    chars = sorted({(a, c) for a, c, *_ in index})
    char_id, alpha_id = {k: i for i, k in enumerate(chars)}, {a: i for i, a in enumerate(alphabets)}
    y = torch.tensor([char_id[(a, c)] for a, c, *_ in index], dtype=torch.int64)
    alpha = torch.tensor([alpha_id[a] for a, *_ in index], dtype=torch.int64)
    train = torch.tensor([d <= _OMNIGLOT_TRAIN_DRAWERS for *_, d, _ in index])
    return {"index": index, "alphabets": alphabets, "y": y, "alphabet": alpha, "train": train}


def _read_omniglot(files: dict[str, Path], size: int) -> dict[str, Tensor | list[str]]:
    from PIL import Image

    meta = _omniglot_meta(files)
    images = np.empty((len(meta["index"]), 105, 105), np.uint8)
    zips = {}
    for p in files.values():
        with _reading(p):
            zips[p] = zipfile.ZipFile(p)
    try:
        for i, (*_, member, _drawer, zpath) in enumerate(meta["index"]):
            with _reading(zpath), Image.open(io.BytesIO(zips[zpath].read(member))) as img:
                images[i] = ~np.asarray(img.convert("1"), dtype=bool)  # strokes 1, background 0
    finally:
        for z in zips.values():
            z.close()
    x = torch.from_numpy(images).float()
    if size != 105:
        x = F.interpolate(
            x[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[:, 0]
    x = (x * 255).round().clamp(0, 255).to(torch.uint8)
    t = meta["train"]
    return {
        "train_x": x[t],
        "train_y": meta["y"][t],
        "test_x": x[~t],
        "test_y": meta["y"][~t],
        "train_alphabet": meta["alphabet"][t],
        "test_alphabet": meta["alphabet"][~t],
        "alphabets": meta["alphabets"],
    }


# ----------------------------------------------------------------------------------------- cache and load


def _save_atomic(obj: object, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _cached(
    path: Path,
    files: dict[str, Path],
    build: Callable[[], dict],
    writable: bool,
    name: str = "",
    mirror: Path | None = None,
) -> dict:
    """Decoded tensors from the .pt cache, else build and store them.

    The stamp records each source file's name, size, mtime and sha256. While size and mtime are unchanged
    the cache is used as is (no hashing on every load); when they change the files are hashed again: a known
    file with the wrong sha256 raises DamagedFileError, and a cache built from other bytes is rebuilt.
    """
    stat = {k: p.stat() for k, p in files.items()}
    quick = [[k, p.name, stat[k].st_size, stat[k].st_mtime_ns] for k, p in sorted(files.items())]
    blob = None
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            if not isinstance(blob, dict) or blob.get("version") != _CACHE_VERSION:
                blob = None
        except Exception:  # a stale or foreign cache file is rebuilt, never trusted
            blob = None
    if blob is not None and [row[:4] for row in blob.get("stamp", [])] == quick:
        return blob
    digests = {k: _verified(name or _dataset_of(p), p, mirror) for k, p in files.items()}
    stamp = [[*row, digests[row[0]]] for row in quick]
    if blob is not None and [row[:3] + row[4:] for row in blob.get("stamp", [])] == [
        row[:3] + row[4:] for row in stamp
    ]:  # same bytes, touched (e.g. copied again): keep the tensors, renew the stamp
        blob["stamp"] = stamp
    else:
        blob = {**build(), "version": _CACHE_VERSION, "stamp": stamp}
    if writable:
        with contextlib.suppress(OSError):  # a read-only data root only costs the cache
            _save_atomic(blob, path)
    return blob


def _missing(name: str, base: Path, mir: Path | None) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset '{name}' is not in {base / name}"
        + (f" nor in the mirror {mir / name}" if mir else "")
        + "; to get it, "
        + _INFO[name][2].format(name=name)
    )


def _load_blob(
    name: str, root: str | os.PathLike | None, mirror: str | os.PathLike | None, size: int
) -> dict:
    if name == "digits":
        return _read_digits()
    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    files = _locate(name, base, mir)
    if files is None:
        raise _missing(name, base, mir)
    if name == "omniglot":
        variant, build = f"omniglot-{size}", lambda: _read_omniglot(files, size)
    elif name == "usps":
        variant, build = "usps", lambda: _read_usps(files)
    elif name == "animal_mnist":
        variant, build = "animal_mnist", lambda: _read_animal(files)
    else:
        variant = name if "train_x" in files else f"{name}-test10k"
        build = lambda: _read_idx_set(files)  # noqa: E731
    return _cached(base / "cache" / f"{variant}.pt", files, build, not _inside(base, mir), name, mir)


def _take(blob: dict, key: str, split: str) -> Tensor:
    if split == "all":
        return torch.cat([blob[f"train_{key}"], blob[f"test_{key}"]])
    return blob[f"{split}_{key}"]


def resize(images: Tensor, size: int) -> Tensor:
    """Resize N×C×H×W images to size×size with antialiased bilinear interpolation, kept in [0, 1]."""
    checks.integer("size", size)
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp_(0, 1)


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    size: int | None = None,
    mirror: str | os.PathLike | None = None,
) -> tuple[Tensor, Tensor]:
    """Images (float32 N×1×H×W in [0, 1]) and int64 labels of one split of a dataset.

    `size` resizes to size×size (Omniglot is decoded at 28 unless given). Splits without an official
    one are fixed forever: digits and animal_mnist 80/20 stratified, mnist's 10k test set 8k/2k, Omniglot
    drawers 1-15 / 16-20 of every character. `split="all"` is train then test.
    """
    checks.choice("name", name, DATASETS)
    if name in TEXT_DATASETS:
        checks.fail("name", f"an image dataset ({name} holds texts: load it with load_texts({name!r}))", name)
    checks.choice("split", split, SPLITS)
    if size is not None:
        checks.integer("size", size)
    native = name == "omniglot"
    blob = _load_blob(name, root, mirror, (size or 28) if native else 0)
    x, y = _take(blob, "x", split), _take(blob, "y", split)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    x = x.unsqueeze(1).contiguous()
    if size is not None and not native:
        x = resize(x, size)
    return x, y.long()


def omniglot_alphabets(
    split: str = "train", root: str | os.PathLike | None = None, *, mirror: str | os.PathLike | None = None
) -> tuple[Tensor, list[str]]:
    """Alphabet id per Omniglot image, aligned with load_dataset("omniglot", split), and the names."""
    checks.choice("split", split, SPLITS)
    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    files = _locate("omniglot", base, mir)
    if files is None:
        _load_blob("omniglot", root, mirror, 28)  # raises the FileNotFoundError with instructions
    meta = _omniglot_meta(files)
    t, a = meta["train"], meta["alphabet"]
    ids = {"train": a[t], "test": a[~t], "all": torch.cat([a[t], a[~t]])}[split]
    return ids, meta["alphabets"]


# ------------------------------------------------------------------------------------------------- texts


def _read_texts(path: Path) -> tuple[list[str], np.ndarray]:
    """Texts and category ids (into TEXT_CATEGORIES) in file order, read with the csv module (the texts hold
    commas, quotes and newlines); a DamagedFileError if the file is not that CSV."""
    import bz2
    import csv

    with _reading(path):
        try:
            with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        except csv.Error as err:
            raise ValueError(f"not a CSV file: {err}") from err
        ids = {c: i for i, c in enumerate(TEXT_CATEGORIES)}
        bad = [r for r in rows if r.get("category") not in ids or not isinstance(r.get("text"), str)]
        if not rows or bad:
            raise ValueError(f"{len(bad)} of {len(rows)} rows lack a known category or a text")
        return [r["text"] for r in rows], np.array([ids[r["category"]] for r in rows], np.int64)


def truncate_words(texts: list[str], words: int) -> list[str]:
    """Each text cut to its first `words` whitespace-separated words, joined by single spaces (our own two
    lines: a tokenizer would cut sub-word pieces, and the length control is about words)."""
    checks.integer("words", words)
    return [" ".join(t.split()[:words]) for t in texts]


def load_texts(
    name: str = "rotten_tomatoes",
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    task: str | None = None,
    words: int | None = None,
    mirror: str | os.PathLike | None = None,
) -> tuple[list[str], dict[str, Tensor]]:
    """Texts of one split of a text dataset and both label sets, {"polarity", "subjectivity"} (int64).

    rotten_tomatoes: polarity is 1 for a fresh review, 0 for a rotten one and -1 for a plot summary (no
    polarity); subjectivity is 1 for a review (subjective) and 0 for a plot summary (objective).
    `task="polarity"` keeps the reviews only; `task="subjectivity"` (like None) keeps every text. The split is
    fixed forever: scikit-learn's `train_test_split`, 80/20, stratified on fresh/rotten/plot, seed 0, in the
    order it returns (11,124 train and 2,781 test texts); `split="all"` is train then test.

    Plot summaries are much longer than review snippets (median 85 words against 18), so length alone nearly
    tells them apart: `words=N` cuts every text to its first N words (`truncate_words`) to control for it;
    reviews shorter than N words stay as they are. The file's sha256 is checked on every load (it is small).
    """
    checks.choice("name", name, TEXT_DATASETS)
    checks.choice("split", split, SPLITS)
    if task is not None:
        checks.choice("task", task, TEXT_TASKS)
    if words is not None:
        checks.integer("words", words)
    from sklearn.model_selection import train_test_split

    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    files = _locate(name, base, mir)
    if files is None:
        raise _missing(name, base, mir)
    path = files["csv"]
    _verified(name, path, mir)
    texts, category = _read_texts(path)
    train, test = train_test_split(
        np.arange(len(texts)), test_size=_TEST_FRACTION, stratify=category, random_state=_SPLIT_SEED
    )
    order = {"train": train, "test": test, "all": np.concatenate([train, test])}[split]
    if task == "polarity":
        order = order[category[order] != TEXT_CATEGORIES.index("plot")]
    cat = torch.from_numpy(category[order])
    out = [texts[i] for i in order]
    labels = {
        "polarity": torch.where(cat == 0, 1, torch.where(cat == 1, 0, -1)),
        "subjectivity": (cat != TEXT_CATEGORIES.index("plot")).long(),
    }
    return (truncate_words(out, words) if words is not None else out), labels


# --------------------------------------------------------------------------------------- multi-task data


def multi_digits(
    images: Tensor, labels: Tensor, n: int, *, seed: int, size: int = 36
) -> tuple[Tensor, dict[str, Tensor]]:
    """MultiMNIST (Sabour et al. 2017, in the multi-task form of Sener & Koltun 2018): two 28×28 digits, top-left
    and bottom-right, pixel-wise max.

    Any digit source works: images are resized to 28×28 first. The two digits of one image are always
    distinct source images. Returns images n×1×size×size and {"left": labels, "right": labels}.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be N×1×H×W, got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"images must hold at least 2 digits, got {images.shape[0]}")
    checks.integer("n", n)
    if not isinstance(size, int) or size < 28:
        raise ValueError(f"size must be an integer >= 28 (the digits are 28×28), got {size!r}")
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(images.shape[0], (n,), generator=g)
    second = (first + 1 + torch.randint(images.shape[0] - 1, (n,), generator=g)) % images.shape[0]
    digits = resize(images, 28)
    pad = size - 28
    left = F.pad(digits[first.to(digits.device)], (0, pad, 0, pad))
    right = F.pad(digits[second.to(digits.device)], (pad, 0, pad, 0))
    first, second = first.to(labels.device), second.to(labels.device)
    return torch.maximum(left, right), {"left": labels[first].long(), "right": labels[second].long()}


def fashion_groups(labels: Tensor) -> dict[str, Tensor]:
    """Fine Fashion-MNIST labels plus 3 coarse groups: tops, footwear, other.

    tops = T-shirt/top, Pullover, Coat, Shirt; footwear = Sandal, Sneaker, Ankle boot;
    other = Trouser, Dress, Bag. Returns {"fine": labels, "coarse": group ids into FASHION_GROUPS}.
    """
    labels = torch.as_tensor(labels)
    if labels.numel() and (labels.min() < 0 or labels.max() > 9 or labels.is_floating_point()):
        raise ValueError("labels must be integer Fashion-MNIST classes in 0..9")
    table = torch.tensor(_FASHION_COARSE, dtype=torch.int64, device=labels.device)
    return {"fine": labels.long(), "coarse": table[labels.long()]}


split = _batches.split  # importable from here too; assigned, not imported: `split` is also a parameter here
