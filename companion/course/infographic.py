"""The course on one page: an A4 landscape infographic drawn only from the notebooks' results files.

Every number on the figure is a `Number` (`companion.provenance`): its value, the text drawn for it, and the
results file and key path it was read from. `headline_numbers` reads them all; `figure` draws nothing else;
`check_figure` re-reads each from its file and finds its text on the figure; `layout_problems` checks that no text is
below 6 pt at A4, overlaps another or leaves its box. Panels without results say "not yet measured".
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from ..experiments.verdicts import WORDS
from .provenance import (
    A4_LANDSCAPE,
    MAP_PANELS,
    WINNER_CODE,
    Number,
    check_figure,
    gather,
    headline_numbers,
    save,
)

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
WINNER_COLOUR = {  # the family's hue, the member's shade
    "alone": OKABE_ITO["grey"],
    "probe": OKABE_ITO["sky"],
    "finetune": OKABE_ITO["blue"],
    "mtl": OKABE_ITO["orange"],
    "pretrain_mtl": OKABE_ITO["vermillion"],
}
WINNER_NAME = {
    "alone": "target alone",
    "probe": "transfer: probe",
    "finetune": "transfer: fine-tune",
    "mtl": "multi-task",
    "pretrain_mtl": "pretrain, then multi-task",
}
HALF_STYLE = {
    "transfer": ("Transfer half", OKABE_ITO["blue"]),
    "multitask": ("Multi-task half", OKABE_ITO["orange"]),
}
PAGE_PT = (A4_LANDSCAPE[0] * 72, A4_LANDSCAPE[1] * 72)  # the page in points
MIN_PT = 6.0  # no text on the page is smaller (at A4)

# ------------------------------------------------------------------------------------------- the figure

DEFINITIONS = (
    (
        "Transfer learning",
        OKABE_ITO["blue"],
        "Two phases, one after the other. A network first learns a source task with plenty of labels; its "
        "weights then start a target task with few labels, kept frozen under a new head (a linear probe) or "
        "trained further (fine-tuning). Only the target task matters in the end.",
        "source:  $\\theta_S=\\arg\\min_\\theta\\, L_S(\\theta)$\n"
        "target:  $\\theta_T=\\arg\\min_\\theta\\, L_T(\\theta)$, starting from $\\theta_S$",
    ),
    (
        "Multi-task learning",
        OKABE_ITO["orange"],
        "One phase. A single network, a shared trunk with one head per task, learns several tasks at the same "
        "time; every task's gradient shapes the shared features. All tasks' labels are needed during training, "
        "and every task is meant to work at the end.",
        "all tasks at once:  $\\theta=\\arg\\min_\\theta \\sum_t w_t\\, L_t(\\theta)$\n"
        "(one shared trunk, one head per task)",
    ),
)

COMPARISON = (
    ("", "Transfer learning", "Multi-task learning"),
    ("Order of training", "sequential: source first, then target", "simultaneous: all tasks at once"),
    ("Labels needed", "many source labels first; a few target labels later", "every task's labels, together"),
    ("What is shared", "weights copied from the source model", "one trunk trained by all tasks"),
    ("What must work", "the target task", "every task"),
    (
        "Typical uses",
        "a pretrained vision or language model adapted to a new domain or label set",
        "one input, several outputs: speech systems, multi-label tagging, jointly predicted targets",
    ),
    (
        "Advantages claimed",
        "learns the target in fewer steps, more accurately when its labels are scarce",
        "shared features that generalise better and overfit less",
    ),
    ("Typical risk", "a source too far away: little gain, or harm", "tasks pulling apart: one hurts another"),
    ("Cost to serve both", "a second model, or a frozen trunk", "one trunk, one head per task"),
)


@functools.lru_cache(maxsize=4096)
def text_width(text: str, size: float, weight: str = "normal", style: str = "normal") -> float:
    """Width in points of one line of text at `size` points in matplotlib's default font (its text-to-path
    measure, the one the renderers use)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=size, weight=weight, style=style)
    return text_to_path.get_text_width_height_descent(text, prop, ismath=False)[0]


