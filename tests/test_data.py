"""Tests of companion.data on the real mirror files (skipped where no mirror exists) and on synthetic tensors."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import time
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch

from companion import data as D
from companion.batches import TensorBatches, loader, split, subsample_per_class
from companion.store import available_datasets, fetch

REPO = Path(__file__).resolve().parents[1]


def _find_mirror() -> Path | None:
    env = os.environ.get("COMPANION_DATA_MIRROR")
    for cand in ([Path(env)] if env else []) + [REPO / "shared" / "data", REPO.parent / "shared" / "data"]:
        if (cand / "mnist").is_dir():
            return cand
    return None


MIRROR = _find_mirror()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """A data root filled from the mirror once for the module, plus the fetch statuses and mirror snapshots."""
    if MIRROR is None:
        pytest.skip("no data mirror (set COMPANION_DATA_MIRROR)")
    root = tmp_path_factory.mktemp("data")
    before = _snapshot(MIRROR)
    first = fetch(root=root, mirror=MIRROR, download=False)
    second = fetch(root=root, mirror=MIRROR, download=False)
    return {"root": root, "first": first, "second": second, "before": before, "after": _snapshot(MIRROR)}


@pytest.fixture
def root(fetched, monkeypatch):
    """COMPANION_DATA points at the fetched root and no mirror is set: loaders must read the copies."""
    monkeypatch.setenv("COMPANION_DATA", str(fetched["root"]))
    monkeypatch.delenv("COMPANION_DATA_MIRROR", raising=False)
    return fetched["root"]


# -------------------------------------------------------------------------------------------------- fetch


def test_data_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("COMPANION_DATA", raising=False)
    assert D.data_root() == REPO / "data"
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    assert D.data_root() == tmp_path


def test_fetch_copies_from_mirror_and_is_idempotent(fetched):
    root = fetched["root"]
    assert fetched["first"]["digits"] == "bundled"
    for name in D.DATASETS[1:]:
        assert fetched["first"][name].startswith("copied"), fetched["first"]
        assert fetched["second"][name] == "present"
        assert sorted(p.name for p in (root / name).iterdir()) == sorted(
            p.name for p in (MIRROR / name).iterdir()
        )
    # checksums from the mirror READMEs
    assert (
        _sha256(root / "usps/zip.train.gz")
        == "66ebf231ab51f2cf6ac1a892d0f98ccffee1079d7a5db638c1f11f366046ca16"
    )
    assert _sha256(root / "mnist/t10k-labels-idx1-ubyte.gz") == (
        "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c"
    )
    assert _sha256(root / "animal_mnist/animal_mnist.npz") == (
        "d0d955d308642ab7163af31c96fa06c8ddde700753531430ca43c4d9ab66c0d3"
    )
    assert not list(root.rglob("*.part"))
    # the mirror was only read
    assert fetched["after"] == fetched["before"]


def test_fetch_again_changes_nothing(fetched):
    before = _snapshot(fetched["root"] / "usps")
    assert fetch(["usps"], root=fetched["root"], mirror=MIRROR, download=False) == {"usps": "present"}
    assert _snapshot(fetched["root"] / "usps") == before


def test_fetch_interrupted_copy_leaves_no_file(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "usps").mkdir(parents=True)
    (mirror / "usps" / "notes.bin").write_bytes(b"x" * 5000)  # a file without a recorded checksum

    def broken(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError("No space left on device")  # the copy dies half way

    monkeypatch.setattr(shutil, "copyfileobj", broken)
    with pytest.raises(OSError, match="No space"):
        fetch(["usps"], root=tmp_path / "root", mirror=mirror, download=False)
    assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    assert fetch(["usps"], root=tmp_path / "root", mirror=mirror, download=False) == {
        "usps": "copied 1 files"
    }
    assert (tmp_path / "root/usps/notes.bin").read_bytes() == b"x" * 5000


def test_fetch_reports_missing_and_failed_download(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COMPANION_DATA_MIRROR", raising=False)
    assert fetch(["usps", "digits"], root=tmp_path, download=False) == {
        "usps": "missing",
        "digits": "bundled",
    }
    assert "COMPANION_DATA_MIRROR" in capsys.readouterr().out

    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd, "USPS", offline)
    status = fetch(["usps"], root=tmp_path)
    assert status["usps"].startswith("failed") and "unreachable" in status["usps"]
    assert list(tmp_path.iterdir()) == []  # the temp download folder is gone
    with pytest.raises(ValueError, match="name must be one of"):
        fetch(["cifar"], root=tmp_path)


def test_missing_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    monkeypatch.delenv("COMPANION_DATA_MIRROR", raising=False)
    with pytest.raises(FileNotFoundError) as info:
        D.load_dataset("fashion_mnist")
    msg = str(info.value)
    assert "\n" not in msg and "make data" in msg and "python -m companion data fetch fashion_mnist" in msg
    assert "COMPANION_DATA_MIRROR" in msg
    assert available_datasets()["fashion_mnist"]["present"] is False
    assert available_datasets()["digits"]["present"] is True


def test_bad_name_and_split():
    with pytest.raises(ValueError, match="name must be one of .*'mnist'"):
        D.load_dataset("cifar10")
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="size must be"):
        D.load_dataset("digits", size=0)


def test_available_datasets(root):
    info = available_datasets()
    assert set(info) == set(D.DATASETS)
    for name, row in info.items():
        assert row["present"], name
        assert {"source", "licence", "how"} <= set(row) and row["licence"]
    assert info["usps"]["where"] == str(root / "usps")


# ------------------------------------------------------------------------------------------------ loaders


def _check_images(x, y, n, hw, n_classes):
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape) == (n, 1, *hw)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert int(y.min()) == 0 and int(y.max()) == n_classes - 1


def test_digits_fixed_stratified_split():
    from sklearn.datasets import load_digits

    raw = load_digits()
    xtr, ytr = D.load_dataset("digits", "train")
    xte, yte = D.load_dataset("digits", "test")
    _check_images(xtr, ytr, 1438, (8, 8), 10)
    assert len(yte) == 359
    assert (torch.bincount(ytr) + torch.bincount(yte)).tolist() == np.bincount(raw.target).tolist()
    # every image appears exactly once across the two splits, with its own label
    both = torch.cat([xtr, xte])[:, 0] * 16
    ys = torch.cat([ytr, yte])
    rows = {tuple(im.round().int().flatten().tolist()): int(lab) for im, lab in zip(both, ys)}
    raw_rows = {tuple(im.astype(int).flatten().tolist()): int(lab) for im, lab in zip(raw.images, raw.target)}
    assert rows == raw_rows
    assert torch.equal(D.load_dataset("digits", "train")[0], xtr)


def test_mnist_test_set_split_8k_2k(root):
    xtr, ytr = D.load_dataset("mnist", "train")
    xte, yte = D.load_dataset("mnist", "test")
    _check_images(xtr, ytr, 8000, (28, 28), 10)
    assert len(yte) == 2000
    counts = (torch.bincount(ytr) + torch.bincount(yte)).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # README
    assert abs(float(torch.cat([xtr, xte]).mean()) - 0.1325) < 5e-4  # README
    x_all, _ = D.load_dataset("mnist", "all")
    assert torch.equal(x_all[:8000], xtr) and torch.equal(x_all[8000:], xte)
    raw = gzip.open(root / "mnist/t10k-images-idx3-ubyte.gz").read()
    assert hashlib.md5(raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"  # README
    labels = D._read_idx(root / "mnist/t10k-labels-idx1-ubyte.gz")
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # README
    # each split image is a test-set image with its label: compare against the raw bytes directly
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    lookup = {images[i].tobytes(): int(labels[i]) for i in range(len(labels))}
    for i in range(0, 2000, 97):
        assert lookup[(xte[i, 0] * 255).round().to(torch.uint8).numpy().tobytes()] == int(yte[i])


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_mnist_uses_official_split_when_train_files_exist(root, tmp_path):
    """torchvision layout (MNIST/raw, uncompressed): with train files present, train and test are the files."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = D._read_idx(root / "mnist/t10k-images-idx3-ubyte.gz")
    labels = D._read_idx(root / "mnist/t10k-labels-idx1-ubyte.gz")
    _write_idx(raw / "train-images-idx3-ubyte", images[:300])
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:300])
    _write_idx(raw / "t10k-images-idx3-ubyte", images[300:400])
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[300:400])
    x, y = D.load_dataset("mnist", "train", root=tmp_path)
    assert len(y) == 300 and y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images[:300]))
    assert len(D.load_dataset("mnist", "test", root=tmp_path)[1]) == 100
    assert (tmp_path / "cache" / "mnist.pt").is_file()


