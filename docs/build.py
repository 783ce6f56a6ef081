"""Build the course website into build/site/ from the committed, executed notebooks, without executing them.

`make site` runs ``python docs/build.py``. It stages everything in a git-ignored folder (build/site-src/) and runs
Sphinx there (conf.py in this folder: myst-nb with ``nb_execution_mode="off"``), so notebooks/ is only read:

- docs/ sources are copied as they are (teaching.md becomes a page when it exists);
- each notebook of `companion.course.COURSE` is copied with a "run it yourself" note under its title, cells tagged
  ``solution`` collapsed (a markdown solution in a dropdown, a code solution with myst-nb's ``hide-cell``), and
  widget outputs reduced to their text (tqdm bars: the site loads no widget JavaScript);
- the front page gets the course map and the runtime table from `companion.course` (notebooks/runtimes.json, read
  now, never typed in) and the infographic: drawn now by `companion.infographic.render` from the committed results
  files (notebooks/results/), checked (every number against its file, the layout), and copied into the site as an
  SVG shown at full width, linked to the 300-dpi PNG;
- the API reference gets one page per public module of `companion` (found by walking the package, subpackages
  included: moving a module needs no edit of the docs), written by autodoc from the docstrings, and an index page
  with each module's summary line and a "used in" table: the notebooks whose code cells import each module
  (parsed with `ast`, never typed in; each module's page repeats its line);
- MathJax 3 is vendored from the npm registry into the site when npm is available, so the pages need no CDN.

Usage: ``python docs/build.py [--out build/site] [--strict]`` (``--strict`` makes Sphinx warnings fatal).
"""

from __future__ import annotations

import argparse
import ast
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))

from companion.course import runner as course  # noqa: E402
from companion.course.catalog import COURSE, Notebook  # noqa: E402

STAGE = REPO / "build" / "site-src"
OUT = REPO / "build" / "site"
VENDOR = REPO / "build" / "vendor"
MATHJAX = "3.2.2"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def run_note(nb: Notebook) -> str:
    """The markdown note under each notebook's title: how to run this notebook yourself."""
    number = nb.file.split("_", 1)[0]
    return (
        ":::{admonition} Open in JupyterLab / run it yourself\n:class: tip\n\n"
        "This page shows the committed run of the notebook (quick scale, seed 0). To run it yourself, clone the "
        "course repository and, in its folder:\n\n"
        "```bash\n"
        "make install                       # .venv with the tested versions; `make data` fetches the datasets\n"
        f".venv/bin/jupyter lab notebooks/{nb.file}\n"
        f".venv/bin/python -m companion run {number}    # or run it headless and print its claims table\n"
        "```\n\n"
        "The download button at the top of the page gives this notebook's `.ipynb` file.\n:::\n"
    )


