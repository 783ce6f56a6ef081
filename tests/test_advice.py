"""advise, the decision map and the cost table (notebook 11)."""

from __future__ import annotations

import pytest

from companion.advice import SMALL, Recommendation, advise, decision_map, map_summary


def _map(probe=(0.6, 0.62, 0.61), alone=(0.3, 0.31, 0.29), mtl=(0.59, 0.63, 0.6)):
    """A hand-made sweep result: one synthetic column (r=1), one row (1 per class), three seeds."""
    cell = {
        m: {"target": list(v), "source": [0.9, 0.9, 0.9]}
        for m, v in {
            "alone": alone,
            "probe": probe,
            "finetune": alone,
            "mtl": mtl,
            "pretrain_mtl": alone,
        }.items()
    }
    cell["finetune"]["source"] = [0.4, 0.4, 0.4]
    return {
        "columns": [{"name": "r=1", "relatedness": 1.0}],
        "per_class": [1],
        "seeds": [0, 1, 2],
        "methods": ["alone", "probe", "finetune", "mtl", "pretrain_mtl"],
        "scores": {"r=1": {"1": cell}},
    }


def test_decision_map_winner_margin_and_tie():
    cell = decision_map(_map(), available=False)[0][0]
    assert cell["winner"] == "probe" and cell["runner_up"] == "alone" and not cell["tie"]
    assert cell["margin"] == pytest.approx(0.61 - 0.30)
    both = decision_map(_map(), available=True)[0][0]  # probe vs mtl: 0.61 vs 0.6066..., within seed noise
    assert both["winner"] == "probe" and both["runner_up"] == "mtl" and both["tie"]
    assert both["margin"] == pytest.approx((0.01 - 0.01 + 0.01) / 3)
    s = map_summary(_map())
    assert s["no_labels_together/target"]["winner"] == [["probe"]]
    assert s["labels_together/both"]["tie"] == [[True]]


def test_rules_clear_cases():
    common = {"source_examples": 10_000}
    assert advise(target_per_class=2, labels_together=False, relatedness=0.9, **common).approach == "probe"
    assert (
        advise(target_per_class=20, labels_together=False, relatedness=0.9, **common).approach == "finetune"
    )
    assert advise(target_per_class=20, labels_together=False, relatedness=0.1, **common).approach == "alone"
    assert (
        advise(
            target_per_class=500, labels_together=True, relatedness=0.8, source_must_work=True, **common
        ).approach
        == "pretrain_mtl"
    )
    assert (
        advise(
            target_per_class=500,
            labels_together=True,
            relatedness=0.8,
            source_must_work=True,
            compute="low",
            **common,
        ).approach
        == "mtl"
    )
    assert (
        advise(target_per_class=5, source_examples=0, labels_together=False, relatedness=1.0).approach
        == "alone"
    )


def test_rules_boundaries():
    kw = {"source_examples": 1000, "labels_together": False}
    assert advise(target_per_class=10, relatedness=0.5, **kw).approach == "finetune"  # 0.5 counts as related
    assert advise(target_per_class=10, relatedness=0.4999, **kw).approach == "alone"
    assert advise(target_per_class=4, relatedness=0.5, **kw).approach == "probe"
    assert advise(target_per_class=5, relatedness=0.5, **kw).approach == "finetune"
    assert advise(target_per_class=SMALL - 1, relatedness=1.0, compute="low", **kw).approach == "probe"
    assert advise(target_per_class=SMALL, relatedness=1.0, compute="low", **kw).approach == "finetune"
    assert advise(target_per_class=10, logme_gain=0.0, **kw).approach == "alone"
    assert advise(target_per_class=10, logme_gain=0.01, **kw).approach == "finetune"


def test_map_backs_or_overrides_the_rule():
    rec = advise(
        target_per_class=1, source_examples=1000, labels_together=False, relatedness=1.0, measurements=_map()
    )
    assert rec.approach == "probe" and rec.backed_by_measurements
    ev = [e for e in rec.evidence if e]
    assert ev[0]["winner"] == "probe" and ev[0]["margin_points"] == pytest.approx(31.0) and not ev[0]["tie"]
    # The rule says fine-tune for 20 per class; the nearest cell (1 per class) has probe as a clear winner.
    over = advise(
        target_per_class=20,
        source_examples=1000,
        labels_together=False,
        relatedness=0.9,
        measurements=_map(),
        compute="high",
    )
    assert over.approach == "probe" and "disagrees" in " ".join(over.reasons)
    plain = advise(target_per_class=1, source_examples=1000, labels_together=False, relatedness=1.0)
    assert isinstance(plain, Recommendation) and not plain.backed_by_measurements
    assert "No measurements back this advice" in str(plain)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"target_per_class": 0}, "target_per_class"),
        ({"target_per_class": 2.5}, "target_per_class"),
        ({"source_examples": -1}, "source_examples"),
        ({"labels_together": "yes"}, "labels_together"),
        ({"relatedness": 1.5}, "relatedness"),
        ({"relatedness": None}, "relatedness"),
        ({"logme_gain": 0.3}, "relatedness"),
        ({"relatedness": None, "logme_gain": float("nan")}, "logme_gain"),
        ({"compute": "lots"}, "compute"),
        ({"measurements": {"x": 1}}, "measurements"),
    ],
)
def test_nonsense_is_refused_in_one_line(kw, name):
    args = {"target_per_class": 5, "source_examples": 100, "labels_together": False, "relatedness": 0.5, **kw}
    with pytest.raises(ValueError, match=name) as err:
        advise(**args)
    assert "\n" not in str(err.value)


def test_cost_table_counts():
    from companion.advice import cost_table, synthetic_pair

    pair = synthetic_pair(1.0, seed=0, n_source=50, n_pool=40, n_val=2, n_test=10, size=8)
    data = {"steps": 10, "source_steps": 20, "hidden": [16]}
    rows = {r["approach"]: r for r in cost_table(data, pair, 3)}
    trunk, head = 3 * 8 * 8 * 16 + 16, 16 * 4 + 4  # Linear(192, 16) and Linear(16, 4)
    assert {r["steps"] for r in rows.values()} == {30}
    assert rows["multi-task"]["batches"] == 60 and rows["pretrain, then multi-task"]["batches"] == 40
    assert rows["multi-task"]["params_to_serve_both_tasks"] == trunk + 2 * head
    assert rows["transfer: fine-tune"]["params_to_serve_both_tasks"] == 2 * (trunk + head)
    assert rows["transfer: probe"]["trained_params_last_phase"] == head
    assert rows["target alone"]["source_labels"] == 50 and rows["target alone"]["target_labels"] == 12
