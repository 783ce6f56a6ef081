"""Choosing between transfer and multi-task learning: the decision map and `advise`.

- The sweep that measures the map (`synthetic_pair`, `fashion_pair`, `run_cell`, `sweep`) is in
  `companion.experiments.sweeps`.
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

from ..experiments.sweeps import (
    METHODS,
    TaskPair,
    model_for,
)
from ..experiments.verdicts import best_of, holm
from ..mtl import param_count

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


FAMILIES = {"alone": ("alone",), "transfer": ("probe", "finetune"), "multitask": ("mtl", "pretrain_mtl")}
FAMILY_OF = {m: f for f, members in FAMILIES.items() for m in members}
FAMILY_LABELS = {"alone": "target alone", "transfer": "transfer", "multitask": "multi-task"}
SHORT = {"alone": "alone", "probe": "probe", "finetune": "FT", "mtl": "MTL", "pretrain_mtl": "PT+MTL"}


def _check_map(data: object) -> dict:
    keys = ("columns", "per_class", "seeds", "scores")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise ValueError(f"measurements must be a sweep() result with keys {keys}")
    return data


def _family_values(cell: dict, family: str, criterion: str) -> tuple[list[float], list[str]]:
    """One family's per-seed score and the member the validation split picked at each seed (never the test set):
    the member with the higher target validation accuracy; ties go to the first member listed."""
    members = [m for m in FAMILIES[family] if m in cell]
    if not members:
        raise ValueError(f"measurements must hold a method of the family {family!r} ({FAMILIES[family]})")
    missing = [m for m in members if "val" not in cell[m]]
    if missing:
        raise ValueError(f"measurements must hold validation scores ('val') for {missing}: rerun the sweep")
    values, picks = [], []
    for i in range(len(cell[members[0]]["target"])):
        m = max(members, key=lambda name: (cell[name]["val"][i], -members.index(name)))
        score = (
            cell[m]["target"][i]
            if criterion == "target"
            else (cell[m]["target"][i] + cell[m]["source"][i]) / 2
        )
        values.append(float(score))
        picks.append(m)
    return values, picks


def decision_map(data: dict, *, available: bool, criterion: str = "target") -> list[list[dict]]:
    """The approach family to use per cell, rows = labels per class, columns = task pairs.

    Three families are judged, not five near-duplicate approaches: the target alone, transfer (the linear probe or
    fine-tuning, whichever the validation split picks at each seed) and multi-task (multi-task from scratch or
    pretrain-then-multi-task, same rule; left out when `available` is False, since it needs the other task's
    labels at training time). `criterion`: "target" (target test accuracy) or "both" (mean of target and source
    accuracy: every task must work). The family with the best mean is judged against each other family over
    the seeds, paired (`verdicts.best_of`, Holm-corrected); the cell is decided when it is supported against all.

    Each cell: {"family", "member" (the member picked at most seeds), "winner" (= member), "runner_up" (the family
    with the second-best mean), "margin" and "ci" (against the runner-up), "tie" (not decided), "vs_alone" (the
    chosen family against the target alone: effect, ci, verdict; None when the family is the target alone),
    "versus" ({family: paired record}), "values" ({family: per-seed scores}), "means" ({family: mean})}.
    """
    _check_map(data)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    families = [f for f in FAMILIES if available or f != "multitask"]
    grid = []
    for n in data["per_class"]:
        row = []
        for col in data["columns"]:
            cell = data["scores"][col["name"]][str(n)]
            vals, picks = {}, {}
            for f in families:
                vals[f], picks[f] = _family_values(cell, f, criterion)
            pick = best_of(vals)
            fam = pick["best"]
            second = max(pick["versus"], key=lambda f: np.mean(vals[f]))
            member = max(FAMILIES[fam], key=picks[fam].count)
            alone = None
            if fam != "alone":
                rec = pick["versus"]["alone"]
                alone = {"effect": rec["effect"], "ci": rec["ci"], "verdict": rec["verdict"]}
            row.append(
                {
                    "family": fam,
                    "member": member,
                    "winner": member,
                    "picks": picks[fam],
                    "runner_up": second,
                    "margin": float(pick["versus"][second]["effect"]),
                    "ci": pick["versus"][second]["ci"],
                    "tie": not pick["decided"],
                    "vs_alone": alone,
                    "versus": pick["versus"],
                    "values": vals,
                    "means": {f: float(np.mean(v)) for f, v in vals.items()},
                }
            )
        grid.append(row)
    return grid


PANELS = {
    "no_labels_together/target": (False, "target"),
    "labels_together/target": (True, "target"),
    "labels_together/both": (True, "both"),
}


def map_summary(data: dict) -> dict:
    """The map as JSON-friendly data for a results file: per panel each cell's family, member, margin over the
    runner-up and over the target alone with their intervals, whether it is decided, and the count of decided
    cells. Notebook-independent: a results file reader draws a miniature from it."""
    out = {
        "per_class": data["per_class"],
        "columns": [c["name"] for c in data["columns"]],
        "seeds": data["seeds"],
    }
    for key, (avail, crit) in PANELS.items():
        grid = decision_map(data, available=avail, criterion=crit)
        cells = [c for row in grid for c in row]
        out[key] = {
            "family": [[c["family"] for c in row] for row in grid],
            "winner": [[c["member"] for c in row] for row in grid],
            "margin": [[round(c["margin"], 4) for c in row] for row in grid],
            "ci": [[[round(x, 4) for x in c["ci"]] for c in row] for row in grid],
            "vs_alone": [
                [None if c["vs_alone"] is None else round(c["vs_alone"]["effect"], 4) for c in row]
                for row in grid
            ],
            "vs_alone_ci": [
                [None if c["vs_alone"] is None else [round(x, 4) for x in c["vs_alone"]["ci"]] for c in row]
                for row in grid
            ],
            "tie": [[c["tie"] for c in row] for row in grid],
            "decided": sum(not c["tie"] for c in cells),
            "cells": len(cells),
        }
    return out


def rule_against_map(data: dict, *, source_examples: int) -> dict[str, list[dict]]:
    """Put the rule of thumb (`advise` without measurements) against every cell of the map, panel by panel.

    Each cell: {"per_class", "column", "rule" (the rule's approach), "rule_family", "family" and "member" (the
    map's choice), "status", "seeds_needed"}. "status" is "agrees" or "contradicts" for a decided cell (the map's
    family is, or is not, the rule's family) and "undecided" otherwise: only decided cells can test the rule.
    "seeds_needed" (undecided cells): about how many seeds would decide the cell if the effects and their spread
    stayed as measured, the largest `seeds_needed` over the comparisons that are not yet supported (each at its
    Holm level); None when one of them would need more than `verdicts.MAX_SEEDS`. A column without a relatedness
    (a real task pair) counts as related."""
    _check_map(data)
    out: dict[str, list[dict]] = {}
    for key, (avail, crit) in PANELS.items():
        grid = decision_map(data, available=avail, criterion=crit)
        cells = []
        for n, row in zip(data["per_class"], grid):
            for col, cell in zip(data["columns"], row):
                r = 1.0 if col["relatedness"] is None else float(col["relatedness"])
                rule = advise(
                    target_per_class=int(n),
                    source_examples=source_examples,
                    labels_together=avail,
                    relatedness=r,
                    source_must_work=crit == "both",
                ).approach
                need = None
                if cell["tie"]:
                    open_ = [v.get("seeds_needed") for v in cell["versus"].values() if not v["held"]]
                    need = None if None in open_ else max(open_)
                status = (
                    "undecided"
                    if cell["tie"]
                    else "agrees"
                    if cell["family"] == FAMILY_OF[rule]
                    else "contradicts"
                )
                cells.append(
                    {
                        "per_class": n,
                        "column": col["name"],
                        "rule": rule,
                        "rule_family": FAMILY_OF[rule],
                        "family": cell["family"],
                        "member": cell["member"],
                        "vs_alone": cell["vs_alone"],
                        "status": status,
                        "seeds_needed": need,
                    }
                )
        out[key] = cells
    return out


COLOURS = {
    "alone": "#999999",
    "probe": "#56B4E9",
    "finetune": "#0072B2",
    "mtl": "#E69F00",
    "pretrain_mtl": "#D55E00",
}


def plot_map(data: dict):
    """Three panels (no labels together / labels together / every task must work): each cell coloured by the chosen
    family's member, labelled with its short name and its margin over the target alone in points (with the 95 %
    interval), hatched where undecided. Colour-blind-safe palette; sized so labels stay inside their cells."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    titles = {
        "no_labels_together/target": "other task's labels NOT available\n(judged on the target)",
        "labels_together/target": "labels available together\n(judged on the target)",
        "labels_together/both": "labels together, every task must work\n(mean of target and source)",
    }
    cols = [c["name"] for c in data["columns"]]
    rows = len(data["per_class"])
    fig, axes = plt.subplots(
        1, 3, figsize=(max(12.0, 1.35 * 3 * len(cols) + 1.5), 0.85 * rows + 2.6), squeeze=False
    )
    for ax, (key, (avail, crit)) in zip(axes[0], PANELS.items()):
        grid = decision_map(data, available=avail, criterion=crit)
        for r, row in enumerate(grid):
            for c, cell in enumerate(row):
                ax.add_patch(
                    Rectangle(
                        (c, r),
                        1,
                        1,
                        facecolor=COLOURS[cell["member"]],
                        alpha=0.35 if cell["tie"] else 1,
                        hatch="///" if cell["tie"] else None,
                        edgecolor="white",
                        linewidth=1.5,
                    )
                )
                gain = cell["vs_alone"]
                text = SHORT[cell["member"]] + (
                    f"\n{100 * gain['effect']:+.1f}\n[{100 * gain['ci'][0]:+.0f}, {100 * gain['ci'][1]:+.0f}]"
                    if gain
                    else ""
                )
                ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=7, linespacing=1.1)
        ax.set_xlim(0, len(cols))
        ax.set_ylim(rows, 0)
        ax.set_xticks(
            [i + 0.5 for i in range(len(cols))], [c.replace(" ", "\n", 1) for c in cols], fontsize=7
        )
        ax.set_yticks([i + 0.5 for i in range(rows)], [str(n) for n in data["per_class"]], fontsize=8)
        ax.tick_params(length=0)
        decided = sum(not cell["tie"] for row in grid for cell in row)
        ax.set_title(f"{titles[key]}\ndecided: {decided} of {rows * len(cols)} cells", fontsize=8.5)
    axes[0][0].set_ylabel("labelled target examples per class")
    handles = [Patch(facecolor=COLOURS[m], label=f"{SHORT[m]}: {LABELS[m]}") for m in METHODS]
    handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="///", label="undecided (Holm, 95%)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.suptitle(
        "Decision map: the family to use per cell, and its gain over the target alone in points [95% interval]",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 0.94))
    return fig