def test_fashion_mnist(root):
    xtr, ytr = D.load_dataset("fashion_mnist", "train")
    xte, yte = D.load_dataset("fashion_mnist", "test")
    _check_images(xtr, ytr, 60000, (28, 28), 10)
    assert torch.bincount(ytr).tolist() == [6000] * 10 and torch.bincount(yte).tolist() == [1000] * 10
    raw = gzip.open(root / "fashion_mnist/t10k-images-idx3-ubyte.gz").read()
    assert hashlib.md5(raw).hexdigest() == "8181f5470baa50b63fa0f6fddb340f0a"  # README: official bytes
    assert np.array_equal(
        (xte[:, 0] * 255).round().to(torch.uint8).numpy(),
        np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28),
    )
    groups = D.fashion_groups(yte)
    assert torch.equal(groups["fine"], yte)
    assert torch.bincount(groups["coarse"]).tolist() == [4000, 3000, 3000]  # tops, footwear, other


def test_usps(root):
    xtr, ytr = D.load_dataset("usps", "train")
    xte, yte = D.load_dataset("usps", "test")
    _check_images(xtr, ytr, 7291, (16, 16), 10)
    assert torch.bincount(ytr).tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]  # README
    assert torch.bincount(yte).tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]  # README
    # independent parse of the first and last text lines
    lines = gzip.open(root / "usps/zip.train.gz", "rt").read().strip().splitlines()
    for i in (0, len(lines) - 1):
        values = [float(v) for v in lines[i].split()]
        assert int(values[0]) == int(ytr[i])
        expected = (torch.tensor(values[1:]).reshape(16, 16) + 1) / 2
        assert torch.allclose(xtr[i, 0], expected, atol=1e-6)


