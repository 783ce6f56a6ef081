"""Choosing between transfer and multi-task learning: the decision map and `advise` (notebook 11).

- The sweep that measures the map (`synthetic_pair`, `fashion_pair`, `run_cell`, `sweep`) is in `companion.sweeps`;
  its names stay importable from here.
- `decision_map` turns the sweep's numbers into a winner per cell (undecided, drawn hatched, when the best approach is
  not supported against every other by `verdicts.best_of`, Holm-corrected), `plot_map` draws it and `cost_table` counts steps, parameters and labels.
- `advise` turns what a practitioner knows into a `Recommendation`: an approach, its reasons, and for each reason
  the measurements from a map (or a plain statement that no measurement backs it when no map is given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .mtl import param_count
from .sweeps import (  # noqa: F401  (the sweep has its own module; these names stay importable here)
    METHODS,
    TaskPair,
    _acc,
    _steps,
    fashion_pair,
    mlp,
    model_for,
    pretrain,
    run_cell,
    sweep,
    synthetic_pair,
)
from .verdicts import best_of

LABELS = {
    "alone": "target alone",
    "probe": "transfer: probe",
    "finetune": "transfer: fine-tune",
    "mtl": "multi-task",
    "pretrain_mtl": "pretrain, then multi-task",
}
# Approaches that train on the other task's labels together with the target's (the availability axis).
NEED_LABELS_TOGETHER = ("mtl", "pretrain_mtl")
CRITERIA = ("target", "both")
COMPUTE = ("low", "medium", "high")
RELATED = 0.5  # the rules' threshold: relatedness >= RELATED counts as "related"
SMALL = 30  # the rules' threshold: fewer labelled target examples per class than this is "small"
LOGME_RELATED = 0.75  # relatedness used for the map look-up when only a positive LogME gain is known

# ------------------------------------------------------------------------------------------- the map


def _check_map(data: object) -> dict:
    keys = ("columns", "per_class", "seeds", "scores")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise ValueError(f"measurements must be a sweep() result with keys {keys}")
    return data


def decision_map(data: dict, *, available: bool, criterion: str = "target") -> list[list[dict]]:
    """Winner per cell, rows = labels per class, columns = task pairs (notebook 11).

    `available`: whether the other task's labels exist at training time (else multi-task approaches are out).
    `criterion`: "target" (target test accuracy) or "both" (mean of target and source accuracy: all tasks must
    work). The best approach by mean is judged against every other approach over the seeds, paired
    (`verdicts.best_of`: Holm-corrected intervals); a cell is a tie (undecided) unless it is supported against all
    of them. "margin" and "ci" are its difference from the runner-up (the approach with the second-best mean).
    """
    _check_map(data)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    methods = [m for m in data.get("methods", METHODS) if available or m not in NEED_LABELS_TOGETHER]
    grid = []
    for n in data["per_class"]:
        row = []
        for col in data["columns"]:
            cell = data["scores"][col["name"]][str(n)]
            vals = {
                m: np.array(cell[m]["target"])
                if criterion == "target"
                else (np.array(cell[m]["target"]) + np.array(cell[m]["source"])) / 2
                for m in methods
            }
            pick = best_of({m: vals[m].tolist() for m in methods})
            win = pick["best"]
            second = max(pick["versus"], key=lambda m: vals[m].mean())
            row.append(
                {
                    "winner": win,
                    "runner_up": second,
                    "margin": float(pick["versus"][second]["effect"]),
                    "ci": pick["versus"][second]["ci"],
                    "tie": not pick["decided"],
                    "means": {m: float(vals[m].mean()) for m in methods},
                }
            )
        grid.append(row)
    return grid


def map_summary(data: dict) -> dict:
    """The map as JSON-friendly data for a results file (notebook 12 draws a miniature from it)."""
    out = {
        "per_class": data["per_class"],
        "columns": [c["name"] for c in data["columns"]],
        "seeds": data["seeds"],
    }
    for avail in (False, True):
        for crit in CRITERIA if avail else ("target",):
            grid = decision_map(data, available=avail, criterion=crit)
            key = f"{'labels_together' if avail else 'no_labels_together'}/{crit}"
            out[key] = {
                "winner": [[c["winner"] for c in row] for row in grid],
                "margin": [[round(c["margin"], 4) for c in row] for row in grid],
                "tie": [[c["tie"] for c in row] for row in grid],
            }
    return out


COLOURS = {
    "alone": "#999999",
    "probe": "#56B4E9",
    "finetune": "#0072B2",
    "mtl": "#E69F00",
    "pretrain_mtl": "#D55E00",
}


def plot_map(data: dict):
    """Three panels (no labels together / labels together / all tasks must work): winner colour, margin in points,
    hatched and marked "tie" where the winner is within seed noise (notebook 11). Colour-blind-safe palette."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    panels = [
        (False, "target", "other task's labels NOT available\n(judged on the target)"),
        (True, "target", "labels available together\n(judged on the target)"),
        (True, "both", "labels together, both tasks must work\n(mean of target and source)"),
    ]
    cols = [c["name"] for c in data["columns"]]
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 0.55 * len(data["per_class"]) + 2.2), squeeze=False)
    for ax, (avail, crit, title) in zip(axes[0], panels):
        grid = decision_map(data, available=avail, criterion=crit)
        for r, row in enumerate(grid):
            for c, cell in enumerate(row):
                ax.add_patch(
                    Rectangle(
                        (c, r),
                        1,
                        1,
                        color=COLOURS[cell["winner"]],
                        alpha=0.45 if cell["tie"] else 1,
                        hatch="//" if cell["tie"] else None,
                        ec="white",
                    )
                )
                text = f"{LABELS[cell['winner']].split(': ')[-1]}\n{100 * cell['margin']:+.1f}"
                ax.text(
                    c + 0.5,
                    r + 0.5,
                    text + (" tie" if cell["tie"] else ""),
                    ha="center",
                    va="center",
                    fontsize=7,
                )
        ax.set_xlim(0, len(cols))
        ax.set_ylim(len(data["per_class"]), 0)
        ax.set_xticks([i + 0.5 for i in range(len(cols))], cols, fontsize=7, rotation=20)
        ax.set_yticks([i + 0.5 for i in range(len(data["per_class"]))], [str(n) for n in data["per_class"]])
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylabel("labelled target examples per class")
    fig.legend(
        handles=[Patch(color=COLOURS[m], label=LABELS[m]) for m in METHODS],
        loc="lower center",
        ncol=5,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "Decision map: winner and its margin over the runner-up (points); hatched = tie (within seed noise)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def cost_table(data: dict, pair: TaskPair, per_class: int) -> list[dict]:
    """Compute (optimiser steps and examples seen), memory (parameters kept at deployment) and labels per approach,
    on the sweep's settings (notebook 11). Counts fixed by construction."""
    steps, src = int(data["steps"]), int(data["source_steps"])
    model = model_for(pair, data["hidden"], 0)
    total = param_count(model)
    one_head = param_count(model.heads["source"])
    single = total - one_head  # trunk + one head
    n_src, n_tgt = len(pair.source[1]), per_class * pair.classes["target"]
    rows = {
        "alone": (src + steps, 0, 2 * single, n_src, n_tgt),
        "probe": (steps, src, total, n_src, n_tgt),
        "finetune": (steps, src, 2 * single, n_src, n_tgt),
        "mtl": (src + steps, 0, total, n_src, n_tgt),
        "pretrain_mtl": (steps, src, total, n_src, n_tgt),
    }
    trained = {"probe": one_head - pair.classes["source"] + pair.classes["target"]}
    out = []
    for m, (own, pre, params, ls, lt) in rows.items():
        per_step = 2 if m in NEED_LABELS_TOGETHER else 1  # batches (one per task) per step
        out.append(
            {
                "approach": LABELS[m],
                "steps": own + pre,
                "batches": own * per_step + pre,
                "trained_params_last_phase": trained.get(
                    m, single if m == "finetune" else (total if m != "alone" else single)
                ),
                "params_to_serve_both_tasks": params,
                "source_labels": ls,
                "target_labels": lt,
                "labels_needed_together": m in NEED_LABELS_TOGETHER,
            }
        )
    return out


# ------------------------------------------------------------------------------------------- advise


@dataclass
class Recommendation:
    """What `advise` returns: an approach, its reasons, and for each reason the measurements behind it (or None)."""

    approach: str
    reasons: list[str]
    evidence: list[dict | None]
    backed_by_measurements: bool

    def __str__(self) -> str:
        lines = [f"Recommendation: {LABELS.get(self.approach, self.approach)}"]
        for i, (reason, ev) in enumerate(zip(self.reasons, self.evidence), 1):
            lines.append(f"  {i}. {reason}")
            lines.append(
                f"     measured: {ev}"
                if ev is not None
                else "     measured: none (a rule, not a measurement)"
            )
        if not self.backed_by_measurements:
            lines.append(
                "  No measurements back this advice: pass a decision map (measurements=...) to check it."
            )
        return "\n".join(lines)


def _nearest(values: Sequence[float], x: float, log: bool = False) -> int:
    f = (lambda v: math.log(max(v, 1e-9))) if log else float
    return min(range(len(values)), key=lambda i: abs(f(values[i]) - f(x)))


def advise(
    *,
    target_per_class: int,
    source_examples: int,
    labels_together: bool,
    relatedness: float | None = None,
    logme_gain: float | None = None,
    source_must_work: bool = False,
    compute: str = "medium",
    measurements: dict | None = None,
) -> Recommendation:
    """Recommend target alone, transfer (probe or fine-tune), multi-task or pretrain-then-multi-task (notebook 11).

    target_per_class: labelled target examples per class; source_examples: labelled examples of the other (source)
    task, or of the data behind a pretrained model (0: there is none); labels_together: whether all tasks' labels
    exist at training time; relatedness in [0, 1] (the synthetic knob's scale), or instead logme_gain: LogME of the
    source model's features minus LogME of an untrained model's, on the target (> 0 counts as related, looked up at
    relatedness LOGME_RELATED); source_must_work: the source task must keep working; compute: "low", "medium" or
    "high". measurements: a `sweep` result; with it every reason names the nearest map cell's numbers, and the map's
    clear (non-tie) winner overrides the rules; without it the advice follows the rules and says so.
    """
    if isinstance(target_per_class, bool) or not isinstance(target_per_class, int) or target_per_class < 1:
        raise ValueError(f"target_per_class must be a positive integer, got {target_per_class!r}")
    if isinstance(source_examples, bool) or not isinstance(source_examples, int) or source_examples < 0:
        raise ValueError(f"source_examples must be a non-negative integer, got {source_examples!r}")
    for name, v in (("labels_together", labels_together), ("source_must_work", source_must_work)):
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be True or False, got {v!r}")
    if (relatedness is None) == (logme_gain is None):
        raise ValueError("relatedness: give exactly one of relatedness (in [0, 1]) or logme_gain")
    if relatedness is not None and (
        isinstance(relatedness, bool)
        or not isinstance(relatedness, (int, float))
        or not 0 <= relatedness <= 1
    ):
        raise ValueError(f"relatedness must be a number in [0, 1], got {relatedness!r}")
    if logme_gain is not None and (
        isinstance(logme_gain, bool)
        or not isinstance(logme_gain, (int, float))
        or not math.isfinite(logme_gain)
    ):
        raise ValueError(f"logme_gain must be a finite number, got {logme_gain!r}")
    if compute not in COMPUTE:
        raise ValueError(f"compute must be one of {COMPUTE}, got {compute!r}")
    if measurements is not None:
        _check_map(measurements)
    r = float(relatedness) if relatedness is not None else (LOGME_RELATED if logme_gain > 0 else 0.0)
    related = r >= RELATED
    small = target_per_class < SMALL
    reasons: list[str] = []
    evidence: list[dict | None] = []
    has_source = source_examples > 0
    how = f"relatedness {r:g}" if relatedness is not None else f"LogME gain {logme_gain:+g}"

    # The rules (the source text's rule of thumb, made explicit).
    if not has_source:
        approach = "alone"
        reasons.append("there is no other task or pretrained model to learn from")
    elif labels_together and source_must_work and related:
        approach = "pretrain_mtl" if compute != "low" else "mtl"
        reasons.append(f"the tasks are related ({how}), labelled together, and all of them must keep working")
    elif related and small:
        approach = "probe" if compute == "low" or target_per_class < 5 else "finetune"
        reasons.append(
            f"a related source exists ({how}) and the target is small ({target_per_class} per class)"
        )
    elif related:
        approach = "finetune"
        reasons.append(
            f"the source is related ({how}); with {target_per_class} per class, fine-tuning can adapt"
        )
    else:
        approach = "alone"
        reasons.append(f"the tasks look unrelated ({how}): transfer risks negative transfer")
    if source_must_work and approach == "finetune":
        reasons.append(
            "fine-tuning forgets the source task: keep the source model alongside (two models to serve)"
        )
    evidence.extend([None] * len(reasons))

    backed = False
    if measurements is not None:
        data = measurements
        cols = [i for i, c in enumerate(data["columns"]) if c["relatedness"] is not None]
        if not cols or not has_source:
            reasons.append("the map has nothing to say here (no synthetic column, or no source task)")
            evidence.append(None)
        else:
            ci = cols[_nearest([data["columns"][i]["relatedness"] for i in cols], r)]
            ri = _nearest(data["per_class"], target_per_class, log=True)
            crit = "both" if source_must_work else "target"
            cell = decision_map(data, available=labels_together, criterion=crit)[ri][ci]
            where = {
                "column": data["columns"][ci]["name"],
                "per_class": data["per_class"][ri],
                "criterion": crit,
                "labels_together": labels_together,
                "winner": cell["winner"],
                "runner_up": cell["runner_up"],
                "margin_points": round(100 * cell["margin"], 1),
                "tie": cell["tie"],
                "seeds": len(data["seeds"]),
                "means": {m: round(v, 3) for m, v in cell["means"].items()},
            }
            outside = target_per_class > 3 * max(data["per_class"]) or target_per_class < min(
                data["per_class"]
            )
            if cell["tie"]:
                reasons.append(
                    f"in the nearest map cell {LABELS[cell['winner']]} and {LABELS[cell['runner_up']]} "
                    "are within seed noise: the rule decides"
                )
            elif cell["winner"] == approach:
                reasons.append(f"the nearest map cell agrees: {LABELS[approach]} wins clearly")
            else:
                reasons.append(
                    f"the nearest map cell disagrees with the rule: {LABELS[cell['winner']]} wins clearly "
                    f"there, so it is recommended instead of {LABELS[approach]}"
                )
                approach = cell["winner"]
            if outside:
                reasons.append("your labelled set lies outside the map's range: treat the look-up with care")
                evidence.append(None)
            evidence.insert(len(reasons) - 1 - outside, where)
            backed = True
    return Recommendation(approach, reasons, evidence, backed)
