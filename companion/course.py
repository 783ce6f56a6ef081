"""The course runner: execute notebooks with papermill and gather their claims into one table (notebook 00)."""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .files import atomic_write
from .params import REPO, check, results_folder
from .runs import _environment, execute, inside, slug, source_hash, uncommitted  # noqa: F401  (importable here)
from .summary import _empty_counts, summary, verdict_line

NOTEBOOK_DIR = REPO / "notebooks"


RUNTIMES = NOTEBOOK_DIR / "runtimes.json"
ESTIMATE = (
    REPO / "benchmarks" / "results" / "fullscale.json"
)  # full-scale GPU estimate (benchmarks/fullscale.py)


def runtimes() -> dict:
    """Measured runtimes, {notebook stem: {"cpu"|"gpu": {wall_s, cpu_s, load, cores, scale}}} (`make notebooks`)."""
    return json.loads(RUNTIMES.read_text()) if RUNTIMES.exists() else {}


def _minutes(run: dict | None) -> float | None:
    """Minutes a learner should expect from one measured run. On a machine busier than its cores (load above the
    core count) the wall time says more about the neighbours than the notebook, so the kernel's CPU time is used."""
    if not run:
        return None
    seconds = run["cpu_s"] if run.get("load", 0) > run.get("cores", 1) else run["wall_s"]
    return round(seconds / 60, 1)


@dataclass(frozen=True)
class Notebook:
    """One course notebook; its minutes are measured (notebooks/runtimes.json), never typed in."""

    file: str
    title: str

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    @property
    def cpu_minutes(self) -> float | None:
        """Measured minutes at quick scale on a CPU machine (the course's reference: 2 cores); None if never run."""
        return _minutes(runtimes().get(self.stem, {}).get("cpu"))

    @property
    def gpu_minutes(self) -> float | None:
        """Measured minutes at full scale on a GPU; None until a GPU run has been recorded."""
        return _minutes(runtimes().get(self.stem, {}).get("gpu"))

    @property
    def gpu_estimate(self) -> tuple[float, float] | None:
        """Estimated (low, high) minutes at full scale on one GPU, from `benchmarks/fullscale.py`'s results."""
        row = (
            (json.loads(ESTIMATE.read_text()) if ESTIMATE.exists() else {})
            .get("notebooks", {})
            .get(self.stem)
        )
        if not row:
            return None
        low, high = (max(0.1, round(row["full_gpu_s"][k] / 60, 1)) for k in ("low", "high"))
        return low, high


COURSE = [
    Notebook("00_start_here.ipynb", "Start here: environment, course map, a first training run"),
    Notebook("01_definitions.ipynb", "Definitions: transfer vs multi-task learning side by side"),
    Notebook(
        "02_understanding_transfer.ipynb",
        "Understanding transfer: four strategies, which layers transfer, near vs far sources",
    ),
    Notebook(
        "03_multitask_approaches.ipynb",
        "Multi-task approaches: hard sharing, cross-stitch, L2-tied towers, MMoE vs separate models",
    ),
    Notebook(
        "04_core_difference.ipynb",
        "The core difference: sequential vs parallel, forgetting, and the two combinations",
    ),
    Notebook(
        "05_how_transfer_helps.ipynb",
        "How transfer helps: label efficiency, faster convergence, the gap at full data",
    ),
    Notebook(
        "06_benefits_of_mtl.ipynb",
        "Benefits of multi-task learning: generalisation, overfitting, data efficiency, convergence",
    ),
    Notebook(
        "07_applications_of_transfer.ipynb",
        "Applications: a real ImageNet backbone on animal silhouettes; where transfer is used",
    ),
    Notebook(
        "08_mtl_use_cases.ipynb", "MTL use cases: a perception toy with mixed losses, multi-label scans"
    ),
    Notebook(
        "09_challenges_of_transfer.ipynb",
        "Challenges of transfer: domain mismatch, reliance on the source, negative transfer, choosing a source",
    ),
    Notebook(
        "10_obstacles_in_mtl.ipynb",
        "Obstacles in multi-task learning: imbalance, interference, gradient surgery",
    ),
    Notebook(
        "11_choosing.ipynb",
        "Choosing between transfer and multi-task learning: a decision map and an advisor",
    ),
    Notebook(
        "12_infographic.ipynb",
        "The infographic: the course on one page, every number read from a results file",
    ),
]


