"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
import torch

# pytest-xdist already keeps every core busy: runs asked of protocol.per_seed stay in the test's own process (the
# default would add one worker process per core), and so do the notebooks the seed guard runs
os.environ.setdefault("COMPANION_SEED_WORKERS", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one CPU thread is faster, and much faster on a shared machine (used with usefixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
