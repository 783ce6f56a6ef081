"""Device choice, seeding and the environment report."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from collections.abc import Iterator
from importlib import metadata

import numpy as np
import torch

from .store import available_datasets

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Return CUDA, else MPS, else CPU for "auto", or the named device."""
    if isinstance(device, torch.device):
        return device
    spec = device
    name = str(spec).lower()
    if name.split(":")[0] not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES} (optionally 'cuda:N'), got {spec!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was asked for but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def seeded(seed: int | None, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run a block seeded as `seed_everything(seed)` seeds, leaving the caller's random states as they were
    (`seed=None`: the block runs unseeded, on the caller's streams).

    Python's `random`, NumPy's global generator, torch's CPU generator and the accelerator generators the block
    can draw from are saved before and restored after (also on an error). CUDA generators are forked when CUDA
    is in use (all devices, as seed_everything seeds all); a CUDA never initialised is left alone, so no seed is
    queued for it. The one seeding context of the package: fit, model initialisation and experiments use it.
    """
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    seed = int(seed)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    cuda_used = torch.cuda.is_available() and (torch.cuda.is_initialized() or device.type == "cuda")
    cuda = list(range(torch.cuda.device_count())) if cuda_used else []
    saved = random.getstate(), np.random.get_state()
    mps = torch.mps.get_rng_state() if device.type == "mps" else None
    with torch.random.fork_rng(devices=cuda):
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed_all(seed)
            if mps is not None:
                torch.mps.manual_seed(seed)
            yield
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            if mps is not None:
                torch.mps.set_rng_state(mps)


def env_report(device: str | torch.device = "auto") -> dict[str, object]:
    """Versions, device, threads and datasets found, as a dict."""
    dev = pick_device(device)
    report: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "cuda": torch.version.cuda if torch.cuda.is_available() else "not available",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    for pkg in ("torch", "torchvision", "timm", "numpy", "matplotlib", "papermill", "nbval", "scikit-learn"):
        report[pkg] = _version(pkg)
    try:
        report["datasets"] = {k: v["present"] for k, v in available_datasets().items()}
    except Exception as err:  # the report must never fail
        report["datasets"] = f"unavailable ({err})"
    return report
