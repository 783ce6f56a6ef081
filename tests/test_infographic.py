"""The infographic (notebook 12): every number drawn is the value in the results file it names, and the figure
follows the results when they change."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from companion.course import infographic as ig
from companion.course import provenance
from companion.course.provenance import (
    HALVES,
    default_folder,
    figure_texts,
    folder_of,
    format_value,
    join_path,
    not_measured,
    out_folder,
    page_size,
    parse_path,
    reduced,
    resolve,
    strength,
    strongest,
)


def _claim(text, measured, held=True, kind="course", note="", short="", ci=None, seeds=5):
    """A results-file claim record; held=None stands for an inconclusive verdict, "margin" is the effect."""
    verdict = "supported" if held else "inconclusive" if held is None else "contradicted"
    effect = measured.pop("margin", 0.0)
    ci = ci if ci is not None else [effect - 0.01, effect + 0.01]
    record = {"verdict": verdict, "effect": effect, "ci": ci, "seeds": seeds}
    if "threshold" in measured:
        record["threshold"] = measured.pop("threshold")
    return {
        "claim": text,
        "short": short,
        "kind": kind,
        "ref": "" if kind == "course" else "a section",
        "verdict": verdict,
        "held": bool(held),
        "effect": effect,
        "ci": ci,
        "seeds": seeds,
        "summary": f"{verdict}: effect {effect:+.3f}",
        "measured": {**measured, "verdict": record},
        "note": note,
    }


def _file(stem, claims, metrics=None, parameters=None):
    return {
        "notebook": stem,
        "parameters": {"SEED": 0, **(parameters or {})},
        "scale": "quick",
        "metrics": metrics or {},
        "claims": claims,
        "demonstrations": [],
        "runtime_s": 1.0,
    }


LONG = "Multi-task training on all digits keeps every task's accuracy"  # 60 characters


def _map(per_class, columns, seed=0):
    """A decision map as `companion.advice.map_summary` writes it (three panels, families and members)."""
    import random

    rng = random.Random(seed)
    members = {"alone": "alone", "transfer": "probe", "multitask": "pretrain_mtl"}
    out = {"per_class": per_class, "columns": columns, "seeds": [0, 1, 2, 3, 4]}
    for key, families in (
        ("no_labels_together/target", ("alone", "transfer")),
        ("labels_together/target", ("alone", "transfer", "multitask")),
        ("labels_together/both", ("alone", "transfer", "multitask")),
    ):
        fam = [[rng.choice(families) for _ in columns] for _ in per_class]
        tie = [[rng.random() < 0.4 for _ in columns] for _ in per_class]
        gain = [[None if f == "alone" else round(rng.uniform(0, 0.2), 4) for f in row] for row in fam]
        out[key] = {
            "family": fam,
            "winner": [
                [
                    members[f]
                    if rng.random() < 0.5
                    else {"alone": "alone", "transfer": "finetune", "multitask": "mtl"}[f]
                    for f in row
                ]
                for row in fam
            ],
            "margin": [[0.01 for _ in columns] for _ in per_class],
            "ci": [[[0.0, 0.02] for _ in columns] for _ in per_class],
            "vs_alone": gain,
            "vs_alone_ci": [[None if g is None else [g - 0.03, g + 0.03] for g in row] for row in gain],
            "tie": tie,
            "decided": sum(not t for row in tie for t in row),
            "cells": len(per_class) * len(columns),
        }
    return out


def fake_results(folder: Path, gain: float = 0.158944, statements: int = 0, full_map: bool = False) -> Path:
    """Results files shaped like those of notebooks 01, 03, 06, 10 and 11 (values chosen for the test), and with
    `statements` > 0 that many extra source and literature statements spread over the notebooks."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "01_definitions": _file(
            "01_definitions",
            [
                _claim(
                    "Transfer helps with few labels: with 10 USPS labels per class, fine-tuning ...",
                    {"margin": gain, "transfer": [0.746886, 0.764823], "scratch": [0.593921, 0.620827]},
                    short="Transfer helps with few target labels",
                    ci=[gain - 0.04, gain + 0.04],
                ),
                _claim(
                    "A covariate shift costs accuracy: the MNIST model ...",
                    {"margin": -0.586512, "on_mnist": [0.8915, 0.9435], "on_usps": [0.226, 0.412]},
                    ci=[-0.65, -0.52],
                ),
                _claim(  # a one-sample claim against a fixed bar: never a card
                    "One multi-task model learns both digit tasks far above chance",
                    {"margin": 0.9, "threshold": 0.5},
                    ci=[0.85, 0.95],
                ),
            ],
            parameters={"TARGET_PER_CLASS": 7},
        ),
        "03_multitask_approaches": _file(
            "03_multitask_approaches",
            [
                _claim(
                    "Hard sharing reaches the accuracy of separate single-task models with about 1/T of their "
                    "parameters (read: ...)",
                    {"x": 1, "margin": -0.03},
                    held=False,
                    kind="source",
                    note="capacity",
                    ci=[-0.05, -0.01],
                ),
                _claim(
                    "Multi-task learning reduces overfitting compared with single-task learning (train-test gap)",
                    {"x": 2, "margin": 0.02},
                    held=True,
                    kind="source",
                    short="Multi-task learning overfits less",
                ),
            ],
        ),
        "06_benefits_of_mtl": _file(
            "06_benefits_of_mtl",
            [
                _claim(
                    "With the digit labels as auxiliary tasks (hints), the model is more accurate ...",
                    {"margin": 0.16},
                    short="Digit labels as hints make the sum more accurate",
                    ci=[0.1, 0.22],
                ),
                _claim(
                    "Source text: tasks trained together can interfere and hinder each other (read: ...)",
                    {"margin": 0.007},
                    held=None,
                    kind="source",
                    note="noise",
                    ci=[-0.01, 0.024],
                ),
                _claim(
                    "Multi-task learning generalises better than single-task learning (read: ...)",
                    {"margin": 0.01},
                    held=None,
                    kind="literature",
                    note="depends",
                    ci=[-0.02, 0.04],
                ),
            ],
        ),
        "10_obstacles_in_mtl": _file(
            "10_obstacles_in_mtl",
            [
                _claim(
                    "With equal weighting, multiplying the right digit's loss by 1000 lowers the left digit's ...",
                    {"margin": -0.70},
                    short="Equal weights on a x1000 loss imbalance lose the left digit",
                    ci=[-0.75, -0.65],
                ),
                _claim(
                    "FAMO repairs the imbalance: at x1000 its left-digit accuracy beats equal weighting's ...",
                    {"margin": 0.71},
                    short="FAMO repairs the x1000 imbalance",
                    ci=[0.66, 0.76],
                ),
                _claim(
                    "Uncertainty weighting repairs the imbalance too ...",
                    {"margin": 0.69},
                    short="Uncertainty weighting repairs it too",
                    ci=[0.64, 0.74],
                ),
                _claim(
                    "A regression target in cents costs the left digit ...",
                    {"margin": -0.3},
                    short="A regression in raw cents costs the left digit",
                    ci=[-0.4, -0.2],
                ),
                _claim(  # the sum's MAE in cents: not a fraction, never a card
                    "Standardising the target lowers the sum's MAE in cents",
                    {"margin": -35.0},
                    ci=[-40.0, -30.0],
                ),
            ],
        ),
        "11_choosing": _file(
            "11_choosing",
            [
                _claim(
                    "Fine-tuning forgets the source task, multi-task training keeps it: ...",
                    {"margin": 0.41},
                    ci=[0.3, 0.5],
                ),
                _claim(
                    "Transfer is the choice when a large related source exists and the target task has few labels",
                    {"margin": 0.05},
                    held=True,
                    kind="source",
                    ci=[0.01, 0.09],
                ),
            ],
            metrics={
                "decision_map": _map(
                    [1, 3, 10, 30, 100, 300] if full_map else [1, 10, 100],
                    ["r=0", "r=0.25", "r=0.5", "r=0.75", "r=1", "fashion coarse->fine"]
                    if full_map
                    else ["r=0", "r=0.5", "r=1", "fashion coarse->fine"],
                ),
                "rule_of_thumb_agreement": {"transfer_half": [2, 4], "multitask_half": [5, 6]},
            },
        ),
    }
    stems = list(files)
    for j in range(statements):
        held = (True, False, None)[j % 3]
        text = (LONG if j % 4 == 0 else f"Statement {j} about transfer and tasks")[:60]
        files[stems[j % len(stems)]]["claims"].append(
            _claim(
                f"{text} (read: the long form)",
                {"margin": 0.02},
                held=held,
                kind=("source", "literature")[j % 2],
                short=text,
            )
        )
    for stem, data in files.items():
        (folder / f"{stem}.json").write_text(json.dumps(data))
    return folder