def test_animal_mnist(root):
    xtr, ytr = D.load_dataset("animal_mnist", "train")
    xte, yte = D.load_dataset("animal_mnist", "test")
    _check_images(xtr, ytr, 8000, (28, 28), 10)
    assert torch.bincount(ytr).tolist() == [800] * 10 and torch.bincount(yte).tolist() == [200] * 10
    assert abs(float(torch.cat([xtr, xte]).mean()) * 255 - 69.6) < 0.05  # README
    assert (ytr[:20] != ytr[0]).any()  # the class-sorted file is shuffled before splitting


def test_omniglot(root):
    xtr, ytr = D.load_dataset("omniglot", "train")
    xte, yte = D.load_dataset("omniglot", "test")
    _check_images(xtr, ytr, 3630, (28, 28), 242)
    assert len(yte) == 1210
    assert torch.bincount(ytr).tolist() == [15] * 242 and torch.bincount(yte).tolist() == [5] * 242
    assert float(xtr.mean()) < 0.2  # white strokes on black
    ids, names = D.omniglot_alphabets("train")
    assert len(names) == 8 and names[0] == "Balinese" and "Japanese_(katakana)" in names
    assert len(ids) == 3630 and torch.bincount(ids).tolist() == [
        n * 15 for n in (24, 22, 24, 47, 40, 26, 42, 17)
    ]
    # every character belongs to exactly one alphabet
    for c in range(0, 242, 11):
        assert len(ids[ytr == c].unique()) == 1
    # first image: Balinese/character01/0108_01.png, decoded and resized independently with PIL
    from PIL import Image

    with zipfile.ZipFile(root / "omniglot/images_background_small1.zip") as z:
        img = Image.open(BytesIO(z.read("images_background_small1/Balinese/character01/0108_01.png")))
        strokes = Image.fromarray((~np.asarray(img, dtype=bool)).astype(np.uint8) * 255)
        expected = (
            torch.tensor(np.asarray(strokes.resize((28, 28), Image.BILINEAR)), dtype=torch.float32) / 255
        )
    assert (xtr[0, 0] - expected).abs().max() <= 1.5 / 255 and expected.max() > 0.5


def test_cache_is_written_atomically_and_reused(root):
    for path in (root / "cache").glob("usps*.pt"):
        path.unlink()
    t0 = time.perf_counter()
    x1, y1 = D.load_dataset("usps", "test")
    t_decode = time.perf_counter() - t0
    cache = root / "cache" / "usps.pt"
    assert cache.is_file() and not list((root / "cache").glob("*.part"))
    blob = torch.load(cache, weights_only=True)
    assert torch.equal(blob["test_y"], y1)
    t0 = time.perf_counter()
    x2, y2 = D.load_dataset("usps", "test")
    t_cached = time.perf_counter() - t0
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    print(f"usps decode {t_decode:.3f}s, from cache {t_cached:.3f}s")
    # a cache whose stamp no longer matches the files is rebuilt, not trusted
    blob["test_y"] = blob["test_y"] + 1
    blob["stamp"] = [["train", "zip.train.gz", 0]]
    torch.save(blob, cache)
    assert torch.equal(D.load_dataset("usps", "test")[1], y1)