def fence(text: str, name: str, argument: str) -> str:
    """`text` inside a MyST directive fenced with more backticks than any run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{{{name}}} {argument}\n{text}\n{ticks}\n"


def stage_notebook(nb: Notebook, src: Path, dst: Path) -> dict:
    """Copy one notebook for the site (see the module docstring); returns the staged notebook."""
    data = json.loads(src.read_text())
    data["metadata"].pop("widgets", None)
    cells = []
    for i, cell in enumerate(data["cells"]):
        tags = cell.setdefault("metadata", {}).get("tags", [])
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        if "solution" in tags:
            if cell["cell_type"] == "markdown":
                cell["source"] = fence(source, "dropdown", "Solution (click to show)")
            else:
                cell["metadata"]["tags"] = [*tags, "hide-cell"]
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(WIDGET_MIME, None)
        cells.append(cell)
        if i == 0:
            cells.append(
                {"cell_type": "markdown", "id": "site-run-note", "metadata": {}, "source": run_note(nb)}
            )
    data["cells"] = cells
    dst.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return data


def infographic_files(dst: Path) -> dict[str, Path] | None:
    """The infographic drawn from the committed results files, as SVG and PNG in `dst` (`render` checks every
    number against its file and the layout, and prints what it finds); None, with the reason printed, when it
    cannot be drawn."""
    from companion.course import infographic
    from companion.course.provenance import default_folder

    try:
        return infographic.render(default_folder(), dst, strict=False)
    except (OSError, ValueError, KeyError) as err:
        print(f"site: no infographic on the front page ({err})")
        return None


def minutes(value: float | None) -> str:
    return "not measured" if value is None else f"{value:g}"


def front_parts(infographic: bool) -> dict[str, str]:
    """The generated pieces of the front page: from companion.course (titles, order, measured runtimes), and the
    infographic (`infographic`: whether it was drawn) as an SVG at full width linked to its PNG."""
    stems = [f"notebooks/{nb.stem}" for nb in COURSE]
    course_map = "\n".join(f"{i}. {{doc}}`{nb.title} <{s}>`" for i, (nb, s) in enumerate(zip(COURSE, stems)))
    rows = [
        "| notebook | topic | minutes, 2-core CPU (quick) | first run, caches empty | minutes, GPU (full) |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| {{doc}}`{nb.stem} <{s}>` | {nb.title} | {minutes(nb.cpu_minutes)} | {minutes(nb.first_run_minutes)} "
        f"| {minutes(nb.gpu_minutes)} |"
        for nb, s in zip(COURSE, stems)
    ]
    alt = (
        "The course on one page: definitions, the comparison table, the strongest measured results, the decision "
        "map and the verdict on each common statement, every number read from a results file"
    )
    png, svg = "_static/course_infographic.png", "_static/course_infographic.svg"
    figure = (
        '<div class="course-infographic">\n'
        f'<a href="{png}"><img src="{svg}" alt="{alt}" style="width:100%;height:auto"></a>\n'
        f'<p><a href="{png}">Full-size PNG (A4 landscape, 300 dpi)</a> · <a href="{svg}">SVG</a>: drawn from the '
        "committed results files when the site is built.</p>\n</div>\n"
        if infographic
        else "*The infographic is missing: it could not be drawn from the committed results files.*\n"
    )
    extra = ["teaching"] if (STAGE / "teaching.md").exists() else []
    toc = "```{toctree}\n:hidden:\n:caption: Course\n\n" + "\n".join(stems) + "\n```\n\n"
    toc += "```{toctree}\n:hidden:\n:caption: Reference\n\n" + "\n".join([*extra, "api"]) + "\n```\n"
    return {"COURSE_MAP": course_map, "RUNTIMES": "\n".join(rows), "INFOGRAPHIC": figure, "TOCTREE": toc}


def public_modules() -> list[str]:
    """Every public module of `companion`, subpackages included, found by walking the package (so a module that
    moves needs no edit here): dotted names without the ``companion.`` prefix, private ones (``_x``,
    ``__main__``) left out."""
    import companion

    names = (m.name for m in pkgutil.walk_packages(companion.__path__, "companion."))
    return sorted(
        n.removeprefix("companion.") for n in names if not any(p.startswith("_") for p in n.split("."))
    )


def imported_modules(source: str, modules: set[str]) -> set[str]:
    """The modules of `modules` (dotted names without ``companion.``) that Python source imports: ``import
    companion.x``, ``from companion.x import name`` and ``from companion.pkg import module``. IPython lines (``%``,
    ``!``) are left out; a cell that still is not Python counts for nothing."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("companion.") for a in node.names} & modules
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("companion")
        ):
            base = node.module.removeprefix("companion").removeprefix(".")
            for a in node.names:  # a submodule by name, else the module the names come from
                dotted = f"{base}.{a.name}" if base else a.name
                found |= {dotted} & modules or {base} & modules
    return found


def used_in(folder: Path | None = None) -> dict[str, list[str]]:
    """{public module: the stems of the course notebooks that import it, in course order}, read from the notebooks'
    code cells (`imported_modules`), so the index follows the notebooks without a list kept by hand."""
    folder = course.NOTEBOOK_DIR if folder is None else folder
    modules = set(public_modules())
    users: dict[str, list[str]] = {m: [] for m in sorted(modules)}
    for nb in COURSE:
        path = folder / nb.file
        if not path.is_file():
            continue
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        found = set()
        for cell in cells:
            if cell.get("cell_type") == "code":
                source = cell.get("source", "")
                found |= imported_modules("".join(source) if isinstance(source, list) else source, modules)
        for m in found:
            users[m].append(nb.stem)
    return users


def notebook_links(stems: list[str], prefix: str = "") -> str:
    """Links to the notebooks' pages, shown by their numbers: ``[01](notebooks/01_definitions.ipynb)``."""
    return ", ".join(f"[{s[:2]}]({prefix}notebooks/{s}.ipynb)" for s in stems) or "none (library only)"


def used_in_table(users: dict[str, list[str]]) -> str:
    """The API index's table: each public module and the notebooks that import it."""
    rows = [f"| `companion.{m}` | {notebook_links(stems)} |" for m, stems in users.items()]
    return "| Module | Used in notebooks |\n| --- | --- |\n" + "\n".join(rows) + "\n"


def api_page(module: str, users: list[str] | None = None) -> str:
    """The API page of one module: its title, the notebooks that import it, and autodoc's rendering of its
    docstrings."""
    used = "" if users is None else f"Used in notebooks: {notebook_links(users, '../')}\n\n"
    return f"# `companion.{module}`\n\n{used}```{{eval-rst}}\n.. automodule:: companion.{module}\n```\n"