def cost_table(data: dict, pair: TaskPair, per_class: int) -> list[dict]:
    """Compute (optimiser steps and examples seen), memory (parameters kept at deployment) and labels per approach,
    on the sweep's settings. Counts fixed by construction."""
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
    """What `advise` returns: an approach, its reasons, and for each reason the measurements behind it (or None);
    `backed_by_measurements` is True when a decided map cell gives the answer."""

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
                "  The map does not decide this situation at this scale: the rule of thumb answers."
                if any(self.evidence)
                else "  No measurements back this advice: pass a decision map (measurements=...) to check it."
            )
        return "\n".join(lines)


def _nearest(values: Sequence[float], x: float, log: bool = False) -> int:
    f = (lambda v: math.log(max(v, 1e-9))) if log else float
    return min(range(len(values)), key=lambda i: abs(f(values[i]) - f(x)))


def _worse(cell: dict) -> dict[str, list[str]]:
    """{family: the families the cell measures as better than it}: paired over the seeds, Holm over every pair."""
    fams = list(cell["values"])
    pairs = {(g, f): (cell["values"][g], cell["values"][f]) for g in fams for f in fams if g < f}
    if not pairs:
        return {f: [] for f in fams}
    fam = holm({f"{g}|{f}": v for (g, f), v in pairs.items()})
    out: dict[str, list[str]] = {f: [] for f in fams}
    for g, f in pairs:
        rec = fam[f"{g}|{f}"]
        if rec["verdict"] == "supported":
            out[f].append(g)
        elif rec["verdict"] == "contradicted":
            out[g].append(f)
    return out


