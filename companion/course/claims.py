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
import sys
import time
from html import escape
from pathlib import Path
from types import SimpleNamespace

from ..experiments.verdicts import WORDS, describe, fmt
from ..files import REPO, atomic_write
from .params import results_folder

KINDS = ("course", "source", "literature")
STRICT_ENV = "COMPANION_STRICT_CLAIMS"
MARKS = {"supported": "SUPPORTED", "contradicted": "CONTRADICTED", "inconclusive": "NOT SHOWN"}


def failed(claim: dict) -> bool:
    """The course's one failure rule for a recorded claim: a course claim that is not supported, or a
    contradicted source or literature statement left without the note that explains it (the results file, the
    runner and strict mode use it). An inconclusive statement is a finding, not a failure."""
    if claim["kind"] == "course":
        return claim.get("verdict", "supported" if claim["held"] else "inconclusive") != "supported"
    return claim.get("verdict") == "contradicted" and not claim["note"]


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

    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    text = (json.dumps(data, indent=2) + "\n").encode()
    return atomic_write(path, lambda f: f.write(text))


class Claims:
    """Collects a notebook's claims with measured numbers; `report()` prints and saves them.

    kind="course": a claim this course makes; it must be supported (strict mode raises otherwise).
    kind="source": a statement of the source text, `ref` naming its section; kind="literature": a published
    finding, `ref` naming author, year and venue. Both are put to the test and recorded whatever the verdict; a
    contradicted one needs a `note` explaining the finding (strict mode requires it).
    """

    def __init__(self, notebook: str, cfg: SimpleNamespace | None = None):
        self.notebook = notebook
        self.params = dict(cfg.params) if cfg is not None else {}
        self.results_dir = Path(cfg.results_dir) if cfg is not None else results_folder("results")
        self.start = cfg.start if cfg is not None else time.perf_counter()
        self.scale = cfg.scale if cfg is not None else None
        self.items: list[dict] = []
        self.demos: list[dict] = []
        self.metrics: dict[str, object] = {}

    def check(
        self,
        claim: str,
        measured: dict,
        verdict: dict,
        *,
        kind: str = "course",
        ref: str = "",
        note: str = "",
        short: str = "",
        deterministic: str = "",
    ) -> bool:
        """Record one claim, the numbers behind it and its verdict (a record of `companion.verdicts`: `paired`,
        `above`, `equivalent`, `combine`, ...); returns True when it is supported.

        `ref`: the source text's section (kind="source") or the citation (kind="literature"); `short`: the claim
        in at most 60 characters, for the one-page summary. `deterministic`: the reason, when the claim's numbers
        legitimately do not change with the seed (a seedless optimisation on a fixed function, say); the seed
        guard test otherwise treats seed-independent numbers as a demonstration posing as a claim.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind != "course" and not ref:
            raise ValueError(f"ref must name the source section or the citation of a {kind} claim, got ''")
        if not isinstance(verdict, dict) or verdict.get("verdict") not in MARKS:
            raise ValueError(
                f"verdict must be a record of companion.verdicts (paired, above, equivalent, combine), got {verdict!r}"
            )
        if len(short) > 60:
            raise ValueError(f"short must be at most 60 characters, got {len(short)}: {short!r}")
        item = {
            "claim": claim,
            "short": short,
            "kind": kind,
            "ref": ref,
            "verdict": verdict["verdict"],
            "held": verdict["verdict"] == "supported",
            "effect": _plain(verdict["effect"]),
            "ci": _plain(verdict["ci"]),
            "seeds": verdict["seeds"],
            "summary": describe(verdict),
            "measured": _plain({**measured, "verdict": verdict}),
            "note": note,
        }
        if deterministic:
            item["deterministic"] = deterministic
        self.items.append(item)
        return item["held"]

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
        """Course claims that are not supported, and contradicted statements left unexplained."""
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

    def counts(self) -> dict[str, dict[str, int]]:
        """{"course": {verdict: count}, "statements": {verdict: count}}: course claims apart from the source and
        literature statements put to the test."""
        out = {"course": dict.fromkeys(MARKS, 0), "statements": dict.fromkeys(MARKS, 0)}
        for c in self.items:
            out["course" if c["kind"] == "course" else "statements"][c["verdict"]] += 1
        return out

    def report(self, strict: bool | None = None) -> Path:
        """Print each demonstration and claim with its verdict, effect and interval, save the results file, raise
        in strict mode. The last line printed gives the results file's absolute path (a committed run's copy shows
        it relative to the notebook's folder: `runs.execute` keeps machine paths out of committed files)."""
        for d in self.demos:
            print(f"[{'SHOWN' if d['holds'] else 'BROKEN':12}] (demonstration) {d['demonstration']}")
            print(f"               measured: {json.dumps(d['measured'])}")
        for c in self.items:
            where = f" [{c['ref']}]" if c["ref"] else ""
            print(f"[{MARKS[c['verdict']]:12}] ({c['kind']}) {c['claim']}{where}")
            print(f"               measured: {json.dumps(c['measured'])}")
            print(f"               verdict: {c['summary']}")
            if c["note"]:
                print(f"               note: {c['note']}")
        path = self.save()
        n = self.counts()
        course, tested = n["course"], n["statements"]
        print(
            f"course claims: {course['supported']}/{sum(course.values())} supported; statements put to the test: "
            f"{tested['supported']} supported, {tested['contradicted']} contradicted, {tested['inconclusive']} not "
            f"shown at this scale; {len(self.demos)} demonstrations"
        )
        self._display_table()
        print(f"results written to {Path(path).absolute()}")
        strict = os.environ.get(STRICT_ENV, "") not in ("", "0") if strict is None else strict
        if strict and self.failures:
            raise AssertionError(
                f"{len(self.failures)} claim(s) failed: " + "; ".join(c["claim"] for c in self.failures)
            )
        return path

    def html(self) -> str:
        """The claims as an HTML table that wraps: claim, kind, verdict, effect with its interval, seeds."""
        rows = []
        for c in self.items:
            low, high = c["ci"]
            rows.append(
                "<tr>"
                f"<td>{escape(c['claim'])}{'<br><em>' + escape(c['ref']) + '</em>' if c['ref'] else ''}</td>"
                f"<td>{c['kind']}</td><td>{WORDS[c['verdict']]}</td>"
                f"<td>{fmt(c['effect'])} [{fmt(low)}, {fmt(high)}]</td><td>{c['seeds']}</td>"
                "</tr>"
            )
        return (
            '<table class="claims-table" style="table-layout:fixed;width:100%;word-wrap:break-word">'
            '<colgroup><col style="width:58%"><col style="width:9%"><col style="width:12%">'
            '<col style="width:15%"><col style="width:6%"></colgroup>'
            "<thead><tr><th>claim</th><th>kind</th><th>verdict</th><th>effect [95% CI]</th><th>seeds</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>"
        )

    def _display_table(self) -> None:
        """Show the HTML table when running inside a Jupyter kernel (the website renders it); a no-op elsewhere."""
        ipython = sys.modules.get("IPython")
        if self.items and ipython is not None and ipython.get_ipython() is not None:
            from IPython.display import HTML, display

            display(HTML(self.html()))
