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
    for name in ("fp32_device_resident", "bf16_autocast", "upgrad_aggregation_bf16", "channels_last", "compile_on"):
        assert variants[name]["ok"] and variants[name]["images_per_s"] > 0
        assert variants[name]["relative_error"] <= variants[name]["tolerance"]


def test_bad_arguments_stop_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="--only"):
        bench.main(["--quick", "--only", "everything", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--tasks"):
        bench.main(["--quick", "--tasks", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "bench.json").exists()
