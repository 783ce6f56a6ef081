"""The course on one page: an A4 landscape infographic drawn only from the notebooks' results files (notebook 12).

Every number on the figure is a `Number`: its value, the text drawn for it, and its provenance (the results file it
was read from and the key path inside that file, e.g. ``claims[0].measured.margin``). `headline_numbers` reads them
all; `figure` draws nothing else; `check_figure` re-reads each number from its file and finds its text on the
figure. Panels whose notebook has no results file say "not yet measured" instead of showing a number.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .provenance import (  # noqa: F401  (the provenance names stay importable from here)
    _TOKEN,
    MAP_PANELS,
    MISSING,
    REDUCE_WORDS,
    SELF,
    WINNER_CODE,
    Number,
    _by_prefix,
    _claim,
    _key,
    _load,
    _map_numbers,
    _number,
    default_folder,
    folder_of,
    format_value,
    gather,
    headline_numbers,
    join_path,
    not_measured,
    out_folder,
    parse_path,
    read,
    reduced,
    resolve,
    short,
    shown,
)

A4_LANDSCAPE = (11.69, 8.27)  # inches (297 x 210 mm)
# Okabe & Ito (2008): a palette that stays distinct under the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "grey": "#999999",
}
VERDICT_STYLE = {  # mark and colour of each outcome on the scoreboard
    "supported": ("✔", OKABE_ITO["blue"]),
    "contradicted": ("✘", OKABE_ITO["vermillion"]),
    "inconclusive": ("?", OKABE_ITO["grey"]),
}

WINNER_COLOUR = {
    "alone": OKABE_ITO["grey"],
    "probe": OKABE_ITO["sky"],
    "finetune": OKABE_ITO["blue"],
    "mtl": OKABE_ITO["orange"],
    "pretrain_mtl": OKABE_ITO["vermillion"],
}
WINNER_NAME = {
    "alone": "the target task alone",
    "probe": "transfer, linear probe",
    "finetune": "transfer, fine-tune",
    "mtl": "multi-task",
    "pretrain_mtl": "pretrain, then multi-task",
}

# ------------------------------------------------------------------------------------------- the figure

DEFINITIONS = (
    (
        "Transfer learning",
        OKABE_ITO["blue"],
        "Two phases, one after the other. A network first learns a source task that has plenty of labels; its "
        "weights then become the starting point for a target task with few labels, either kept frozen under a new "
        "head (a linear probe) or trained further (fine-tuning). Only the target task matters in the end.",
        "source:  $\\theta_S=\\arg\\min_\\theta\\, L_S(\\theta)$\n"
        "target:  $\\theta_T=\\arg\\min_\\theta\\, L_T(\\theta)$, starting from $\\theta_S$",
    ),
    (
        "Multi-task learning",
        OKABE_ITO["orange"],
        "One phase. A single network with a shared trunk and one head per task learns several tasks at the same "
        "time, each task's gradient shaping the shared features. It needs every task's labels during training, "
        "and every task is meant to work at the end.",
        "all tasks at once:  $\\theta=\\arg\\min_\\theta \\sum_t w_t\\, L_t(\\theta)$\n"
        "(one shared trunk, one head per task)",
    ),
)

COMPARISON = (
    ("", "Transfer learning", "Multi-task learning"),
    ("Order of training", "sequential: source, then target", "simultaneous: all tasks at once"),
    ("Labels needed", "source labels before; target labels later", "every task's labels together"),
    ("What is shared", "weights copied from the source model", "one trunk trained by all tasks"),
    ("What must work", "the target task", "every task"),
    ("Typical risk", "source too far: little gain or harm", "tasks pulling apart: one task hurts another"),
    ("Cost to serve both", "a second model, or a frozen trunk", "one trunk, one head per task"),
)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False))


def _box(xy, w, h, colour):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch(xy, w, h, boxstyle="round,pad=0,rounding_size=0.03", fc="white", ec=colour, lw=1.4)


def _t(nums: dict[str, Number], name: str) -> str:
    return nums[name].text


def _card(
    fig, rect, title: str, colour: str, headline: str | None, lines: list[str], source: str, missing_note: str
) -> None:
    """One headline panel: title, the big number, detail lines (wrapped), and the file it came from."""
    ax = fig.add_axes(rect)
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.add_patch(_box((0, 0), 1, 1, colour))
    ax.text(0.05, 0.95, title, fontsize=8, weight="bold", va="top", color=colour)
    if headline is None:
        ax.text(0.05, 0.70, "not yet measured", fontsize=11, style="italic", color="#666666", va="center")
        ax.text(0.05, 0.55, _wrap(missing_note, 34), fontsize=6.5, va="top", color="#333333")
        return
    ax.text(0.05, 0.72, headline, fontsize=18, weight="bold", va="center")
    ax.text(0.05, 0.57, "\n".join(_wrap(x, 36) for x in lines if x), fontsize=6.5, va="top", linespacing=1.3)
    ax.text(0.05, 0.04, source, fontsize=6, color="#555555", va="bottom", style="italic")


def figure(
    nums: dict[str, Number],
    *,
    title: str = "Transfer learning vs multi-task learning: the course on one page",
):
    """Draw the infographic (A4 landscape) from `headline_numbers`: definitions, comparison table, headline cards,
    the decision map in miniature and the scoreboard of source statements. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=A4_LANDSCAPE)
    fig.text(0.02, 0.975, title, fontsize=16, weight="bold", va="top")
    fig.text(
        0.02,
        0.933,
        "Every number on this page was measured by the course's notebooks and is read from their "
        "results files. Margins are means over seeds, in percentage points (pts) of accuracy.",
        fontsize=8,
        va="top",
        color="#333333",
    )
    for k, (name, colour, text, eq) in enumerate(DEFINITIONS):
        ax = fig.add_axes((0.02 + 0.238 * k, 0.645, 0.228, 0.26))
        ax.set_axis_off()
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.add_patch(_box((0, 0), 1, 1, colour))
        ax.text(0.05, 0.94, name, fontsize=11, weight="bold", color=colour, va="top")
        ax.text(0.05, 0.78, _wrap(text, 48), fontsize=7.3, va="top", linespacing=1.3)
        ax.text(0.05, 0.06, eq, fontsize=7.3, va="bottom", linespacing=1.6)
    ax = fig.add_axes((0.50, 0.645, 0.485, 0.26))
    ax.set_axis_off()
    cells = [[_wrap(x, 24 if c == 0 else 36) for c, x in enumerate(r)] for r in COMPARISON[1:]]
    table = ax.table(
        cellText=cells,
        colLabels=list(COMPARISON[0]),
        cellLoc="left",
        colWidths=[0.22, 0.39, 0.39],
        bbox=(0, 0, 1, 1),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7.3)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#BBBBBB")
        cell.PAD = 0.03
        if r == 0:
            cell.set_text_props(weight="bold", color=("black", OKABE_ITO["blue"], OKABE_ITO["orange"])[c])
        elif c == 0:
            cell.set_text_props(weight="bold")
    fig.text(0.02, 0.612, "Measured in this course", fontsize=12, weight="bold", va="top")
    _cards(fig, nums)
    _mini_map(fig, nums)
    _scoreboard(fig, nums)
    return fig