@pytest.fixture
def drawn(tmp_path):
    folder = fake_results(tmp_path / "results")
    files = ig.gather(folder)
    nums = ig.headline_numbers(files)
    fig = ig.figure(nums)
    yield folder, files, nums, fig
    plt.close(fig)


def test_key_paths_round_trip_and_resolve():
    keys = ["metrics", "decision_map", "labels_together/both", "winner", 2, 1]
    path = join_path(*keys)
    assert path == 'metrics.decision_map["labels_together/both"].winner[2][1]'
    assert parse_path(path) == keys
    assert resolve({"a": [{"b": 5}]}, "a[0].b") == 5
    with pytest.raises(ValueError):
        parse_path("a..b")


def test_read_one_number_with_its_provenance(tmp_path):
    folder = fake_results(tmp_path)
    n = provenance.read(
        folder / "01_definitions.json", "claims[0].measured.transfer", fmt="pct", reduce="mean"
    )
    assert n.value == pytest.approx((0.746886 + 0.764823) / 2)
    assert n.text == "75.6%"
    assert n.provenance == "mean of 01_definitions.json: claims[0].measured.transfer"


def test_formats():
    assert format_value(0.158944, "pts") == "+15.9 pts"
    assert format_value(0.586512, "cost") == "-58.7 pts"
    assert format_value(0.7469, "pct") == "74.7%"
    assert format_value([-0.75, -0.65], "ci") == "95% CI [-75.0, -65.0] pts"
    assert format_value("literature", "kind") == "literature"
    assert format_value("inconclusive", "verdict") == "not shown at this scale"
    assert format_value("contradicted", "verdict") == "contradicted"
    assert (
        provenance.short("Source text: transfer converges faster (fewer steps ...)")
        == "Transfer converges faster"
    )
    assert reduced([[True, False, False], [False, True, True]], "decided") == 3
    assert reduced([[True, False, False], [False, True, True]], "cells") == 6


