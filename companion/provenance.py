"""Where the infographic's numbers come from (notebook 12): each is a `Number` read from a results file.

A `Number` holds its value, the text drawn for it, and its provenance (the results file it was read from and the key
path inside that file, e.g. ``claims[0].measured.margin``). `gather` finds the results files, `headline_numbers`
reads every number the figure shows (`companion.infographic` draws them and checks the figure against them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .verdicts import WORDS

MISSING = ("skip", "run")
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
    """Read one number from a results file, with its provenance (the teaching example of notebook 12)."""
    file = Path(file)
    return _number(json.loads(file.read_text()), file.name, path, name=name or path, fmt=fmt, reduce=reduce)


REDUCE_WORDS = {"mean": "mean of", "len": "length of", "smallest_key": "smallest key of"}


def reduced(value: Any, reduce: str = "") -> Any:
    """What a number shows of the value at its path: the value itself, or the mean or length of a list, or the
    smallest (integer) key of a dict keyed by sizes."""
    if reduce == "mean":
        return sum(float(v) for v in value) / len(value)
    if reduce == "len":
        return len(value)
    if reduce == "smallest_key":
        return min(int(k) for k in value)
    if reduce:
        raise ValueError(f"reduce must be one of {['', *REDUCE_WORDS]}, got {reduce!r}")
    return value


def _number(data: dict, file: str, path: str, *, name: str, fmt: str, reduce: str = "") -> Number:
    value = reduced(resolve(data, path), reduce)
    return Number(name, value, format_value(value, fmt), file, path, reduce)


def format_value(value: Any, fmt: str) -> str:
    """Formats used on the figure: "pts" (a fraction as signed percentage points), "cost" (a positive fraction
    shown as a loss of points), "pct" (a fraction as a percentage), "verdict" (supported / contradicted / not shown
    at this scale), or a str.format pattern."""
    if fmt == "pts":
        return f"{100 * float(value):+.1f} pts"
    if fmt == "cost":
        return f"{-100 * float(value):+.1f} pts"
    if fmt == "pct":
        return f"{100 * float(value):.1f}%"
    if fmt == "verdict":
        return WORDS[value]
    return fmt.format(value)


# ------------------------------------------------------------------------------------------- results files


def default_folder() -> Path:
    """The committed results files (notebooks/results/ in a checkout)."""
    from .course import COMMITTED_RESULTS

    return COMMITTED_RESULTS


def folder_of(text: str) -> Path:
    """The folder a SOURCE_RESULTS_DIR parameter names: "" is the committed results (`default_folder`), a relative
    path is read like RESULTS_DIR (inside the repository in a checkout)."""
    from .params import _resolve

    return default_folder() if not text else _resolve(text)


def out_folder(text: str, results_dir: str | Path) -> Path:
    """Where an OUT_DIR parameter puts the PNG and SVG: "" is RESULTS_DIR/infographic, a relative path is read
    like RESULTS_DIR."""
    from .params import _resolve

    return Path(results_dir) / "infographic" if not text else _resolve(text)


def shown(path: str | Path) -> str:
    """A path as printed in notebook outputs: relative to the repository when inside it (no machine paths)."""
    from .claims import _shown

    return _shown(Path(path))


def not_measured(files: dict[str, Path]) -> list[str]:
    """Course notebooks (but this one) without a results file among `files`: their panels say "not yet measured"."""
    from .course import COURSE

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
        from . import course

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


def headline_numbers(files: dict[str, Path]) -> dict[str, Number]:
    """Every number the infographic shows, read from the results files (`gather`), by name.

    Names: ``transfer.*`` and ``shift.*`` (notebook 01), ``mtl.*`` and ``interference.*`` (06), ``forgetting.*``
    (11, and 04's forgetting claim when its file exists), ``conflict.*`` (10), ``map.*`` (11's decision map) and
    ``score.<stem>.<i>`` (the verdict of every source or literature statement, in every file).
    """
    data = _load(files)
    nums: dict[str, Number] = {}

    def put(name: str, stem: str, path: str, fmt: str, reduce: str = "") -> None:
        try:
            nums[name] = _number(data[stem], files[stem].name, path, name=name, fmt=fmt, reduce=reduce)
        except (KeyError, IndexError, TypeError):
            return  # a results file without that entry: the figure says "not yet measured" there

    def claim_path(i: int, *keys: str | int) -> str:
        return join_path("claims", i, *keys)

    if hit := _by_prefix(data, "01"):
        stem, d = hit
        if (i := _claim(d, "Transfer helps with few labels")) is not None:
            put("transfer.margin", stem, claim_path(i, "effect"), "pts")
            put("transfer.finetune", stem, claim_path(i, "measured", "transfer"), "pct", "mean")
            put("transfer.scratch", stem, claim_path(i, "measured", "scratch"), "pct", "mean")
            put("transfer.seeds", stem, claim_path(i, "measured", "seeds"), "{}", "len")
            put("transfer.held", stem, claim_path(i, "verdict"), "verdict")
            if "TARGET_PER_CLASS" in d.get("parameters", {}):
                put("transfer.per_class", stem, "parameters.TARGET_PER_CLASS", "{}")
        if (i := _claim(d, "A covariate shift costs accuracy")) is not None:
            put("shift.margin", stem, claim_path(i, "effect"), "cost")
            put("shift.source", stem, claim_path(i, "measured", "on_mnist"), "pct", "mean")
            put("shift.target", stem, claim_path(i, "measured", "on_usps"), "pct", "mean")
            put("shift.held", stem, claim_path(i, "verdict"), "verdict")

    if hit := _by_prefix(data, "06"):
        stem, d = hit
        if (i := _claim(d, "With the digit labels as auxiliary tasks")) is not None:
            put("mtl.n", stem, claim_path(i, "measured", "hints_vs_single"), "{}", "smallest_key")
            n = str(nums["mtl.n"].value)
            put("mtl.margin", stem, claim_path(i, "measured", "hints_vs_single", n, "effect"), "pts")
            put("mtl.hints", stem, claim_path(i, "measured", "test_acc", "hints", n, "mean"), "pct")
            put("mtl.single", stem, claim_path(i, "measured", "test_acc", "single-task", n, "mean"), "pct")
            put("mtl.held", stem, claim_path(i, "verdict"), "verdict")
            if (j := _claim(d, "Multi-task learning generalises better")) is not None:
                gains = d["claims"][j]["measured"].get("gain_points_mean", {}).get("control", {})
                if n in gains:
                    put(
                        "mtl.control",
                        stem,
                        claim_path(j, "measured", "gain_points_mean", "control", n),
                        "{:+.1f} pts",
                    )
        if (i := _claim(d, "Source text: tasks trained together can interfere")) is not None:
            m = d["claims"][i]["measured"]
            put("interference.alone", stem, claim_path(i, "measured", "left_only", "mean"), "pct")
            put("interference.together", stem, claim_path(i, "measured", "left_plus_right", "mean"), "pct")
            if "left_only_vs_left_plus_right" in m:
                put(
                    "interference.margin",
                    stem,
                    claim_path(i, "effect"),
                    "cost",
                )
            put("interference.held", stem, claim_path(i, "verdict"), "verdict")

    if hit := _by_prefix(data, "11"):
        stem, d = hit
        if (i := _claim(d, "Fine-tuning forgets the source task")) is not None:
            put("forgetting.margin", stem, claim_path(i, "effect"), "pts")
            put("forgetting.kept", stem, claim_path(i, "measured", "source_acc_pretrain_mtl"), "pct", "mean")
            put("forgetting.finetune", stem, claim_path(i, "measured", "source_acc_finetune"), "pct", "mean")
            put("forgetting.held", stem, claim_path(i, "verdict"), "verdict")
        _map_numbers(nums, d, stem, files[stem].name)

    for prefix, topic, words in (("04", "forgetting04", ("forget",)), ("10", "conflict", ("conflict",))):
        if hit := _by_prefix(data, prefix):
            stem, d = hit
            if (i := _claim(d, *words)) is not None:
                put(f"{topic}.held", stem, claim_path(i, "verdict"), "verdict")
                nums[f"{topic}.claim"] = Number(
                    f"{topic}.claim",
                    d["claims"][i]["claim"],
                    short(d["claims"][i]["claim"], 72),
                    files[stem].name,
                    claim_path(i, "claim"),
                )
                if isinstance(d["claims"][i]["measured"].get("margin"), (int, float)):
                    put(f"{topic}.margin", stem, claim_path(i, "effect"), "pts")

    for stem, d in data.items():
        for i, c in enumerate(d.get("claims", [])):
            if c.get("kind") == "source":
                put(f"score.{stem}.{i}", stem, claim_path(i, "verdict"), "verdict")
                nums[f"score.{stem}.{i}.text"] = Number(
                    f"score.{stem}.{i}.text",
                    c["claim"],
                    short(c["claim"]),
                    files[stem].name,
                    claim_path(i, "claim"),
                )
    return nums


def _map_numbers(nums: dict[str, Number], d: dict, stem: str, file: str) -> None:
    """11's decision map (metrics.decision_map): per-class rows, column names, winners and ties of two panels."""
    dm = d.get("metrics", {}).get("decision_map")
    if not dm:
        return
    for r, n in enumerate(dm["per_class"]):
        path = join_path("metrics", "decision_map", "per_class", r)
        nums[f"map.per_class.{r}"] = Number(f"map.per_class.{r}", n, str(n), file, path)
    for c, name in enumerate(dm["columns"]):
        path = join_path("metrics", "decision_map", "columns", c)
        nums[f"map.column.{c}"] = Number(f"map.column.{c}", name, str(name), file, path)
    for key in MAP_PANELS:
        if key not in dm:
            continue
        for r, row in enumerate(dm[key]["winner"]):
            for c, w in enumerate(row):
                path = join_path("metrics", "decision_map", key, "winner", r, c)
                nums[f"map.{key}.{r}.{c}"] = Number(
                    f"map.{key}.{r}.{c}", w, WINNER_CODE.get(w, w), file, path
                )
                tie = dm[key]["tie"][r][c]
                tpath = join_path("metrics", "decision_map", key, "tie", r, c)
                nums[f"map.{key}.{r}.{c}.tie"] = Number(
                    f"map.{key}.{r}.{c}.tie", tie, "tie" if tie else "", file, tpath
                )
    agree = d.get("metrics", {}).get("rule_of_thumb_agreement", {})
    for half in ("transfer_half", "multitask_half"):
        if half in agree:
            for k, what in enumerate(("clear", "cells")):
                path = join_path("metrics", "rule_of_thumb_agreement", half, k)
                nums[f"map.{half}.{what}"] = Number(
                    f"map.{half}.{what}", agree[half][k], str(agree[half][k]), file, path
                )


MAP_PANELS = {
    "no_labels_together/target": "other task's labels NOT available\n(judged on the target task)",
    "labels_together/both": "all labels together, both tasks\nmust work (mean of the two)",
}
WINNER_CODE = {"alone": "alone", "probe": "probe", "finetune": "FT", "mtl": "MTL", "pretrain_mtl": "PT+MTL"}