def _cards(fig, nums: dict[str, Number]) -> None:
    """Six headline cards in two rows: transfer, covariate shift, forgetting / multi-task gain, harm, conflict."""
    w, h, gap = 0.165, 0.268, 0.01
    spot = [
        (0.02 + col * (w + gap), 0.03 + (1 - row) * (h + gap), w, h) for row in range(2) for col in range(3)
    ]

    def src(name: str) -> str:
        return f"read from {nums[name].file}" if name in nums else ""

    def verdict(name: str, what: str = "claim") -> str:
        return f"{what}: {_t(nums, name)} (over seeds)" if name in nums else ""

    have = "transfer.margin" in nums
    _card(
        fig,
        spot[0],
        "Transfer gain, few labels",
        OKABE_ITO["blue"],
        _t(nums, "transfer.margin") if have else None,
        [
            f"fine-tuned from the source task: {_t(nums, 'transfer.finetune')}",
            f"same network from scratch: {_t(nums, 'transfer.scratch')}",
            (
                f"{_t(nums, 'transfer.per_class')} target labels per class, "
                if "transfer.per_class" in nums
                else ""
            )
            + f"{_t(nums, 'transfer.seeds')} seeds",
            verdict("transfer.held"),
        ]
        if have
        else [],
        src("transfer.margin"),
        "notebook 01 (definitions) has no results file yet",
    )
    have = "shift.margin" in nums
    _card(
        fig,
        spot[1],
        "Cost of a covariate shift",
        OKABE_ITO["purple"],
        _t(nums, "shift.margin") if have else None,
        [
            f"source model on its own test digits: {_t(nums, 'shift.source')}",
            f"the same model on digits from another scanner (same labels): {_t(nums, 'shift.target')}",
            verdict("shift.held"),
        ]
        if have
        else [],
        src("shift.margin"),
        "notebook 01 (definitions) has no results file yet",
    )
    have = "forgetting.margin" in nums
    lines = (
        [
            "source-task accuracy, mean over map:",
            f"pretrain, then multi-task: {_t(nums, 'forgetting.kept')}",
            f"fine-tuned on the target: {_t(nums, 'forgetting.finetune')}",
            verdict("forgetting.held"),
        ]
        if have
        else []
    )
    if "forgetting04.held" in nums:
        margin = f": {_t(nums, 'forgetting04.margin')}" if "forgetting04.margin" in nums else ""
        lines.append(f"04 · {_t(nums, 'forgetting04.claim')}{margin}, {_t(nums, 'forgetting04.held')}")
    headline = "forgetting.margin" if have else "forgetting04.margin"
    files = sorted({nums[k].file for k in ("forgetting.margin", "forgetting04.held") if k in nums})
    _card(
        fig,
        spot[2],
        "Forgetting the source task",
        OKABE_ITO["green"],
        _t(nums, headline) if headline in nums else None,
        lines,
        "read from " + ",\n".join(files) if files else "",
        "notebooks 04 and 11 have no results files yet",
    )
    have = "mtl.margin" in nums
    _card(
        fig,
        spot[3],
        "Multi-task gain from hints",
        OKABE_ITO["orange"],
        _t(nums, "mtl.margin") if have else None,
        [
            f"auxiliary digit labels as hints: {_t(nums, 'mtl.hints')}",
            f"single-task model: {_t(nums, 'mtl.single')}",
            f"{_t(nums, 'mtl.n')} training images",
            verdict("mtl.held"),
        ]
        if have
        else [],
        src("mtl.margin"),
        "notebook 06 (benefits of multi-task learning) has no results file yet",
    )
    headline = "mtl.control" if "mtl.control" in nums else "interference.margin"
    lines = []
    if "mtl.control" in nums:
        lines.append(f"auxiliary labels unrelated to the image, vs single-task ({_t(nums, 'mtl.n')} images)")
    if "interference.together" in nums:
        change = f" ({_t(nums, 'interference.margin')})" if "interference.margin" in nums else ""
        lines.append(
            f"a sibling task added: left digit {_t(nums, 'interference.alone')} alone, "
            f"{_t(nums, 'interference.together')} together{change}"
        )
        lines.append(verdict("interference.held", "'tasks hinder each other'"))
    _card(
        fig,
        spot[4],
        "When another task may hurt",
        OKABE_ITO["vermillion"],
        _t(nums, headline) if headline in nums else None,
        lines,
        src(headline),
        "notebook 06 (benefits of multi-task learning) has no results file yet",
    )
    have = "conflict.held" in nums
    _card(
        fig,
        spot[5],
        "Gradient conflict, repair",
        OKABE_ITO["black"],
        (_t(nums, "conflict.margin") if "conflict.margin" in nums else _t(nums, "conflict.held"))
        if have
        else None,
        [f"'{_t(nums, 'conflict.claim')}'", verdict("conflict.held")] if have else [],
        src("conflict.held"),
        "notebook 10 (obstacles in multi-task learning) has no results file yet",
    )


