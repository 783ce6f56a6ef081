"""The package's start-up stays light: importing it, or the command line, loads no notebook machinery (that the
core imports neither the experiments nor the course is checked by `lint-imports`, in `make lint`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def loaded(statement: str) -> set[str]:
    """Top-level names of the modules in sys.modules after running `statement` in a fresh interpreter."""
    code = (
        f"import sys, json\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import companion", {"papermill", "nbformat", "jupyter_client", "jupyter_core", "torch", "scipy"}),
        ("import companion.__main__", {"papermill", "nbformat", "torch", "scipy"}),
    ],
)
def test_imports_stay_light(statement, absent):
    assert loaded(statement) & absent == set()


def test_seeded_draws_as_seed_everything_and_restores_the_callers_streams():
    import random

    import numpy as np
    import torch

    from companion.device import seed_everything, seeded

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    seed_everything(7)
    expected = draws()
    seed_everything(123)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    with seeded(7):
        assert draws() == expected
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all() and torch.equal(torch.get_rng_state(), before[2])
    with seeded(None):  # unseeded: the caller's streams, advanced
        draws()
    assert random.getstate() != before[0]
    with pytest.raises(ValueError, match="^seed must be a non-negative integer or None, got -1$"), seeded(-1):
        pass