def wrap(text: str, width_pt: float, size: float, weight: str = "normal", style: str = "normal") -> str:
    """`text` broken at spaces (and after "->") into lines no wider than `width_pt` points at `size` (measured,
    with 3 % to spare for hinting). A word wider than the line stays whole on its own line."""
    lines: list[str] = []
    for para in text.split("\n"):
        words = re.sub(r"->(?=\S)", "-> ", para).split(" ")
        line = ""
        for word in words:
            trial = f"{line} {word}" if line else word
            if line and text_width(trial.replace("-> ", "->"), size, weight, style) * 1.03 > width_pt:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "\n".join(x.replace("-> ", "->") for x in lines)


def _height(text: str, size: float, spacing: float = 1.2) -> float:
    """Height in points of a block of lines drawn with matplotlib's line spacing."""
    return size * (1.2 + spacing * text.count("\n"))


def _panel(fig, rect, colour: str | None = None):
    """Axes filling `rect` (figure fractions), axes coordinates 0..1, no axis; a rounded border in `colour`."""
    from matplotlib.patches import FancyBboxPatch

    ax = fig.add_axes(rect)
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if colour:
        ax.add_patch(
            FancyBboxPatch((0, 0), 1, 1, "round,pad=0,rounding_size=0.03", fc="white", ec=colour, lw=1.2)
        )
    return ax


def _t(nums: dict[str, Number], name: str) -> str:
    return nums[name].text


def _size_pt(rect) -> tuple[float, float]:
    return rect[2] * PAGE_PT[0], rect[3] * PAGE_PT[1]


