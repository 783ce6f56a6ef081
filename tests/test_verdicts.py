"""The course's one verdict rule: paired t intervals from scipy, three outcomes, Holm for a pick among k."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from companion.experiments import verdicts as V

A = [0.90, 0.91, 0.92, 0.88, 0.95]
B = [0.80, 0.82, 0.81, 0.85, 0.79]


def test_paired_interval_is_scipys_ttest_rel_interval():
    r = V.paired(A, B)
    ref = stats.ttest_rel(A, B).confidence_interval()
    assert r["ci"] == pytest.approx([ref.low, ref.high], abs=1e-12)
    # reference values: mean difference 0.098, t(0.975, 4) = 2.776445, sd of differences 0.046583
    assert r["effect"] == pytest.approx(0.098)
    assert r["ci"] == pytest.approx([0.0401592446, 0.1558407554], abs=1e-9)
    assert (r["verdict"], r["held"], r["seeds"]) == ("supported", True, 5)


def test_three_outcomes():
    assert V.paired(B, A)["verdict"] == "contradicted"
    noisy = V.paired([1, 2, 3, 4, 5], [1.5, 1.0, 3.5, 3, 5.2])
    assert noisy["verdict"] == "inconclusive" and not noisy["held"]
    assert noisy["ci"][0] < 0 < noisy["ci"][1]
    # what would settle it: the detectable effect at n=5 and the seeds for the effect seen
    assert noisy["detectable"] == pytest.approx(V.detectable(noisy["sd"], 5))
    assert noisy["seeds_needed"] == V.seeds_needed(noisy["effect"], noisy["sd"])
    assert "not shown at this scale" in V.describe(noisy)


def test_claim_less_and_practical_margin():
    assert V.paired(B, A, claim="less")["verdict"] == "supported"
    # the interval [0.040, 0.156]: above a margin of 0.03, straddles 0.1, below 0.2
    assert V.paired(A, B, delta=0.03)["verdict"] == "supported"
    assert V.paired(A, B, delta=0.1)["verdict"] == "inconclusive"
    assert V.paired(A, B, delta=0.2)["verdict"] == "contradicted"


def test_power_reference_values():
    # paired two-sided t test, alpha 0.05, power 0.8: d = 0.5 needs 34 pairs (G*Power's table value), and five
    # pairs detect about 1.69 standard deviations
    assert V.seeds_needed(0.5, 1.0) == 34
    assert V.detectable(1.0, 5) == pytest.approx(1.682, abs=2e-3)
    assert V.detectable(2.0, 5) == pytest.approx(2 * V.detectable(1.0, 5))
    assert V._power(V.detectable(1.0, 8), 1.0, 8, 0.05) == pytest.approx(0.8, abs=1e-6)


def test_equivalence_needs_the_whole_interval_inside_the_band():
    a = [1.00, 1.01, 0.99, 1.00, 1.02]
    b = [1.00, 1.00, 1.00, 1.01, 1.01]
    assert V.equivalent(a, b, 0.05)["verdict"] == "supported"
    assert V.equivalent(a, b, 0.001)["verdict"] == "inconclusive"
    assert V.equivalent(A, B, 0.02)["verdict"] == "contradicted"  # [0.040, 0.156] lies wholly above +0.02


def test_one_sample_above_a_threshold():
    r = V.above([0.83, 0.85, 0.81, 0.86, 0.84], 0.8)
    ref = stats.ttest_1samp([0.83, 0.85, 0.81, 0.86, 0.84], 0.8).confidence_interval()
    assert r["ci"] == pytest.approx([ref.low - 0.8, ref.high - 0.8])
    assert r["verdict"] == "supported" and r["threshold"] == 0.8


def test_identical_differences_give_a_point_interval():
    r = V.paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert r["ci"] == [0.5, 0.5] and r["verdict"] == "supported"
    assert V.paired([1.0, 2.0], [1.0, 2.0])["verdict"] == "inconclusive"


def test_holm_steps_down_and_its_intervals_agree_with_its_verdicts():
    fam = V.holm({"clear": (A, B), "weak": ([1, 2, 3, 4, 5], [0.9, 1.7, 3.1, 3.8, 4.9])})
    assert fam["clear"]["level"] == pytest.approx(1 - 0.05 / 2) and fam["clear"]["family"] == 2
    for rec in fam.values():
        lo, hi = rec["ci"]
        assert (rec["verdict"] == "supported") == (lo > 0)
        assert (rec["verdict"] == "contradicted") == (hi < 0)
    # Holm rejects no less than Bonferroni: the first step uses alpha / k
    bonf = V.paired(A, B, level=1 - 0.05 / 2)
    assert fam["clear"]["ci"] == pytest.approx(bonf["ci"])


def test_best_of_corrects_for_the_options_it_picks_among():
    vals = {"a": [1, 2, 3, 4, 5.0], "b": [0, 1, 2, 3, 4.5], "c": [0.5, 1.8, 2.7, 3.9, 4.8]}
    pick = V.best_of(vals)
    assert pick["best"] == "a" and pick["decided"]
    assert {r["family"] for r in pick["versus"].values()} == {2}
    low = V.best_of({k: [-x for x in v] for k, v in vals.items()}, higher_is_better=False)
    assert low["best"] == "a" and low["decided"]


def test_combine_reports_a_part_whose_interval_matches_the_verdict():
    good, bad = V.paired(A, B), V.paired(B, A)
    wide = V.paired([1, 2, 3, 4, 5], [1.5, 1.0, 3.5, 3, 5.2])
    c = V.combine({"good": good, "bad": bad, "wide": wide})
    assert c["verdict"] == "contradicted" and c["weakest"] == "bad" and c["ci"][1] < 0
    c = V.combine({"good": good, "wide": wide})
    assert c["verdict"] == "inconclusive" and c["weakest"] == "wide"
    assert V.combine({"good": good})["verdict"] == "supported"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: V.paired([1, 2], [1]), "a and b must have one value per seed"),
        (lambda: V.paired([1], [0]), "at least 2 seeds"),
        (lambda: V.paired([1, math.nan], [0, 0]), "a must be a list of finite numbers"),
        (lambda: V.paired([1, 2], [0, 0], claim="bigger"), "claim must be"),
        (lambda: V.paired([1, 2], [0, 0], delta=-1), "delta must be"),
        (lambda: V.equivalent([1, 2], [0, 0], 0), "delta must be"),
        (lambda: V.best_of({"a": [1, 2]}), "at least two options"),
    ],
)
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)
pairs = st.integers(min_value=2, max_value=12).flatmap(
    lambda n: st.tuples(st.lists(finite, min_size=n, max_size=n), st.lists(finite, min_size=n, max_size=n))
)
SWAP = {"supported": "contradicted", "contradicted": "supported", "inconclusive": "inconclusive"}


@settings(max_examples=150, deadline=None)
@given(pairs)
def test_swapping_a_and_b_swaps_supported_and_contradicted(ab):
    a, b = ab
    assert V.paired(b, a)["verdict"] == SWAP[V.paired(a, b)["verdict"]]
    assert V.paired(a, b, claim="less")["verdict"] == SWAP[V.paired(a, b)["verdict"]]


@settings(max_examples=150, deadline=None)
@given(pairs, st.floats(min_value=-50, max_value=50, allow_nan=False))
def test_adding_a_constant_to_a_shifts_the_interval(ab, c):
    a, b = ab
    base, moved = V.paired(a, b), V.paired([x + c for x in a], b)
    scale = 1e-9 * (1 + max(map(abs, a + b)) + abs(c))
    assert moved["effect"] == pytest.approx(base["effect"] + c, abs=100 * scale)
    assert moved["ci"][0] == pytest.approx(base["ci"][0] + c, abs=1e-6 * (1 + base["sd"]) + 100 * scale)
    assert moved["ci"][1] == pytest.approx(base["ci"][1] + c, abs=1e-6 * (1 + base["sd"]) + 100 * scale)


@settings(max_examples=100, deadline=None)
@given(pairs)
def test_the_verdict_is_read_off_the_interval(ab):
    a, b = ab
    r = V.paired(a, b)
    lo, hi = r["ci"]
    assert r["verdict"] == ("supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive")
    assert lo <= r["effect"] <= hi
    assert np.isfinite(lo) and np.isfinite(hi)
