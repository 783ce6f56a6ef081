"""Where the infographic's numbers come from: each is a `Number` read from a results file.

A `Number` holds its value, the text drawn for it, and its provenance (the results file it was read from and the key
path inside that file, e.g. ``claims[3].effect``). `gather` finds the results files, `strongest` picks the cards'
results by rule, `headline_numbers` reads every number the figure shows (`companion.infographic` draws them), and
`check_figure` re-reads each one from its file and finds its text on a drawn figure.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..experiments.verdicts import WORDS
from . import runner as course
from .catalog import COMMITTED_RESULTS, COURSE
from .claims import _shown
from .params import results_folder

MISSING = ("skip", "run")
A4_LANDSCAPE = (11.69, 8.27)  # inches (297 x 210 mm)
SELF = "12_infographic"

# ------------------------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class Number:
    """One value drawn on the infographic, with where it came from.

    `value` is what `path` holds in `file` (or, with `reduce="mean"`, the mean of the list it holds); `text` is how
    the figure shows it. `file` is the results file's name (``01_definitions.json``) in the folder it was read from.
    """

    name: str
    value: Any
    text: str
    file: str
    path: str
    reduce: str = ""

    @property
    def provenance(self) -> str:
        where = f"{self.file}: {self.path}"
        return f"{REDUCE_WORDS[self.reduce]} {where}" if self.reduce else where


_TOKEN = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\["([^"]*)"\]')


def parse_path(path: str) -> list[str | int]:
    """Split a key path (``claims[0].measured.margin``, ``metrics.decision_map["labels_together/both"]``) into keys."""
    keys: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse key path {path!r} at position {pos}")
        keys.append(m[1] if m[1] is not None else int(m[2]) if m[2] is not None else m[3])
        pos = m.end()
    return keys


def _key(k: str | int) -> str:
    if isinstance(k, int):
        return f"[{k}]"
    return f".{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else f'["{k}"]'


def join_path(*keys: str | int) -> str:
    """The key path of a sequence of keys (the inverse of `parse_path`)."""
    return "".join(_key(k) for k in keys).lstrip(".")


def resolve(data: Any, path: str) -> Any:
    """The value at a key path inside a loaded results file."""
    for k in parse_path(path):
        data = data[k]
    return data


def read(file: str | Path, path: str, *, name: str = "", fmt: str = "{}", reduce: str = "") -> Number:
    """Read one number from a results file, with its provenance: the value, the file and the key path it came from."""
    file = Path(file)
    return _number(json.loads(file.read_text()), file.name, path, name=name or path, fmt=fmt, reduce=reduce)


REDUCE_WORDS = {
    "mean": "mean of",
    "len": "length of",
    "smallest_key": "smallest key of",
    "decided": "cells not tied in",
    "cells": "cells in",
}
KIND_WORDS = {"course": "course claim", "source": "source text", "literature": "literature"}


def reduced(value: Any, reduce: str = "") -> Any:
    """What a number shows of the value at its path: the value itself, or the mean or length of a list, the
    smallest (integer) key of a dict keyed by sizes, or of a grid (rows of booleans: is the cell tied) the
    number of cells that are decided (not tied) or of all cells."""
    if reduce == "mean":
        return sum(float(v) for v in value) / len(value)
    if reduce == "len":
        return len(value)
    if reduce == "smallest_key":
        return min(int(k) for k in value)
    if reduce == "decided":
        return sum(not tie for row in value for tie in row)
    if reduce == "cells":
        return sum(len(row) for row in value)
    if reduce:
        raise ValueError(f"reduce must be one of {['', *REDUCE_WORDS]}, got {reduce!r}")
    return value


def _number(data: dict, file: str, path: str, *, name: str, fmt: str, reduce: str = "") -> Number:
    value = reduced(resolve(data, path), reduce)
    return Number(name, value, format_value(value, fmt), file, path, reduce)


def format_value(value: Any, fmt: str) -> str:
    """Formats used on the figure: "pts" (a fraction as signed percentage points), "cost" (a positive fraction
    shown as a loss of points), "pct" (a fraction as a percentage), "verdict" (supported / contradicted / not shown
    at this scale), "ci" (an interval of fractions, in points), "kind" (whose claim it is), or a str.format
    pattern."""
    if fmt == "pts":
        return f"{100 * float(value):+.1f} pts"
    if fmt == "cost":
        return f"{-100 * float(value):+.1f} pts"
    if fmt == "pct":
        return f"{100 * float(value):.1f}%"
    if fmt == "verdict":
        return WORDS[value]
    if fmt == "ci":
        low, high = (100 * float(x) for x in value)
        return f"95% CI [{low:+.1f}, {high:+.1f}] pts"
    if fmt == "kind":
        return KIND_WORDS[value]
    return fmt.format(value)


# ------------------------------------------------------------------------------------------- results files


def default_folder() -> Path:
    """The committed results files (notebooks/results/ in a checkout)."""

    return COMMITTED_RESULTS


def folder_of(text: str) -> Path:
    """The folder a SOURCE_RESULTS_DIR parameter names: "" is the committed results (`default_folder`), a relative
    path is read like RESULTS_DIR (`params.results_folder`: inside the folder the notebook runs in)."""
    return default_folder() if not text else results_folder(text)


def out_folder(text: str, results_dir: str | Path) -> Path:
    """Where an OUT_DIR parameter puts the PNG and SVG: "" is RESULTS_DIR/infographic, a relative path is read
    like RESULTS_DIR (`params.results_folder`)."""
    return Path(results_dir) / "infographic" if not text else results_folder(text)


def shown(path: str | Path) -> str:
    """A path as printed in notebook outputs: relative to the repository when inside it (no machine paths)."""

    return _shown(Path(path))


def not_measured(files: dict[str, Path]) -> list[str]:
    """Course notebooks (but this one) without a results file among `files`: their panels say "not yet measured"."""

    return [nb.stem for nb in COURSE if nb.stem != SELF and nb.stem not in files]


def gather(
    folder: str | Path | None = None,
    *,
    missing: str = "skip",
    out: str | Path = "build/infographic",
    notebooks: list[str] | None = None,
) -> dict[str, Path]:
    """The results files the infographic draws from, {notebook stem: path}.

    `folder`: where the results files are (default: the committed ones, notebooks/results/). `missing="skip"`
    leaves a notebook without a results file out (its panels say "not yet measured"); `missing="run"` first runs
    each course notebook (`notebooks`, default every one in `companion.COURSE` but this one) that has no results
    file, at quick scale, through the course runner into `out`, and reads its fresh results file from there.
    """
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {list(MISSING)}, got {missing!r}")
    folder = Path(folder) if folder else default_folder()
    found = (
        {p.stem: p for p in sorted(folder.glob("[0-9][0-9]_*.json")) if p.stem != SELF}
        if folder.is_dir()
        else {}
    )
    if missing == "run":
        wanted = notebooks if notebooks is not None else [nb.stem for nb in course.COURSE if nb.stem != SELF]
        for stem in wanted:
            if stem in found:
                continue
            course.run([stem], scale="quick", out=out)
            runs = sorted((Path(out) / "results" / stem).rglob(f"{stem}.json"))
            if not runs:
                raise RuntimeError(f"running {stem} at quick scale wrote no results file under {out}")
            found[stem] = runs[-1]
    return dict(sorted(found.items()))


def _load(files: dict[str, Path]) -> dict[str, dict]:
    return {stem: json.loads(Path(p).read_text()) for stem, p in files.items()}


def _by_prefix(data: dict[str, dict], prefix: str) -> tuple[str, dict] | None:
    hits = [s for s in data if s.startswith(prefix + "_")]
    return (hits[0], data[hits[0]]) if hits else None


def _claim(results: dict, *starts: str) -> int | None:
    """Index of the first claim whose text starts with (or contains, for words given in lower case) a phrase."""
    for i, c in enumerate(results.get("claims", [])):
        if any(c["claim"].startswith(s) or (s.islower() and s in c["claim"].lower()) for s in starts):
            return i
    return None


def short(text: str, width: int = 100) -> str:
    """A claim's text shortened for the scoreboard: no "Source text:" prefix, cut before its first "(" or ":"."""
    text = re.sub(r"^Source text:\s*", "", text)
    text = re.split(r"\s\(|:\s|,? at every seed", text, maxsplit=1)[0].rstrip(" ,;.")
    text = text[0].upper() + text[1:] if text else text
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