def figure(
    nums: dict[str, Number],
    *,
    title: str = "Transfer learning vs multi-task learning: the course on one page",
):
    """Draw the infographic (A4 landscape) from `headline_numbers`: definitions, comparison table, the strongest
    measured results of each half as cards, the decision map in miniature and the scoreboard of source and
    literature statements. Returns the matplotlib Figure; `layout_problems` checks its text."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=A4_LANDSCAPE)
    fig.text(0.02, 0.982, title, fontsize=15, weight="bold", va="top")
    intro = (
        "Every number on this page was measured by the course's notebooks and is read from their results files. "
        "An effect is the mean paired difference over seeds, in percentage points (pts) of accuracy, with its 95% "
        "confidence interval."
    )
    fig.text(0.02, 0.944, wrap(intro, 0.68 * PAGE_PT[0], 7.5), fontsize=7.5, va="top", color="#333333")
    _definitions(fig)
    _comparison(fig)
    _cards(fig, nums)
    _mini_map(fig, nums)
    _scoreboard(fig, nums)
    return fig


def _definitions(fig) -> None:
    for k, (name, colour, text, eq) in enumerate(DEFINITIONS):
        rect = (0.02, 0.725 - k * 0.176, 0.25, 0.166)
        w, h = _size_pt(rect)
        ax = _panel(fig, rect, colour)
        ax.text(6 / w, 1 - 5 / h, name, fontsize=10, weight="bold", color=colour, va="top")
        ax.text(6 / w, 1 - 19 / h, wrap(text, w - 12, 6.8), fontsize=6.8, va="top", linespacing=1.2)
        ax.text(6 / w, 5 / h, eq, fontsize=6.8, va="bottom", linespacing=1.5)


def _comparison(fig) -> None:
    rect = (0.285, 0.549, 0.415, 0.342)
    w, _ = _size_pt(rect)
    ax = fig.add_axes(rect)
    ax.set_axis_off()
    widths = (0.2, 0.4, 0.4)
    size = 6.5
    cells = [
        [wrap(x, widths[c] * w - 8, size, "bold" if c == 0 else "normal") for c, x in enumerate(r)]
        for r in COMPARISON[1:]
    ]
    table = ax.table(
        cellText=cells,
        colLabels=list(COMPARISON[0]),
        cellLoc="left",
        colWidths=list(widths),
        bbox=(0, 0, 1, 1),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(size)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#BBBBBB")
        cell.PAD = 3 / (widths[c] * w)  # 3 pt, as a fraction of the cell's width
        cell.get_text().set_linespacing(1.1)
        if r == 0:
            cell.set_text_props(weight="bold", color=("black", OKABE_ITO["blue"], OKABE_ITO["orange"])[c])
        elif c == 0:
            cell.set_text_props(weight="bold")


def _card(fig, rect, colour: str, nums: dict[str, Number], name: str) -> None:
    """One measured result: its short text, the effect in points, the 95 % interval, verdict and seeds, whose
    claim it is, and the results file and claim it was read from (at the largest sizes that fit the card)."""
    w, h = _size_pt(rect)
    ax = _panel(fig, rect, colour)
    pad, inner = 5.0, w - 10.0
    n = nums[f"{name}.effect"]
    where = wrap(f"from {n.file}, {n.path.rsplit('.', 1)[0]}", inner, 6, style="italic")
    seeds = f"{_t(nums, f'{name}.verdict')}, {_t(nums, f'{name}.seeds')}"
    for big, small in ((19, 7.0), (16, 6.5), (13, 6.0)):
        blocks = [
            (nums[f"{name}.short"].text, small + 1, {"weight": "bold"}),
            (_t(nums, f"{name}.effect"), big, {"weight": "bold", "color": colour}),
            (_t(nums, f"{name}.ci"), small, {}),
            (f"{seeds}; {_t(nums, f'{name}.kind')}" if big < 19 else seeds, small, {}),
        ] + ([(_t(nums, f"{name}.kind"), small, {"color": "#555555"})] if big == 19 else [])
        blocks = [(wrap(t, inner, size, kw.get("weight", "normal")), size, kw) for t, size, kw in blocks]
        need = sum(_height(t, size, 1.15) + 2.5 for t, size, _ in blocks) + _height(where, 6, 1.15) + 2 * pad
        if need <= h:
            break
    y = pad
    for text, size, kw in blocks:
        ax.text(pad / w, 1 - y / h, text, fontsize=size, va="top", linespacing=1.15, **kw)
        y += _height(text, size, 1.15) + 2.5
    ax.text(
        pad / w, pad / h, where, fontsize=6, va="bottom", style="italic", color="#555555", linespacing=1.15
    )


def _cards(fig, nums: dict[str, Number]) -> None:
    """The strongest supported results of each half (`provenance.strongest`), three cards per half."""
    fig.text(0.02, 0.532, "Strongest measured results", fontsize=10, weight="bold", va="top")
    rule = (
        "Chosen by rule, not by hand: supported comparisons of accuracy over seeds, ranked by the end of the "
        "interval nearest zero, at most two per notebook."
    )
    fig.text(
        0.02,
        0.508,
        wrap(rule, 0.44 * PAGE_PT[0], 6.3),
        fontsize=6.3,
        va="top",
        style="italic",
        color="#555555",
    )
    w, gap, h = 0.142, 0.007, 0.19
    for row, (half, (label, colour)) in enumerate(HALF_STYLE.items()):
        top = 0.476 - row * 0.226
        fig.text(0.02, top, label, fontsize=7.5, weight="bold", color=colour, va="top")
        names = sorted({k.rsplit(".", 1)[0] for k in nums if k.startswith(f"card.{half}.")})
        if not names:
            ax = _panel(fig, (0.02, top - 0.02 - h, 3 * w + 2 * gap, h), colour)
            ax.text(0.02, 0.8, "not yet measured", fontsize=11, style="italic", color="#666666", va="center")
            note = (
                f"no results file of the {label.lower()}'s notebooks holds a supported comparison of accuracies "
                "with a confidence interval over seeds"
            )
            ax.text(0.02, 0.6, wrap(note, 300, 7), fontsize=7, va="top", color="#333333")
            continue
        for k, name in enumerate(names):
            _card(fig, (0.02 + k * (w + gap), top - 0.02 - h, w, h), colour, nums, name)


def _mini_map(fig, nums: dict[str, Number]) -> None:
    """11's decision map in miniature: one panel per `MAP_PANELS` entry, cells coloured by the chosen member
    (family hue, member shade), hatched where undecided, the decided count per panel, and a legend of its own."""
    from matplotlib.patches import Rectangle

    x0, x1 = 0.475, 0.70
    fig.text(x0, 0.532, "Which approach to use?", fontsize=10, weight="bold", va="top")
    rows = sorted(int(k.split(".")[2]) for k in nums if k.startswith("map.per_class."))
    cols = sorted(int(k.split(".")[2]) for k in nums if k.startswith("map.column."))
    panels = [key for key in MAP_PANELS if f"map.{key}.decided" in nums]
    if not rows or not cols or not panels:
        note = "not yet measured: notebook 11 has no decision map in its results file"
        fig.text(x0, 0.49, wrap(note, (x1 - x0) * PAGE_PT[0], 8), fontsize=8, style="italic", va="top")
        return
    fig.text(
        x0, 0.506, "decision map of notebook 11, by approach family", fontsize=6.3, va="top", color="#555555"
    )
    ax_x0 = x0 + 0.036
    ax_w = x1 - ax_x0
    wpt = ax_w * PAGE_PT[0]
    size = 6.0
    y = 0.478
    panel_h = 0.118 if len(panels) <= 2 else 0.07
    for k, key in enumerate(panels):
        head = wrap(
            f"{MAP_PANELS[key]}: decided {_t(nums, f'map.{key}.decided')} of {_t(nums, f'map.{key}.cells')} cells",
            (x1 - x0) * PAGE_PT[0],
            6.3,
        )
        fig.text(x0, y, head, fontsize=6.3, va="top", linespacing=1.1)
        y -= _height(head, 6.3, 1.1) / PAGE_PT[1] + 0.006
        ax = fig.add_axes((ax_x0, y - panel_h, ax_w, panel_h))
        for r in rows:
            for c in cols:
                cell = nums.get(f"map.{key}.{r}.{c}")
                if cell is None:
                    continue
                tie = nums[f"map.{key}.{r}.{c}.tie"].value
                ax.add_patch(
                    Rectangle(
                        (c, r),
                        1,
                        1,
                        fc=WINNER_COLOUR.get(cell.value, "white"),
                        alpha=0.4 if tie else 1,
                        hatch="////" if tie else None,
                        ec="white",
                        lw=1,
                    )
                )
                dark = cell.value in ("finetune", "pretrain_mtl") and not tie
                ax.text(
                    c + 0.5,
                    r + 0.5,
                    cell.text,
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if dark else "black",
                )
        ax.set_xlim(0, len(cols))
        ax.set_ylim(len(rows), 0)
        ax.set_yticks([r + 0.5 for r in rows], [_t(nums, f"map.per_class.{r}") for r in rows], fontsize=size)
        ax.set_xticks([])
        ax.tick_params(length=0, pad=2)
        ax.set_ylabel("labels / class", fontsize=size, labelpad=2)
        for side in ax.spines.values():
            side.set_visible(False)
        y -= panel_h
        if k == len(panels) - 1:  # the task pairs, under the last panel
            tallest = 0.0
            for c in cols:
                label = wrap(_t(nums, f"map.column.{c}"), wpt / len(cols) - 2, size)
                xc = ax_x0 + (c + 0.5) / len(cols) * ax_w
                fig.text(xc, y - 2 / PAGE_PT[1], label, ha="center", va="top", fontsize=size, linespacing=1.1)
                tallest = max(tallest, _height(label, size, 1.1))
            y -= (tallest + 6) / PAGE_PT[1]
        else:
            y -= 0.012
    _map_legend(fig, (x0, y - 0.072, x1 - x0, 0.068))
    y -= 0.078
    lines = []
    if "map.transfer_half.clear" in nums:
        lines.append(
            f"Rule of thumb 'transfer when the target is small and a related source exists': holds clearly in "
            f"{_t(nums, 'map.transfer_half.clear')} of {_t(nums, 'map.transfer_half.cells')} such cells."
        )
    if "map.multitask_half.clear" in nums:
        lines.append(
            f"'Multi-task when related tasks are labelled together': holds clearly in "
            f"{_t(nums, 'map.multitask_half.clear')} of {_t(nums, 'map.multitask_half.cells')} such cells."
        )
    lines.append(f"read from {nums['map.per_class.0'].file}")
    text = wrap(" ".join(lines), (x1 - x0) * PAGE_PT[0], 6)
    fig.text(x0, y, text, fontsize=6, va="top", linespacing=1.15, color="#333333")


def _map_legend(fig, rect) -> None:
    """The map's key in its own box (so it cannot cover the map): member colours by family, and the hatch."""
    from matplotlib.patches import Rectangle

    ax = _panel(fig, rect)
    w, h = _size_pt(rect)
    entries = [(WINNER_COLOUR[m], f"{WINNER_CODE[m]}: {WINNER_NAME[m]}", False) for m in WINNER_COLOUR]
    entries.append(("#DDDDDD", "hatched: undecided", True))
    per_col = 3
    for i, (colour, label, hatched) in enumerate(entries):
        col, row = divmod(i, per_col)
        x, yy = col * 0.5, 1 - (row + 0.5) / per_col
        ax.add_patch(
            Rectangle(
                (x, yy - 3.5 / h),
                9 / w,
                7 / h,
                fc=colour,
                ec="#777777" if hatched else "none",
                hatch="////" if hatched else None,
                lw=0.5,
            )
        )
        ax.text(x + 12 / w, yy, wrap(label, 0.5 * w - 14, 6), fontsize=6, va="center", linespacing=1.05)


