"""Checkpoints and random states for `fit`: atomic saves, safe loads, resume.

A checkpoint is a dict of tensors and plain containers written atomically (temp file + rename, the previous one
kept as `<name>.prev`) and read with `torch.load(..., weights_only=True)`, so loading one cannot run code. The
random states of Python, NumPy and torch travel in it, so a resumed run draws the same numbers as an
uninterrupted one; `device.seeded` gives fit its own seeded streams without touching the caller's.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .files import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt or not a course checkpoint)."""


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(
        state["torch"].cpu()
    )  # a checkpoint loaded with map_location="cuda" holds CUDA tensors
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype("uint32"), *rest))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if (
        "cuda" in state and torch.cuda.is_available() and torch.cuda.is_initialized()
    ):  # else: no seed is queued
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _plain(value):
    """A hyperparameter as a plain value a weights-only checkpoint holds and `==` compares (tuples as lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)


def run_fingerprint(model, optimizer, *, scheduler=None, warmup_steps: int = 0, clip_grad=None) -> dict:
    """What makes a resumed run the same run, beyond fit's seed/lr/epochs: the optimiser's class and every
    hyperparameter of each parameter group (lr, weight_decay, betas, momentum, ...; taken before a scheduler
    changes lr), the number of parameters per group, the scheduler, warm-up and clipping, and the name and shape
    of every model parameter (a field one side lacks shows as "(none)"). Keys are flat ("optimizer.weight_decay", "optimizer[1].lr", "parameter fc.weight"),
    so a mismatch names the first differing field."""
    out: dict = {"optimizer": type(optimizer).__name__}
    for name, param in model.named_parameters():
        out[f"parameter {name}"] = list(param.shape)
    for i, group in enumerate(optimizer.param_groups):
        prefix = "optimizer." if i == 0 else f"optimizer[{i}]."
        out[prefix + "params"] = len(group["params"])
        for key in sorted(group):
            if key not in ("params", "initial_lr"):
                out[prefix + key] = _plain(group[key])
    if scheduler is not None and not isinstance(scheduler, str):
        scheduler = getattr(scheduler, "__qualname__", type(scheduler).__name__)
    return out | {"scheduler": scheduler, "warmup_steps": warmup_steps, "clip_grad": _plain(clip_grad)}


def check_fingerprint(path: Path, saved: dict, run: dict, defaults: dict | None = None) -> None:
    """Refuse to resume from a checkpoint written by another run: the first field (in this run's order, then the
    file's) whose value differs, with the checkpoint's path. A field missing on one side counts as its default
    (`defaults`, else None). A checkpoint written before `run_fingerprint`'s fields were recorded (no
    "optimizer" field) is compared on the fields it has; its model and optimizer states are still checked on
    loading."""
    defaults = defaults or {}
    legacy = "optimizer" not in saved

    def shown(side: dict, key: str) -> str:
        return repr(side.get(key, defaults.get(key))) if key in side or key in defaults else "(none)"

    for key in [*run, *(k for k in saved if k not in run)]:
        if legacy and key not in saved and key not in defaults:
            continue
        if saved.get(key, defaults.get(key)) != run.get(key, defaults.get(key)):
            raise ValueError(
                f"checkpoint {path} was written with {key}={shown(saved, key)}, this run has "
                f"{key}={shown(run, key)}; resume with the same settings, or pass another checkpoint path "
                "(or delete it) to start afresh"
            )


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write a checkpoint atomically (temp file + rename); the previous one is kept as `<name>.prev`.

    The state is serialised in memory first and then written, so a full disk (or quota, or file-size limit) is an
    OSError naming `path` and the likely cause (`files.write_error`), where torch's own file writer reports only
    an "enforce fail" RuntimeError without the path."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    return atomic_write(path, lambda f: f.write(data), keep_previous=True)


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    prev = _previous(path)
    hint = (
        f'; the previous good checkpoint is kept at {prev}: fit(..., resume="latest-good") continues from it'
        if prev.exists()
        else ""
    )
    return CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}){hint}")


def _resume_state(path: Path, how: str, map_location) -> tuple[dict, Path]:
    """The state fit resumes from and its file: the checkpoint itself, or with how="latest-good" and a corrupt
    checkpoint, its `.prev` (the corrupt file is kept aside as `<name>.corrupt`, never deleted)."""
    try:
        return load_checkpoint(path, map_location=map_location), path
    except CheckpointError as err:
        prev = _previous(path)
        if how != "latest-good" or "corrupt" not in str(err) or not prev.exists():
            raise
        state = load_checkpoint(prev, map_location=map_location)
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"checkpoint {path} is corrupt (kept as {aside}); resuming from {prev}", stacklevel=4)
        return state, prev


def resume_from(path: Path, how: str, map_location) -> dict | None:
    """The state to resume from, or None for a fresh start. Under torchrun rank 0 picks the file (and sets a
    corrupt one aside), then every rank loads the file it picked."""
    if distributed.world() == 1:
        return _resume_state(path, how, map_location)[0] if path.exists() else None
    state, source = None, None
    if distributed.is_main() and path.exists():
        state, source = _resume_state(path, how, map_location)
    source = distributed.broadcast(None if source is None else str(source))
    if source is not None and state is None:
        state = load_checkpoint(source, map_location=map_location)
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; a corrupt file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CheckpointError(
                f"checkpoint {path} refused: not a weights-only checkpoint (it pickles Python objects, which can run "
                "code when loaded); companion only loads tensors and plain containers"
            ) from None
        raise _corrupt(path, err) from None
    except Exception as err:
        raise _corrupt(path, err) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a companion checkpoint (no 'model' entry)")
    return state