HALVES = {  # the course's two halves, by notebook number: where the cards' strongest results are drawn from
    "transfer": ("01", "02", "04", "05", "07", "09"),
    "multitask": ("03", "06", "08", "10"),
}
STATEMENT_KINDS = ("source", "literature")


def strength(claim: dict) -> float | None:
    """How strongly a claim record is supported, for ranking the cards: the end of its 95 % interval nearest zero
    (the smallest effect the interval allows), or None when the claim is not a candidate.

    Candidates are supported paired comparisons of accuracies measured over seeds: verdict "supported", at least
    two seeds, an effect and an interval that are differences of fractions (within [-1, 1]), an interval that lies
    wholly on one side of zero, and no fixed threshold (a one-sample claim such as "above chance" is left out)."""
    try:
        low, high = (float(x) for x in claim["ci"])
        effect, seeds = float(claim["effect"]), int(claim["seeds"])
    except (KeyError, TypeError, ValueError):
        return None
    record = claim.get("measured", {}).get("verdict", {}) if isinstance(claim.get("measured"), dict) else {}
    if (
        claim.get("verdict") != "supported"
        or seeds < 2
        or not all(math.isfinite(x) and abs(x) <= 1 for x in (low, high, effect))
        or low * high <= 0
        or (isinstance(record, dict) and record.get("threshold") is not None)
    ):
        return None
    return min(abs(low), abs(high))