def _scoreboard(fig, nums: dict[str, Number]) -> None:
    """Every source or literature statement put to the test in the results files: its outcome (mark and colour),
    notebook and short text; statements whose file has no verdict yet are named as not yet measured."""
    x0, x1, top, bottom = 0.715, 0.985, 0.978, 0.03
    width = (x1 - x0) * PAGE_PT[0]
    fig.text(x0, top, "Common statements, put to the test", fontsize=9, weight="bold", va="top")
    intro = "Source text and literature, each judged by the 95% interval of its paired per-seed differences:"
    intro = wrap(intro, width, 6.3)
    fig.text(x0, top - 14 / PAGE_PT[1], intro, fontsize=6.3, va="top", color="#444444", linespacing=1.1)
    y = top - (16 + _height(intro, 6.3, 1.1)) / PAGE_PT[1]
    x = x0
    for verdict, (mark, colour) in VERDICT_STYLE.items():
        label = f"{mark} {WORDS[verdict]}"
        fig.text(x, y, label, fontsize=6.3, va="top", color=colour, weight="bold")
        x += (text_width(label, 6.3, "bold") + 8) / PAGE_PT[0]
    y -= 14 / PAGE_PT[1]
    keys = [k for k in nums if re.fullmatch(r"score\.[^.]+\.\d+", k)]
    pending = sorted({k.split(".")[1][:2] for k in nums if k.startswith("pending.")})
    foot = ""
    if pending:
        foot = wrap(
            "Not yet measured (results files from before the verdicts): the statements of notebooks "
            + ", ".join(pending),
            width,
            6,
            style="italic",
        )
        fig.text(x0, bottom, foot, fontsize=6, va="bottom", style="italic", color="#555555", linespacing=1.1)
    if not keys:
        note = "not yet measured: no results file holds a judged source or literature statement"
        fig.text(x0, y, wrap(note, width, 8), fontsize=8, style="italic", color="#444444", va="top")
        return
    room = (y - bottom) * PAGE_PT[1] - (_height(foot, 6, 1.1) + 4 if foot else 0)
    indent = text_width("✘", 7.2, "bold") + text_width("00", 7.2) + 6
    for size in (7.2, 7.0, 6.8, 6.6, 6.4, 6.2, 6.0):
        texts = [wrap(nums[k + ".text"].text, width - indent, size) for k in keys]
        need = sum(_height(t, size, 1.1) + 0.3 * size for t in texts)
        if need <= room:
            break
    floor = bottom + ((_height(foot, 6, 1.1) + 4) if foot else 0) / PAGE_PT[1]
    for k, text in zip(keys, texts):
        mark, colour = VERDICT_STYLE[nums[k].value]
        step = (_height(text, size, 1.1) + 0.3 * size) / PAGE_PT[1]
        if y - step < floor:  # no room left even at the smallest size: the rest are in the results files
            fig.text(x0, y, "… more statements in the results files", fontsize=6, va="top", style="italic")
            break
        fig.text(x0, y, mark, fontsize=size, color=colour, va="top", weight="bold")
        fig.text(
            x0 + (text_width("✘", size, "bold") + 2) / PAGE_PT[0],
            y,
            k.split(".")[1][:2],
            fontsize=size,
            va="top",
            color="#666666",
        )
        fig.text(x0 + indent / PAGE_PT[0], y, text, fontsize=size, va="top", linespacing=1.1)
        y -= step


