"""Offline-first datasets, multi-task targets and seeded batching (taught in notebook 00, start here).

Files live in the data root (`COMPANION_DATA`, default `<repo>/data`), one folder per dataset laid out
like the read-only course mirror (`COMPANION_DATA_MIRROR`). `fetch` fills the data root from the mirror
or, when online, with torchvision's downloaders; `load_dataset` decodes once and caches the tensors in
`<data root>/cache/`, and reads straight from the mirror when the data root lacks a dataset.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import io
import os
import shutil
import socket
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .files import atomic_write

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
# Every data file the course knows, as the mirror lays it out: (dataset, file) -> (bytes, sha256), copied from
# the mirror's READMEs. fetch, `data list` and the cache check files against it; files not listed here (a
# torchvision download's own layout) are not checked.
CHECKSUMS: dict[tuple[str, str], tuple[int, str]] = {
    ("mnist", "t10k-images-idx3-ubyte.gz"): (1648877, "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b"),
    ("mnist", "t10k-labels-idx1-ubyte.gz"): (4542, "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c"),
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): (4383619, "78cb45a589ec14266eab4ac0cb2e9e10a4c076ae2d337fe86383d761bff83f32"),
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ("fashion_mnist", "train-images-idx3-ubyte.gz"): (26192508, "a26751d72d89606ffbfdd4dd5d16911f01e93a7ff4783c95da7307a073d79fa7"),
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"): (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    ("usps", "zip.train.gz"): (1829071, "66ebf231ab51f2cf6ac1a892d0f98ccffee1079d7a5db638c1f11f366046ca16"),
    ("usps", "zip.test.gz"): (439208, "8dacc3c6e136af6c3488de9e5113a7daf140c8c2f1f0b61c54ee02f03f1a962f"),
    ("usps", "zip.info.txt"): (1174, "927ca750c4117b61a71def180d5e4f00f1323a4b2c9cd990f576aa8def3505f1"),
    ("animal_mnist", "animal_mnist.npz"): (2670395, "d0d955d308642ab7163af31c96fa06c8ddde700753531430ca43c4d9ab66c0d3"),
    ("omniglot", "images_background_small1.zip"): (1319022, "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
    ("omniglot", "images_background_small2.zip"): (1580917, "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
    ("omniglot", "all_runs.zip"): (352787, "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"),
}  # fmt: skip
_CACHE_VERSION = 2  # 2: the stamp holds each source file's size, mtime and sha256
_TEST_FRACTION = (
    0.2  # of the sets that come without an official split (digits, mnist test-only, animal_mnist)
)
_SPLIT_SEED = 0  # fixed forever: the split must not change between runs or machines
_OMNIGLOT_TRAIN_DRAWERS = 15  # drawers 1-15 of each character train, 16-20 test


class DamagedFileError(ValueError):
    """A data file that cannot be trusted or decoded; the message names it and the command that repairs it."""


# ----------------------------------------------------------------------------------------------- locations


def data_root() -> Path:
    """The data folder: $COMPANION_DATA if set, else <repo>/data in a checkout of the course, else a per-user
    folder such as ~/.local/share/companion/data (an installed package; see `params.user_folder`) (notebook 00).
    """
    from .params import REPO, in_checkout, user_folder

    env = os.environ.get("COMPANION_DATA")
    if env:
        return Path(env).expanduser()
    return REPO / "data" if in_checkout() else user_folder() / "data"


# ------------------------------------------------------------------------------------------------ integrity


def sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks (notebook 00)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _known(path: Path) -> tuple[str, tuple[int, str]] | None:
    """(dataset, (bytes, sha256)) when `path` is a file of the mirror layout the course has a checksum for."""
    key = (path.parent.name, path.name)
    return (key[0], CHECKSUMS[key]) if key in CHECKSUMS else None


def file_ok(path: str | os.PathLike) -> bool | None:
    """True when a known data file has its recorded size and sha256, False when it differs (damaged), None when
    the course has no checksum for it (notebook 00)."""
    path = Path(path)
    known = _known(path)
    if known is None:
        return None
    size, digest = known[1]
    return path.stat().st_size == size and sha256(path) == digest


def _repair_hint(name: str, path: Path, mirror: Path | None) -> str:
    if _inside(path, mirror):
        return (
            f"it is in the read-only mirror, so replace it there or unset COMPANION_DATA_MIRROR and run "
            f"`python -m companion data fetch {name}` online"
        )
    return f"repair it with `python -m companion data fetch {name}`"


def _damaged(path: Path, name: str, why: str, mirror: Path | None = None) -> DamagedFileError:
    why = " ".join(why.split())[:160]
    return DamagedFileError(f"data file {path} is damaged ({why}); {_repair_hint(name, path, mirror)}")


def _dataset_of(path: Path) -> str:
    for folder in path.parents:
        if folder.name in DATASETS:
            return folder.name
    return path.parent.name


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn any decoding failure of `path` into a DamagedFileError naming the file and the repair command."""
    try:
        yield
    except DamagedFileError:
        raise
    except (EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, struct.error) as err:
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise _damaged(path, _dataset_of(path), f"{type(err).__name__}: {err}", _mirror(None)) from err


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

    Each value is {"present", "state", "damaged", "source", "licence", "how", "where"}; "where" is the folder
    read from, "state" is "present", "missing" or "corrupt" (some file fails its sha256 check) and "damaged"
    lists those files.
    """
    base, mir = Path(root) if root else data_root(), _mirror(mirror)
    out = {}
    for name in DATASETS:
        source, licence, how = _INFO[name]
        damaged: list[str] = []
        if name == "digits":
            where = "scikit-learn"
        else:
            found = _locate(name, base, mir)
            where = str(next(iter(found.values())).parent) if found else ""
            if found:
                folder = Path(where)
                damaged = [str(folder / f) for d, f in CHECKSUMS if d == name and (folder / f).is_file()
                           and file_ok(folder / f) is False]
        out[name] = {
            "present": bool(where),
            "state": "corrupt" if damaged else "present" if where else "missing",
            "damaged": damaged,
            "source": source,
            "licence": licence,
            "how": how.format(name=name),
            "where": where,
        }
    return out


# --------------------------------------------------------------------------------------------------- fetch


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy src to dst atomically; when the course knows dst's checksum, the copied bytes must match it."""
    known = _known(dst)
    digest = hashlib.sha256()

    class Hashing:  # a writer that hashes what passes through it
        def __init__(self, out: BinaryIO):
            self.out = out

        def write(self, block: bytes) -> int:
            digest.update(block)
            return self.out.write(block)

    def write(out: BinaryIO) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, Hashing(out), 1 << 20)
        if known is not None and digest.hexdigest() != known[1][1]:  # raising here keeps dst as it was
            raise _damaged(src, known[0], "its sha256 differs from the one the course records", src.parent.parent)

    atomic_write(dst, write)