def _rec(verdict="supported", effect=0.1, ci=(0.05, 0.15), seeds=5, **extra):
    return {
        "verdict": verdict,
        "effect": effect,
        "ci": list(ci),
        "seeds": seeds,
        "measured": {"verdict": extra},
    }


def test_strength_is_the_interval_end_nearest_zero():
    assert strength(_rec()) == pytest.approx(0.05)
    assert strength(_rec(effect=-0.7, ci=(-0.75, -0.65))) == pytest.approx(0.65)  # a "less" claim
    assert strength(_rec(verdict="inconclusive", ci=(-0.01, 0.2))) is None
    assert strength(_rec(verdict="contradicted")) is None
    assert strength(_rec(seeds=1, ci=(0.1, 0.1))) is None  # no interval over seeds
    assert strength(_rec(effect=-35.0, ci=(-40.0, -30.0))) is None  # cents, not a fraction
    assert strength(_rec(threshold=0.5)) is None  # one-sample, against a fixed bar
    assert strength({"claim": "old format", "held": True, "measured": {}}) is None


def test_cards_are_the_strongest_supported_results_of_each_half(drawn):
    folder, files, nums, fig = drawn
    data = {stem: json.loads(p.read_text()) for stem, p in files.items()}
    assert strongest(data, HALVES["transfer"]) == [("01_definitions", 1), ("01_definitions", 0)]
    assert strongest(data, HALVES["multitask"]) == [
        ("10_obstacles_in_mtl", 1),  # FAMO, lower end +0.66
        ("10_obstacles_in_mtl", 0),  # equal weights, upper end -0.65
        ("06_benefits_of_mtl", 0),  # at most two per notebook: 10's third (+0.64) is left out
    ]
    assert strongest(data, HALVES["multitask"], n=4, per_notebook=3)[2] == ("10_obstacles_in_mtl", 2)
    assert strongest(data, HALVES["multitask"], n=0) == []
    with pytest.raises(ValueError, match="per_notebook"):
        strongest(data, HALVES["multitask"], per_notebook=0)
    card = {k.split(".", 3)[3]: n for k, n in nums.items() if k.startswith("card.multitask.0.")}
    assert (
        card["short"].text == "FAMO repairs the x1000 imbalance" and card["short"].path == "claims[1].short"
    )
    assert card["effect"].text == "+71.0 pts" and card["effect"].file == "10_obstacles_in_mtl.json"
    assert card["ci"].text == "95% CI [+66.0, +76.0] pts" and card["ci"].path == "claims[1].ci"
    assert card["seeds"].text == "5 seeds" and card["verdict"].text == "supported"
    assert card["kind"].text == "course claim"
    # an empty short falls back to the claim's text, shortened
    assert nums["card.transfer.0.short"].text == "A covariate shift costs accuracy"
    assert nums["card.transfer.0.short"].path == "claims[1].claim"
    texts = figure_texts(fig)
    assert "-70.0 pts" in texts and "+16.0 pts" in texts and "+69.0 pts" not in texts
    assert not any("MAE" in t or "+90.0 pts" in t for t in texts)  # cents and one-sample claims: no card