def strongest(data: dict[str, dict], notebooks: tuple[str, ...], n: int = 3, per_notebook: int = 2) -> list:
    """The `n` strongest supported results among the claims (course claims and statements) of the results files
    whose notebook number is in `notebooks`, as [(stem, claim index)], best first: ranked by `strength`, then by
    the size of the effect; at most `per_notebook` from one notebook, so one story does not fill every card."""
    if n < 0 or per_notebook < 1:
        raise ValueError(f"n must be >= 0 and per_notebook >= 1, got n={n!r}, per_notebook={per_notebook!r}")
    ranked = []
    for stem, d in data.items():
        if stem[:2] not in notebooks:
            continue
        for i, c in enumerate(d.get("claims", [])):
            if (s := strength(c)) is not None:
                ranked.append((-s, -abs(float(c["effect"])), stem, i))
    picked, per = [], {}
    for _, _, stem, i in sorted(ranked):
        if len(picked) == n:
            break
        if per.get(stem, 0) < per_notebook:
            picked.append((stem, i))
            per[stem] = per.get(stem, 0) + 1
    return picked


def _short_number(name: str, d: dict, file: str, i: int, width: int = 60) -> Number:
    """A claim's page text: its `short` field, or (empty or absent in older files) `short` of the claim."""
    c = d["claims"][i]
    if c.get("short"):
        return Number(name, c["short"], c["short"], file, join_path("claims", i, "short"))
    return Number(name, c["claim"], short(c["claim"], width), file, join_path("claims", i, "claim"))


