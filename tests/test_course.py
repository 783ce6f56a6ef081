"""The course as a whole: committed notebooks are fresh, the runner and sweeps work, installs agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.course.catalog import COURSE, NOTEBOOK_DIR
from companion.course.runner import parse_value
from companion.course.runs import source_hash
from companion.course.summary import summary, table

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


def test_nbval_markers_are_cell_tags_not_comments():
    """Learners never see an ``# NBVAL_...`` comment: the cells whose output nbval compares carry its cell tag, which
    nbval itself reads (its own parser, so a tag it would ignore fails here)."""
    from nbval.plugin import find_comment_markers, find_metadata_tags

    checked = []
    for nb in COURSE:
        for i, cell in enumerate(_nb(nb.file)["cells"]):
            if cell["cell_type"] != "code":
                continue
            assert not dict(find_comment_markers(_code(cell))), (
                f"{nb.file} cell {i}: an NBVAL comment, not a tag"
            )
            assert "NBVAL_" not in _code(cell), f"{nb.file} cell {i}: an NBVAL marker left in the source"
            if dict(find_metadata_tags(cell["metadata"])).get("check"):
                checked.append(nb.stem)
    assert {"00_start_here", "01_definitions"} <= set(checked), f"cells nbval compares: {checked}"


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


@pytest.mark.slow  # the command line in a subprocess: about 30 s on a busy 2-core machine
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
    extras = project["optional-dependencies"]
    assert {"companion[course,site]"} <= set(extras["dev"]), "the dev extra installs everything"
    declared = names(project["dependencies"] + [d for deps in extras.values() for d in deps]) - {"companion"}
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
    from companion.course.catalog import RUNTIMES, expected_time, runtimes

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
    from companion.course import catalog
    from companion.course.catalog import Notebook

    monkeypatch.setattr(catalog, "RUNTIMES", tmp_path / "runtimes.json")
    nb = Notebook("99_x.ipynb", "x")
    assert nb.cpu_minutes is None and "not yet measured on a CPU" in catalog.expected_time(nb)
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
    assert "about 2 minutes on a 2-core CPU" in catalog.expected_time(nb)


@pytest.mark.parametrize("file", [nb.file for nb in COURSE])
def test_every_size_and_epoch_parameter_has_a_declared_range(file):
    from companion.course.params import _is_count

    nb = _nb(file)
    i = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", []))
    names = re.findall(r"^([A-Z_][A-Z0-9_]*): (?:int|list)", _code(nb["cells"][i]), re.M)
    setup_cell = _code(nb["cells"][i + 1])
    bounds = re.search(r"bounds=\{(.*?)\}", setup_cell, re.S)
    missing = [
        n for n in names if _is_count(n) and n != "SEED" and not (bounds and f'"{n}"' in bounds.group(1))
    ]
    assert not missing, f"{file}: no range declared in setup(bounds=...) for {missing}"


# --- the workshop plan's reading table and sessions (companion.workshop, docs/teaching.md) ----------------------


def _markdown_words(file: str) -> int:
    import nbformat

    nb = nbformat.read(NOTEBOOK_DIR / file, as_version=4)
    return sum(len(re.findall(r"\S+", c.source)) for c in nb.cells if c.cell_type == "markdown")


def _cpu_minutes(stem: str) -> float:
    run = json.loads((NOTEBOOK_DIR / "runtimes.json").read_text())[stem]["cpu"]
    seconds = run["cpu_s"] if run["load"] > run["cores"] else run["wall_s"]
    return round(seconds / 60, 1)


def test_reading_and_machine_minutes_are_the_notebooks_and_runtimes():
    from companion.course import workshop

    rows = workshop.reading_table().splitlines()[2:-1]
    assert len(rows) == len(COURSE)
    for nb, row in zip(COURSE, rows, strict=True):
        words = _markdown_words(nb.file)
        reading, machine = round(words / 200, 1), _cpu_minutes(nb.stem)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:] == [
            nb.stem,
            str(words),
            f"{reading:g}",
            f"{machine:g}",
            f"{round(reading + machine, 1):g}",
        ]
    loads = [round(_markdown_words(nb.file) / 200, 1) + _cpu_minutes(nb.stem) for nb in COURSE]
    groups = workshop.balanced_split(loads, workshop.SESSIONS)
    summary = workshop.session_plan().splitlines()[2 : 2 + workshop.SESSIONS]
    for group, line in zip(groups, summary, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        first, last = COURSE[group[0]].stem[:2], COURSE[group[-1]].stem[:2]
        assert cells[1] == (first if first == last else f"{first} to {last}")
        assert float(cells[5]) == pytest.approx(sum(loads[i] for i in group), abs=0.051)


def test_balanced_split_reference_values():
    from companion.course.workshop import balanced_split

    assert balanced_split([1, 2, 3, 4, 5, 6, 7, 8, 9], 3) == [[0, 1, 2, 3, 4], [5, 6], [7, 8]]  # 15, 13, 17
    # several splits reach the least largest session (5); the most even one is kept: 5 | 2 | 2
    assert balanced_split([5, 1, 1, 1, 1], 3) == [[0], [1, 2], [3, 4]]
    assert balanced_split([2.5, 2.5], 1) == [[0, 1]] and balanced_split([3, 1], 2) == [[0], [1]]
    with pytest.raises(ValueError, match="sessions must be between 1 and the number of loads"):
        balanced_split([1, 2], 3)
    with pytest.raises(ValueError, match="loads must be finite and non-negative"):
        balanced_split([1, -2], 1)


@given(
    st.lists(st.integers(0, 40).map(lambda x: x / 4), min_size=1, max_size=9),
    st.integers(1, 4),
)
@settings(max_examples=60, deadline=None)
def test_balanced_split_is_contiguous_and_optimal(loads, sessions):
    from itertools import combinations

    from companion.course.workshop import balanced_split

    sessions = min(sessions, len(loads))
    groups = balanced_split(loads, sessions)
    assert [i for g in groups for i in g] == list(range(len(loads))) and all(groups), "contiguous, in order"
    assert len(groups) == sessions
    best = min(
        max(sum(loads[a:b]) for a, b in zip((0, *cuts), (*cuts, len(loads)), strict=True))
        for cuts in combinations(range(1, len(loads)), sessions - 1)
    )
    assert max(sum(loads[i] for i in g) for g in groups) == pytest.approx(best)


def test_teaching_reading_table_and_sessions_are_generated():
    from companion.course import workshop

    text = (REPO / "docs" / "teaching.md").read_text()
    for start, end, body in (
        (workshop.READING_START, workshop.READING_END, workshop.reading_table),
        (workshop.SESSIONS_START, workshop.SESSIONS_END, workshop.session_plan),
    ):
        assert start in text and end in text, f"docs/teaching.md lacks the markers {start} ... {end}"
        assert text.split(start, 1)[1].split(end, 1)[0].strip("\n") == body(), (
            "docs/teaching.md differs from the notebooks and runtimes.json; run `python -m companion runtimes`"
        )


def test_skipped_and_projected_sections_are_headings_of_their_notebooks():
    from companion.course import workshop

    assert set(workshop.SKIP) == set(workshop.PROJECT) == {nb.stem for nb in COURSE}
    for nb in COURSE:
        markdown = "\n".join(_code(c) for c in _nb(nb.file)["cells"] if c["cell_type"] == "markdown")
        headings = set(re.findall(r"^#+ (.+?)\s*$", markdown, re.M))
        for name in workshop.SKIP[nb.stem] + workshop.PROJECT[nb.stem]:
            assert name in headings, f"{nb.stem} has no section {name!r}"