def test_scoreboard_and_map_numbers(drawn):
    folder, files, nums, fig = drawn
    # every source or literature statement, in every file, has its verdict; course claims do not
    verdicts = {k: n.text for k, n in nums.items() if re.fullmatch(r"score\.[^.]+\.\d+", k)}
    assert verdicts == {
        "score.03_multitask_approaches.0": "contradicted",
        "score.03_multitask_approaches.1": "supported",
        "score.06_benefits_of_mtl.1": "not shown at this scale",
        "score.06_benefits_of_mtl.2": "not shown at this scale",
        "score.11_choosing.1": "supported",
    }
    assert nums["score.03_multitask_approaches.1.text"].text == "Multi-task learning overfits less"
    assert nums["score.03_multitask_approaches.0.text"].text.startswith("Hard sharing reaches the accuracy")
    assert all(len(nums[k + ".text"].text) <= 60 for k in verdicts)
    dm = json.loads((folder / "11_choosing.json").read_text())["metrics"]["decision_map"]
    for key in ig.MAP_PANELS:
        assert nums[f"map.{key}.decided"].value == dm[key]["decided"]  # computed from the tie grid
        assert nums[f"map.{key}.cells"].value == 12
        assert nums[f"map.{key}.0.0.family"].value == dm[key]["family"][0][0]
        assert nums[f"map.{key}.1.2"].text == ig.WINNER_CODE[dm[key]["winner"][1][2]]
    assert nums["map.transfer_half.clear"].value == 2
    texts = "\n".join(figure_texts(fig))
    for mark, _ in ig.VERDICT_STYLE.values():
        assert mark in texts
    assert "supported" in texts and "contradicted" in texts and "not shown at this scale" in texts