def headline_numbers(files: dict[str, Path]) -> dict[str, Number]:
    """Every number the infographic shows, read from the results files (`gather`), by name.

    Names: ``card.<half>.<k>.*`` (the `strongest` results of each of `HALVES`: short text, effect, interval,
    seeds, verdict, kind), ``map.*`` (11's decision map), ``score.<stem>.<i>`` and ``score.<stem>.<i>.text`` (the
    verdict and short text of every source or literature statement, in every file) and ``pending.<stem>.<i>``
    (a statement whose record has no verdict yet: an older results file; drawn as "not yet measured").
    """
    data = _load(files)
    nums: dict[str, Number] = {}

    def put(name: str, stem: str, path: str, fmt: str, reduce: str = "") -> None:
        try:
            nums[name] = _number(data[stem], files[stem].name, path, name=name, fmt=fmt, reduce=reduce)
        except (KeyError, IndexError, TypeError):
            return  # a results file without that entry: the figure says "not yet measured" there

    for half, notebooks in HALVES.items():
        for k, (stem, i) in enumerate(strongest(data, notebooks)):
            name = f"card.{half}.{k}"
            nums[f"{name}.short"] = _short_number(f"{name}.short", data[stem], files[stem].name, i)
            put(f"{name}.effect", stem, join_path("claims", i, "effect"), "pts")
            put(f"{name}.ci", stem, join_path("claims", i, "ci"), "ci")
            put(f"{name}.seeds", stem, join_path("claims", i, "seeds"), "{} seeds")
            put(f"{name}.verdict", stem, join_path("claims", i, "verdict"), "verdict")
            put(f"{name}.kind", stem, join_path("claims", i, "kind"), "kind")

    if hit := _by_prefix(data, "11"):
        stem, d = hit
        _map_numbers(nums, d, stem, files[stem].name)

    for stem, d in data.items():
        for i, c in enumerate(d.get("claims", [])):
            if c.get("kind") not in STATEMENT_KINDS:
                continue
            if c.get("verdict") in WORDS:
                put(f"score.{stem}.{i}", stem, join_path("claims", i, "verdict"), "verdict")
                nums[f"score.{stem}.{i}.text"] = _short_number(
                    f"score.{stem}.{i}.text", d, files[stem].name, i
                )
            else:
                nums[f"pending.{stem}.{i}"] = Number(
                    f"pending.{stem}.{i}", c["kind"], "", files[stem].name, join_path("claims", i, "kind")
                )
    return nums


def _map_numbers(nums: dict[str, Number], d: dict, stem: str, file: str) -> None:
    """11's decision map (metrics.decision_map, from `companion.advice.map_summary`): per-class rows, column names,
    each shown panel's chosen member (its family, when the file records families), undecided cells and the count
    of decided cells (computed from the undecided grid), and the rule of thumb's agreement when recorded."""
    dm = d.get("metrics", {}).get("decision_map")
    if not isinstance(dm, dict) or "per_class" not in dm or "columns" not in dm:
        return
    for r, n in enumerate(dm["per_class"]):
        path = join_path("metrics", "decision_map", "per_class", r)
        nums[f"map.per_class.{r}"] = Number(f"map.per_class.{r}", n, str(n), file, path)
    for c, name in enumerate(dm["columns"]):
        path = join_path("metrics", "decision_map", "columns", c)
        nums[f"map.column.{c}"] = Number(f"map.column.{c}", name, str(name), file, path)
    for key in MAP_PANELS:
        panel = dm.get(key)
        if not isinstance(panel, dict) or "winner" not in panel or "tie" not in panel:
            continue
        base = ("metrics", "decision_map", key)
        for r, row in enumerate(panel["winner"]):
            for c, w in enumerate(row):
                name = f"map.{key}.{r}.{c}"
                nums[name] = Number(name, w, WINNER_CODE.get(w, w), file, join_path(*base, "winner", r, c))
                tie = panel["tie"][r][c]
                nums[f"{name}.tie"] = Number(f"{name}.tie", tie, "", file, join_path(*base, "tie", r, c))
                if "family" in panel:
                    fam = panel["family"][r][c]
                    nums[f"{name}.family"] = Number(
                        f"{name}.family", fam, "", file, join_path(*base, "family", r, c)
                    )
        for what in ("decided", "cells"):
            path = join_path(*base, "tie")
            value = reduced(panel["tie"], what)
            nums[f"map.{key}.{what}"] = Number(f"map.{key}.{what}", value, str(value), file, path, what)
    agree = d.get("metrics", {}).get("rule_of_thumb_agreement", {})
    for half in ("transfer_half", "multitask_half"):
        if half in agree:
            for k, what in enumerate(("clear", "cells")):
                path = join_path("metrics", "rule_of_thumb_agreement", half, k)
                nums[f"map.{half}.{what}"] = Number(
                    f"map.{half}.{what}", agree[half][k], str(agree[half][k]), file, path
                )