def _from_map(cell: dict, rule: str) -> tuple[str, str, dict]:
    """The approach a map cell supports, with the reason and its numbers: the cell's member where the cell is
    decided; the rule's approach otherwise, unless the cell measures the rule's family as worse than another
    family (then the best family's member). Never an approach the cell measures as worse than another."""
    gain = cell["vs_alone"]
    numbers = {
        "family": cell["family"],
        "member": cell["member"],
        "decided": not cell["tie"],
        "means": {f: round(v, 3) for f, v in cell["means"].items()},
        "vs_alone": None
        if gain is None
        else {"points": round(100 * gain["effect"], 1), "ci": [round(100 * x, 1) for x in gain["ci"]]},
        "vs_runner_up": {
            "family": cell["runner_up"],
            "points": round(100 * cell["margin"], 1),
            "ci": [round(100 * x, 1) for x in cell["ci"]],
        },
    }
    if not cell["tie"]:
        ahead = (
            f"{100 * gain['effect']:+.1f} points over the target alone (95% CI {100 * gain['ci'][0]:+.1f} to "
            f"{100 * gain['ci'][1]:+.1f})"
            if gain
            else f"{100 * cell['margin']:+.1f} points over {FAMILY_LABELS[cell['runner_up']]}"
        )
        return (
            cell["member"],
            f"measured: in the nearest map cell {LABELS[cell['member']]} is ahead, {ahead}",
            numbers,
        )
    family = FAMILY_OF[rule]
    worse = _worse(cell).get(family, [])
    if not worse:
        return (
            rule,
            (
                f"not measured at this scale: the nearest map cell does not decide (no family beats every other "
                f"at 95%), so the rule of thumb says {LABELS[rule]}"
            ),
            numbers,
        )
    best = cell["family"]
    member = max(FAMILIES[best], key=cell["picks"].count) if best == cell["family"] else FAMILIES[best][0]
    return (
        member,
        (
            f"not decided at this scale, but the nearest map cell measures {FAMILY_LABELS[family]} as worse than "
            f"{' and '.join(FAMILY_LABELS[g] for g in worse)}: {LABELS[member]} instead of the rule's {LABELS[rule]}"
        ),
        numbers,
    )