def expected_time(nb: Notebook) -> str:
    """The header line every notebook carries, generated from its measured runtimes (kept in sync by the runner)."""
    cpu, gpu, estimate = nb.cpu_minutes, nb.gpu_minutes, nb.gpu_estimate
    cpu_text = f"about {cpu:g} minutes on a 2-core CPU" if cpu is not None else "not yet measured on a CPU"
    gpu_text = f"about {gpu:g} minutes on a GPU" if gpu is not None else "not yet measured on a GPU"
    guess = ""
    if gpu is None and estimate is not None:
        guess = f"; estimated {_span(estimate)} minutes by `benchmarks/fullscale.py`"
    return f'**Expected time.** Measured: {cpu_text} (`SCALE="quick"`); {gpu_text} (`SCALE="full"`{guess}).'


def _span(estimate: tuple[float, float]) -> str:
    """An estimated range of minutes as text: "0.3" when both ends round to the same value, else "0.3 to 0.8"."""
    low, high = estimate
    return f"{low:g}" if low == high else f"{low:g} to {high:g}"


def _course_table() -> str:
    def cell(v, estimate=None):
        if v is None and estimate is not None:
            return f"not measured (estimated {_span(estimate)})"
        return "not measured" if v is None else f"{v:g}"

    rows = ["| notebook | topic | minutes, 2-core CPU (quick) | minutes, GPU (full) |", "|---|---|---|---|"]
    rows += [
        f"| {nb.stem} | {nb.title} | {cell(nb.cpu_minutes)} | {cell(nb.gpu_minutes, nb.gpu_estimate)} |"
        for nb in COURSE
    ]
    return "\n".join(rows)


TABLE_START, TABLE_END = (
    "<!-- course-table: generated by `python -m companion runtimes` -->",
    "<!-- /course-table -->",
)
TEACHING = REPO / "docs" / "teaching.md"
PLAN_START, PLAN_END = (
    "<!-- teaching-table: generated by `python -m companion runtimes` -->",
    "<!-- /teaching-table -->",
)
LIST_START, LIST_END = (
    "<!-- exercise-list: generated by `python -m companion runtimes` -->",
    "<!-- /exercise-list -->",
)