MAP_PANELS = {
    "no_labels_together/target": "other task's labels not available (judged on the target)",
    "labels_together/both": "all labels together, both tasks must work",
}
WINNER_CODE = {"alone": "alone", "probe": "probe", "finetune": "FT", "mtl": "MTL", "pretrain_mtl": "PT+MTL"}


# ------------------------------------------------------------------------------------------- checks and files
# (the figure's texts against the numbers, the files written)


def figure_texts(fig) -> list[str]:
    """Every string drawn on the figure (text, titles, tick labels, table cells, legend entries)."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text() and t.get_visible()]


def _flat(text: str) -> str:
    """Text without its white space (a text wrapped into lines, at a space or after "->", still matches)."""
    return "".join(text.split())


def check_figure(
    fig, nums: dict[str, Number], folder: str | Path | None = None, files: dict[str, Path] | None = None
) -> list[str]:
    """Problems found, [] when none: each number re-read from its results file must equal its value, and its text
    must appear on the figure. `files` ({stem: path}, from `gather`) locate the files; else `folder`."""
    folder = Path(folder) if folder else default_folder()
    by_name = {Path(p).name: Path(p) for p in (files or {}).values()}
    drawn = "\0".join(_flat(t) for t in figure_texts(fig))
    problems = []
    for n in nums.values():
        data = json.loads(by_name.get(n.file, folder / n.file).read_text())
        raw = reduced(resolve(data, n.path), n.reduce)
        if not (raw == n.value or (isinstance(raw, float) and math.isclose(raw, n.value, rel_tol=1e-12))):
            problems.append(f"{n.name}: figure has {n.value!r}, {n.provenance} holds {raw!r}")
        if n.text and _flat(n.text) not in drawn:
            problems.append(f"{n.name}: {n.text!r} is not drawn on the figure")
    return problems


def save(fig, out_dir: str | Path, stem: str = "course_infographic") -> dict[str, Path]:
    """Write the figure as PNG (300 dpi) and SVG at A4 landscape, without timestamps; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.set_size_inches(*A4_LANDSCAPE)
    paths = {"png": out_dir / f"{stem}.png", "svg": out_dir / f"{stem}.svg"}
    fig.savefig(paths["png"], dpi=300, metadata={"Software": None})
    fig.savefig(paths["svg"], metadata={"Date": None})
    return paths


def page_size(path: str | Path) -> tuple[float, float]:
    """Width and height in inches of a written PNG (from its pixels and dpi) or SVG (from its pt size)."""
    path = Path(path)
    if path.suffix == ".svg":
        head = path.read_text()[:2000]
        w = float(re.search(r'width="([\d.]+)pt"', head)[1])
        h = float(re.search(r'height="([\d.]+)pt"', head)[1])
        return w / 72, h / 72
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi", (72, 72))
        return im.size[0] / float(dpi[0]), im.size[1] / float(dpi[1])


def provenance_table(nums: dict[str, Number]) -> list[dict]:
    """One row per number on the figure: name, value as drawn, file and key path (a table to print beside the figure)."""
    return [
        {
            "name": n.name,
            "shown": n.text,
            "file": n.file,
            "path": f"{REDUCE_WORDS[n.reduce]} {n.path}" if n.reduce else n.path,
        }
        for n in nums.values()
    ]
