"""The runner's summary of results files: one row per run (course claims supported, statements by verdict,
demonstrations, failures) and the plain-text table the command line prints."""

from __future__ import annotations

import json
from pathlib import Path

from ..experiments.verdicts import VERDICTS
from .claims import failed


def _empty_counts() -> dict:
    return {"course": 0, "course_supported": 0, "statements": dict.fromkeys(VERDICTS, 0)}


def summary(notebook: str, results_dir: Path, seconds: float) -> dict:
    """Read a run's results file into a row: notebook, parameters, minutes, course claims supported / total, the
    verdicts of the statements put to the test (source and literature), demonstrations, failures."""
    files = sorted(Path(results_dir).glob(f"{notebook}.json"))
    row = {
        "notebook": notebook,
        "minutes": round(seconds / 60, 2),
        **_empty_counts(),
        "failures": 0,
        "demos": 0,
        "parameters": {},
    }
    for f in files:
        data = json.loads(f.read_text())
        row["parameters"] = {**data.get("parameters", {}), "SCALE": data.get("scale")}
        for c in data.get("claims", []):
            if c["kind"] == "course":
                row["course"] += 1
                row["course_supported"] += c.get("verdict") == "supported"
            else:
                row["statements"][c.get("verdict", "inconclusive")] += 1
        row["failures"] += sum(failed(c) for c in data.get("claims", []))
        row["demos"] += len(data.get("demonstrations", []))
        row["failures"] += sum(not d["holds"] for d in data.get("demonstrations", []))
    return row


def table(rows: list[dict]) -> str:
    """Format summary rows as a plain-text table: course claims supported apart from the statements put to the
    test (supported / contradicted / not shown at this scale), and demonstrations apart from both."""
    head = f"{'notebook':28} {'parameters':26} {'minutes':>7} {'course claims':>14}  {'statements: sup/con/not shown':>30} {'demos':>6}"
    lines = [head]
    for r in rows:
        extra = {k: v for k, v in r["parameters"].items() if k in ("SEED", "SCALE")}
        st = r["statements"]
        course = f"{r['course_supported']}/{r['course']} supported"
        tested = f"{st['supported']} / {st['contradicted']} / {st['inconclusive']}"
        lines.append(
            f"{r['notebook']:28} {json.dumps(extra):26} {r['minutes']:7.2f} {course:>14}  {tested:>30} "
            f"{r.get('demos', 0):>6}"
        )
    return "\n".join(lines)


def verdict_line(row: dict) -> str:
    """A summary row's verdicts in words: course claims supported, statements by outcome."""
    st = row["statements"]
    return (
        f"course claims {row['course_supported']}/{row['course']} supported; statements {st['supported']} "
        f"supported, {st['contradicted']} contradicted, {st['inconclusive']} not shown at this scale"
    )