def test_loading_falls_back_to_mirror_without_writing_it(tmp_path, monkeypatch):
    if MIRROR is None:
        pytest.skip("no data mirror")
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    monkeypatch.setenv("COMPANION_DATA_MIRROR", str(MIRROR))
    before = _snapshot(MIRROR)
    x, y = D.load_dataset("usps", "test", size=28)
    assert tuple(x.shape) == (2007, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert available_datasets()["usps"]["where"] == str(MIRROR / "usps")
    assert _snapshot(MIRROR) == before
    assert (tmp_path / "cache" / "usps.pt").is_file()


# --------------------------------------------------------------------------------------- multi-task data


def test_multi_digits_labels_match_the_composed_digits():
    """Digit c lights pixel (0, c) and pixel (27, 27 - c): only the left digit reaches row 0, only the right row 35."""
    src = torch.zeros(10, 1, 28, 28)
    for c in range(10):
        src[c, 0, 0, c] = 1.0
        src[c, 0, 27, 27 - c] = 0.5
    labels = torch.arange(10)
    x, y = D.multi_digits(src, labels, 200, seed=3)
    assert tuple(x.shape) == (200, 1, 36, 36) and set(y) == {"left", "right"}
    assert torch.equal(x[:, 0, 0, :].argmax(1), y["left"])
    assert torch.equal(35 - x[:, 0, 35, :].argmax(1), y["right"])
    assert (y["left"] != y["right"]).all()  # distinct source images (here one per class)
    x2, y2 = D.multi_digits(src, labels, 200, seed=3)
    assert torch.equal(x, x2) and torch.equal(y["left"], y2["left"])
    assert not torch.equal(D.multi_digits(src, labels, 200, seed=4)[1]["left"], y["left"])


def test_multi_digits_on_real_digits(root):
    x, labels = D.load_dataset("mnist", "test")
    x, labels = x[:300], labels[:300]
    out, y = D.multi_digits(x, labels, 50, seed=0)
    # the top 8 rows come from the left digit alone and the bottom 8 rows from the right digit alone:
    # some source digit with the returned label must match each strip exactly
    for k in range(50):
        left = (x[:, 0, :8] == out[k, 0, :8, :28]).all(dim=(1, 2))
        right = (x[:, 0, 20:] == out[k, 0, 28:, 8:]).all(dim=(1, 2))
        assert int(y["left"][k]) in labels[left].tolist()
        assert int(y["right"][k]) in labels[right].tolist()
        assert (out[k, 0, 28:, :8] == 0).all() and (out[k, 0, :8, 28:] == 0).all()
    assert torch.equal(out[:, :, :28, :28].amax((1, 2, 3)) > 0, torch.ones(50, dtype=torch.bool))
    usps, uy = D.load_dataset("usps", "test")
    small, sy = D.multi_digits(usps, uy, 5, seed=1, size=40)
    assert tuple(small.shape) == (5, 1, 40, 40)
    with pytest.raises(ValueError, match="size must be"):
        D.multi_digits(usps, uy, 5, seed=1, size=20)


def test_fashion_groups_mapping():
    out = D.fashion_groups(torch.arange(10))
    names = {D.FASHION_CLASSES[i]: D.FASHION_GROUPS[g] for i, g in enumerate(out["coarse"].tolist())}
    assert names == {
        "T-shirt/top": "tops", "Pullover": "tops", "Coat": "tops", "Shirt": "tops",
        "Sandal": "footwear", "Sneaker": "footwear", "Ankle boot": "footwear",
        "Trouser": "other", "Dress": "other", "Bag": "other",
    }  # fmt: skip
    with pytest.raises(ValueError, match="labels must be"):
        D.fashion_groups(torch.tensor([3, 10]))


# ---------------------------------------------------------------------------------------------- batching


def test_tensor_batches_cover_each_sample_once_and_are_seeded():
    x = torch.arange(103).float()[:, None]
    y = {"a": torch.arange(103), "b": torch.arange(103) * 2}
    tb = TensorBatches(x, y, 10, seed=5)
    assert len(tb) == 11
    tb.set_epoch(2)
    batches = list(tb)
    seen = torch.cat([xb[:, 0] for xb, _ in batches]).long()
    assert sorted(seen.tolist()) == list(range(103))
    for xb, yb in batches:  # dict targets stay aligned with x
        assert torch.equal(yb["a"], xb[:, 0].long()) and torch.equal(yb["b"], 2 * xb[:, 0].long())
    again = TensorBatches(x, y, 10, seed=5)
    again.set_epoch(2)
    assert torch.equal(torch.cat([b[0] for b in again]), torch.cat([b[0] for b in batches]))
    tb.set_epoch(3)
    assert not torch.equal(torch.cat([b[0] for b in tb]), torch.cat([b[0] for b in batches]))
    # resuming mid-epoch: set_epoch then skip k batches gives the tail of the same epoch
    tb.set_epoch(2)
    tail = [b for i, b in enumerate(tb) if i >= 4]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, batches[4:]))
    # without set_epoch each pass moves on one epoch
    fresh = TensorBatches(x, y, 10, seed=5)
    p0, p1 = torch.cat([b[0] for b in fresh]), torch.cat([b[0] for b in fresh])
    assert torch.equal(p0, fresh.order(0).float()[:, None]) and torch.equal(
        p1, fresh.order(1).float()[:, None]
    )