def test_statements_without_a_verdict_are_not_yet_measured(tmp_path):
    folder = fake_results(tmp_path)
    data = json.loads((folder / "03_multitask_approaches.json").read_text())
    for c in data["claims"]:  # the older results-file format: no verdict fields
        for key in ("verdict", "effect", "ci", "seeds", "short"):
            c.pop(key)
    (folder / "03_multitask_approaches.json").write_text(json.dumps(data))
    nums = ig.headline_numbers(ig.gather(folder))
    assert "score.03_multitask_approaches.0" not in nums and "pending.03_multitask_approaches.0" in nums
    fig = ig.figure(nums)
    page = " ".join(" ".join(figure_texts(fig)).split())
    assert "Not yet measured" in page and "notebooks 03" in page
    assert ig.layout_problems(fig) == [] and ig.check_figure(fig, nums, folder) == []
    plt.close(fig)


def _flat(text):
    return "".join(text.split())


def test_every_number_on_the_figure_equals_its_file(drawn):
    folder, files, nums, fig = drawn
    assert ig.check_figure(fig, nums, files=files) == []
    texts = "\0".join(_flat(t) for t in figure_texts(fig))  # wrapped lines joined
    for n in nums.values():  # checked here independently of check_figure
        raw = json.loads((folder / n.file).read_text())
        for key in parse_path(n.path):
            raw = raw[key]
        if n.reduce == "decided":
            raw = sum(not t for row in raw for t in row)
        elif n.reduce == "cells":
            raw = sum(len(row) for row in raw)
        assert n.reduce in ("", "decided", "cells")
        assert raw == pytest.approx(n.value) if isinstance(raw, float) else raw == n.value
        assert _flat(n.text) in texts, n.name
    assert "not yet measured" not in texts  # both halves have results here


def test_the_figure_changes_when_the_results_do(drawn, tmp_path):
    folder, files, nums, fig = drawn
    before = figure_texts(fig)
    assert "+15.9 pts" in before
    data = json.loads((folder / "01_definitions.json").read_text())
    data["claims"][0]["effect"] = 0.2351
    data["claims"][0]["ci"] = [0.2, 0.27]
    (folder / "01_definitions.json").write_text(json.dumps(data))
    # the old figure no longer matches its files
    assert any("card.transfer.1.effect" in p for p in ig.check_figure(fig, nums, files=files))
    nums2 = ig.headline_numbers(ig.gather(folder))
    fig2 = ig.figure(nums2)
    after = figure_texts(fig2)
    assert "+23.5 pts" in after and "+15.9 pts" not in after
    assert ig.check_figure(fig2, nums2, folder=folder) == []
    plt.close(fig2)


def test_missing_files_are_not_yet_measured(tmp_path):
    nums = ig.headline_numbers(ig.gather(tmp_path / "empty"))
    assert nums == {}
    fig = ig.figure(nums)
    texts = "\n".join(figure_texts(fig))
    assert texts.count("not yet measured") >= 4  # both halves' cards, the map, the scoreboard
    no_file = r"\d+(\.\d+)? ?(pts|%)(?! (confidence|interval))"  # a number without a results file behind it
    assert not re.search(no_file, texts)
    assert ig.layout_problems(fig) == []
    plt.close(fig)


