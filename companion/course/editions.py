"""Student and instructor editions of the course notebooks, and the list of their exercises (docs/teaching.md).

The committed notebooks are the instructor edition: executed, with every solution. The student edition removes the
cells tagged `solution` and clears the outputs of the cells tagged `exercise`, with nbconvert's
`TagRemovePreprocessor` (which also resets their execution counts); everything else stays executed. Every
notebook, from 00 on, lays out its code exercise the same way: a stub cell, its solution, a "check your answer"
cell. docs/teaching.md tells a teacher how to use the two editions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from ..files import atomic_write
from .catalog import notebook_folder, notebooks

SOLUTION, EXERCISE = "solution", "exercise"
HEADER_ID = "student-edition"
MANIFEST = ".companion-edition.json"  # in OUT_DIR: {file name: sha256 of what the last edition wrote}


def _header(name: str | None) -> dict:
    """The markdown cell that opens a student edition."""
    text = (
        f"**Your copy of {name or 'this notebook'}** (student edition). Run the cells in order and read as you\n"
        "go. Each exercise has a cell for your answer (it stops with `NotImplementedError` until you write it)\n"
        "and, right after it, a cell that checks your answer against the course's tested code: write, run the\n"
        "check, and try again until it passes. Running the whole notebook stops at the first exercise you have\n"
        "not solved yet, by design. Your edits are safe: making the student edition again does not overwrite a\n"
        "notebook you have changed."
    )
    return {"cell_type": "markdown", "id": HEADER_ID, "metadata": {}, "source": text}


def student(nb: dict, name: str | None = None) -> dict:
    """The student edition of a notebook (a new notebook; `nb` is left as it is).

    nbconvert's `TagRemovePreprocessor` removes the `solution` cells (markdown and code) and the outputs and
    execution counts of the `exercise` cells; the stamp `metadata.companion.source_hash` is dropped (it no longer
    matches the code cells) and a first markdown cell says which edition this is and where the instructor edition
    is (`name`: the notebook's file name).
    """
    import nbformat
    from nbconvert.preprocessors import TagRemovePreprocessor

    out = nbformat.from_dict(copy.deepcopy(dict(nb)))
    strip = TagRemovePreprocessor(remove_cell_tags={SOLUTION}, remove_all_outputs_tags={EXERCISE})
    out, _ = strip.preprocess(out, {})
    meta = out.get("metadata", {}).get("companion")
    if meta is not None:
        meta.pop("source_hash", None)
        if not meta:
            del out["metadata"]["companion"]
    out.cells.insert(0, nbformat.from_dict(_header(name)))
    return out


def _text(cell: dict) -> str:
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


TITLE_CHARS = 200  # longest exercise title in the generated list; longer items are cut at a word boundary
_BOLD = re.compile(r"^\*\*(.+?)\*\*")


def _title(text: str, limit: int = TITLE_CHARS) -> str:
    """An exercise item's title: its bold lead-in (`**Title.**`) when it has one, else the whole item, shortened at
    a word boundary with "…" past `limit` characters. Never cut at a full stop: "Kumar et al. (2022) ..." and a
    context sentence before the question both stay whole."""
    text = " ".join(text.split())
    bold = _BOLD.match(text)
    if bold:
        return bold.group(1).strip().rstrip(".:")
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + " …"


_CODE = re.compile(r"^###\s+(Exercise\b.*)$")
_SECTION = re.compile(r"^##\s+Exercises\b")
_HEADING = re.compile(r"^#{1,2}\s")
_ITEM = re.compile(r"^(\d+)\.\s+(.*)$")


def exercises(nb: dict) -> list[str]:
    """The titles of a notebook's exercises, in order.

    The rule: a markdown heading `### Exercise ...` anywhere (the code exercises) gives its heading text, e.g.
    "Exercise (code): the forgetting measure"; inside the section headed `## Exercises` (until the next heading of
    level 1 or 2), each numbered item that starts a line gives "Exercise N: " and its title (`_title`: its bold
    lead-in, or the whole item up to TITLE_CHARS). Cells tagged `solution` are skipped.
    """
    found: list[str] = []
    inside = False
    item: list[str] | None = None

    def close() -> None:
        nonlocal item
        if item:
            found.append(f"Exercise {item[0]}: {_title(' '.join(item[1:]))}")
        item = None

    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown" or SOLUTION in _tags(cell):
            continue
        for line in _text(cell).splitlines():
            code = _CODE.match(line)
            if code:
                close()
                found.append(" ".join(code.group(1).split()))
            elif _SECTION.match(line):
                close()
                inside = True
            elif _HEADING.match(line):
                close()
                inside = False
            elif inside and _ITEM.match(line):
                close()
                number, rest = _ITEM.match(line).groups()
                item = [number, rest]
            elif item is not None and line.strip() and line[:1].isspace():
                item.append(line.strip())  # an item's continuation line is indented
            else:
                close()
        close()
    return found


def _dump(nb: dict) -> bytes:
    return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()


def _targets(out_dir: str | Path, names: list[str] | None) -> tuple[Path, list[Path]]:
    """Resolve the notebooks and refuse an OUT_DIR that holds them (the committed notebooks would be overwritten)."""
    paths = notebooks(names)
    out = Path(out_dir).expanduser().resolve()
    sources = {p.resolve().parent for p in paths} | {notebook_folder().resolve()}
    if out in sources:
        raise ValueError(
            f"OUT_DIR must not be the folder of the committed notebooks, got {out_dir}; "
            "give another folder (e.g. build/student)"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR must be a folder, got the file {out_dir}")
    return out, paths


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_all(out: Path, files: dict[str, bytes], force: bool) -> list[Path]:
    """Write `files` ({name: content}) into `out`, recording their hashes in `out/.companion-edition.json`.

    A file already there whose content matches neither what the last edition wrote (the manifest) nor the new
    content has been edited (or is not ours): unless `force`, nothing at all is written and a ValueError names
    it. Each file, and the manifest, is written atomically."""
    manifest_path = out / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except (OSError, ValueError):
        manifest = {}
    if not force:
        for name, data in files.items():
            target = out / name
            if not target.is_file():
                continue
            now = _sha256(target.read_bytes())
            if now != manifest.get(name) and now != _sha256(data):
                raise ValueError(
                    f"{target} has your edits; pass --force or choose another folder (nothing was written)"
                )
    written = [atomic_write(out / name, lambda f, d=data: f.write(d)) for name, data in files.items()]
    manifest |= {name: _sha256(data) for name, data in files.items()}
    text = json.dumps(dict(sorted(manifest.items())), indent=1) + "\n"
    atomic_write(manifest_path, lambda f: f.write(text.encode()))
    return written


def write_student(out_dir: str | Path, names: list[str] | None = None, *, force: bool = False) -> list[Path]:
    """Write the student edition of each notebook (all committed ones in course order, or those named: files or
    number prefixes) into `out_dir`, each file atomically; returns the written paths. A notebook there that was
    edited since the last edition was written (a student's work) is refused unless `force` (`_write_all`)."""
    out, paths = _targets(out_dir, names)
    files = {p.name: _dump(student(json.loads(p.read_text()), name=p.name)) for p in paths}
    return _write_all(out, files, force)


def write_instructor(
    out_dir: str | Path, names: list[str] | None = None, *, force: bool = False
) -> list[Path]:
    """Copy the instructor edition (the committed notebooks, as they are) into `out_dir`, each file atomically;
    an edited notebook there is refused unless `force`, as in `write_student`."""
    out, paths = _targets(out_dir, names)
    return _write_all(out, {p.name: p.read_bytes() for p in paths}, force)
