"""Notebook parameters: validate them in one line each, resolve the scale (every notebook's second cell)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .device import DEVICE_CHOICES, pick_device, seed_everything

REPO = Path(__file__).resolve().parents[1]
SCALES = ("quick", "full", "auto")


class ParameterError(ValueError):
    """A notebook parameter with a value outside what it allows (message: one line naming it)."""


def _fail(name: str, expected: str, value: object) -> None:
    raise ParameterError(f"{name} must be {expected}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check(name: str, value: object) -> None:
    """Validate one parameter by its name's convention (SEED, DEVICE, SCALE, *EPOCHS, *_FRACTION, LR, ...)."""
    if name == "SEED":
        if not _is_int(value) or value < 0:
            _fail(name, "a non-negative integer", value)
    elif name == "SEEDS":
        if not isinstance(value, (list, tuple)) or not value or not all(_is_int(s) and s >= 0 for s in value):
            _fail(name, "a non-empty list of non-negative integers", value)
    elif name == "DEVICE":
        if not isinstance(value, str) or value.split(":")[0] not in DEVICE_CHOICES:
            _fail(name, f"one of {list(DEVICE_CHOICES)}", value)
    elif name == "SCALE":
        if value not in SCALES:
            _fail(name, f"one of {list(SCALES)}", value)
    elif name.endswith(("_DIR", "_PATH")):
        if not isinstance(value, str):
            _fail(name, "a folder path as a string ('' for the default)", value)
    elif name.endswith(("FRACTION", "_FRAC")):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
            _fail(name, "a number in (0, 1]", value)
    elif name.startswith("LR") or name.endswith("_LR"):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            _fail(name, "a positive number", value)
    elif name.endswith(("EPOCHS", "STEPS", "_SIZE", "PER_CLASS")) or name.startswith(("N_", "NUM_")):
        if value is not None and (not _is_int(value) or value < 0):
            _fail(name, "a non-negative integer (0 or None: the scale's default)", value)
    elif name == "MODEL" or name.endswith("_MODEL"):
        if value is not None:
            _check_model(name, value)
    elif name == "DATASET" or name.endswith("_DATASET"):
        from .data import DATASETS

        if value not in DATASETS:
            _fail(name, f"one of {sorted(DATASETS)}", value)


def _check_model(name: str, value: object) -> None:
    import timm

    from . import models  # noqa: F401  (registers the course's own small models with timm)

    if not isinstance(value, str) or not timm.is_model(value):
        _fail(name, "a timm model name (see timm.list_models('pattern*'))", value)


def scale_of(scale: str, device: torch.device) -> str:
    """Resolve SCALE="auto": full on a GPU, quick otherwise (notebook 00)."""
    if scale not in SCALES:
        _fail("SCALE", f"one of {list(SCALES)}", scale)
    if scale != "auto":
        return scale
    return "full" if device.type == "cuda" else "quick"


def setup(defaults: dict[str, tuple] | None = None, **params: object) -> SimpleNamespace:
    """Validate a notebook's parameters, fill scale defaults, seed, pick the device (every notebook).

    `defaults` maps a parameter to its (quick, full) values, used where the notebook leaves it at 0 or None.
    Returns a namespace with the parameters (UPPER_CASE, resolved), `device`, `scale`, `data_dir`,
    `results_dir`, `params` (as given, for the results file) and `start` (for the runtime).
    """
    defaults = defaults or {}
    for name, value in params.items():
        check(name, value)
    for name in defaults:
        if name not in params:
            raise ParameterError(f"defaults names {name}, which is not a parameter of this notebook")
    device = pick_device(params.get("DEVICE", "auto"))
    scale = scale_of(params.get("SCALE", "auto"), device)
    cfg = SimpleNamespace(params=dict(params), device=device, scale=scale, start=time.perf_counter())
    for name, value in params.items():
        if name in defaults and value in (0, None):
            value = defaults[name][0 if scale == "quick" else 1]
        setattr(cfg, name, value)
    data_dir = params.get("DATA_DIR") or ""
    if data_dir:
        os.environ["COMPANION_DATA"] = str(_resolve(data_dir))
    cfg.data_dir = _resolve(data_dir) if data_dir else None
    cfg.results_dir = _resolve(params.get("RESULTS_DIR") or "results")
    if "SEED" in params:
        seed_everything(params["SEED"])
    return cfg


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO / p
