"""Offline-first datasets, multi-task targets and seeded batching (taught in notebook 00, start here).

Files live in the data root (`COMPANION_DATA`, default `<repo>/data`), one folder per dataset laid out
like the read-only course mirror (`COMPANION_DATA_MIRROR`). `fetch` fills the data root from the mirror
or, when online, with torchvision's downloaders; `load_dataset` decodes once and caches the tensors in
`<data root>/cache/`, and reads straight from the mirror when the data root lacks a dataset.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import socket
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS = ("digits", "mnist", "fashion_mnist", "usps", "animal_mnist", "omniglot")
SPLITS = ("train", "test", "all")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
FASHION_GROUPS = ("tops", "footwear", "other")
_FASHION_COARSE = (0, 2, 0, 2, 0, 1, 0, 1, 2, 1)  # fine class -> index into FASHION_GROUPS
ANIMAL_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")

Target = Tensor | dict[str, Tensor]

_FETCH = "run `make data` or `python -m companion data fetch {name}`, or set COMPANION_DATA_MIRROR to a folder holding {name}/"
_INFO = {
    "digits": (
        "UCI optical recognition of handwritten digits, 1,797 images 8x8, bundled with scikit-learn",
        "CC BY 4.0 (UCI); shipped inside scikit-learn (BSD-3-Clause)",
        "nothing to do: it ships with scikit-learn",
    ),
    "mnist": (
        "LeCun, Cortes & Burges; the course mirror holds the official 10k test set only",
        "CC BY-SA 3.0",
        _FETCH + " (online, fetch downloads the full set with torchvision)",
    ),
    "fashion_mnist": (
        "Zalando Research (Xiao, Rasul & Vollgraf 2017), 60k train + 10k test, 28x28",
        "MIT",
        _FETCH + " (online, fetch downloads it with torchvision)",
    ),
    "usps": (
        "US Postal Service digits as distributed with The Elements of Statistical Learning, 16x16",
        "none stated; research and teaching use with citation",
        _FETCH + " (online, fetch downloads the LIBSVM copy with torchvision)",
    ),
    "animal_mnist": (
        "PyPI package animal-mnist 0.4 converted to one npz, 10 classes x 1,000 silhouettes, 28x28",
        "MIT",
        _FETCH + " (no public download: the npz comes with the course data mirror)",
    ),
    "omniglot": (
        "Lake, Salakhutdinov & Tenenbaum 2015, images_background_small1/2 (8 alphabets, 242 characters)",
        "MIT",
        _FETCH + " (online, fetch downloads the two zips with torchvision's downloader)",
    ),
}
_OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
_OMNIGLOT_ZIPS = {
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
}
_CACHE_VERSION = 1
_TEST_FRACTION = (
    0.2  # of the sets that come without an official split (digits, mnist test-only, animal_mnist)
)
_SPLIT_SEED = 0  # fixed forever: the split must not change between runs or machines
_OMNIGLOT_TRAIN_DRAWERS = 15  # drawers 1-15 of each character train, 16-20 test


# ----------------------------------------------------------------------------------------------- locations


def data_root() -> Path:
    """The data folder: $COMPANION_DATA if set, else <repo>/data (notebook 00)."""
    env = os.environ.get("COMPANION_DATA")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "data"


def _mirror(mirror: str | os.PathLike | None) -> Path | None:
    value = mirror if mirror is not None else os.environ.get("COMPANION_DATA_MIRROR")
    return Path(value).expanduser() if value else None


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_name(name: str, allowed: Sequence[str] = DATASETS) -> None:
    if name not in allowed:
        raise ValueError(f"name must be one of {list(allowed)}, got {name!r}")


def _first(folder: Path, stem: str, sub: str) -> Path | None:
    for path in (
        folder / stem,
        folder / f"{stem}.gz",
        folder / sub / "raw" / stem,
        folder / sub / "raw" / f"{stem}.gz",
    ):
        if path.is_file():
            return path
    return None


def _sources(name: str, folder: Path) -> dict[str, Path] | None:
    """The files `load_dataset` needs from one dataset folder (mirror or torchvision layout), or None."""
    if name in ("mnist", "fashion_mnist"):
        sub = "MNIST" if name == "mnist" else "FashionMNIST"
        found = {}
        for split, prefix in (("test", "t10k"), ("train", "train")):
            x = _first(folder, f"{prefix}-images-idx3-ubyte", sub)
            y = _first(folder, f"{prefix}-labels-idx1-ubyte", sub)
            if x and y:
                found[f"{split}_x"], found[f"{split}_y"] = x, y
        needed = 2 if name == "mnist" else 4
        return found if len(found) >= needed and "test_x" in found else None
    if name == "usps":
        for train, test in (("zip.train.gz", "zip.test.gz"), ("usps.bz2", "usps.t.bz2")):
            if (folder / train).is_file() and (folder / test).is_file():
                return {"train": folder / train, "test": folder / test}
        return None
    if name == "animal_mnist":
        path = folder / "animal_mnist.npz"
        return {"npz": path} if path.is_file() else None
    if name == "omniglot":
        paths = {z: folder / z for z in _OMNIGLOT_ZIPS}
        return paths if all(p.is_file() for p in paths.values()) else None
    raise ValueError(f"name must be one of {list(DATASETS[1:])}, got {name!r}")


def _locate(name: str, root: Path, mirror: Path | None) -> dict[str, Path] | None:
    for base in (root, mirror):
        if base is not None and (found := _sources(name, base / name)):
            return found
    return None


def available_datasets(
    root: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None
) -> dict:
    """Which datasets can be loaded now, with source, licence and how to get them (notebook 00).

    Each value is {"present", "source", "licence", "how", "where"}; "where" is the folder read from.
    """
    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    out = {}
    for name in DATASETS:
        source, licence, how = _INFO[name]
        if name == "digits":
            where = "scikit-learn"
        else:
            found = _locate(name, base, mir)
            where = str(next(iter(found.values())).parent) if found else ""
        out[name] = {
            "present": bool(where),
            "source": source,
            "licence": licence,
            "how": how.format(name=name),
            "where": where,
        }
    return out


# --------------------------------------------------------------------------------------------------- fetch


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, keep_previous: bool = False) -> Path:
    """Write a file via a temp file in its folder and os.replace, so no half file is ever visible (notebook 00).

    With `keep_previous`, an existing file is kept as `<name>.prev` (checkpoints use it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        if keep_previous and path.exists():  # hard-link, so `path` itself never goes missing
            prev = path.with_name(path.name + ".prev")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(prev)
            os.link(path, prev)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as inp:
        atomic_write(dst, lambda out: shutil.copyfileobj(inp, out, 1 << 20))


def _sync(src: Path, dst: Path) -> int:
    """Copy every file of src (recursively) that dst lacks or holds with another size; return the count."""
    copied = 0
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_file() and not (target.is_file() and target.stat().st_size == path.stat().st_size):
            _copy_atomic(path, target)
            copied += 1
    return copied


def _download(name: str, folder: Path) -> None:
    """Download with torchvision into a temp folder beside `folder`, then move each file in with os.replace."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_url

    folder.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{name}-download-", dir=folder.parent) as tmp:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if name == "omniglot":
                    for zname, md5 in _OMNIGLOT_ZIPS.items():
                        download_url(f"{_OMNIGLOT_URL}/{zname}", tmp, filename=zname, md5=md5)
                else:
                    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "usps": tvd.USPS}[name]
                    for train in (True, False):
                        cls(tmp, train=train, download=True)
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    target = folder / path.relative_to(tmp)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
    finally:
        socket.setdefaulttimeout(old)


def fetch(
    names: str | Sequence[str] | None = None,
    *,
    root: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, str]:
    """Fill the data root from the mirror, else torchvision downloads; print and return a status per dataset (notebook 00).

    Statuses: "bundled", "present", "copied N files", "downloaded", "missing", "failed: <reason>".
    Safe to rerun and to interrupt: files appear only once complete, and the mirror is only read.
    """
    todo = list(DATASETS) if names is None else [names] if isinstance(names, str) else list(names)
    for name in todo:
        _check_name(name)
    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    status: dict[str, str] = {}
    for name in todo:
        if name == "digits":
            status[name] = "bundled"
            continue
        folder = base / name
        if mir is not None and _inside(folder, mir):
            status[name] = "present" if _sources(name, folder) else "missing"
        elif mir is not None and (mir / name).is_dir():
            copied = _sync(mir / name, folder)
            status[name] = f"copied {copied} files" if copied else "present"
        elif _sources(name, folder):
            status[name] = "present"
        elif download and name != "animal_mnist":  # animal_mnist has no public download
            try:
                _download(name, folder)
                status[name] = "downloaded" if _sources(name, folder) else "failed: download incomplete"
            except Exception as err:  # offline, blocked or moved: report and carry on
                reason = " ".join(f"{type(e).__name__}: {e}" for e in (err, err.__cause__) if e is not None)
                status[name] = "failed: " + " ".join(reason.split())[:150]
        else:
            status[name] = "missing"
    for name, state in status.items():
        print(f"{name:<14} {state}")
        if state == "missing" or state.startswith("failed"):
            print(f"{'':<14} to get it: {_INFO[name][2].format(name=name)}")
    return status


# ------------------------------------------------------------------------------------------------- readers


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST format, optionally gzipped) into a uint8 array."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"path must be an idx file of unsigned bytes, got magic {magic:#x} in {path}")
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
    with np.load(files["npz"], allow_pickle=False) as d:
        x, y = d["x"], d["y"]
    return _parts(x, y, round(_TEST_FRACTION * len(y)))


def _omniglot_index(files: dict[str, Path]) -> list[tuple[str, str, str, int, Path]]:
    """(alphabet, character, member, drawer, zip) per distinct image, sorted; Greek and Latin are in both zips."""
    seen: dict[tuple[str, str, str], tuple[str, Path]] = {}
    for zpath in files.values():
        with zipfile.ZipFile(zpath) as z:
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
    zips = {p: zipfile.ZipFile(p) for p in files.values()}
    try:
        for i, (*_, member, _drawer, zpath) in enumerate(meta["index"]):
            with Image.open(io.BytesIO(zips[zpath].read(member))) as img:
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


def _cached(path: Path, files: dict[str, Path], build: Callable[[], dict], writable: bool) -> dict:
    """Decoded tensors from the .pt cache when its stamp (file names and sizes) matches, else build and store."""
    stamp = [[k, p.name, p.stat().st_size] for k, p in sorted(files.items())]
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            if blob.get("version") == _CACHE_VERSION and blob.get("stamp") == stamp:
                return blob
        except Exception:  # a stale or foreign cache file is rebuilt, never trusted
            pass
    blob = {**build(), "version": _CACHE_VERSION, "stamp": stamp}
    if writable:
        with contextlib.suppress(OSError):  # a read-only data root only costs the cache
            _save_atomic(blob, path)
    return blob


def _load_blob(
    name: str, root: str | os.PathLike | None, mirror: str | os.PathLike | None, size: int
) -> dict:
    if name == "digits":
        return _read_digits()
    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    files = _locate(name, base, mir)
    if files is None:
        raise FileNotFoundError(
            f"dataset '{name}' is not in {base / name}"
            + (f" nor in the mirror {mir / name}" if mir else "")
            + "; to get it, "
            + _INFO[name][2].format(name=name)
        )
    if name == "omniglot":
        variant, build = f"omniglot-{size}", lambda: _read_omniglot(files, size)
    elif name == "usps":
        variant, build = "usps", lambda: _read_usps(files)
    elif name == "animal_mnist":
        variant, build = "animal_mnist", lambda: _read_animal(files)
    else:
        variant = name if "train_x" in files else f"{name}-test10k"
        build = lambda: _read_idx_set(files)  # noqa: E731
    return _cached(base / "cache" / f"{variant}.pt", files, build, writable=not _inside(base, mir))


def _take(blob: dict, key: str, split: str) -> Tensor:
    if split == "all":
        return torch.cat([blob[f"train_{key}"], blob[f"test_{key}"]])
    return blob[f"{split}_{key}"]


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")


def resize(images: Tensor, size: int) -> Tensor:
    """Resize N×C×H×W images to size×size with antialiased bilinear interpolation, kept in [0, 1] (notebook 07)."""
    _check_size(size)
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
    """Images (float32 N×1×H×W in [0, 1]) and int64 labels of one split of a dataset (notebook 00).

    `size` resizes to size×size (Omniglot is decoded at 28 unless given). Splits without an official
    one are fixed forever: digits and animal_mnist 80/20 stratified, mnist's 10k test set 8k/2k, Omniglot
    drawers 1-15 / 16-20 of every character. `split="all"` is train then test.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    _check_size(size)
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
    """Alphabet id per Omniglot image, aligned with load_dataset("omniglot", split), and the names (notebook 08)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    files = _locate("omniglot", base, mir)
    if files is None:
        _load_blob("omniglot", root, mirror, 28)  # raises the FileNotFoundError with instructions
    meta = _omniglot_meta(files)
    t, a = meta["train"], meta["alphabet"]
    ids = {"train": a[t], "test": a[~t], "all": torch.cat([a[t], a[~t]])}[split]
    return ids, meta["alphabets"]


# --------------------------------------------------------------------------------------- multi-task data


def multi_digits(
    images: Tensor, labels: Tensor, n: int, *, seed: int, size: int = 36
) -> tuple[Tensor, dict[str, Tensor]]:
    """MultiMNIST (Sabour et al. 2017, in the multi-task form of Sener & Koltun 2018): two 28×28 digits, top-left
    and bottom-right, pixel-wise max (notebook 03).

    Any digit source works: images are resized to 28×28 first. The two digits of one image are always
    distinct source images. Returns images n×1×size×size and {"left": labels, "right": labels}.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be N×1×H×W, got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"images must hold at least 2 digits, got {images.shape[0]}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
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
    """Fine Fashion-MNIST labels plus 3 coarse groups: tops, footwear, other (notebook 08).

    tops = T-shirt/top, Pullover, Coat, Shirt; footwear = Sandal, Sneaker, Ankle boot;
    other = Trouser, Dress, Bag. Returns {"fine": labels, "coarse": group ids into FASHION_GROUPS}.
    """
    labels = torch.as_tensor(labels)
    if labels.numel() and (labels.min() < 0 or labels.max() > 9 or labels.is_floating_point()):
        raise ValueError("labels must be integer Fashion-MNIST classes in 0..9")
    table = torch.tensor(_FASHION_COARSE, dtype=torch.int64, device=labels.device)
    return {"fine": labels.long(), "coarse": table[labels.long()]}


# ---------------------------------------------------------------------------------------------- batching


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit torch seed that is a pure function of (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _length(x: Tensor, y: Target) -> int:
    n = x.shape[0]
    ys = y.values() if isinstance(y, Mapping) else [y]
    for t in ys:
        if t.shape[0] != n:
            raise ValueError(f"y must have one label per row of x ({n}), got {t.shape[0]}")
    return n


def _index(y: Target, idx: Tensor) -> Target:
    if isinstance(y, Mapping):
        return {k: v[idx.to(v.device)] for k, v in y.items()}
    return y[idx.to(y.device)]


class TensorBatches:
    """Mini-batches of in-memory tensors, moved to the device once, seeded per epoch (notebook 00).

    The order of epoch e is a pure function of (seed, e): call `set_epoch(e)` before iterating to pick it
    (resuming mid-epoch = set_epoch, then skip the first k batches). Without set_epoch, each new pass
    moves on to the next epoch, like a shuffling DataLoader.
    """

    def __init__(
        self,
        x: Tensor,
        y: Target,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
        drop_last: bool = False,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.n = _length(x, y)
        if drop_last and self.n < batch_size:
            raise ValueError(
                f"batch_size must be <= the number of samples ({self.n}) with drop_last, got {batch_size}"
            )
        dev = torch.device(device) if device is not None else x.device
        self.x = x.to(dev)
        self.y = {k: v.to(dev) for k, v in y.items()} if isinstance(y, Mapping) else y.to(dev)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> Tensor:
        """The sample order of an epoch (a permutation when shuffling, else 0..N-1)."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Target]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = self.order(epoch).to(self.x.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[idx], _index(self.y, idx)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices 0..N-1, shuffled as a pure function of (seed, epoch) (notebook 00)."""

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


def _seed_worker(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32  # base seed of this pass + worker id, set by the DataLoader
    random.seed(seed)
    np.random.seed(seed)


class EpochLoader(torch.utils.data.DataLoader):
    """A DataLoader whose order and worker seeds are a pure function of (seed, epoch) (notebook 00)."""

    def __init__(self, dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int):
        self._seed, self.epoch = seed, 0
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=seed),
            num_workers=num_workers,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses."""
        self.epoch = int(epoch)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(_mix(self._seed, epoch) ^ 1)  # worker base seeds for this epoch
        return super().__iter__()


def loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
) -> EpochLoader:
    """A DataLoader for data too large for TensorBatches, with the same set_epoch semantics (notebook 00)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    return EpochLoader(dataset, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers)


def split(
    x: Tensor, y: Target, sizes_or_fractions: Sequence[int] | Sequence[float], *, seed: int
) -> list[tuple[Tensor, Target]]:
    """Random disjoint parts of (x, y), by sizes or by fractions of N (notebook 02).

    Fractions summing to 1 share out the leftover rows one by one from the first part, so every row is used.
    """
    n, parts = _length(x, y), list(sizes_or_fractions)
    if not parts:
        raise ValueError("sizes_or_fractions must be a non-empty list of sizes or of fractions")
    if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        if min(parts) < 0 or sum(parts) > n:
            raise ValueError(f"sizes_or_fractions must be sizes >= 0 summing to at most {n}, got {parts}")
        sizes = parts
    elif all(isinstance(p, float) for p in parts):
        if min(parts) < 0 or sum(parts) > 1 + 1e-6:
            raise ValueError(f"sizes_or_fractions must be fractions >= 0 summing to at most 1, got {parts}")
        sizes = [int(p * n) for p in parts]
        if abs(sum(parts) - 1) <= 1e-6:
            for i in range(n - sum(sizes)):
                sizes[i % len(sizes)] += 1
    else:
        raise ValueError(f"sizes_or_fractions must be all ints or all floats, got {parts}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for s in sizes:
        idx = perm[start : start + s].to(x.device)
        out.append((x[idx], _index(y, idx)))
        start += s
    return out


def subsample_per_class(
    x: Tensor, y: Target, per_class: int, *, seed: int, key: str | None = None
) -> tuple[Tensor, Target]:
    """Keep `per_class` random samples of every class, in their original order (notebook 05).

    With dict targets, `key` names the labels that define the classes.
    """
    _length(x, y)
    if isinstance(y, Mapping):
        if key not in y:
            raise ValueError(f"key must name one of the label tensors {sorted(y)}, got {key!r}")
        labels = y[key]
    else:
        labels = y
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    labels = labels.cpu()
    classes, counts = labels.unique(return_counts=True)
    if counts.min() < per_class:
        short = [int(c) for c, k in zip(classes, counts) if k < per_class]
        raise ValueError(
            f"per_class must be <= the smallest class size ({int(counts.min())}); classes {short} are short"
        )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    keep = torch.cat([perm[labels[perm] == c][:per_class] for c in classes]).sort().values.to(x.device)
    return x[keep], _index(y, keep)
