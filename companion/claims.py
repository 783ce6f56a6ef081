"""Claims measured by a notebook, printed as a table and written to its results file (every notebook)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

from .data import atomic_write

KINDS = ("course", "source")
STRICT_ENV = "COMPANION_STRICT_CLAIMS"


def _plain(value):
    """Numbers, strings, lists and dicts only (tensors and numpy scalars become floats)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, str, int)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    text = (json.dumps(data, indent=2) + "\n").encode()
    return atomic_write(path, lambda f: f.write(text))


class Claims:
    """Collects a notebook's claims with measured numbers; `report()` prints and saves them (every notebook).

    kind="course": a claim this course makes; it must hold (strict mode raises otherwise).
    kind="source": a statement of the source text put to the test; when our numbers contradict it, it is
    recorded with held=False and a `note` explaining the finding (strict mode requires that note).
    """

    def __init__(self, notebook: str, cfg: SimpleNamespace | None = None):
        self.notebook = notebook
        self.params = dict(cfg.params) if cfg is not None else {}
        self.results_dir = Path(cfg.results_dir) if cfg is not None else Path("results")
        self.start = cfg.start if cfg is not None else time.perf_counter()
        self.scale = cfg.scale if cfg is not None else None
        self.items: list[dict] = []
        self.metrics: dict[str, object] = {}

    def check(self, claim: str, measured: dict, held: bool, *, kind: str = "course", note: str = "") -> bool:
        """Record one claim, the numbers behind it and whether it held; returns `held`."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.items.append(
            {"claim": claim, "kind": kind, "measured": _plain(measured), "held": bool(held), "note": note}
        )
        return bool(held)

    def metric(self, name: str, value) -> None:
        """Record a measured number that is not itself a claim (it goes to the results file)."""
        self.metrics[name] = _plain(value)

    @property
    def failures(self) -> list[dict]:
        """Course claims that did not hold, and contradicted source statements left unexplained."""
        return [c for c in self.items if not c["held"] and (c["kind"] == "course" or not c["note"])]

    def save(self, path: str | Path | None = None) -> Path:
        """Write the results file: {notebook, parameters, scale, metrics, claims, runtime_s}."""
        data = {
            "notebook": self.notebook,
            "parameters": _plain(self.params),
            "scale": self.scale,
            "metrics": self.metrics,
            "claims": self.items,
            "runtime_s": round(time.perf_counter() - self.start, 2),
        }
        return write_json(Path(path) if path else self.results_dir / f"{self.notebook}.json", data)

    def report(self, strict: bool | None = None) -> Path:
        """Print each claim with its numbers and verdict, save the results file, raise in strict mode."""
        for c in self.items:
            mark = "HELD" if c["held"] else "NOT HELD"
            print(f"[{mark:8}] ({c['kind']}) {c['claim']}")
            print(f"           measured: {json.dumps(c['measured'])}")
            if c["note"]:
                print(f"           note: {c['note']}")
        path = self.save()
        held = sum(c["held"] for c in self.items)
        print(f"{held}/{len(self.items)} claims held; results written to {path}")
        strict = os.environ.get(STRICT_ENV, "") not in ("", "0") if strict is None else strict
        if strict and self.failures:
            raise AssertionError(f"{len(self.failures)} claim(s) failed: " + "; ".join(c["claim"] for c in self.failures))
        return path
