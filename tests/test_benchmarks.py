"""The benchmarks' quick and dry-run modes: they run end to end and write the JSON they promise (no timings checked)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from companion.aggregators import METHODS

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import bench, gpu_check  # noqa: E402


def _ratios(tree):
    """Every {"median", "q1", "q3"} summary found in a nested result."""
    if isinstance(tree, dict):
        if {"median", "q1", "q3"} <= set(tree):
            yield tree
        else:
            for value in tree.values():
                yield from _ratios(value)


@pytest.mark.slow
def test_quick_benchmark_writes_finite_positive_ratios(tmp_path):
    result = bench.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) == {"meta", "fit", "aggregation", "scores", "batches", "notebook_runtimes"}
    assert saved["meta"]["torch_threads"] >= 1 and saved["meta"]["quick"] is True
    assert set(saved["aggregation"]["T"]) == {"2", "3"}
    for entry in saved["aggregation"]["T"].values():
        assert set(METHODS) <= set(entry)
        for m in METHODS:
            assert {"params_vs_equal", "features_vs_equal", "two_pass_features_vs_equal"} <= set(entry[m])
            if m not in saved["aggregation"]["torchjd_skipped"]:
                assert {"params_vs_torchjd", "features_vs_torchjd_mtl"} <= set(entry[m])
    for shape in saved["scores"].values():
        assert set(shape) == {"logme", "hscore", "leep", "nce", "transrate"}
        for score in shape.values():  # the fast and the straightforward implementations agree
            assert score["abs_difference"] <= 1e-8 * max(1.0, abs(score["reference_value"]))
    assert saved["fit"]["max_weight_difference"] == 0.0  # fit is the hand loop, step for step
    assert "00_start_here" in saved["notebook_runtimes"]["notebooks"]
    ratios = list(_ratios(saved))
    assert len(ratios) > 40
    assert all(math.isfinite(r["median"]) and r["median"] > 0 and 0 < r["q1"] <= r["q3"] for r in ratios)
    assert result["meta"] == saved["meta"]


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_cpu(tmp_path):
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())
    assert saved["failed"] == [] and report["failed"] == []
    variants = saved["variants"]
    assert "skipped" in variants["fp16_autocast_gradscaler"] and "skipped" in variants["pinned_memory"]
    for name in (
        "fp32_device_resident",
        "bf16_autocast",
        "upgrad_aggregation_bf16",
        "channels_last",
        "compile_on",
    ):
        assert variants[name]["ok"] and variants[name]["images_per_s"] > 0
        assert variants[name]["relative_error"] <= variants[name]["tolerance"]


def test_bad_arguments_stop_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="--only"):
        bench.main(["--quick", "--only", "everything", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--tasks"):
        bench.main(["--quick", "--tasks", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "bench.json").exists()


def _notebook(cells: list[tuple[str, float]]) -> dict:
    return {
        "cells": [
            {"cell_type": "code", "source": src, "metadata": {"papermill": {"duration": sec}}}
            for src, sec in cells
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_fullscale_bounds_follow_the_parameters_a_cell_depends_on(tmp_path):
    from benchmarks import fullscale

    nb = _notebook(
        [
            ("N_TRAIN: int = 0\nEPOCHS: int = 0", 0.0),
            (
                "cfg = setup(N_TRAIN=N_TRAIN, EPOCHS=EPOCHS, IMAGE_SIZE=16, N_TEST=N_TEST,\n"
                '            defaults={"N_TRAIN": (100, 400), "EPOCHS": (2, 6), "IMAGE_SIZE": (16, 32), "N_TEST": (10, 90)})',
                1.0,
            ),
            (
                "x = load(cfg.N_TRAIN, cfg.IMAGE_SIZE)\ntest = load(cfg.N_TEST)",
                2.0,
            ),  # low 4 * 4 = 16 (N_TEST left out)
            (
                "model = train(x, epochs=cfg.EPOCHS)",
                10.0,
            ),  # low 3; high 3 * 16 = 48 (x carries N_TRAIN, IMAGE_SIZE)
            (
                "acc = score(model, test)",
                1.0,
            ),  # low 1; high 48 (model carries everything it was trained with)
        ]
    )
    path = tmp_path / "00_x.ipynb"
    path.write_text(json.dumps(nb))
    row = fullscale.notebook_estimate(path)
    assert row["quick_cpu_s"] == pytest.approx(14.0)
    assert row["full_cpu_s"]["low"] == pytest.approx(1.0 + 2 * 16 + 10 * 3 + 1 * 1)
    assert row["full_cpu_s"]["high"] == pytest.approx(1.0 + 2 * 16 + 10 * 48 + 1 * 48)
    assert [c["reached"] for c in row["heavy_cells"]] == [
        [],
        [],
        ["IMAGE_SIZE", "N_TRAIN"],
        ["EPOCHS", "IMAGE_SIZE", "N_TEST", "N_TRAIN"],
    ]


def test_fullscale_speedup_is_bounded_by_launches_and_flops():
    from benchmarks import fullscale

    s = fullscale.speedup({"seconds": 0.03, "aten_ops": 200, "flops": 1e9})
    assert s["gpu_step_s"] == pytest.approx(max(200 * fullscale.LAUNCH_S, 1e9 / fullscale.GPU_FLOPS))
    assert s["value"] == pytest.approx(0.03 / s["gpu_step_s"])


def test_fullscale_estimate_covers_every_committed_notebook(tmp_path):
    from benchmarks import fullscale

    report = fullscale.main(["--out", str(tmp_path)])
    saved = json.loads((tmp_path / "fullscale.json").read_text())
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(saved["notebooks"]) == notebooks
    assert saved["verdict"] == report["verdict"] in ("fits", "may fit", "does not fit")
    for row in saved["notebooks"].values():
        assert row["quick_cpu_s"] > 0
        assert row["quick_cpu_s"] <= row["full_cpu_s"]["low"] + 1e-9 <= row["full_cpu_s"]["high"] + 2e-9


def test_fullscale_seeds_called_for_reads_the_inconclusive_verdicts():
    from benchmarks import fullscale

    def claim(short, verdict, need=None, parts=None):
        record = {"verdict": verdict}
        if verdict == "inconclusive":
            record |= {"detectable": 0.1, "seeds_needed": need}
        if parts:
            record["parts"] = parts
        return {"short": short, "verdict": verdict, "measured": {"verdict": record}}

    parts = {
        "a": {"verdict": "inconclusive", "detectable": 0.1, "seeds_needed": 9},
        "b": {"verdict": "inconclusive", "detectable": 0.2, "seeds_needed": 14},
        "c": {"verdict": "supported"},
    }
    claims = [
        claim("settled", "supported"),
        claim("needs 12", "inconclusive", 12),
        claim("two parts", "inconclusive", 9, parts),  # the most any open part needs: 14
        claim("out of reach", "inconclusive", 40),
        claim("beyond any count", "inconclusive", None),
    ]
    out = fullscale.seeds_called_for(claims, cap=20)
    assert out["wanted"] == 14
    assert out["claims"] == {"needs 12": 12, "two parts": 14, "out of reach": 40, "beyond any count": None}
    assert out["beyond"] == ["out of reach", "beyond any count"]
    assert fullscale.seeds_called_for(claims[:1], cap=20) == {"wanted": None, "claims": {}, "beyond": []}


def test_fullscale_counts_the_seed_list_as_n_seeds(tmp_path):
    from benchmarks import fullscale

    nb = _notebook(
        [
            ("N_SEEDS: int = 0", 0.0),
            (
                'cfg = setup(N_SEEDS=N_SEEDS, defaults={"N_SEEDS": (5, 10)})\nSEEDS = [cfg.SEED + i for i in range(cfg.N_SEEDS)]',
                1.0,
            ),
            ("runs = [train(seed) for seed in SEEDS]", 10.0),
        ]
    )
    path = tmp_path / "00_x.ipynb"
    path.write_text(json.dumps(nb))
    assert fullscale.notebook_estimate(path)["full_cpu_s"]["low"] == pytest.approx(1.0 + 10 * 2)
    assert fullscale.notebook_estimate(path, full={"N_SEEDS": 20})["full_cpu_s"]["low"] == pytest.approx(
        1.0 + 10 * 4
    )


def test_first_run_links_the_datasets_but_not_the_caches(tmp_path):
    from benchmarks import first_run

    source = tmp_path / "data"
    (source / "mnist").mkdir(parents=True)
    (source / "cache" / "sources").mkdir(parents=True)
    (source / "README.md").write_text("licences")
    (tmp_path / "tmp").mkdir()
    data = first_run.cold_data(source, tmp_path / "tmp")
    assert sorted(p.name for p in data.iterdir()) == ["README.md", "mnist"]
    assert (data / "mnist").resolve() == (source / "mnist").resolve() and not (data / "cache").exists()
