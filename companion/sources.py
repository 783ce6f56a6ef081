"""Cached source models for transfer: trained once on a course dataset, then loaded from a checkpoint file
(noisy sources, trained on corrupted labels, use the same cache).

`source_model` keys a checkpoint by the whole training configuration and keeps it in
`<data root>/cache/sources/`; `cached_source` is the shared machinery (atomic writes, reads with
weights_only, retraining when a file is missing, corrupt or stale). The checkpoints hold state and config
dicts only, never pickled classes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from . import checks
from .batches import TensorBatches, subsample_per_class
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .data import load_dataset
from .device import pick_device, seeded
from .evaluation import evaluate
from .models import backbone
from .store import data_root
from .train import fit

__all__ = ["cached_source", "source_model"]

_SOURCE_VERSION = 1  # bump to invalidate every cached source model


def _source_key(config: dict) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return f"{config['model']}-{config['dataset']}-{digest}"


def source_model(
    name: str,
    dataset: str,
    *,
    epochs: int = 3,
    n: int | None = None,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 128,
    size: int | None = None,
    root: str | Path | None = None,
    device: str | torch.device = "auto",
) -> tuple[nn.Module, dict]:
    """A course source model trained on a dataset once, then loaded from its cached checkpoint.

    n: training images per class (None: all). The checkpoint is `<root or data_root()>/cache/sources/<key>.pt`,
    keyed by the whole configuration, written atomically and read with weights_only; a missing or corrupt one
    is retrained (`cached_source`). Returns the model (CPU, eval mode) and {"test_acc", "steps", "key", "path",
    "cached"}.
    """
    checks.integer("epochs", epochs, 1)
    checks.integer("batch_size", batch_size, 1)
    checks.positive("lr", lr)
    if n is not None:
        checks.integer("n", n, 1)
    config = dict(
        model=name, dataset=dataset, epochs=epochs, n=n, seed=seed, lr=float(lr), batch_size=batch_size
    )
    config.update(size=size, version=_SOURCE_VERSION)
    return cached_source(config, "sources", root=root, device=device)


def cached_source(
    config: dict,
    folder: str,
    *,
    root: str | Path | None = None,
    device: str | torch.device = "auto",
    relabel: Callable[[Tensor, int], Tensor] | None = None,
    min_steps: int = 0,
) -> tuple[nn.Module, dict]:
    """Train `config["model"]` on `config["dataset"]` once, then load it from `<root>/cache/<folder>/<key>.pt`
    (the key hashes the whole `config`; written atomically, read with weights_only, retrained when missing,
    corrupt or stale). Shared by `source_model` and `mismatch.noisy_source`.

    `config` holds model, dataset, epochs, n (images per class or None), seed, lr, batch_size and size, plus
    anything else that should key the cache. `relabel(y, num_classes)` changes the training labels (label noise);
    with `min_steps`, training runs enough epochs for at least that many optimiser steps. Returns the model (CPU,
    eval mode) and {"test_acc" (clean test labels), "steps", "key", "path", "cached"}.
    """
    name, dataset, seed, size = config["model"], config["dataset"], config["seed"], config["size"]
    key = _source_key(config)
    path = Path(root if root is not None else data_root()).expanduser() / "cache" / folder / f"{key}.pt"
    if path.is_file():
        try:
            state = load_checkpoint(path)
            if state.get("config") == config:
                model = backbone(name, in_chans=state["in_chans"], num_classes=state["num_classes"])
                model.load_state_dict(state["model"])
                info = dict(
                    test_acc=state["test_acc"], steps=state.get("steps"), key=key, path=str(path), cached=True
                )
                return model.eval(), info
        except (CheckpointError, KeyError, RuntimeError, TypeError):
            pass  # unreadable or stale: train again and overwrite it
    x, y = load_dataset(dataset, "train", root, size=size)
    if config["n"] is not None:
        x, y = subsample_per_class(x, y, config["n"], seed=seed)
    in_chans, num_classes = x.shape[1], int(y.max()) + 1
    if relabel is not None:
        y = relabel(y, num_classes)
    with seeded(seed):
        model = backbone(name, in_chans=in_chans, num_classes=num_classes)
    dev = pick_device(device)
    batches = TensorBatches(x, y, config["batch_size"], seed=seed)
    epochs = max(config["epochs"], -(-min_steps // len(batches)))
    fit(model, batches, epochs=epochs, lr=config["lr"], device=dev, seed=seed, progress=False)
    x_test, y_test = load_dataset(dataset, "test", root, size=size)
    acc = evaluate(model, TensorBatches(x_test, y_test, 512, shuffle=False), device=dev)["acc"]
    model.cpu().eval()
    steps = len(batches) * epochs
    state = dict(
        model=model.state_dict(),
        config=config,
        in_chans=in_chans,
        num_classes=num_classes,
        test_acc=acc,
        steps=steps,
    )
    save_checkpoint(path, state)
    return model, dict(test_acc=acc, steps=steps, key=key, path=str(path), cached=False)
