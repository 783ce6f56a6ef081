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

from companion import infographic as ig  # noqa: E402


def _claim(text, measured, held=True, kind="course", note=""):
    """A results-file claim record; held=None stands for an inconclusive verdict, "margin" is the effect."""
    verdict = "supported" if held else "inconclusive" if held is None else "contradicted"
    effect = measured.pop("margin", 0.0)
    return {
        "claim": text,
        "short": "",
        "kind": kind,
        "ref": "" if kind == "course" else "a section",
        "verdict": verdict,
        "held": bool(held),
        "effect": effect,
        "ci": [effect - 0.01, effect + 0.01],
        "seeds": 5,
        "measured": measured,
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


def fake_results(folder: Path, gain: float = 0.158944) -> Path:
    """Results files shaped like those of notebooks 01, 03, 06 and 11 (values chosen for the test)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "01_definitions": _file(
            "01_definitions",
            [
                _claim(
                    "Transfer helps with few labels: with 10 USPS labels per class, fine-tuning ...",
                    {
                        "held": True,
                        "margin": gain,
                        "spread": 0.04,
                        "seeds": [0, 1, 2],
                        "transfer": [0.746886, 0.764823, 0.756851],
                        "scratch": [0.593921, 0.620827, 0.576981],
                    },
                ),
                _claim(
                    "A covariate shift costs accuracy: the MNIST model ...",
                    {
                        "margin": 0.586512,
                        "on_mnist": [0.8915, 0.9435, 0.9345],
                        "on_usps": [0.226, 0.412, 0.371],
                    },
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
                    {"x": 1},
                    held=False,
                    kind="source",
                    note="capacity",
                ),
                _claim(
                    "Multi-task learning reduces overfitting compared with single-task learning (train-test gap)",
                    {"x": 2},
                    held=True,
                    kind="source",
                ),
            ],
        ),
        "06_benefits_of_mtl": _file(
            "06_benefits_of_mtl",
            [
                _claim(
                    "With the digit labels as auxiliary tasks (hints), the model is more accurate ...",
                    {
                        "test_acc": {
                            "single-task": {"200": {"mean": 0.41}, "800": {"mean": 0.62}},
                            "hints": {"200": {"mean": 0.57}, "800": {"mean": 0.71}},
                        },
                        "hints_vs_single": {"800": {"effect": 0.09}, "200": {"effect": 0.16}},
                    },
                ),
                _claim(
                    "Source text: tasks trained together can interfere and hinder each other (read: ...)",
                    {
                        "left_only": {"mean": 0.802},
                        "left_plus_right": {"mean": 0.795},
                        "left_only_vs_left_plus_right": {"effect": 0.007},
                        "margin": 0.007,
                    },
                    held=None,
                    kind="source",
                    note="noise",
                ),
                _claim(
                    "Multi-task learning generalises better than single-task learning (read: ...)",
                    {"gain_points_mean": {"hints": {"200": 16.0}, "control": {"200": -2.35}}},
                    held=None,
                    kind="source",
                    note="depends",
                ),
            ],
        ),
        "11_choosing": _file(
            "11_choosing",
            [
                _claim(
                    "Fine-tuning forgets the source task, multi-task training keeps it: ...",
                    {
                        "source_acc_pretrain_mtl": [0.9, 0.92, 0.91],
                        "source_acc_finetune": [0.5, 0.55, 0.45],
                        "margin": 0.41,
                    },
                ),
                _claim(
                    "Transfer is the choice when a large related source exists and the target task has few labels",
                    {},
                    held=True,
                    kind="source",
                ),
            ],
            metrics={
                "decision_map": {
                    "per_class": [1, 10, 100],
                    "columns": ["r=0", "fashion coarse->fine"],
                    "seeds": [0, 1, 2],
                    "no_labels_together/target": {
                        "winner": [["alone", "probe"], ["alone", "finetune"], ["alone", "finetune"]],
                        "margin": [[0.0, 0.1], [0.0, 0.2], [0.0, 0.01]],
                        "tie": [[True, False], [False, False], [False, True]],
                    },
                    "labels_together/both": {
                        "winner": [["mtl", "pretrain_mtl"], ["mtl", "pretrain_mtl"], ["alone", "mtl"]],
                        "margin": [[0.1, 0.1], [0.1, 0.1], [0.0, 0.1]],
                        "tie": [[False, False], [False, False], [True, False]],
                    },
                },
                "rule_of_thumb_agreement": {"transfer_half": [2, 4], "multitask_half": [5, 6]},
            },
        ),
    }
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
    path = ig.join_path(*keys)
    assert path == 'metrics.decision_map["labels_together/both"].winner[2][1]'
    assert ig.parse_path(path) == keys
    assert ig.resolve({"a": [{"b": 5}]}, "a[0].b") == 5
    with pytest.raises(ValueError):
        ig.parse_path("a..b")


def test_read_one_number_with_its_provenance(tmp_path):
    folder = fake_results(tmp_path)
    n = ig.read(folder / "01_definitions.json", "claims[0].measured.transfer", fmt="pct", reduce="mean")
    assert n.value == pytest.approx((0.746886 + 0.764823 + 0.756851) / 3)
    assert n.text == "75.6%"
    assert n.provenance == "mean of 01_definitions.json: claims[0].measured.transfer"


def test_formats():
    assert ig.format_value(0.158944, "pts") == "+15.9 pts"
    assert ig.format_value(0.586512, "cost") == "-58.7 pts"
    assert ig.format_value(0.7469, "pct") == "74.7%"
    assert ig.format_value("inconclusive", "verdict") == "not shown at this scale"
    assert ig.format_value("contradicted", "verdict") == "contradicted"
    assert ig.short("Source text: transfer converges faster (fewer steps ...)") == "Transfer converges faster"


def test_numbers_read_the_claims_they_name(drawn):
    folder, files, nums, fig = drawn
    assert nums["transfer.margin"].text == "+15.9 pts"
    assert nums["transfer.margin"].path == "claims[0].effect"
    assert nums["transfer.per_class"].text == "7" and nums["transfer.seeds"].text == "3"
    assert nums["shift.margin"].text == "-58.7 pts"
    assert (
        nums["mtl.n"].value == 200 and nums["mtl.margin"].text == "+16.0 pts"
    )  # the smallest size, not "800"
    assert nums["mtl.control"].text == "-2.4 pts" or nums["mtl.control"].text == "-2.3 pts"
    assert nums["forgetting.margin"].text == "+41.0 pts"
    assert nums["forgetting.kept"].text == "91.0%"
    assert nums["map.labels_together/both.2.0"].value == "alone"
    assert nums["map.labels_together/both.2.0.tie"].text == "tie"
    assert nums["map.transfer_half.clear"].value == 2
    # every source statement, in every file, has its verdict; course claims do not
    verdicts = {k: n.text for k, n in nums.items() if re.fullmatch(r"score\.[^.]+\.\d+", k)}
    assert verdicts == {
        "score.03_multitask_approaches.0": "contradicted",
        "score.03_multitask_approaches.1": "supported",
        "score.06_benefits_of_mtl.1": "not shown at this scale",
        "score.06_benefits_of_mtl.2": "not shown at this scale",
        "score.11_choosing.1": "supported",
    }
    assert (
        "conflict.held" not in nums and "forgetting04.held" not in nums
    )  # no 10 or 04 results: not measured


def test_every_number_on_the_figure_equals_its_file(drawn):
    folder, files, nums, fig = drawn
    assert ig.check_figure(fig, nums, files=files) == []
    texts = "\n".join(" ".join(t.split()) for t in ig.figure_texts(fig))  # wrapped lines joined
    for n in nums.values():  # checked here independently of check_figure
        raw = json.loads((folder / n.file).read_text())
        for key in ig.parse_path(n.path):
            raw = raw[key]
        if n.reduce == "mean":
            raw = sum(raw) / len(raw)
        elif n.reduce == "len":
            raw = len(raw)
        elif n.reduce == "smallest_key":
            raw = min(int(k) for k in raw)
        assert raw == pytest.approx(n.value) if isinstance(raw, float) else raw == n.value
        assert " ".join(n.text.split()) in texts, n.name
    assert "not yet measured" in texts  # the conflict strip: no results file of notebook 10


def test_the_figure_changes_when_the_results_do(drawn, tmp_path):
    folder, files, nums, fig = drawn
    before = ig.figure_texts(fig)
    assert "+15.9 pts" in before
    data = json.loads((folder / "01_definitions.json").read_text())
    data["claims"][0]["effect"] = 0.2351
    data["claims"][0]["verdict"] = "inconclusive"
    (folder / "01_definitions.json").write_text(json.dumps(data))
    # the old figure no longer matches its files
    assert any("transfer.margin" in p for p in ig.check_figure(fig, nums, files=files))
    nums2 = ig.headline_numbers(ig.gather(folder))
    fig2 = ig.figure(nums2)
    after = ig.figure_texts(fig2)
    assert "+23.5 pts" in after and "+15.9 pts" not in after
    assert ig.check_figure(fig2, nums2, folder=folder) == []
    plt.close(fig2)


def test_missing_files_are_not_yet_measured(tmp_path):
    nums = ig.headline_numbers(ig.gather(tmp_path / "empty"))
    assert nums == {}
    fig = ig.figure(nums)
    texts = "\n".join(ig.figure_texts(fig))
    assert texts.count("not yet measured") >= 6
    assert not re.search(r"\d+(\.\d+)? ?(pts|%)", texts)  # no number without a results file behind it
    plt.close(fig)


def test_missing_run_calls_the_runner_at_quick_scale(tmp_path, monkeypatch):
    from companion import course

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
    fig = drawn[3]
    paths = ig.save(fig, tmp_path / "out")
    for p in paths.values():
        w, h = ig.page_size(p)
        assert w == pytest.approx(11.69, abs=0.01) and h == pytest.approx(8.27, abs=0.01)
    svg = paths["svg"].read_text()
    assert "<dc:date>" not in svg  # no timestamp: the file changes only when the figure does


def test_palette_is_okabe_ito():
    assert set(ig.WINNER_COLOUR.values()) <= set(ig.OKABE_ITO.values())
    assert {colour for _, colour in ig.VERDICT_STYLE.values()} <= set(ig.OKABE_ITO.values())


def test_no_number_on_the_page_comes_from_anywhere_else(drawn):
    """Digits on the figure are either a drawn value's text or a reference to a notebook (its number, its file)."""
    fig, nums = drawn[3], drawn[2]
    page = "\n".join(" ".join(t.split()) for t in ig.figure_texts(fig))
    page = re.sub(r"\b\d\d_[a-z_]+\.json|notebook \d\d|\b\d\d · ", "", page, flags=re.M)
    for text in sorted({" ".join(n.text.split()) for n in nums.values() if n.text}, key=len, reverse=True):
        page = re.sub(rf"(?<![\w.]){re.escape(text)}(?![\w.])", "", page)
    assert not re.search(r"\d", page), re.findall(r".{0,30}\d.{0,30}", page)


def test_folders():
    assert ig.folder_of("") == ig.default_folder()
    assert ig.out_folder("", "/r") == Path("/r/infographic")
    assert ig.out_folder("/tmp/x", "/r") == Path("/tmp/x")
    assert "12_infographic" not in ig.not_measured({})