def _tradeoffs(approach: str, together: bool, must_work: bool, related: bool, has_source: bool) -> list[str]:
    """The trade-offs behind a choice: when the labels exist, whether every task must work, what it costs to
    serve, and the risk of negative transfer or task conflict."""
    out = [
        "labels: all tasks are labelled now, so they can be trained together"
        if together
        else "labels: the other task's labels are not available at training time, so multi-task training is out"
    ]
    if must_work:
        out.append(
            "every task must keep working: fine-tuning overwrites the source task, so it needs the source model kept"
            if approach == "finetune"
            else "every task must keep working: this choice keeps the source task served"
        )
    serve = {
        "alone": "serving: one model per task",
        "probe": "serving: one frozen trunk with a head per task (the cheapest to serve and to train)",
        "finetune": "serving: a fine-tuned model for the target, plus the source model if the source still matters",
        "mtl": "serving: one model for every task",
        "pretrain_mtl": "serving: one model for every task, after a pretraining phase",
    }
    out.append(serve[approach])
    if has_source:
        out.append(
            "risk: related tasks make negative transfer and task conflict unlikely, but not impossible"
            if related
            else "risk: unrelated tasks invite negative transfer (transfer) and conflicting gradients (multi-task)"
        )
    return out


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
    """Recommend target alone, transfer (probe or fine-tune), multi-task or pretrain-then-multi-task.

    target_per_class: labelled target examples per class; source_examples: labelled examples of the other (source)
    task, or of the data behind a pretrained model (0: there is none); labels_together: whether all tasks' labels
    exist at training time; relatedness in [0, 1] (the synthetic knob's scale), or instead logme_gain: LogME of the
    source model's features minus LogME of an untrained model's, on the target (> 0 counts as related, looked up at
    relatedness LOGME_RELATED); source_must_work: the source task must keep working; compute: "low", "medium" or
    "high". measurements: a `sweep` result; with it the first reason answers from the nearest map cell: a decided
    cell's family and member with the measured margin and interval, or "not measured at this scale: the rule of
    thumb says ..." for an undecided one. It never recommends an approach whose family the cell measures as worse
    than another family (paired over the seeds, Holm-corrected). Without it the advice follows the rules and says
    so. The other reasons name the trade-offs: label timing, whether every task must work, serving cost, risk.
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
    evidence.extend([None] * len(reasons))

    backed = False
    if measurements is not None:
        data = measurements
        cols = [i for i, c in enumerate(data["columns"]) if c["relatedness"] is not None]
        if not cols or not has_source:
            reasons.append(
                "not measured at this scale: the map has no synthetic column or there is no source task"
            )
            evidence.append(None)
        else:
            ci = cols[_nearest([data["columns"][i]["relatedness"] for i in cols], r)]
            ri = _nearest(data["per_class"], target_per_class, log=True)
            crit = "both" if source_must_work else "target"
            cell = decision_map(data, available=labels_together, criterion=crit)[ri][ci]
            approach, why, where = _from_map(cell, approach)
            where |= {
                "column": data["columns"][ci]["name"],
                "per_class": data["per_class"][ri],
                "criterion": crit,
                "labels_together": labels_together,
                "seeds": len(data["seeds"]),
            }
            reasons.insert(0, why)
            evidence.insert(0, where)
            if target_per_class > 3 * max(data["per_class"]) or target_per_class < min(data["per_class"]):
                reasons.append("your labelled set lies outside the map's range: treat the look-up with care")
                evidence.append(None)
            backed = not cell["tie"]
    reasons.extend(_tradeoffs(approach, labels_together, source_must_work, related, has_source))
    evidence.extend([None] * (len(reasons) - len(evidence)))
    return Recommendation(approach, reasons, evidence, backed)
