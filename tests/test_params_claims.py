"""Parameter validation, device choice, seeding and the claims/results files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from companion.course.claims import Claims, write_json
from companion.course.params import ParameterError, check, scale_of, setup
from companion.device import env_report, pick_device, seed_everything


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SEED", -1, "SEED must be a non-negative integer, got -1"),
        ("SEED", 1.5, "SEED must be a non-negative integer, got 1.5"),
        ("SCALE", "huge", "SCALE must be one of ['quick', 'full', 'auto'], got 'huge'"),
        ("DEVICE", "tpu", "DEVICE must be one of ['auto', 'cpu', 'cuda', 'mps'], got 'tpu'"),
        ("EPOCHS", -2, "EPOCHS must be a non-negative integer (0 or None: the scale's default), got -2"),
        ("TARGET_EPOCHS", 2.5, "TARGET_EPOCHS must be a non-negative integer"),
        ("N_TRAIN", "many", "N_TRAIN must be a non-negative integer"),
        ("LABEL_FRACTION", 1.5, "LABEL_FRACTION must be a number in (0, 1], got 1.5"),
        ("LR", 0, "LR must be a positive number, got 0"),
        (
            "MODEL",
            "resnet_9000",
            "MODEL must be a timm model name (see timm.list_models('pattern*')), got 'resnet_9000'",
        ),
        ("SEEDS", [], "SEEDS must be a non-empty list of non-negative integers, got []"),
        ("DATA_DIR", 3, "DATA_DIR must be a folder path as a string"),
        ("LR", float("inf"), "LR must be a finite number (not nan or inf), got inf"),  # -p LR 1e999
        (
            "ALPHA",
            float("nan"),
            "ALPHA must be a finite number (not nan or inf), got nan",
        ),  # passed ALPHA < 0
        ("WEIGHTS", [1.0, float("-inf")], "WEIGHTS must be a list of finite numbers (no nan or inf)"),
        ("DEVICE", "cpu:anything", "DEVICE must be one of ['auto', 'cpu', 'cuda', 'mps'] or 'cuda:N'"),
        ("DEVICE", "cuda:x", "DEVICE must be one of"),
    ],
)
def test_bad_parameters_give_one_line_naming_the_parameter(name, value, expected):
    with pytest.raises(ParameterError) as err:
        check(name, value)
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_unknown_dataset_is_refused():
    with pytest.raises(ParameterError, match="DATASET must be one of"):
        check("DATASET", "imagenet-22k")
    check("DATASET", "digits")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEED", 0),
        ("EPOCHS", 0),
        ("EPOCHS", None),
        ("LABEL_FRACTION", 1.0),
        ("MODEL", "resnet18"),
        ("MODEL", "course_cnn_s"),
        ("SEEDS", [0, 1]),
        ("DEVICE", "cuda:1"),
        ("DEVICE", "mps"),
        ("ALPHA", 0.5),
    ],
)
def test_good_parameters_pass(name, value):
    check(name, value)


def test_setup_fills_scale_defaults_and_resolves_paths(tmp_path):
    cfg = setup(
        SEED=1,
        DEVICE="cpu",
        SCALE="quick",
        EPOCHS=0,
        N_TRAIN=500,
        RESULTS_DIR=str(tmp_path),
        defaults={"EPOCHS": (2, 9), "N_TRAIN": (100, 1000)},
    )
    assert (cfg.EPOCHS, cfg.N_TRAIN, cfg.scale, cfg.device.type) == (2, 500, "quick", "cpu")
    assert cfg.results_dir == tmp_path
    assert cfg.params["EPOCHS"] == 0  # the results file records what was asked for
    full = setup(DEVICE="cpu", SCALE="full", EPOCHS=0, defaults={"EPOCHS": (2, 9)})
    assert full.EPOCHS == 9
    with pytest.raises(ParameterError, match="defaults names LR"):
        setup(EPOCHS=1, defaults={"LR": (1, 2)})


def test_setup_resolves_data_dir_without_touching_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPANION_DATA", raising=False)
    before = dict(os.environ)
    cfg = setup(DEVICE="cpu", SCALE="quick", DATA_DIR=str(tmp_path / "mydata"), RESULTS_DIR=str(tmp_path))
    assert cfg.data_dir == tmp_path / "mydata" and dict(os.environ) == before
    assert setup(DEVICE="cpu", SCALE="quick", DATA_DIR="", RESULTS_DIR=str(tmp_path)).data_dir is None


def test_scale_auto_is_quick_without_gpu():
    assert scale_of("auto", torch.device("cpu")) == "quick"
    assert scale_of("auto", torch.device("cuda")) == "full"
    assert scale_of("full", torch.device("cpu")) == "full"


def test_pick_device_auto_and_errors():
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_seed_everything_reproduces_all_generators():
    seed_everything(42)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(42)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        seed_everything(-5)


def test_env_report_names_versions_and_device():
    report = env_report("cpu")
    assert report["device"] == "cpu"
    assert report["torch"] == torch.__version__.split("+")[0] or report["torch"].startswith(
        torch.__version__[:4]
    )
    assert isinstance(report["datasets"], dict) and report["datasets"]["digits"] is True


def test_claims_file_round_trip_and_strict_mode(tmp_path, capsys):
    from companion.experiments.verdicts import paired

    cfg = setup(SEED=3, DEVICE="cpu", RESULTS_DIR=str(tmp_path))
    c = Claims("99_demo", cfg)
    good = paired([0.90, 0.91, 0.92, 0.88, 0.95], [0.80, 0.82, 0.81, 0.85, 0.79])
    c.check("A supported claim", {"acc": torch.tensor(0.91234567)}, good, short="A beats B")
    c.check(
        "A source statement we contradict",
        {"gap": np.float32(-0.5)},
        paired([0.80, 0.82, 0.81, 0.85, 0.79], [0.90, 0.91, 0.92, 0.88, 0.95]),
        kind="source",
        ref="Challenges of transfer",
        note="at small data MTL overfits more here",
    )
    c.check(
        "A statement we cannot decide",
        {},
        paired([1, 2, 3, 4, 5], [1.5, 1.0, 3.5, 3, 5.2]),
        kind="literature",
        ref="Someone et al. 2020, NeurIPS",
    )
    c.metric("curve", np.array([1.0, 2.0]))
    path = c.report(strict=True)  # statements put to the test are findings whatever their verdict
    data = json.loads(path.read_text())
    assert data["notebook"] == "99_demo" and data["parameters"] == {
        "SEED": 3,
        "DEVICE": "cpu",
        "RESULTS_DIR": str(tmp_path),
    }
    first = data["claims"][0]
    assert {k: first[k] for k in ("claim", "short", "kind", "ref", "verdict", "held", "seeds", "note")} == {
        "claim": "A supported claim",
        "short": "A beats B",
        "kind": "course",
        "ref": "",
        "verdict": "supported",
        "held": True,
        "seeds": 5,
        "note": "",
    }
    assert first["effect"] == 0.098 and first["ci"] == [0.040159, 0.155841]
    assert first["measured"]["acc"] == 0.912346 and first["measured"]["verdict"]["verdict"] == "supported"
    assert [c["verdict"] for c in data["claims"]] == ["supported", "contradicted", "inconclusive"]
    assert data["metrics"]["curve"] == [1.0, 2.0] and data["runtime_s"] >= 0
    out = capsys.readouterr().out
    assert "[SUPPORTED   ] (course) A supported claim" in out
    assert "[NOT SHOWN   ] (literature) A statement we cannot decide [Someone et al. 2020, NeurIPS]" in out
    assert "not held" not in out.lower()
    assert (
        "course claims: 1/1 supported; statements put to the test: 0 supported, 1 contradicted, 1 not shown"
        in out
    )
    c.check("A course claim that failed", {"x": 1}, paired([1, 2, 3, 4, 5], [1.5, 1.0, 3.5, 3, 5.2]))
    with pytest.raises(AssertionError, match="1 claim\\(s\\) failed: A course claim that failed"):
        c.report(strict=True)
    assert json.loads(path.read_text())["claims"][-1]["held"] is False  # written before raising
    with pytest.raises(ValueError, match="kind must be one of"):
        c.check("x", {}, good, kind="maybe")
    with pytest.raises(ValueError, match="ref must name"):
        c.check("x", {}, good, kind="source")
    with pytest.raises(ValueError, match="verdict must be a record"):
        c.check("x", {}, True)
    with pytest.raises(ValueError, match="short must be at most 60"):
        c.check("x", {}, good, short="x" * 61)


def test_a_contradicted_statement_needs_its_note():
    from companion.course.claims import failed
    from companion.experiments.verdicts import paired

    c = Claims("99_demo")
    c.check("s", {}, paired([0, 0, 0.1], [1, 1, 1.2]), kind="source", ref="Benefits")
    assert failed(c.items[0])
    c.items[0]["note"] = "explained"
    assert not failed(c.items[0])


def test_the_claims_table_wraps_as_html():
    from companion.experiments.verdicts import paired

    c = Claims("99_demo")
    c.check("A <b> beats B", {}, paired([1.0, 2.0, 3.0], [0.5, 1.4, 2.6]))
    html = c.html()
    assert "A &lt;b&gt; beats B" in html and "table-layout:fixed" in html and "supported" in html


def test_write_json_is_atomic(tmp_path):
    path = write_json(tmp_path / "r.json", {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_demonstrations_are_kept_apart_from_claims(tmp_path, capsys):
    from companion.experiments.verdicts import fixed, paired

    cfg = setup(SEED=0, RESULTS_DIR=str(tmp_path))
    c = Claims("99_demo", cfg)
    c.demonstrate("two models have twice the parameters of one", {"one": 10, "two": 20}, True)
    c.check("A beats B", {"a": [0.9, 0.8, 0.85]}, paired([0.9, 0.8, 0.85], [0.8, 0.72, 0.76]))
    c.check("seedless optimum", {"x": 1.0}, fixed(1.0), deterministic="fixed function, no randomness")
    path = c.report(strict=True)
    data = json.loads(path.read_text())
    assert len(data["claims"]) == 2 and len(data["demonstrations"]) == 1
    assert data["demonstrations"][0]["holds"] is True
    assert data["claims"][1]["deterministic"].startswith("fixed")
    out = capsys.readouterr().out
    assert "course claims: 2/2 supported" in out and "1 demonstrations" in out
    c.demonstrate("broken identity", {}, False)
    with pytest.raises(AssertionError, match="broken identity"):
        c.report(strict=True)


def test_a_relative_results_dir_lies_in_the_folder_the_notebook_runs_in(tmp_path, monkeypatch, capsys):
    from companion.course.params import RESULTS_BASE_ENV, results_folder

    monkeypatch.delenv(RESULTS_BASE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = setup(SEED=0, RESULTS_DIR="results")
    assert cfg.results_dir == tmp_path / "results" and cfg.results_dir.is_dir()
    path = Claims("99_demo", cfg).report(strict=False)
    assert path == tmp_path / "results" / "99_demo.json" and path.is_file()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"results written to {tmp_path / 'results' / '99_demo.json'}", (
        "the last line: the absolute path"
    )
    assert results_folder("r", cwd=tmp_path / "nb") == tmp_path / "nb" / "r"
    assert results_folder(str(tmp_path / "abs")) == tmp_path / "abs", "an absolute path is taken as given"
    monkeypatch.setenv(RESULTS_BASE_ENV, str(tmp_path / "base"))
    assert results_folder("results", cwd=tmp_path / "nb") == tmp_path / "base" / "results"


def _lesson(folder: Path) -> Path:
    """A notebook that writes its claims with the default RESULTS_DIR, in `folder`."""
    import nbformat

    params = nbformat.v4.new_code_cell('SEED: int = 0\nRESULTS_DIR: str = "results"\n')
    params.metadata["tags"] = ["parameters"]
    run = nbformat.v4.new_code_cell(
        "from companion.course.claims import Claims\nfrom companion.course.params import setup\n"
        "Claims('lesson', setup(SEED=SEED, RESULTS_DIR=RESULTS_DIR)).report(strict=False);"
    )
    nb = nbformat.v4.new_notebook(cells=[params, run])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "lesson.ipynb")
    return folder / "lesson.ipynb"


def test_a_notebook_run_writes_its_results_beside_it_and_a_committed_copy_names_no_machine_path(
    tmp_path, monkeypatch
):
    """The runner (papermill) starts the kernel in the notebook's folder, as JupyterLab does: the default
    RESULTS_DIR lands there, from any working directory. A learner's run prints the absolute path; an
    unparameterised run (the committed copy) prints it relative to the notebook's folder."""
    from companion.course.params import RESULTS_BASE_ENV
    from companion.course.runs import execute

    monkeypatch.delenv(RESULTS_BASE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    path = _lesson(tmp_path / "course" / "lesson")
    expected = tmp_path / "course" / "lesson" / "results" / "lesson.json"

    def last_line(nb: Path) -> str:
        out = json.loads(nb.read_text())["cells"][-1]["outputs"][-1]
        return "".join(out["text"]).splitlines()[-1]

    execute(path, tmp_path / "mine.ipynb", {"SEED": 1})
    assert json.loads(expected.read_text())["parameters"]["SEED"] == 1
    assert last_line(tmp_path / "mine.ipynb") == f"results written to {expected}"
    execute(path, path)
    assert json.loads(expected.read_text())["parameters"]["SEED"] == 0
    assert last_line(path) == "results written to results/lesson.json"
    assert str(tmp_path) not in path.read_text()


def test_tune_picks_the_best_validation_score_and_over_seeds_stacks():
    from companion.experiments.protocol import over_seeds, tune

    best, scores = tune(lambda lr: {1e-3: 0.7, 3e-3: 0.9, 1e-2: 0.9}[lr], [1e-3, 3e-3, 1e-2], name="lr")
    assert best == 3e-3 and scores[1e-2] == 0.9  # ties keep the earlier value
    with pytest.raises(ValueError, match="lr grid"):
        tune(lambda v: 0.0, [], name="lr")
    runs = over_seeds(lambda s: {"acc": 0.5 + s / 10, "loss": float(s)}, [0, 1, 2])
    assert runs == {"acc": [0.5, 0.6, 0.7], "loss": [0.0, 1.0, 2.0]}
    with pytest.raises(ValueError, match="seed 1 reported"):
        over_seeds(lambda s: {"a": 1.0} if s == 0 else {"b": 1.0}, [0, 1])


def test_delta_m_matches_the_papers_formula_on_hand_values():
    from companion.experiments.protocol import delta_m

    # accuracy 0.90 vs 0.80 (+12.5 %), error 0.30 vs 0.40 (lower is better: +25 %): mean +18.75 %
    assert delta_m(
        {"acc": 0.90, "err": 0.30}, {"acc": 0.80, "err": 0.40}, lower_is_better=["err"]
    ) == pytest.approx(18.75)
    assert delta_m({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0.0
    assert delta_m({"a": 0.45}, {"a": 0.5}) == pytest.approx(-10.0)
    # a scale of a task's metric cancels: millimetres or metres give the same Delta_m
    assert delta_m({"mm": 300.0}, {"mm": 400.0}, lower_is_better=["mm"]) == pytest.approx(
        delta_m({"mm": 0.3}, {"mm": 0.4}, lower_is_better=["mm"])
    )
    with pytest.raises(ValueError, match="scores must have every task"):
        delta_m({"a": 1.0}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="lower_is_better must name"):
        delta_m({"a": 1.0}, {"a": 1.0}, lower_is_better=["z"])
    with pytest.raises(ValueError, match="non-zero"):
        delta_m({"a": 1.0}, {"a": 0.0})