def _sync(src: Path, dst: Path) -> tuple[int, int]:
    """Copy every file of src (recursively) that dst lacks, holds with another size or holds damaged (a
    checksum mismatch); return (files copied, of which damaged copies replaced)."""
    copied = repaired = 0
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if not path.is_file():
            continue
        same_size = target.is_file() and target.stat().st_size == path.stat().st_size
        damaged = same_size and file_ok(target) is False
        if not same_size or damaged:
            _copy_atomic(path, target)
            copied, repaired = copied + 1, repaired + damaged
    return copied, repaired


def damaged_files(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The files of one dataset folder whose sha256 differs from the course's record (notebook 00)."""
    _check_name(name)
    folder = (Path(root) if root else data_root()) / name
    known = [folder / file for dataset, file in CHECKSUMS if dataset == name]
    return [p for p in known if p.is_file() and file_ok(p) is False]


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

    Statuses: "bundled", "present", "copied N files" (with "(replaced K damaged)" when some copies here had
    the right size but the wrong sha256), "downloaded", "missing", "corrupt: <files>" (damaged and no good
    copy to take), "failed: <reason>". Every known file is checked against its sha256 (`CHECKSUMS`); a
    damaged one is replaced from the mirror or by a download, never used. Safe to rerun and to interrupt:
    files appear only once complete and verified, and the mirror is only read.
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
            bad = damaged_files(name, base)
            status[name] = _corrupt(bad) if bad else "present" if _sources(name, folder) else "missing"
        elif mir is not None and (mir / name).is_dir():
            try:
                copied, repaired = _sync(mir / name, folder)
            except DamagedFileError as err:  # the mirror's own copy is bad: say so, keep what is here
                status[name] = f"failed: {err}"
                continue
            fixed = f" (replaced {repaired} damaged)" if repaired else ""
            status[name] = f"copied {copied} files{fixed}" if copied else "present"
        elif _sources(name, folder) and not (bad := damaged_files(name, base)):
            status[name] = "present"
        elif download and name != "animal_mnist":  # animal_mnist has no public download
            bad = damaged_files(name, base)
            try:
                _download(name, folder)
                bad = [p for p in bad if file_ok(p) is False]  # a download of the same name replaced it
                for path in bad:  # keep the damaged bytes aside, out of the loaders' way
                    os.replace(path, path.with_name(path.name + ".damaged"))
                kept = f" (damaged files kept as *.damaged: {', '.join(p.name for p in bad)})" if bad else ""
                status[name] = ("downloaded" + kept) if _sources(name, folder) else "failed: download incomplete"
            except Exception as err:  # offline, blocked or moved: report and carry on
                reason = " ".join(f"{type(e).__name__}: {e}" for e in (err, err.__cause__) if e is not None)
                status[name] = (_corrupt(bad) + "; " if bad else "") + "failed: " + " ".join(reason.split())[:150]
        else:
            bad = damaged_files(name, base)
            status[name] = _corrupt(bad) if bad else "missing"
    for name, state in status.items():
        print(f"{name:<14} {state}")
        if state == "missing" or "failed" in state or state.startswith("corrupt"):
            print(f"{'':<14} to get it: {_INFO[name][2].format(name=name)}")
    return status


def _corrupt(bad: Sequence[Path]) -> str:
    return "corrupt: " + ", ".join(p.name for p in bad)


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


def _verified(name: str, path: Path, mirror: Path | None) -> str:
    """sha256 of a source file; a DamagedFileError when the course knows the file and the digest differs."""
    digest = sha256(path)
    known = _known(path)
    if known is not None and (path.stat().st_size, digest) != known[1]:
        raise _damaged(path, name, "its sha256 differs from the one the course records", mirror)
    return digest


def _cached(
    path: Path, files: dict[str, Path], build: Callable[[], dict], writable: bool, name: str = "",
    mirror: Path | None = None,
) -> dict:
    """Decoded tensors from the .pt cache, else build and store them (notebook 00).

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
    return _cached(base / "cache" / f"{variant}.pt", files, build, not _inside(base, mir), name, mir)


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

    Under torchrun, `shard(rank, world)` gives one process's share of every batch (see `companion.distributed`).
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
        self.rank, self.world = 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> Tensor:
        """The sample order of an epoch (a permutation when shuffling, else 0..N-1)."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))

    def shard(self, rank: int, world: int) -> TensorBatches:
        """Process `rank`'s share of every batch when `world` processes train together (taught with fit, notebook 00).

        Batch b of an epoch (the same global order on every process) is cut into `world` equal, disjoint,
        consecutive slices and this process gets slice `rank`: world x local batch = `batch_size`, and the slices
        of ranks 0..world-1 in turn are the single-process batch. A last, partial batch is cut to a multiple of
        `world` (at most world - 1 samples of an epoch are left out); if fewer than `world` samples remain it is
        dropped. The tensors are shared with this object, not copied.
        """
        if isinstance(world, bool) or not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be a positive integer, got {world!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"rank must be an integer in [0, {world}), got {rank!r}")
        if self.world != 1:
            raise ValueError(f"shard: these batches are already shard {self.rank} of {self.world}; shard the unsharded ones")
        if self.batch_size % world:
            raise ValueError(
                f"batch_size must be a multiple of the number of processes ({world}) to shard, got {self.batch_size}"
            )
        if self.n < world:
            raise ValueError(f"shard: {self.n} samples cannot be shared among {world} processes")
        part = copy.copy(self)
        part.rank, part.world = rank, world
        return part

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest < self.world else full + 1

    def __iter__(self) -> Iterator[tuple[Tensor, Target]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = self.order(epoch).to(self.x.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                size = len(idx) // self.world
                idx = idx[self.rank * size : (self.rank + 1) * size]
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
