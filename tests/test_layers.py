"""The package's start-up stays light: importing it, or the command line, loads no notebook machinery (that the
core imports neither the experiments nor the course is checked by `lint-imports`, in `make lint`)."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tokenize
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


CHAPTER = re.compile(r"\bnotebooks? \(?\d\d|\b\d\d_[a-z_]+\.ipynb\b", re.IGNORECASE)


def test_no_docstring_or_comment_names_a_notebook_by_number():
    """Docstrings say what a function does, never which notebook uses it (the website's "used in" index does)."""
    found = []
    for path in sorted((REPO / "companion").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False) or ""
                if match := CHAPTER.search(doc):
                    found.append(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 1)}: {match.group()!r}")
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT and (match := CHAPTER.search(token.string)):
                found.append(f"{path.relative_to(REPO)}:{token.start[0]}: {match.group()!r}")
    assert found == []


def test_the_chapter_pattern_catches_the_usual_forms():
    for text in [
        "(notebook 04)",
        "notebooks 02, 05 and 07",
        "Notebook 08 compares",
        "see 05_how_transfer_helps.ipynb",
    ]:
        assert CHAPTER.search(text), text
    for text in [
        "the notebook's parameters cell",
        "notebooks/results/",
        "a notebook of 12 cells",
    ]:
        assert not CHAPTER.search(text), text