@pytest.mark.parametrize("full_map, long_card", [(False, False), (True, False), (False, True)])
def test_the_page_passes_the_layout_check_with_many_statements(tmp_path, full_map, long_card):
    folder = fake_results(tmp_path, statements=40, full_map=full_map)
    if long_card:  # a card with a 60-character short text read from a file with a long name
        (folder / "06_benefits_of_mtl.json").unlink()
        data = json.loads((folder / "03_multitask_approaches.json").read_text())
        data["claims"][1]["short"] = LONG
        (folder / "03_multitask_approaches.json").write_text(json.dumps(data))
    files = ig.gather(folder)
    nums = ig.headline_numbers(files)
    assert sum(1 for k in nums if re.fullmatch(r"score\.[^.]+\.\d+", k)) == (35 if long_card else 45)
    if long_card:
        assert nums["card.multitask.2.short"].text == LONG
    fig = ig.figure(nums)
    assert ig.layout_problems(fig, min_pt=6.0) == []
    assert ig.check_figure(fig, nums, files=files) == []  # every statement's verdict and text is drawn
    plt.close(fig)


def test_layout_problems_finds_overlaps_small_and_escaping_text():
    fig = plt.figure(figsize=ig.A4_LANDSCAPE)
    fig.text(0.1, 0.9, "first text here", fontsize=10)
    fig.text(0.12, 0.9, "second text here", fontsize=10)  # on top of the first
    fig.text(0.1, 0.5, "tiny", fontsize=4.5)
    fig.text(0.97, 0.2, "runs off the right edge of the page", fontsize=8)
    ax = fig.add_axes((0.5, 0.5, 0.1, 0.1))
    ax.set_axis_off()
    ax.text(0.5, 0.5, "a label far too long for its small card", fontsize=8)
    fig.text(0.52, 0.55, "lies on the card", fontsize=7)
    fig.text(0.1, 0.3, "   ", fontsize=3)  # empty: ignored
    problems = ig.layout_problems(fig)
    assert any(p.startswith("overlap: 'first text here' and 'second text here'") for p in problems)
    assert "too small: 'tiny' at 4.5 pt (minimum 6)" in problems
    assert "off the page: 'runs off the right edge of the page'" in problems
    assert "leaves its box: 'a label far too long for its small card'" in problems
    assert "lies on another panel: 'lies on the card'" in problems
    assert not any("'   '" in p or "''" in p for p in problems)
    plt.close(fig)
    fig = plt.figure(figsize=ig.A4_LANDSCAPE)
    fig.text(0.1, 0.9, "alone", fontsize=8)
    fig.text(0.1, 0.8, "apart", fontsize=8)
    assert ig.layout_problems(fig) == []
    plt.close(fig)


def test_wrap_measures_the_text():
    text = "Equal weights on a x1000 loss imbalance lose the left digit"
    lines = ig.wrap(text, 80, 7).split("\n")
    assert len(lines) > 1 and " ".join(lines) == text
    assert all(ig.text_width(x, 7) * 1.03 <= 80 for x in lines)
    assert ig.wrap("fashion coarse->fine", 30, 6) == "fashion\ncoarse->\nfine"
    assert ig.text_width("abc", 12) == pytest.approx(2 * ig.text_width("abc", 6))


def test_missing_run_calls_the_runner_at_quick_scale(tmp_path, monkeypatch):
    from companion.course import runner as course

    calls = []

    def fake_run(names, *, scale, out, **kw):
        calls.append((names, scale))
        stem = names[0]
        target = Path(out) / "results" / stem / "SCALE=quick"
        fake_results(tmp_path / "made")
        target.mkdir(parents=True)
        (target / f"{stem}.json").write_text((tmp_path / "made" / f"{stem}.json").read_text())
        return []

    monkeypatch.setattr(course, "run", fake_run)
    folder = fake_results(tmp_path / "have")
    (folder / "11_choosing.json").unlink()
    (folder / "12_infographic.json").write_text("{}")  # its own results file is never drawn from
    files = ig.gather(
        folder, missing="run", out=tmp_path / "runs", notebooks=["01_definitions", "11_choosing"]
    )
    assert calls == [(["11_choosing"], "quick")]
    assert files["11_choosing"].is_relative_to(tmp_path / "runs") and "12_infographic" not in files
    assert ig.gather(folder)  # skip: what is there
    assert "11_choosing" not in ig.gather(folder, missing="skip")
    with pytest.raises(ValueError, match="missing must be one of"):
        ig.gather(folder, missing="later")