def _teaching_table(times: dict | None = None) -> str:
    """The workshop plan's table (docs/teaching.md): course order, measured minutes per notebook (from
    notebooks/runtimes.json, or `times` in its format) and their sum."""
    times = runtimes() if times is None else times
    rows = ["| order | notebook | minutes, 2-core CPU (quick) | minutes, GPU (full) |", "|---|---|---|---|"]
    totals: dict[str, list[float | None]] = {"cpu": [], "gpu": []}
    for i, nb in enumerate(COURSE, 1):
        cells = []
        for kind in ("cpu", "gpu"):
            minutes = _minutes(times.get(nb.stem, {}).get(kind))
            totals[kind].append(minutes)
            cells.append("not measured" if minutes is None else f"{minutes:g}")
        rows.append(f"| {i} | {nb.stem} | {cells[0]} | {cells[1]} |")

    def total(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        if not known:
            return "not measured"
        missing = len(values) - len(known)
        return f"{sum(known):.1f}" + (f" ({missing} not measured)" if missing else "")

    rows.append(f"| | **all, in one sitting** | {total(totals['cpu'])} | {total(totals['gpu'])} |")
    return "\n".join(rows)


def _exercise_list() -> str:
    """Every committed notebook's exercises, by title (`editions.exercises`), for docs/teaching.md."""
    from .editions import exercises

    lines = []
    for nb in COURSE:
        path = NOTEBOOK_DIR / nb.file
        titles = exercises(json.loads(path.read_text())) if path.exists() else []
        lines.append(f"- **{nb.stem}**" + ("" if titles else ": no exercises found"))
        lines += [f"  - {title}" for title in titles]
    return "\n".join(lines)


def _fill(text: str, start: str, end: str, body: str) -> str:
    """`text` with what lies between the markers `start` and `end` replaced by `body` (unchanged without them)."""
    if start not in text or end not in text:
        return text
    before, rest = text.split(start, 1)
    return f"{before}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def sync_runtimes(files: list[str] | None = None) -> list[str]:
    """Write measured runtimes into the notebooks' headers (all, or those named), the README's course table and
    the workshop plan (docs/teaching.md: its tables and exercises here, its reading table and sessions from
    `workshop`); returns what changed. Only markdown changes, so committed outputs stay fresh."""
    from . import workshop  # it imports this module

    changed = []
    for nb in COURSE:
        if files is not None and nb.file not in files:
            continue
        path = NOTEBOOK_DIR / nb.file
        data = json.loads(path.read_text())
        head = data["cells"][0]
        text = head["source"] if isinstance(head["source"], str) else "".join(head["source"])
        line = expected_time(nb)
        new = re.sub(
            r"\*\*Expected time\.\*\*.*?(?=\n\n|\Z)", lambda _, line=line: line, text, count=1, flags=re.S
        )
        if new != text:
            head["source"] = new
            atomic_write(
                path, lambda f, d=data: f.write((json.dumps(d, indent=1, ensure_ascii=False) + "\n").encode())
            )
            changed.append(nb.file)
    docs = [
        (REPO / "README.md", [(TABLE_START, TABLE_END, _course_table)]),
        (
            TEACHING,
            [
                (PLAN_START, PLAN_END, _teaching_table),
                (LIST_START, LIST_END, _exercise_list),
                (workshop.READING_START, workshop.READING_END, workshop.reading_table),
                (workshop.SESSIONS_START, workshop.SESSIONS_END, workshop.session_plan),
            ],
        ),
    ]
    for doc, parts in docs:
        if not doc.exists():
            continue
        text = new = doc.read_text()
        for start, end, body in parts:
            if start in new and end in new:
                new = _fill(new, start, end, body())
        if new != text:
            atomic_write(doc, lambda f, t=new: f.write(t.encode()))
            changed.append(str(doc.relative_to(REPO)))
    return changed


def record_runtime(stem: str, wall_s: float, cpu_s: float, scale: str, device: str) -> None:
    """Keep one measured run of a committed notebook in notebooks/runtimes.json (under "gpu" or "cpu")."""
    data = runtimes()
    data.setdefault(stem, {})["gpu" if device == "cuda" else "cpu"] = {
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "load": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "scale": scale,
    }
    text = json.dumps(dict(sorted(data.items())), indent=1) + "\n"
    atomic_write(RUNTIMES, lambda f: f.write(text.encode()))


def notebook_folder() -> Path:
    """Where notebook prefixes ("01") are looked up: $COMPANION_NOTEBOOKS if set, else the checkout's notebooks/."""
    env = os.environ.get("COMPANION_NOTEBOOKS")
    return Path(env).expanduser() if env else NOTEBOOK_DIR


def _not_found(name: str, folder: Path, count: int) -> ValueError:
    from .params import in_checkout  # looked up at call time

    if not folder.is_dir():
        why = "it does not exist" + (
            "" if in_checkout() else ": this companion is installed, not a checkout of the course"
        )
        return ValueError(
            f"cannot find notebook {name!r}: looked in {folder} ({why}); pass the notebook's path "
            f"(python -m companion run path/to/00_start_here.ipynb) or set COMPANION_NOTEBOOKS to the folder "
            f"holding the course notebooks"
        )
    known = ", ".join(nb.file for nb in COURSE)
    return ValueError(
        f"notebook {name!r} matches {count} files in {folder}; use one of: {known}, or a notebook's path"
    )


def notebooks(names: list[str] | None = None) -> list[Path]:
    """Resolve notebook names, prefixes ("01") or paths to files; all course notebooks when empty. Names are
    looked up in `notebook_folder()`, an exact stem or file name first ("00_start_here" even beside
    "00_start_here-Copy1.ipynb"), then as a prefix; an error says where it looked and how to point the runner
    at them."""
    folder = notebook_folder()
    if not names:
        if not folder.is_dir():
            raise _not_found("(all)", folder, 0)
        return [folder / nb.file for nb in COURSE]
    found = []
    for name in names:
        path = Path(name).expanduser()
        if path.is_file():
            found.append(path.resolve())
            continue
        if name.endswith(".ipynb") and len(path.parts) > 1:
            raise ValueError(f"notebook file {name} does not exist")
        exact = folder / (name if name.endswith(".ipynb") else f"{name}.ipynb")
        if len(path.parts) == 1 and exact.is_file():  # an exact stem or file name wins over a prefix
            found.append(exact)
            continue
        matches = sorted(
            p
            for p in (folder.glob(f"{name}*.ipynb") if folder.is_dir() else [])
            if not p.name.endswith(".failed.ipynb")
        )  # a stopped run's NAME.failed.ipynb is not a notebook to run
        if len(matches) != 1:
            raise _not_found(name, folder, len(matches))
        found.append(matches[0])
    return found


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list, tuple),
}


