"""Claims measured by a notebook, printed as a table and written to its results file (every notebook).

Two things are recorded, and kept apart:

- a **claim** (`Claims.check`) is an outcome that could have come out the other way: a comparison of methods, a
  measured effect. Comparisons of methods are measured over several seeds; `separated` is the course's rule for
  "A beats B": better at every seed, by a mean margin larger than either method's seed spread.
- a **demonstration** (`Claims.demonstrate`) is a fact fixed by construction: an identity (the gradient of a sum
  is the sum of gradients), a parameter count, a number that follows by arithmetic from a setting. It is shown
  and verified, but never counted as a claim.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

from .files import atomic_write

KINDS = ("course", "source")
STRICT_ENV = "COMPANION_STRICT_CLAIMS"


def spread(values) -> float:
    """Seed spread of one method: max - min of its per-seed values (what the figures' bands show)."""
    v = [float(x) for x in values]
    return max(v) - min(v) if v else 0.0


def separated(better, worse) -> dict:
    """The course's rule for "A beats B" over seeds (paired by seed): `held` when A is higher at every seed and
    the mean margin exceeds the larger of the two seed spreads (max - min). Returns the numbers behind it.

    Pass negated values (or swap the arguments) when lower is better.
    """
    a, b = [float(x) for x in better], [float(x) for x in worse]
    if len(a) != len(b) or not a:
        raise ValueError(
            f"separated needs two equally long, non-empty per-seed lists, got {len(a)} and {len(b)}"
        )
    diffs = [x - y for x, y in zip(a, b)]
    margin = sum(diffs) / len(diffs)
    noise = max(spread(a), spread(b))
    return {
        "held": all(d > 0 for d in diffs) and margin > noise,
        "margin": margin,
        "min_paired_gain": min(diffs),
        "spread": noise,
        "seeds": len(a),
    }


def failed(claim: dict) -> bool:
    """The course's one failure rule for a recorded claim: a course claim that did not hold, or a contradicted
    source statement left without the note that explains it (the results file, the runner and strict mode use it)."""
    return not claim["held"] and (claim["kind"] == "course" or not claim["note"])


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


def _shown(path: Path) -> str:
    """A path as printed in committed outputs: relative to the repository when inside it."""
    from .params import REPO

    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


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
        self.demos: list[dict] = []
        self.metrics: dict[str, object] = {}

    def check(
        self,
        claim: str,
        measured: dict,
        held: bool,
        *,
        kind: str = "course",
        note: str = "",
        deterministic: str = "",
    ) -> bool:
        """Record one claim, the numbers behind it and whether it held; returns `held`.

        `deterministic`: the reason, when the claim's numbers legitimately do not change with the seed (a seedless
        optimisation on a fixed function, say); the seed guard test otherwise treats seed-independent numbers as
        a demonstration posing as a claim.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        item = {"claim": claim, "kind": kind, "measured": _plain(measured), "held": bool(held), "note": note}
        if deterministic:
            item["deterministic"] = deterministic
        self.items.append(item)
        return bool(held)

    def demonstrate(self, fact: str, measured: dict, holds: bool) -> bool:
        """Record a demonstration: a fact fixed by construction (an identity, a count, arithmetic from a setting).

        It is verified (strict mode raises when it does not hold: that is a bug) but never counted as a claim.
        """
        self.demos.append({"demonstration": fact, "measured": _plain(measured), "holds": bool(holds)})
        return bool(holds)

    def metric(self, name: str, value) -> None:
        """Record a measured number that is not itself a claim (it goes to the results file)."""
        self.metrics[name] = _plain(value)

    @property
    def failures(self) -> list[dict]:
        """Course claims that did not hold, and contradicted source statements left unexplained."""
        bad = [c for c in self.items if failed(c)]
        return bad + [{"claim": d["demonstration"], **d} for d in self.demos if not d["holds"]]

    def save(self, path: str | Path | None = None) -> Path:
        """Write the results file: {notebook, parameters, scale, metrics, claims, demonstrations, runtime_s}."""
        data = {
            "notebook": self.notebook,
            "parameters": _plain(self.params),
            "scale": self.scale,
            "metrics": self.metrics,
            "claims": self.items,
            "demonstrations": self.demos,
            "runtime_s": round(time.perf_counter() - self.start, 2),
        }
        return write_json(Path(path) if path else self.results_dir / f"{self.notebook}.json", data)

    def report(self, strict: bool | None = None) -> Path:
        """Print each demonstration and claim with its numbers and verdict, save the results file, raise in strict
        mode. The results file's path is printed relative to the repository (no machine paths in outputs)."""
        for d in self.demos:
            print(f"[{'SHOWN' if d['holds'] else 'BROKEN':8}] (demonstration) {d['demonstration']}")
            print(f"           measured: {json.dumps(d['measured'])}")
        for c in self.items:
            mark = "HELD" if c["held"] else "NOT HELD"
            print(f"[{mark:8}] ({c['kind']}) {c['claim']}")
            print(f"           measured: {json.dumps(c['measured'])}")
            if c["note"]:
                print(f"           note: {c['note']}")
        path = self.save()
        held = sum(c["held"] for c in self.items)
        course = [c for c in self.items if c["kind"] == "course"]
        print(
            f"{held}/{len(self.items)} claims held ({sum(c['held'] for c in course)}/{len(course)} course claims, "
            f"{len(self.items) - len(course)} source statements tested); {len(self.demos)} demonstrations; "
            f"results written to {_shown(path)}"
        )
        strict = os.environ.get(STRICT_ENV, "") not in ("", "0") if strict is None else strict
        if strict and self.failures:
            raise AssertionError(
                f"{len(self.failures)} claim(s) failed: " + "; ".join(c["claim"] for c in self.failures)
            )
        return path
