"""The course runner: execute notebooks with papermill and gather their claims into one table."""

from __future__ import annotations

import ast
import difflib
import json
import resource
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..files import atomic_write
from .catalog import (
    COMMITTED_RESULTS,
    NOTEBOOK_DIR,
    expected_minutes,
    notebook_folder,
    notebooks,
    record_runtime,
    runtimes,
)
from .params import check, results_folder
from .runs import execute, inside, slug, uncommitted
from .summary import _empty_counts, summary, verdict_line
from .tables import sync_runtimes

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
    minutes = expected_minutes(runtimes().get(stem, {}).get("cpu"))
    return "no measured time yet" if minutes is None else f"measured about {minutes:g} min on a 2-core CPU"


def _child_cpu() -> float:
    """CPU seconds used by finished child processes (the papermill kernel is one once it has shut down)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
