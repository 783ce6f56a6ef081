"""Notebook parameters: validate them in one line each, resolve the scale (every notebook's second cell)."""

from __future__ import annotations

import ast
import contextlib
import math
import os
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import (
    checks,
    models,  # noqa: F401  (registers the course's own small models with timm, for _check_model)
)
from ..device import DEVICE_CHOICES, pick_device, seed_everything
from ..files import resolve
from ..store import DATASETS

RESULTS_BASE_ENV = "COMPANION_RESULTS_BASE"
SCALES = ("quick", "full", "auto")
_COUNTS = (
    "EPOCHS",
    "STEPS",
    "_SIZE",
    "PER_CLASS",
)  # name endings of sizes and epochs (0: the scale's default)
# Upper bounds by name, so a typo such as EPOCHS=10**9 stops in the validation cell even where a notebook
# declares no range of its own (setup's `bounds` narrows them per notebook). First match wins.
UPPER_BOUNDS: tuple[tuple[str, int], ...] = (
    ("N_SEEDS", 100),
    ("EPOCHS", 1_000),
    ("STEPS", 1_000_000),
    ("_SIZE", 4_096),
    ("PER_CLASS", 100_000),
    ("N_", 10_000_000),
    ("NUM_", 10_000_000),
)


def _upper_bound(name: str) -> int | None:
    for key, bound in UPPER_BOUNDS:
        if name == key or (name.endswith(key) if not key.endswith("_") else name.startswith(key)):
            return bound
    return None


class ParameterError(ValueError):
    """A notebook parameter with a value outside what it allows (message: one line naming it)."""


def _fail(name: str, expected: str, value: object) -> None:
    checks.fail(name, expected, value, error=ParameterError)


_is_int = checks.is_int


def check(name: str, value: object) -> None:
    """Validate one parameter by its name's convention (SEED, DEVICE, SCALE, *EPOCHS, *_FRACTION, LR, ...).

    Whatever the name, a float (or a float in a list) must be finite: nan and inf are refused, since they pass
    every comparison a notebook could make (`ALPHA < 0` is False for nan) and would fail, or train, much later.
    """
    floats = [value] if isinstance(value, float) else []
    floats += [v for v in value if isinstance(v, float)] if isinstance(value, (list, tuple)) else []
    if not all(math.isfinite(v) for v in floats):
        _fail(
            name,
            "a finite number (not nan or inf)"
            if not isinstance(value, (list, tuple))
            else "a list of finite numbers (no nan or inf)",
            value,
        )
    if name == "SEED":
        if not _is_int(value) or value < 0:
            _fail(name, "a non-negative integer", value)
    elif name == "SEEDS":
        if not isinstance(value, (list, tuple)) or not value or not all(_is_int(s) and s >= 0 for s in value):
            _fail(name, "a non-empty list of non-negative integers", value)
    elif name == "DEVICE":
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            colon = isinstance(value, str) and ":" in value
            _fail(
                name,
                f"one of {list(DEVICE_CHOICES)}" + (" or 'cuda:N' (N a GPU index)" if colon else ""),
                value,
            )
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
    elif name.endswith(_COUNTS) or name.startswith(("N_", "NUM_")):
        if value is not None and (not _is_int(value) or value < 0):
            _fail(name, "a non-negative integer (0 or None: the scale's default)", value)
        bound = _upper_bound(name)
        if bound is not None and value is not None and value > bound:
            _fail(name, f"at most {bound:,} (0: the scale's default)", value)
    elif name.endswith("SIZES"):
        if not isinstance(value, (list, tuple)) or not value or not all(_is_int(k) and k >= 1 for k in value):
            hint = f" (on the command line: -p {name} '[1, 3]')" if isinstance(value, str) else ""
            _fail(name, f"a non-empty list of positive integers such as [1, 3]{hint}", value)
    elif name == "MODEL" or name.endswith("_MODEL"):
        if value is not None:
            _check_model(name, value)
    elif name == "DATASET" or name.endswith("_DATASET"):
        if value not in DATASETS:
            _fail(name, f"one of {sorted(DATASETS)}", value)


def _check_model(name: str, value: object) -> None:
    import timm

    if not isinstance(value, str) or not timm.is_model(value):
        _fail(name, "a timm model name (see timm.list_models('pattern*'))", value)


def scale_of(scale: str, device: torch.device) -> str:
    """Resolve SCALE="auto": full on a GPU, quick otherwise."""
    if scale not in SCALES:
        _fail("SCALE", f"one of {list(SCALES)}", scale)
    if scale != "auto":
        return scale
    return "full" if device.type == "cuda" else "quick"


def _is_count(name: str) -> bool:
    return name.endswith(_COUNTS) or name.startswith(("N_", "NUM_"))


def _literal(name: str, value: object) -> object:
    """A list or tuple typed as text (`-p SIZES "[1, 3]"` through papermill) becomes the literal it spells."""
    if (
        isinstance(value, str)
        and value.strip()[:1] in "[("
        and value.strip()
        and not name.endswith(("_DIR", "_PATH"))
    ):
        with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = ast.literal_eval(value.strip())
            if isinstance(parsed, (list, tuple)):
                return list(parsed)
    return value


