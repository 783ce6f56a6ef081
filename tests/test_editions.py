"""Student and instructor editions (companion.editions) and the workshop plan's generated parts (docs/teaching.md)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from companion.__main__ import main
from companion.course import catalog, editions, tables
from companion.course.catalog import COURSE, NOTEBOOK_DIR
from companion.course.tables import (
    LIST_END,
    LIST_START,
    PLAN_END,
    PLAN_START,
    _exercise_list,
    _fill,
    _teaching_table,
)

REPO = Path(__file__).resolve().parents[1]


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _src(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _tagged(source: str, tag: str, *, code: bool = True, count: int | None = None, text: str = ""):
    cell = new_code_cell(source, execution_count=count) if code else new_markdown_cell(source)
    if tag:
        cell.metadata["tags"] = [tag]
    if text:
        cell.outputs = [new_output("stream", name="stdout", text=text)]
    return cell


STUB = 'def double(x: int) -> int:\n    """Twice x."""\n    # your code here\n    raise NotImplementedError("Exercise: write double()")'


def _toy() -> nbformat.NotebookNode:
    """A small executed instructor edition: prompt, stub, solution, check, questions with their solutions."""
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Toy\n\n**Goal.** Test the editions."),
            _tagged(
                'SEED: int = 0  # seed\nSCALE: str = "quick"\nRESULTS_DIR: str = "r"', "parameters", count=1
            ),
            _tagged("print('setup')", "", count=2, text="setup\n"),
            new_markdown_cell("### Exercise (code): double a number\nWrite `double`."),
            _tagged(STUB, "exercise", count=3),
            _tagged("def double(x: int) -> int:\n    return 2 * x", "solution", count=4),
            _tagged("print(double(21))", "exercise", count=5, text="42\n"),
            _tagged("print('after')", "", count=6, text="after\n"),
            new_markdown_cell(
                "## Exercises\n1. Is 2 * 21 even? Say why.\n2. Try `x = 1.5`. What does\n   `double` return?"
            ),
            _tagged("**Solution.** Yes.", "solution", code=False),
            new_markdown_cell("3. A third question, in its own cell."),
            _tagged("1. not an exercise: a numbered list in a solution", "solution", code=False),
            new_markdown_cell("## Summary\n1. not an exercise either"),
        ]
    )
    nb.metadata["companion"] = {"source_hash": "0123456789abcdef"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.validate(nb)
    return nb


def test_student_removes_solutions_and_clears_exercise_outputs_only():
    nb = _toy()
    before = copy.deepcopy(nb)
    out = editions.student(nb, name="toy.ipynb")
    assert nb == before, "student() leaves its argument as it is"
    nbformat.validate(out)
    assert out.cells[0].cell_type == "markdown" and "student edition" in out.cells[0].source
    assert "Your copy of toy.ipynb" in out.cells[0].source and "--instructor" not in out.cells[0].source
    kept = [c for c in nb.cells if "solution" not in _tags(c)]
    assert len(out.cells) == len(kept) + 1 and not any("solution" in _tags(c) for c in out.cells)
    for orig, new in zip(kept, out.cells[1:]):
        if "exercise" in _tags(orig):
            assert new.outputs == [] and new.execution_count is None
            assert new.source == orig.source and new.metadata == orig.metadata
        else:
            assert new == orig, "every other cell is kept as it was, outputs included"
    assert "companion" not in out.metadata, "the freshness stamp no longer matches, so it is dropped"
    assert {k: v for k, v in out.metadata.items()} == {
        k: v for k, v in nb.metadata.items() if k != "companion"
    }


def test_student_keeps_other_companion_metadata():
    nb = _toy()
    nb.metadata["companion"]["other"] = 1
    assert editions.student(nb).metadata["companion"] == {"other": 1}


def test_exercises_lists_code_prompts_and_numbered_questions():
    assert editions.exercises(_toy()) == [
        "Exercise (code): double a number",
        "Exercise 1: Is 2 * 21 even? Say why.",
        "Exercise 2: Try `x = 1.5`. What does `double` return?",
        "Exercise 3: A third question, in its own cell.",
    ]
    inline = new_notebook(
        cells=[
            new_markdown_cell("## Reading\ntext\n\n## Exercises\n1. Only one. More text.\n\n## Next\n2. no")
        ]
    )
    assert editions.exercises(inline) == ["Exercise 1: Only one. More text."]


def test_exercise_titles_are_never_cut_at_a_full_stop():
    cell = new_markdown_cell(
        "## Exercises\n"
        "1. The table tunes every method at the first seed only. Retune at every seed: which verdicts change?\n"
        "2. Kumar et al. (2022) found LP-FT ahead out of distribution. Does it hold on the blurred digits?\n"
        "3. **Bold title.** Then the details, which the title stands for.\n"
        "4. " + "word " * 60 + "\n"
    )
    titles = editions.exercises(new_notebook(cells=[cell]))
    assert titles[0] == (
        "Exercise 1: The table tunes every method at the first seed only. Retune at every seed: which verdicts change?"
    )
    assert titles[1].startswith("Exercise 2: Kumar et al. (2022) found") and titles[1].endswith(
        "blurred digits?"
    )
    assert titles[2] == "Exercise 3: Bold title"
    assert titles[3].endswith(" …") and len(titles[3]) <= len("Exercise 4: ") + editions.TITLE_CHARS + 2


@pytest.mark.slow
def test_toy_student_edition_stops_at_its_exercise(tmp_path):
    src = tmp_path / "student.ipynb"
    src.write_text(json.dumps(editions.student(_toy())))
    error, executed = _execute(src, tmp_path)
    assert error.ename == "NotImplementedError"
    assert _failing(executed) == ["print(double(21))"]


def test_write_student_refuses_the_committed_folder_and_writes_atomically(tmp_path):
    for folder in (NOTEBOOK_DIR, f"{NOTEBOOK_DIR}/", NOTEBOOK_DIR / "results" / ".."):
        with pytest.raises(
            ValueError, match=r"^OUT_DIR must not be the folder of the committed notebooks"
        ) as err:
            editions.write_student(folder, ["00"])
        assert "\n" not in str(err.value)
    assert main(["student", str(NOTEBOOK_DIR), "00"]) == 2
    written = editions.write_student(tmp_path / "out", ["00", "12"])
    assert [p.name for p in written] == ["00_start_here.ipynb", "12_infographic.ipynb"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        editions.MANIFEST,  # the hashes of what was written: an edited notebook is not overwritten
        "00_start_here.ipynb",
        "12_infographic.ipynb",
    ]
    committed = json.loads((NOTEBOOK_DIR / "00_start_here.ipynb").read_text())
    assert json.loads(written[0].read_text()) == editions.student(committed, name="00_start_here.ipynb")
    copied = editions.write_instructor(tmp_path / "instructor", ["00"])
    assert copied[0].read_bytes() == (NOTEBOOK_DIR / "00_start_here.ipynb").read_bytes()


def test_cli_writes_every_notebook_in_course_order(tmp_path, capsys):
    assert main(["student", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [Path(line.split(":")[0]).name for line in lines] == [nb.file for nb in COURSE]


# --- the committed notebooks ---------------------------------------------------------------------------------

FILES = [nb.file for nb in COURSE]
DEFINES = re.compile(r"^def \w+\(", re.M)  # a stub defines a function that raises NotImplementedError


def _committed(file: str) -> dict:
    return json.loads((NOTEBOOK_DIR / file).read_text())


def _exercise_code(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "exercise" in _tags(c)]


@pytest.mark.parametrize("file", FILES)
def test_student_edition_of_committed_notebook(file):
    nb = _committed(file)
    out = editions.student(nb, name=file)
    assert not any("solution" in _tags(c) for c in out["cells"]), "no solution cell in the student edition"
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in _exercise_code(out))
    assert _exercise_code(nb), (
        f"{file}: no code cell tagged 'exercise' (EXERCISES.md: one code exercise per notebook)"
    )
    cells = nb["cells"]
    for i, cell in enumerate(cells):
        stub = DEFINES.search(_src(cell)) and "raise NotImplementedError" in _src(cell)
        if cell["cell_type"] == "code" and "exercise" in _tags(cell) and stub:
            after = cells[i + 1] if i + 1 < len(cells) else None
            assert after is not None and after["cell_type"] == "code" and "solution" in _tags(after), (
                f"{file}: the exercise stub in cell {i} must be followed directly by its solution code cell"
            )
    assert any("(code)" in title for title in editions.exercises(nb)), (
        f"{file}: no '### Exercise (code): ...' prompt"
    )


def _execute(path: Path, tmp_path: Path):
    import papermill as pm

    out = tmp_path / "executed.ipynb"
    params = {"SEED": 0, "SCALE": "quick", "RESULTS_DIR": str(tmp_path / "results")}
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(path),
            str(out),
            parameters=params,
            cwd=str(NOTEBOOK_DIR),
            kernel_name="python3",
            progress_bar=False,
        )
    return err.value, json.loads(out.read_text())


def _failing(executed: dict) -> list[str]:
    """Sources of the executed cells that carry an error output, after checking each is tagged `exercise`."""
    failing = [
        c for c in executed["cells"] if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert all("exercise" in _tags(c) for c in failing), "an error outside an exercise cell"
    return [_src(c) for c in failing]


@pytest.mark.slow
@pytest.mark.parametrize("file", FILES)
def test_student_edition_stops_at_an_exercise(file, tmp_path):
    nb = _committed(file)
    assert _exercise_code(nb), (
        f"{file}: no code cell tagged 'exercise', so its student edition would run to the end"
    )
    src = tmp_path / file
    src.write_text(json.dumps(editions.student(nb, name=file)))
    error, executed = _execute(src, tmp_path)
    assert error.ename == "NotImplementedError", f"{file}: stopped with {error.ename}: {error.evalue}"
    assert len(_failing(executed)) == 1, "the student edition stops at one exercise cell"


# --- the workshop plan (docs/teaching.md) ----------------------------------------------------------------------


def _between(text: str, start: str, end: str) -> str:
    assert start in text and end in text, f"docs/teaching.md lacks the markers {start} ... {end}"
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def test_teaching_table_is_the_measured_runtimes():
    text = tables.TEACHING.read_text()
    assert _between(text, PLAN_START, PLAN_END) == _teaching_table(), (
        "docs/teaching.md's table differs from notebooks/runtimes.json; run `python -m companion runtimes`"
    )


def test_teaching_lists_the_exercises_of_the_notebooks():
    text = tables.TEACHING.read_text()
    assert _between(text, LIST_START, LIST_END) == _exercise_list(), (
        "docs/teaching.md's list of exercises differs from the notebooks; run `python -m companion runtimes`"
    )


def test_teaching_table_from_runtimes():
    run = {"wall_s": 90.0, "cpu_s": 60.0, "load": 1.0, "cores": 2, "scale": "quick"}
    busy = {**run, "load": 5.0}  # busier than its cores: the CPU time stands in
    first = {**run, "wall_s": 150.0}  # the first run, filling the caches
    table = _teaching_table(
        {"00_start_here": {"cpu": run, "cpu_first": first}, "01_definitions": {"cpu": busy}}
    )
    rows = table.splitlines()
    assert rows[2] == "| 1 | 00_start_here | 1.5 | 2.5 | not measured |"
    assert rows[3] == "| 2 | 01_definitions | 1 | not measured | not measured |"
    assert rows[4] == "| 3 | 02_understanding_transfer | not measured | not measured | not measured |"
    assert rows[-1] == (
        f"| | **all, in one sitting** | 2.5 ({len(COURSE) - 2} not measured) | 2.5 ({len(COURSE) - 1} not measured) "
        "| not measured |"
    )
    assert len(rows) == 2 + len(COURSE) + 1


def test_fill_replaces_only_between_markers():
    text = "a\n<!-- s -->\nold\n<!-- e -->\nb\n"
    assert _fill(text, "<!-- s -->", "<!-- e -->", "new") == "a\n<!-- s -->\nnew\n<!-- e -->\nb\n"
    assert _fill("no markers", "<!-- s -->", "<!-- e -->", "new") == "no markers"


def test_sync_runtimes_rewrites_the_teaching_plan(tmp_path, monkeypatch):
    import shutil

    (tmp_path / "notebooks").mkdir()
    for nb in COURSE:
        shutil.copy(NOTEBOOK_DIR / nb.file, tmp_path / "notebooks" / nb.file)
    times = {
        "03_multitask_approaches": {
            "gpu": {"wall_s": 30.0, "cpu_s": 20.0, "load": 0.5, "cores": 16, "scale": "full"}
        }
    }
    (tmp_path / "notebooks" / "runtimes.json").write_text(json.dumps(times))
    (tmp_path / "docs").mkdir()
    plan = f"# Plan\n\n{PLAN_START}\nstale\n{PLAN_END}\n\n{LIST_START}\n{LIST_END}\nend\n"
    (tmp_path / "docs" / "teaching.md").write_text(plan)
    (tmp_path / "README.md").write_text("no table here\n")
    for module, name, value in (
        (tables, "REPO", tmp_path),
        (tables, "NOTEBOOK_DIR", tmp_path / "notebooks"),
        (catalog, "RUNTIMES", tmp_path / "notebooks" / "runtimes.json"),
        (tables, "TEACHING", tmp_path / "docs" / "teaching.md"),
    ):
        monkeypatch.setattr(module, name, value)
    assert "docs/teaching.md" in tables.sync_runtimes()
    text = (tmp_path / "docs" / "teaching.md").read_text()
    assert (
        "| 4 | 03_multitask_approaches | not measured | not measured | 0.5 |" in text and "stale" not in text
    )
    assert text.startswith("# Plan\n\n") and text.endswith(f"{LIST_END}\nend\n")
    assert _between(text, LIST_START, LIST_END) == _exercise_list()
    assert "docs/teaching.md" not in tables.sync_runtimes(), "a second sync changes nothing"
