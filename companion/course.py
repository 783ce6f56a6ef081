"""The course runner: execute notebooks with papermill and gather their claims into one table (notebook 00)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .params import REPO

NOTEBOOK_DIR = REPO / "notebooks"


@dataclass(frozen=True)
class Notebook:
    """One course notebook with its expected minutes on a 2-core CPU (quick scale) and on a GPU (full)."""

    file: str
    title: str
    cpu_minutes: float
    gpu_minutes: float


COURSE = [
    Notebook("00_start_here.ipynb", "Start here: environment, course map, a first training run", 1.0, 0.5),
    Notebook("01_definitions.ipynb", "Definitions: transfer vs multi-task learning side by side", 1.5, 0.5),
    Notebook("02_understanding_transfer.ipynb", "Understanding transfer: four strategies, which layers transfer, near vs far sources", 1.5, 3),
    Notebook("03_multitask_approaches.ipynb", "Multi-task approaches: hard sharing, cross-stitch, L2-tied towers, MMoE vs separate models", 1.0, 3),
    Notebook("05_how_transfer_helps.ipynb", "How transfer helps: label efficiency, faster convergence, the gap at full data", 2.5, 4),
    Notebook("06_benefits_of_mtl.ipynb", "Benefits of multi-task learning: generalisation, overfitting, data efficiency, convergence", 1.5, 6),
    Notebook("07_applications_of_transfer.ipynb", "Applications: a real ImageNet backbone on animal silhouettes; where transfer is used", 1.5, 2),
    Notebook("08_mtl_use_cases.ipynb", "MTL use cases: a perception toy with mixed losses, multi-label scans", 1.5, 4),
]


def notebooks(names: list[str] | None = None) -> list[Path]:
    """Resolve notebook names, prefixes ("01") or paths to files; all course notebooks when empty."""
    if not names:
        return [NOTEBOOK_DIR / nb.file for nb in COURSE]
    found = []
    for name in names:
        path = Path(name)
        if path.is_file():
            found.append(path.resolve())
            continue
        matches = sorted(NOTEBOOK_DIR.glob(f"{name}*.ipynb"))
        if len(matches) != 1:
            known = ", ".join(nb.file for nb in COURSE)
            raise ValueError(f"notebook {name!r} matches {len(matches)} files; use one of: {known}")
        found.append(matches[0])
    return found


def parse_value(text: str):
    """Parse a command-line parameter value: Python literal if it is one ("3", "0.5", "[1, 2]"), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def source_hash(nb: dict) -> str:
    """Hash of all code cells' sources: the committed outputs are fresh when it matches (tests)."""
    code = [c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256("\n\x00".join(code).encode()).hexdigest()[:16]


def execute(path: Path, out: Path, parameters: dict | None = None, *, progress: bool = False) -> float:
    """Run one notebook with papermill (kernel cwd = notebooks/); returns the wall time in seconds."""
    import papermill as pm

    out.parent.mkdir(parents=True, exist_ok=True)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures inline even if Agg is set
    t0 = time.perf_counter()
    pm.execute_notebook(
        str(path), str(out), parameters=parameters or {}, cwd=str(NOTEBOOK_DIR), progress_bar=progress,
        kernel_name="python3",
    )
    seconds = time.perf_counter() - t0
    if not parameters:  # an unparameterised run may stand as the committed copy: stamp what produced it
        nb = json.loads(out.read_text())
        nb["metadata"].setdefault("companion", {})["source_hash"] = source_hash(nb)
        out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return seconds


def _tag(params: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in sorted(params.items())) or "default"


def run(
    names: list[str] | None = None,
    *,
    scale: str = "auto",
    out: str | Path = "build",
    params: dict | None = None,
    inplace: bool = False,
) -> list[dict]:
    """Execute notebooks (optionally with parameters) and return one summary row each (make course)."""
    if scale not in ("quick", "full", "auto"):
        raise ValueError(f"--scale must be one of ['quick', 'full', 'auto'], got {scale!r}")
    out = Path(out).resolve()
    rows = []
    for path in notebooks(names):
        given = dict(params or {})
        if scale != "auto":
            given["SCALE"] = scale
        if inplace:
            if given:
                raise ValueError("--inplace runs notebooks with their own parameters only; drop -p and --scale")
            results = REPO / "results"  # the notebook's own RESULTS_DIR default
            seconds = execute(path, path)
        else:
            results = out / "results" / path.stem / _tag(given)
            given["RESULTS_DIR"] = str(results)
            target = out / (path.stem + ("" if len(given) == 1 else "--" + _tag({k: v for k, v in given.items() if k != "RESULTS_DIR"})) + ".ipynb")
            seconds = execute(path, target, given)
        rows.append(summary(path.stem, results, seconds))
    return rows


def sweep(name: str, param: str, values: list, *, scale: str = "auto", out: str | Path = "build", params: dict | None = None) -> list[dict]:
    """Run one notebook once per value of one parameter; one summary row per run."""
    rows = []
    for value in values:
        rows += run([name], scale=scale, out=out, params={**(params or {}), param: value})
    return rows


def summary(notebook: str, results_dir: Path, seconds: float) -> dict:
    """Read a run's results file into a row: notebook, parameters, minutes, claims held / total, demonstrations."""
    files = sorted(Path(results_dir).glob(f"{notebook}.json"))
    row = {"notebook": notebook, "minutes": round(seconds / 60, 2), "held": 0, "total": 0, "failures": 0,
           "demos": 0, "parameters": {}}
    for f in files:
        data = json.loads(f.read_text())
        row["parameters"] = {**data.get("parameters", {}), "SCALE": data.get("scale")}
        row["held"] += sum(bool(c["held"]) for c in data.get("claims", []))
        row["total"] += len(data.get("claims", []))
        row["failures"] += sum(not c["held"] and (c["kind"] == "course" or not c["note"]) for c in data.get("claims", []))
        row["demos"] += len(data.get("demonstrations", []))
        row["failures"] += sum(not d["holds"] for d in data.get("demonstrations", []))
    return row


def table(rows: list[dict]) -> str:
    """Format summary rows as a plain-text table (demonstrations are counted apart from claims)."""
    lines = [f"{'notebook':32} {'parameters':28} {'minutes':>8} {'claims held':>12} {'demonstrations':>15}"]
    for r in rows:
        extra = {k: v for k, v in r["parameters"].items() if k in ("SEED", "SCALE")}
        lines.append(
            f"{r['notebook']:32} {json.dumps(extra):28} {r['minutes']:8.2f} {r['held']:>6}/{r['total']:<5} "
            f"{r.get('demos', 0):>15}"
        )
    return "\n".join(lines)