def api_parts(folder: Path) -> dict[str, str]:
    """One page per public module written into `folder` (api/<module>.md), and the API index's pieces: a summary
    table (each module's first docstring line), the "used in" table (`used_in`) and the hidden toctree of the
    module pages."""
    mods = public_modules()
    users = used_in()
    folder.mkdir(parents=True, exist_ok=True)
    for m in mods:
        (folder / f"{m}.md").write_text(api_page(m, users.get(m, [])))
    table = "```{eval-rst}\n.. autosummary::\n\n" + "".join(f"   companion.{m}\n" for m in mods) + "```\n"
    toc = "```{toctree}\n:hidden:\n:maxdepth: 1\n\n" + "".join(f"api/{m}\n" for m in mods) + "```\n"
    return {"MODULE_TABLE": table, "USED_IN": used_in_table(users), "MODULES": toc}


def fill(path: Path, parts: dict[str, str]) -> None:
    text = path.read_text()
    for key, value in parts.items():
        text = text.replace(f"<!-- {key} -->", value)
    path.write_text(text)


def vendor_mathjax() -> Path | None:
    """MathJax's es5 folder, unpacked once into build/vendor from `npm pack mathjax@3.2.2`; None without npm."""
    es5 = VENDOR / f"mathjax-{MATHJAX}" / "es5"
    if (es5 / "tex-mml-chtml.js").is_file():
        return es5
    npm = shutil.which("npm")
    if npm is None:
        return None
    VENDOR.mkdir(parents=True, exist_ok=True)
    tgz = VENDOR / f"mathjax-{MATHJAX}.tgz"
    if not tgz.exists():
        done = subprocess.run(
            [npm, "pack", f"mathjax@{MATHJAX}", "--pack-destination", str(VENDOR)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not tgz.exists():
            return None
    tmp = VENDOR / f"mathjax-{MATHJAX}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/es5/") and m.isfile()]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
        tar.extractall(tmp, members=members, **safe)
    shutil.rmtree(es5.parent, ignore_errors=True)
    (tmp / "package").rename(es5.parent)
    shutil.rmtree(tmp, ignore_errors=True)
    return es5


def copy_mathjax(es5: Path, dst: Path) -> None:
    """The one combined component the site uses, with the folders it loads from (fonts, extensions, menu)."""
    dst.mkdir(parents=True)
    shutil.copy2(es5 / "tex-mml-chtml.js", dst)
    for sub in ("input", "output", "a11y", "ui", "sre", "adaptors"):
        if (es5 / sub).is_dir():
            shutil.copytree(es5 / sub, dst / sub)


def stage() -> None:
    """Fill build/site-src/ with the docs sources, the prepared notebooks and the generated pages."""
    shutil.rmtree(STAGE, ignore_errors=True)
    shutil.copytree(DOCS, STAGE, ignore=shutil.ignore_patterns("build.py", "__pycache__", "_build"))
    (STAGE / "notebooks").mkdir()
    for nb in COURSE:
        stage_notebook(nb, course.NOTEBOOK_DIR / nb.file, STAGE / "notebooks" / nb.file)
    drawn = infographic_files(STAGE / "_static")
    fill(STAGE / "index.md", front_parts(drawn is not None))
    fill(STAGE / "api.md", api_parts(STAGE / "api"))
    es5 = vendor_mathjax()
    if es5 is None:
        print("site: MathJax not vendored (npm unavailable or offline): pages load it from its CDN")
    else:
        copy_mathjax(es5, STAGE / "_static" / "mathjax")


def site_pages(site: Path) -> list[str]:
    """The site's pages (paths relative to `site`), without the theme's template fragments under _static/."""
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).parts[0].startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default build/site)")
    parser.add_argument("--strict", action="store_true", help="make Sphinx warnings fatal")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    stage()
    shutil.rmtree(args.out, ignore_errors=True)
    log = STAGE / "warnings.txt"
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-q",
        "-E",
        "-d",
        str(STAGE / ".doctrees"),
        "-w",
        str(log),
        *(["-W", "--keep-going"] if args.strict else []),
        str(STAGE),
        str(args.out),
    ]
    code = subprocess.run(cmd, cwd=REPO).returncode
    for nb in COURSE:  # the download button serves the notebook as committed, not the staged copy
        source = args.out / "_sources" / "notebooks" / nb.file
        if source.exists():
            shutil.copy2(course.NOTEBOOK_DIR / nb.file, source)
    warnings = sum(1 for line in log.read_text().splitlines() if ": WARNING:" in line or ": ERROR:" in line)
    pages = len(site_pages(args.out)) if args.out.exists() else 0
    print(
        f"site: {pages} pages in {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} "
        f"({time.perf_counter() - start:.0f} s, {warnings} Sphinx warning(s), listed in {log.relative_to(REPO)})"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
