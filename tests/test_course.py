"""The course as a whole: committed notebooks are fresh, the runner and sweeps work, installs agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from companion.course import COURSE, NOTEBOOK_DIR, parse_value, source_hash, summary, table

REPO = Path(__file__).resolve().parents[1]


def _nb(file: str) -> dict:
    return json.loads((NOTEBOOK_DIR / file).read_text())


def _code(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


@pytest.mark.parametrize("file", [nb.file for nb in COURSE])
def test_committed_notebook_is_fresh_and_well_formed(file):
    nb = _nb(file)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert nb["metadata"].get("companion", {}).get("source_hash") == source_hash(nb), (
        f"{file}: code changed since its outputs were produced; run `make notebooks NB={file[:2]}`"
    )
    assert nb["metadata"].get("papermill", {}).get("parameters", {}) == {}, (
        "committed outputs must use the notebook's own parameters"
    )
    assert all(c.get("execution_count") for c in code), "every code cell is executed in the committed copy"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"error outputs committed: {[e.get('ename') for e in errors]}"
    tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = _code(nb["cells"][tagged[0]])
    for name in ("SEED", "DEVICE", "SCALE", "DATA_DIR", "RESULTS_DIR"):
        assert re.search(rf"^{name}: \w+ = .+  # .+", params, re.M), (
            f"parameter {name} missing, untyped or uncommented"
        )
    assert 'DEVICE: str = "auto"' in params and 'SCALE: str = "auto"' in params
    assert "setup(" in _code(nb["cells"][tagged[0] + 1]), "the validation cell follows the parameters cell"
    header = "".join(nb["cells"][0]["source"])
    assert "**Goal.**" in header and "**Prerequisites.**" in header and "**Expected time.**" in header
    assert "claims.report()" in _code(code[-1]), "the last code cell reports the claims"
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for part in ("Exercises", "Summary", "What we learned", "References", "http"):
        assert part in markdown, (
            f"{file}: no {part!r} in the markdown (every notebook has exercises, a summary and linked references)"
        )
    assert any("solution" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), (
        "exercise solutions are tagged 'solution'"
    )
    assert str(REPO) not in (NOTEBOOK_DIR / file).read_text(), "no absolute path of the machine that ran it"
    assert not {"input_path", "output_path"} & set(nb["metadata"].get("papermill", {})), (
        "papermill's paths are stripped"
    )


@pytest.mark.parametrize("file", [nb.file for nb in COURSE])
def test_papermill_sees_every_parameter(file):
    import papermill as pm

    nb = _nb(file)
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = re.findall(r"^([A-Z][A-Z0-9_]*):", _code(cell), re.M)
    found = pm.inspect_notebook(str(NOTEBOOK_DIR / file))
    assert sorted(found) == sorted(names)
    assert all(p["help"] for p in found.values()), "every parameter has a comment"


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("course_cnn_s") == "course_cnn_s" and parse_value("'quick'") == "quick"


def test_summary_and_table(tmp_path):
    (tmp_path / "01_definitions.json").write_text(
        json.dumps(
            {
                "parameters": {"SEED": 3},
                "scale": "quick",
                "claims": [
                    {"held": True, "kind": "course", "verdict": "supported", "note": ""},
                    {"held": False, "kind": "source", "verdict": "contradicted", "note": "why"},
                    {"held": False, "kind": "literature", "verdict": "inconclusive", "note": ""},
                ],
                "demonstrations": [{"demonstration": "an identity", "measured": {}, "holds": True}],
            }
        )
    )
    row = summary("01_definitions", tmp_path, 90.0)
    assert (row["course_supported"], row["course"], row["failures"], row["minutes"], row["demos"]) == (
        1,
        1,
        0,
        1.5,
        1,
    )
    assert row["statements"] == {"supported": 0, "contradicted": 1, "inconclusive": 1}
    text = table([row])
    assert "01_definitions" in text and "1/1 supported" in text and "0 / 1 / 1" in text
    assert "held" not in text


def _run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "companion", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_sweep_runs_once_per_value(tmp_path):
    proc = _run("sweep", "00", "-p", "SEED", "1", "2", "--scale", "quick", "--out", str(tmp_path))
    seeds = sorted(
        json.loads(f.read_text())["parameters"]["SEED"] for f in (tmp_path / "results").rglob("*.json")
    )
    assert seeds == [1, 2]
    assert proc.stdout.count("00_start_here") == 2


def test_bad_parameter_stops_before_training_with_one_line(tmp_path):
    proc = _run("run", "00", "-p", "EPOCHS", "-1", "--out", str(tmp_path), check=False)
    assert proc.returncode != 0
    assert "EPOCHS must be a non-negative integer (0 or None: the scale's default), got -1" in proc.stderr
    assert not list((tmp_path / "results").rglob("*.json")), "no results file from a refused run"
    assert not list(tmp_path.glob("*.ipynb")), (
        "refused before papermill starts: no cell ran, no notebook written"
    )


def test_install_files_name_the_same_packages():
    def names(lines):
        return {
            re.split(r"[<>=\[ ]", ln.strip(), maxsplit=1)[0].lower()
            for ln in lines
            if ln.strip() and not ln.strip().startswith(("#", "-"))
        }

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = names(project["dependencies"] + project["optional-dependencies"]["dev"])
    locked = names((REPO / "requirements-lock.txt").read_text().splitlines())
    env = (REPO / "environment.yml").read_text().split("- pip:")[1]
    conda = names(ln.strip()[2:] for ln in env.splitlines() if ln.strip().startswith("- "))
    assert declared == locked == conda
    assert all(
        "==" in ln
        for ln in (REPO / "requirements-lock.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    )


def test_ci_calls_the_readme_test_command():
    assert "make test" in (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "COMPANION_DATA_MIRROR" in ci


def test_runtimes_are_measured_and_shown_identically_in_headers_and_readme():
    from companion.course import RUNTIMES, expected_time, runtimes

    measured = runtimes()
    readme = (REPO / "README.md").read_text()
    for nb in COURSE:
        assert "cpu" in measured.get(nb.stem, {}), (
            f"{nb.file}: no measured CPU runtime in {RUNTIMES.name}; run `make notebooks NB={nb.file[:2]}`"
        )
        header = "".join(_nb(nb.file)["cells"][0]["source"])
        assert expected_time(nb) in header, (
            f"{nb.file}: header runtime differs from {RUNTIMES.name}; run `python -m companion runtimes`"
        )
        assert f"| {nb.stem} | {nb.title} | {nb.cpu_minutes:g} |" in readme, (
            f"README row of {nb.stem} is stale"
        )


def test_expected_time_uses_cpu_time_on_a_busy_machine(tmp_path, monkeypatch):
    import companion.course as course

    monkeypatch.setattr(course, "RUNTIMES", tmp_path / "runtimes.json")
    nb = course.Notebook("99_x.ipynb", "x")
    assert nb.cpu_minutes is None and "not yet measured on a CPU" in course.expected_time(nb)
    (tmp_path / "runtimes.json").write_text(
        json.dumps(
            {
                "99_x": {
                    "cpu": {"wall_s": 300.0, "cpu_s": 120.0, "load": 6.0, "cores": 2, "scale": "quick"},
                    "gpu": {"wall_s": 30.0, "cpu_s": 40.0, "load": 0.5, "cores": 16, "scale": "full"},
                }
            }
        )
    )
    assert (nb.cpu_minutes, nb.gpu_minutes) == (2.0, 0.5)
    assert "about 2 minutes on a 2-core CPU" in course.expected_time(nb)


@pytest.mark.parametrize("file", [nb.file for nb in COURSE])
def test_every_size_and_epoch_parameter_has_a_declared_range(file):
    from companion.params import _is_count

    nb = _nb(file)
    i = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", []))
    names = re.findall(r"^([A-Z_][A-Z0-9_]*): (?:int|list)", _code(nb["cells"][i]), re.M)
    setup_cell = _code(nb["cells"][i + 1])
    bounds = re.search(r"bounds=\{(.*?)\}", setup_cell, re.S)
    missing = [
        n for n in names if _is_count(n) and n != "SEED" and not (bounds and f'"{n}"' in bounds.group(1))
    ]
    assert not missing, f"{file}: no range declared in setup(bounds=...) for {missing}"