def test_saved_files_are_a4_landscape(drawn, tmp_path):
    paths = ig.render(drawn[0], tmp_path / "out")  # draws, checks the numbers and the layout, saves
    for p in paths.values():
        w, h = page_size(p)
        assert w == pytest.approx(11.69, abs=0.01) and h == pytest.approx(8.27, abs=0.01)
    svg = paths["svg"].read_text()
    assert "<dc:date>" not in svg  # no timestamp: the file changes only when the figure does


def test_palette_is_okabe_ito():
    assert set(ig.WINNER_COLOUR.values()) <= set(ig.OKABE_ITO.values())
    assert {colour for _, colour in ig.VERDICT_STYLE.values()} <= set(ig.OKABE_ITO.values())


def test_no_number_on_the_page_comes_from_anywhere_else(drawn):
    """Digits on the figure are either a drawn value's text or a reference to a notebook (its number, its file)."""
    fig, nums = drawn[3], drawn[2]
    page = "\n".join(" ".join(t.split()) for t in figure_texts(fig))
    for text in sorted({" ".join(n.text.split()) for n in nums.values() if n.text}, key=len, reverse=True):
        page = re.sub(rf"(?<![\w.]){re.escape(text)}(?![\w.])", "", page)
    page = re.sub(r"\b\d\d_[a-z_]+\.json|notebook \d\d|claims\[\d+\]|\b95% |^\d\d$", "", page, flags=re.M)
    assert not re.search(r"\d", page), re.findall(r".{0,30}\d.{0,30}", page)


def test_folders():
    assert folder_of("") == default_folder()
    assert out_folder("", "/r") == Path("/r/infographic")
    assert out_folder("/tmp/x", "/r") == Path("/tmp/x")
    assert "12_infographic" not in not_measured({})


def test_the_site_embeds_the_svg_drawn_from_the_committed_results(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "site_build", Path(__file__).parent.parent / "docs" / "build.py"
    )
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    html = build.front_parts(True)["INFOGRAPHIC"]
    assert '<img src="_static/course_infographic.svg"' in html and "width:100%" in html
    assert '<a href="_static/course_infographic.png">' in html
    assert "missing" in build.front_parts(False)["INFOGRAPHIC"]
    # the API index's "used in" table, read from the notebooks' imports (none typed in)
    users = build.used_in()
    assert "01_definitions" in users["experiments.verdicts"] and "11_choosing" in users["course.advice"]
    assert "| `companion.experiments.verdicts` | [00](notebooks/00_start_here.ipynb), [01](notebooks/01_" in (
        build.used_in_table(users)
    )
    assert "[01](../notebooks/01_definitions.ipynb)" in build.api_page(
        "experiments.verdicts", users["experiments.verdicts"]
    )
    assert build.imported_modules(
        "%matplotlib inline\nimport companion.mtl\nfrom companion.experiments import regimes\nfrom companion.train import fit",
        {"mtl", "experiments", "experiments.regimes", "train"},
    ) == {"mtl", "experiments.regimes", "train"}
    paths = build.infographic_files(tmp_path)
    assert paths is not None and {p.name for p in paths.values()} == {
        "course_infographic.png",
        "course_infographic.svg",
    }


def test_render_refuses_a_page_with_problems_unless_asked_not_to(tmp_path, monkeypatch, capsys):
    folder = fake_results(tmp_path / "results")
    monkeypatch.setattr(ig, "layout_problems", lambda fig: ["overlap: 'a' and 'b'"])
    with pytest.raises(ValueError, match="1 problem"):
        ig.render(folder, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()  # nothing half-written
    paths = ig.render(folder, tmp_path / "loose", strict=False)
    assert paths["svg"].exists() and "overlap: 'a' and 'b'" in capsys.readouterr().out