def test_tensor_batches_options():
    x, y = torch.arange(25).float()[:, None], torch.arange(25)
    plain = TensorBatches(x, y, 10, shuffle=False, device="cpu")
    assert [len(b[1]) for b in plain] == [10, 10, 5]
    assert torch.equal(torch.cat([b[1] for b in plain]), y)
    dropped = TensorBatches(x, y, 10, drop_last=True)
    assert len(dropped) == 2 and sum(len(b[1]) for b in dropped) == 20
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(x, y, 0)
    with pytest.raises(ValueError, match="y must have"):
        TensorBatches(x, y[:5], 4)


class _Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor(float(i)), {"t": torch.tensor(i), "noise": torch.tensor(np.random.rand())}


def test_loader_set_epoch_is_reproducible():
    a = loader(_Noisy(), 5, seed=1)
    b = loader(_Noisy(), 5, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    ea, eb = [x for x, _ in a], [x for x, _ in b]
    assert len(a) == 3 and all(torch.equal(p, q) for p, q in zip(ea, eb))
    assert sorted(torch.cat(ea).long().tolist()) == list(range(12))
    a.set_epoch(5)
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat(ea))
    for x, y in b:  # dict targets are collated and aligned
        assert torch.equal(y["t"], x.long())


def test_loader_workers_are_seeded_per_epoch():
    runs = []
    for _ in range(2):
        dl = loader(_Noisy(), 6, seed=7, num_workers=2)
        dl.set_epoch(1)
        runs.append(torch.cat([y["noise"] for _, y in dl]))
    assert torch.equal(runs[0], runs[1]) and len(runs[0].unique()) > 1


def test_split_sizes_and_fractions():
    x, y = torch.arange(50).float(), {"a": torch.arange(50), "b": -torch.arange(50)}
    parts = split(x, y, [0.7, 0.2, 0.1], seed=0)
    assert [len(p[0]) for p in parts] == [35, 10, 5]
    assert sorted(torch.cat([p[0] for p in parts]).long().tolist()) == list(range(50))
    for px, py in parts:
        assert torch.equal(py["a"], px.long()) and torch.equal(py["b"], -px.long())
    assert [len(p[1]) for p in split(x, y["a"], [1 / 3, 1 / 3, 1 / 3], seed=0)] == [17, 17, 16]
    assert [len(p[1]) for p in split(x, y["a"], [10, 5], seed=0)] == [10, 5]
    assert torch.equal(split(x, y["a"], [10], seed=3)[0][0], split(x, y["a"], [10], seed=3)[0][0])
    assert not torch.equal(split(x, y["a"], [10], seed=3)[0][0], split(x, y["a"], [10], seed=4)[0][0])
    with pytest.raises(ValueError, match="sizes_or_fractions"):
        split(x, y, [40, 20], seed=0)
    with pytest.raises(ValueError, match="sizes_or_fractions"):
        split(x, y, [0.8, 0.5], seed=0)


def test_subsample_per_class():
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 7)
    x = torch.arange(len(y)).float()
    xs, ys = subsample_per_class(x, y, 3, seed=0)
    assert torch.bincount(ys).tolist() == [3, 3, 3]
    assert torch.equal(y[xs.long()], ys) and (xs.diff() > 0).all()
    assert not torch.equal(xs, subsample_per_class(x, y, 3, seed=1)[0])
    xd, yd = subsample_per_class(x, {"c": y, "idx": torch.arange(len(y))}, 4, seed=0, key="c")
    assert torch.bincount(yd["c"]).tolist() == [4, 4, 4] and torch.equal(yd["idx"], xd.long())
    with pytest.raises(ValueError, match="per_class"):
        subsample_per_class(x, y, 5, seed=0)
    with pytest.raises(ValueError, match="key"):
        subsample_per_class(x, {"c": y}, 2, seed=0)