def parameters_of(path: Path) -> dict:
    """The parameters a notebook declares in its `parameters` cell (papermill's inspect_notebook), by name."""
    import papermill as pm

    return pm.inspect_notebook(str(path))


def validate(path: Path, params: dict) -> None:
    """Refuse, before anything runs, a parameter the notebook does not declare (with the valid names) and a
    value its name's convention (`params.check`) or its declared type rejects (one line naming it)."""
    declared = parameters_of(path)
    for name, value in params.items():
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(
                f"{Path(path).stem} has no parameter {name}{hint}; its parameters are: {', '.join(declared)}"
            )
        check(name, value)
        kind = (declared[name].get("inferred_type_name") or "").split("[")[0]
        ok = _TYPES.get(kind)
        if (
            ok
            and value is not None
            and (not isinstance(value, ok) or (bool not in ok and isinstance(value, bool)))
        ):
            raise ValueError(
                f"{name} must be of type {declared[name]['inferred_type_name']} (as the notebook declares it), got {value!r}"
            )


def parse_value(text: str):
    """Parse a command-line parameter value: Python literal if it is one ("3", "0.5", "[1, 2]"), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _outputs(out: Path, path: Path, given: dict) -> tuple[Path, Path]:
    """Where a run with parameters `given` keeps its results folder and executed notebook, inside `out`."""
    results = (
        results_folder(given["RESULTS_DIR"])
        if "RESULTS_DIR" in given
        else out / "results" / path.stem / slug(given)
    )
    named = {k: v for k, v in given.items() if k != "RESULTS_DIR"}
    target = inside(out, path.stem + (f"--{slug(named)}" if named else "") + ".ipynb")
    return results, target


def _check_out(out: Path, paths: list[Path], asked: dict) -> None:
    """Refuse an --out that is the course's notebook folder, or one where a run would replace its own notebook."""
    folders = {NOTEBOOK_DIR.resolve(), notebook_folder().resolve()}
    if out.resolve() in folders:
        raise ValueError(
            f"--out {out} is the course's notebook folder: executed copies would replace the notebooks; "
            "choose another folder (or run the notebooks themselves with --inplace)"
        )
    for path in paths:
        if _outputs(out, path, dict(asked))[1] == Path(path).resolve():
            raise ValueError(
                f"--out {out} would write the executed copy over {path} itself; choose another folder"
            )