def _mini_map(fig, nums: dict[str, Number]) -> None:
    """11's decision map in miniature: two panels stacked, winner colour, hatched ties, and the rule of thumb."""
    from matplotlib.patches import Patch, Rectangle

    x0, w = 0.555, 0.175
    fig.text(x0 - 0.01, 0.612, "Which approach wins?", fontsize=9, weight="bold", va="top")
    rows = sorted(int(k.split(".")[2]) for k in nums if k.startswith("map.per_class."))
    cols = sorted(int(k.split(".")[2]) for k in nums if k.startswith("map.column."))
    if not rows or not cols:
        fig.text(
            x0 - 0.01,
            0.57,
            "not yet measured:\nnotebook 11 has no decision map\nin its results file",
            fontsize=8,
            style="italic",
            color="#444444",
            va="top",
        )
        return
    small = len(cols) > 4 or len(rows) > 4
    for k, (key, title) in enumerate(MAP_PANELS.items()):
        ax = fig.add_axes((x0 + 0.03, 0.405 - k * 0.175, w - 0.03, 0.14))
        for r in rows:
            for c in cols:
                cell = nums.get(f"map.{key}.{r}.{c}")
                if cell is None:
                    continue
                tie = nums[f"map.{key}.{r}.{c}.tie"]
                ax.add_patch(
                    Rectangle(
                        (c, r),
                        1,
                        1,
                        fc=WINNER_COLOUR.get(cell.value, "white"),
                        alpha=0.45 if tie.value else 1,
                        hatch="///" if tie.value else None,
                        ec="white",
                        lw=1,
                    )
                )
                dark = cell.value in ("finetune", "pretrain_mtl") and not tie.value
                ax.text(
                    c + 0.5,
                    r + 0.5,
                    cell.text + ("\n" + tie.text if tie.value else ""),
                    ha="center",
                    va="center",
                    fontsize=4.8 if small else 6,
                    color="white" if dark else "black",
                )
        ax.set_xlim(0, len(cols))
        ax.set_ylim(len(rows), 0)
        ax.set_yticks([r + 0.5 for r in rows], [_t(nums, f"map.per_class.{r}") for r in rows], fontsize=6.5)
        if k == len(MAP_PANELS) - 1:
            ax.set_xticks(
                [c + 0.5 for c in cols],
                [_wrap(_t(nums, f"map.column.{c}"), 9) for c in cols],
                fontsize=5.5 if small else 6.3,
                rotation=30 if small else 0,
            )
        else:
            ax.set_xticks([])
        ax.tick_params(length=0)
        ax.set_title(title, fontsize=6.8, pad=3)
        ax.set_ylabel("target labels / class", fontsize=6.3)
        for side in ax.spines.values():
            side.set_visible(False)
    handles = [Patch(fc=WINNER_COLOUR[m], label=f"{WINNER_CODE[m]}: {WINNER_NAME[m]}") for m in WINNER_COLOUR]
    handles.append(Patch(fc="white", ec="#777777", hatch="///", label="tie: within seed noise"))
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(x0 - 0.012, 0.198),
        ncol=1,
        fontsize=5.8,
        frameon=False,
        handlelength=1.1,
        columnspacing=0.6,
        handletextpad=0.4,
        labelspacing=0.22,
    )
    lines = []
    if "map.transfer_half.clear" in nums:
        lines.append(
            f"Rule of thumb 'transfer when the target is small and a related source exists': holds clearly "
            f"in {_t(nums, 'map.transfer_half.clear')} of {_t(nums, 'map.transfer_half.cells')} such cells."
        )
    if "map.multitask_half.clear" in nums:
        lines.append(
            f"'Multi-task when related tasks are labelled together': holds clearly in "
            f"{_t(nums, 'map.multitask_half.clear')} of {_t(nums, 'map.multitask_half.cells')} such cells."
        )
    lines.append(f"read from {nums['map.per_class.0'].file}")
    fig.text(x0 - 0.01, 0.098, "\n".join(_wrap(x, 50) for x in lines), fontsize=6, va="top", linespacing=1.2)