def _check_bounds(name: str, value: object, bounds: tuple, defaults: dict) -> None:
    lo, hi = bounds
    if value in (0, None) and name in defaults:
        return  # the scale's default, chosen by the notebook's author
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(_is_int(v) and lo <= v <= hi for v in values):
        zero = (
            f"; 0: the scale's default (quick {defaults[name][0]}, full {defaults[name][1]})"
            if name in defaults
            else ""
        )
        what = "every value" if isinstance(value, (list, tuple)) else "an integer"
        raise ParameterError(f"{name} must be {what} in {lo}..{hi} for this notebook{zero}, got {value!r}")


def _writable(results_dir: Path) -> None:
    """Create RESULTS_DIR and write a temporary file there, so an unwritable folder stops before any training."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=results_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ParameterError(
            f"RESULTS_DIR must be a folder this process can create and write to; {results_dir}: {reason}"
        ) from None


def setup(
    defaults: dict[str, tuple] | None = None,
    bounds: dict[str, tuple[int, int]] | None = None,
    **params: object,
) -> SimpleNamespace:
    """Validate a notebook's parameters, fill scale defaults, seed, pick the device (every notebook).

    `defaults` maps a parameter to its (quick, full) values, used where the notebook leaves it at 0 or None.
    A size or epoch parameter (names ending EPOCHS, STEPS, _SIZE, PER_CLASS, or starting N_, NUM_) left at 0
    without a default is refused, since 0 is documented as "the scale's default"; give it `bounds` starting
    at 0 where 0 is a real value. `bounds` maps a parameter to its allowed (low, high), inclusive (a list
    parameter: every element); values outside stop here with the name and the range. Every size and epoch
    parameter also has a generous upper bound by name (`UPPER_BOUNDS`). RESULTS_DIR is created and
    test-written here, so an unwritable folder stops before any training.
    Returns a namespace with the parameters (UPPER_CASE, resolved), `device`, `scale`, `data_dir`,
    `results_dir`, `params` (as given, for the results file), `defaults` and `bounds` (as given) and `start` (for
    the runtime). `data_dir` is
    DATA_DIR resolved, or None for the default data folder: notebooks pass it on as `root=cfg.data_dir` to
    every loader; the process environment is left as it was.
    """
    defaults, bounds = defaults or {}, bounds or {}
    params = {name: _literal(name, value) for name, value in params.items()}
    for name, value in params.items():
        check(name, value)
    for name in defaults:
        if name not in params:
            raise ParameterError(f"defaults names {name}, which is not a parameter of this notebook")
    for name, pair in bounds.items():
        if name not in params:
            raise ParameterError(f"bounds names {name}, which is not a parameter of this notebook")
        if not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(_is_int(b) for b in pair)
            and pair[0] <= pair[1]
        ):
            raise ParameterError(f"bounds of {name} must be a (low, high) pair of integers, got {pair!r}")
        _check_bounds(name, params[name], pair, defaults)
    for name, value in params.items():
        if _is_count(name) and value in (0, None) and name not in defaults and bounds.get(name, (1,))[0] > 0:
            raise ParameterError(
                f"{name} must be a positive integer (this notebook has no scale default for 0), got {value!r}"
            )
    device = pick_device(params.get("DEVICE", "auto"))
    scale = scale_of(params.get("SCALE", "auto"), device)
    cfg = SimpleNamespace(
        params=dict(params),
        defaults=dict(defaults),
        bounds=dict(bounds),
        device=device,
        scale=scale,
        start=time.perf_counter(),
    )
    for name, value in params.items():
        if name in defaults and value in (0, None):
            value = defaults[name][0 if scale == "quick" else 1]
        setattr(cfg, name, value)
    data_dir = params.get("DATA_DIR") or ""
    # passed on as root=cfg.data_dir by the notebooks; the process environment is not touched
    cfg.data_dir = resolve(data_dir) if data_dir else None
    cfg.results_dir = results_folder(params.get("RESULTS_DIR") or "results")
    _writable(cfg.results_dir)
    if "SEED" in params:
        seed_everything(params["SEED"])
    return cfg


def results_folder(path: str | Path, cwd: str | Path | None = None) -> Path:
    """The absolute folder a RESULTS_DIR value names. An absolute path (or ``~/...``) is taken as given; a relative
    one lies beside the learner: inside the folder the notebook runs in, the kernel's working directory (`cwd`
    when given, else the process's), which JupyterLab, papermill (so the runner) and nbval set to the notebook's
    folder. ``$COMPANION_RESULTS_BASE``, when set (an absolute path), replaces that folder (`make test` points it into build/, so a
    test run leaves the committed results files in notebooks/results/ alone)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    base = os.environ.get(RESULTS_BASE_ENV) or (cwd if cwd is not None else Path.cwd())
    return (Path(base).expanduser().absolute() / p).absolute()