def run(
    names: list[str] | None = None,
    *,
    scale: str = "auto",
    out: str | Path = "build",
    params: dict | None = None,
    inplace: bool = False,
    force: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Execute notebooks (optionally with parameters) and return one summary row each (make course).

    Every notebook's parameters are checked before the first one runs: an undeclared name (a typo) or a bad
    value stops with one line naming it. Executed notebooks go to `out` under safe names (the stem, plus
    `--<slug>` of the parameters: `runs.slug`), never outside it; an `out` that is the course's notebook folder,
    or a target that is the notebook being run, is refused. `inplace` runs the notebooks themselves, keeping
    each previous version as `NAME.ipynb.prev`, and refuses one with uncommitted git edits unless `force`.
    Every run is atomic (`runs.execute`): one that stops leaves the previous notebook as it was. Each notebook
    is announced on stderr as it starts (n of N, the minutes measured for it) and as it ends (its minutes, its
    verdicts, the time so far), with a progress bar over the notebooks (`progress`); stdout keeps the table.
    """
    if scale not in ("quick", "full", "auto"):
        raise ValueError(f"--scale must be one of ['quick', 'full', 'auto'], got {scale!r}")
    out = Path(out).resolve()
    paths = notebooks(names)
    asked = {**(params or {}), **({"SCALE": scale} if scale != "auto" else {})}
    if inplace and asked:
        raise ValueError("--inplace runs notebooks with their own parameters only; drop -p and --scale")
    for path in paths:
        validate(path, asked)
    if inplace:
        edited = [str(p) for p in paths if uncommitted(p)] if not force else []
        if edited:
            raise ValueError(
                f"--inplace would overwrite {', '.join(edited)}, which has uncommitted edits (git status); "
                "commit them, or pass --force (the previous version is kept as NAME.ipynb.prev)"
            )
    else:
        _check_out(out, paths, asked)
    rows = []
    start = time.perf_counter()
    bar = tqdm(total=len(paths), desc="notebooks", unit="nb", disable=not progress or len(paths) < 2)
    for k, path in enumerate(paths, 1):
        given = dict(asked)
        bar.write(f"[{k}/{len(paths)}] {path.stem}: running ({_expected(path.stem)})", file=sys.stderr)
        if inplace:
            results = results_folder(
                "results", path.parent
            )  # the notebook's RESULTS_DIR default, in its folder
            cpu0 = _child_cpu()
            seconds = execute(path, path, keep_previous=True)
            _record(path.stem, results, seconds, _child_cpu() - cpu0)
        else:
            results, target = _outputs(out, path, given)
            given["RESULTS_DIR"] = str(results)
            seconds = execute(path, target, given)
        rows.append(summary(path.stem, results, seconds))
        bar.write(
            f"[{k}/{len(paths)}] {path.stem}: done in {seconds / 60:.1f} min ({verdict_line(rows[-1])}); "
            f"{(time.perf_counter() - start) / 60:.1f} min so far",
            file=sys.stderr,
        )
        bar.update()
    bar.close()
    if inplace:
        sync_runtimes([p.name for p in paths])
    return rows


def _expected(stem: str) -> str:
    """What a run of a notebook is expected to take, from notebooks/runtimes.json."""
    minutes = _minutes(runtimes().get(stem, {}).get("cpu"))
    return "no measured time yet" if minutes is None else f"measured about {minutes:g} min on a 2-core CPU"


def _child_cpu() -> float:
    """CPU seconds used by finished child processes (the papermill kernel is one once it has shut down)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


COMMITTED_RESULTS = NOTEBOOK_DIR / "results"


def _record(stem: str, results: Path, wall_s: float, cpu_s: float) -> None:
    """After an in-place run: keep its results file beside the committed notebook (notebooks/results/, the numbers
    the infographic draws from) and record its runtime when the file says which scale and device it ran at."""
    file = results / f"{stem}.json"
    if not file.exists():
        return
    text = file.read_bytes()
    if file.resolve() != (COMMITTED_RESULTS / f"{stem}.json").resolve():  # a run in notebooks/ wrote it there
        atomic_write(COMMITTED_RESULTS / f"{stem}.json", lambda f: f.write(text))
    import torch

    data = json.loads(file.read_text())
    device = (
        "cuda"
        if torch.cuda.is_available() and data.get("parameters", {}).get("DEVICE", "auto") != "cpu"
        else "cpu"
    )
    if (data.get("scale") == "quick" and device == "cpu") or (
        data.get("scale") == "full" and device == "cuda"
    ):
        record_runtime(stem, wall_s, cpu_s, data["scale"], device)


def sweep(
    name: str,
    param: str,
    values: list,
    *,
    scale: str = "auto",
    out: str | Path = "build",
    params: dict | None = None,
) -> list[dict]:
    """Run one notebook once per value of one parameter (others fixed by `params`); one summary row per run.

    Every value is validated before the first run. A run that stops with an error is reported on stderr and
    kept as a row with one failure, and the sweep goes on, so the table always shows what ran.
    """
    import sys

    if param in (params or {}):
        raise ValueError(f"{param} is both swept and fixed; give it once")
    if not values:
        raise ValueError(f"sweep needs at least one value of {param}")
    [path] = notebooks([name])
    fixed = {**(params or {}), **({"SCALE": scale} if scale != "auto" else {})}
    for value in values:
        validate(path, {**fixed, param: value})
    rows = []
    for value in values:
        t0 = time.perf_counter()
        try:
            rows += run([str(path)], scale=scale, out=out, params={**(params or {}), param: value})
        except Exception as err:
            if type(err).__name__ != "PapermillExecutionError":
                raise
            print(
                f"error: {path.stem} with {param}={value!r} stopped in cell {err.exec_count}: {err.ename}: "
                f"{err.evalue}",
                file=sys.stderr,
            )
            rows.append(
                {
                    "notebook": path.stem,
                    "minutes": round((time.perf_counter() - t0) / 60, 2),
                    **_empty_counts(),
                    "failures": 1,
                    "demos": 0,
                    "parameters": {**fixed, param: value},
                    "error": f"{err.ename}: {err.evalue}",
                }
            )
    return rows