def _scoreboard(fig, nums: dict[str, Number]) -> None:
    """Every source statement put to the test in the results files, with its verdict."""
    x0, top = 0.745, 0.612
    fig.text(x0, top, "Common statements, put to the test", fontsize=9, weight="bold", va="top")
    keys = [k for k in nums if re.fullmatch(r"score\.[^.]+\.\d+", k)]
    if not keys:
        fig.text(
            x0,
            top - 0.04,
            "not yet measured: no results file\nholds a source statement",
            fontsize=8,
            style="italic",
            color="#444444",
            va="top",
        )
        return
    texts = [f"{k.split('.')[1][:2]} · " + nums[k + ".text"].text for k in keys]
    wrapped = [_wrap(t, 56) for t in texts]
    n_lines = sum(t.count("\n") + 1 for t in wrapped)
    size = 6.3 if n_lines <= 33 else max(4.5, 6.3 * 33 / n_lines)
    line = size * 1.18 / 72 / A4_LANDSCAPE[1]  # one text line, as a fraction of the page height
    y = top - 0.03
    for k, text in zip(keys, wrapped):
        verdict = nums[k]
        mark, colour = VERDICT_STYLE[verdict.value]
        fig.text(
            x0,
            y,
            mark,
            fontsize=size,
            color=colour,
            va="top",
            weight="bold",
        )
        fig.text(x0 + 0.014, y, text, fontsize=size, va="top", linespacing=1.1)
        y -= line * (text.count("\n") + 1) + 0.005
    fig.text(
        x0,
        0.03,
        _wrap(
            "From the confidence interval of the paired per-seed differences: ✔ supported (wholly on the "
            "statement's side), ✘ contradicted (wholly on the other), ? not shown at this scale (it contains zero).",
            62,
        ),
        fontsize=5.8,
        color="#555555",
        va="bottom",
        style="italic",
    )


# ------------------------------------------------------------------------------------------- checks and files


def figure_texts(fig) -> list[str]:
    """Every string drawn on the figure (text, titles, tick labels, table cells, legend entries)."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text() and t.get_visible()]


def _flat(text: str) -> str:
    """Text with line breaks and runs of spaces made single spaces (wrapped lines still match)."""
    return " ".join(text.split())


def check_figure(
    fig, nums: dict[str, Number], folder: str | Path | None = None, files: dict[str, Path] | None = None
) -> list[str]:
    """Problems found, [] when none: each number re-read from its results file must equal its value, and its text
    must appear on the figure. `files` ({stem: path}, from `gather`) locate the files; else `folder`."""
    folder = Path(folder) if folder else default_folder()
    by_name = {Path(p).name: Path(p) for p in (files or {}).values()}
    drawn = "\n".join(_flat(t) for t in figure_texts(fig))
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
    """One row per number on the figure: name, value as drawn, file and key path (printed by notebook 12)."""
    return [
        {
            "name": n.name,
            "shown": n.text,
            "file": n.file,
            "path": f"{REDUCE_WORDS[n.reduce]} {n.path}" if n.reduce else n.path,
        }
        for n in nums.values()
    ]
