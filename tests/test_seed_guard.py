"""Every claim can fail: each course notebook is rerun at another seed through the runner (issue 7's guard).

A claim is an outcome that could have come out the other way. If a claim's measured numbers are identical at
SEED 0 (the committed run) and SEED 1, nothing in it depended on the randomness of the experiment: it is a
demonstration posing as a claim, unless the notebook marks it `deterministic="reason"` (a seedless optimisation
on a fixed function, say). The rerun is also the papermill test of every notebook: its course claims must hold
at the second seed too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from companion.course.catalog import COURSE, NOTEBOOK_DIR

REPO = Path(__file__).resolve().parents[1]
OTHER_SEED = 1
_LINE = re.compile(r"^\[(SUPPORTED|CONTRADICTED|NOT SHOWN)\s*\] \((course|source|literature)\) (.*)$")


def committed_claims(file: str) -> list[dict]:
    """The claims printed by the committed notebook's claims cell: [{"claim", "kind", "held", "measured"}]."""
    nb = json.loads((NOTEBOOK_DIR / file).read_text())
    cell = [c for c in nb["cells"] if c["cell_type"] == "code"][-1]
    text = "".join(
        "".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream"
    )
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m:
            measured = lines[i + 1].strip().removeprefix("measured: ")
            found.append(
                {"held": m[1] == "SUPPORTED", "kind": m[2], "claim": m[3], "measured": json.loads(measured)}
            )
    return found


def test_committed_claims_are_parsed():
    claims = committed_claims(COURSE[1].file)
    assert claims and all(isinstance(c["measured"], dict) for c in claims)


@pytest.mark.slow
@pytest.mark.parametrize("file", [nb.file for nb in COURSE])
def test_claims_hold_and_move_at_another_seed(file, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "companion",
            "run",
            f"notebooks/{file}",
            "-p",
            "SEED",
            str(OTHER_SEED),
            "--scale",
            "quick",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, (
        f"{file} at SEED={OTHER_SEED}: a course claim failed or the run broke\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    stem = Path(file).stem
    assert len(list(tmp_path.glob(f"{stem}--SCALE=quick-SEED={OTHER_SEED}-*.ipynb"))) == 1
    files = list((tmp_path / "results").rglob(f"{stem}.json"))
    assert len(files) == 1
    rerun = json.loads(files[0].read_text())
    assert rerun["parameters"]["SEED"] == OTHER_SEED and rerun["scale"] == "quick"
    committed = committed_claims(file)
    assert len(committed) == len(rerun["claims"]), (
        f"{file}: committed outputs list other claims; re-execute it"
    )
    frozen = [
        c["claim"]
        for c, c0 in zip(rerun["claims"], committed)
        if not c.get("deterministic") and c["measured"] == c0["measured"]
    ]
    assert not frozen, (
        f"{file}: measured numbers identical at SEED 0 and SEED {OTHER_SEED} (a demonstration, or mark it "
        f"deterministic with a reason): {frozen}"
    )


@pytest.mark.parametrize("file", [nb.file for nb in COURSE])
def test_committed_results_file_matches_the_committed_outputs(file):
    """notebooks/results/ keeps the results file of each committed run (what notebook 12 draws its numbers from)."""
    from companion.course.catalog import COMMITTED_RESULTS

    path = COMMITTED_RESULTS / f"{Path(file).stem}.json"
    assert path.exists(), f"{path.name} missing: run `make notebooks NB={file[:2]}`"
    saved = json.loads(path.read_text())
    printed = committed_claims(file)
    assert saved["parameters"].get("SEED", 0) == 0 and saved["scale"] == "quick"
    assert [
        (c["claim"] + (f" [{c['ref']}]" if c.get("ref") else ""), c["held"], c["measured"])
        for c in saved["claims"]
    ] == [(c["claim"], c["held"], c["measured"]) for c in printed], (
        f"{path.name} is not the results file of the committed run; re-execute {file}"
    )