def layout_problems(fig, min_pt: float = MIN_PT, tol_pt: float = 0.5) -> list[str]:
    """What is wrong with the text of a drawn figure, [] when nothing: texts smaller than `min_pt` points, pairs of
    texts whose boxes overlap by more than `tol_pt` points, texts that leave their axes' box (text placed in an
    axes, table cells: their cell), the page, or that lie on another axes or a legend they do not belong to.

    Draws the figure with matplotlib's Agg renderer at 72 dpi (a pixel is a point) and reads each drawn text's
    window extent (`Text.get_window_extent`); empty texts are ignored."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.text import Text

    w, h = fig.get_size_inches()
    dpi = fig.dpi
    renderer = RendererAgg(int(round(w * dpi)), int(round(h * dpi)), dpi)
    drawn: list = []
    original = Text.draw

    def record(self, rend):  # the texts that are actually drawn (visible, inside visible parents)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return original(self, rend)

    Text.draw = record
    try:
        fig.draw(renderer)
    finally:
        Text.draw = original
    scale = 72 / dpi
    boxes = {id(t): t.get_window_extent(renderer) for t in drawn}
    owner, home = {}, {}  # text -> the box it must stay inside, the axes it belongs to
    for ax in fig.axes:
        for t in ax.texts:
            owner[id(t)] = ax.bbox
        for tbl in ax.tables:
            for cell in tbl.get_celld().values():
                owner[id(cell.get_text())] = cell.get_window_extent(renderer)
                home[id(cell.get_text())] = ax
    regions = [(ax, ax.bbox, lambda t, ax=ax: (t.axes or home.get(id(t))) is ax) for ax in fig.axes]
    for lg in [*fig.legends, *(a.get_legend() for a in fig.axes)]:
        if lg is not None:
            own = {id(x) for x in [*lg.texts, lg.get_title()]}
            regions.append((lg, lg.get_window_extent(renderer), lambda t, own=own: id(t) in own))

    def name(t) -> str:
        return repr(" ".join(t.get_text().split())[:50])

    def overlap(a, b) -> bool:
        return (min(a.x1, b.x1) - max(a.x0, b.x0)) * scale > tol_pt and (
            min(a.y1, b.y1) - max(a.y0, b.y0)
        ) * scale > tol_pt

    def inside(a, b) -> bool:
        t = tol_pt / scale
        return a.x0 >= b.x0 - t and a.x1 <= b.x1 + t and a.y0 >= b.y0 - t and a.y1 <= b.y1 + t

    problems = []
    page = fig.bbox
    for t in drawn:
        box = boxes[id(t)]
        if t.get_fontsize() < min_pt - 1e-9:
            problems.append(f"too small: {name(t)} at {t.get_fontsize():g} pt (minimum {min_pt:g})")
        if not inside(box, page):
            problems.append(f"off the page: {name(t)}")
        elif id(t) in owner and not inside(box, owner[id(t)]):
            problems.append(f"leaves its box: {name(t)}")
        for _, region, mine in regions:
            if not mine(t) and overlap(box, region):
                problems.append(f"lies on another panel: {name(t)}")
                break
    for i, a in enumerate(drawn):
        for b in drawn[i + 1 :]:
            if overlap(boxes[id(a)], boxes[id(b)]):
                problems.append(f"overlap: {name(a)} and {name(b)}")
    return problems


def render(
    folder: str | Path | None = None, out_dir: str | Path = "build/infographic", strict: bool = True
) -> dict:
    """Draw the page from the results files in `folder` (default: the committed ones; missing notebooks say "not
    yet measured"), check it (`check_figure`, `layout_problems`) and save it as PNG (300 dpi) and SVG in `out_dir`;
    returns their paths. A problem raises ValueError when `strict`, else it is printed and the page saved."""
    import matplotlib.pyplot as plt

    files = gather(folder)
    nums = headline_numbers(files)
    fig = figure(nums)
    try:
        problems = check_figure(fig, nums, folder, files) + layout_problems(fig)
        if problems and strict:
            raise ValueError(f"the infographic has {len(problems)} problem(s): {'; '.join(problems[:5])}")
        for p in problems:
            print(f"infographic: {p}")
        return save(fig, out_dir)
    finally:
        plt.close(fig)
