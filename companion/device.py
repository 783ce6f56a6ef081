"""Device choice, seeding and the environment report (taught in notebook 00, start here)."""

from __future__ import annotations

import os
import platform
import random
from importlib import metadata

import numpy as np
import torch

from .store import available_datasets

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(spec: str | torch.device = "auto") -> torch.device:
    """Return CUDA, else MPS, else CPU for "auto", or the named device (notebook 00)."""
    if isinstance(spec, torch.device):
        return spec
    name = str(spec).lower()
    if name.split(":")[0] not in DEVICE_CHOICES:
        raise ValueError(f"DEVICE must be one of {DEVICE_CHOICES} (optionally 'cuda:N'), got {spec!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={spec!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("DEVICE='mps' was asked for but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same (notebook 00)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"SEED must be a non-negative integer, got {seed!r}")
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


def env_report(device: str | torch.device = "auto") -> dict[str, object]:
    """Versions, device, threads and datasets found, as a dict (printed in notebook 00)."""
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
