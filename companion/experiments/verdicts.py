"""Verdicts that tell an effect from noise: paired confidence intervals and three outcomes.

Every comparison in the course is judged here, from per-seed values paired by seed (same split, initialisation
and data order for both methods where the method allows):

- the **effect** is the mean paired difference A - B, and its 95 % **confidence interval** is Student's t interval
  on the paired differences, taken from `scipy.stats.ttest_rel(...).confidence_interval()`;
- the **verdict** is one of three outcomes: `supported` (the interval lies wholly on the claimed side of the
  threshold: zero, or a stated practical margin), `contradicted` (wholly on the other side) or `inconclusive`
  (the interval straddles it: "not shown at this scale", never "false");
- an inconclusive verdict says what would settle it: the smallest effect this design detects with 80 % power
  (`detectable`), and about how many seeds would detect the effect that was seen (`seeds_needed`).

A claim of "no difference" is an equivalence claim (`equivalent`): supported only when the whole interval lies
inside a stated band of +-delta. A pick among k options (`best_of`) corrects its k - 1 comparisons with Holm's
step-down rule, using intervals at the level of each step, so an interval and its verdict always agree.

Why paired intervals and not "better at every seed": Bouthillier et al. (2021, MLSys) show how much of a
benchmark's variance comes from seeds and data order; Agarwal et al. (2021, NeurIPS) argue for intervals over
point estimates when runs are few.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize, stats

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed answers "more than this" beyond it
WORDS = {SUPPORTED: "supported", CONTRADICTED: "contradicted", INCONCLUSIVE: "not shown at this scale"}


def _values(name: str, values) -> np.ndarray:
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be a list of finite numbers, one per seed, got {list(values)!r}")
    return v


def _pair(a, b) -> np.ndarray:
    a, b = _values("a", a), _values("b", b)
    if len(a) != len(b):
        raise ValueError(f"a and b must have one value per seed each, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a and b need at least 2 seeds for an interval, got {len(a)}")
    return a - b


def _interval(diffs: np.ndarray, level: float) -> tuple[float, float]:
    """Student's t interval of the mean of `diffs` (scipy.stats.ttest_1samp; identical to ttest_rel's on a - b).

    When every difference is the same number the interval is that point (scipy returns nan there): the
    difference did not vary from seed to seed.
    """
    if np.ptp(diffs) == 0:
        return float(diffs[0]), float(diffs[0])
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(level)
    return float(ci.low), float(ci.high)


def _power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t test at `alpha` to detect `effect` (noncentral t)."""
    if sd == 0:
        return 1.0 if effect else alpha
    df, nc = n - 1, abs(effect) * math.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    # scipy's noncentral t returns nan far in its tail (one degree of freedom, a large noncentrality)
    return power if math.isfinite(power) else float(nc > crit)


def detectable(sd: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest paired effect that n seeds detect with probability `power` (two-sided t test at `alpha`),
    given the seed-to-seed standard deviation `sd` of the differences; 0 when the differences do not vary."""
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if sd <= 0:
        return 0.0
    hi = sd
    while _power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda e: _power(e, sd, n, alpha) - power, 0.0, hi, xtol=1e-10 * sd))


def seeds_needed(effect: float, sd: float, *, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """About how many seeds detect `effect` with probability `power`, if the differences keep the spread `sd`:
    the smallest n with enough power, or None when that is more than MAX_SEEDS (or the effect is zero)."""
    if sd <= 0:
        return 2 if effect else None
    if effect == 0:
        return None
    if _power(effect, sd, MAX_SEEDS, alpha) < power:
        return None
    lo, hi = 1, MAX_SEEDS  # power grows with n: bisect for the smallest n with enough power
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _power(effect, sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def _record(diffs: np.ndarray, low: float, high: float, verdict: str, **extra) -> dict:
    n, sd = len(diffs), float(np.std(diffs, ddof=1))
    effect = float(np.mean(diffs))
    out = {
        "verdict": verdict,
        "held": verdict == SUPPORTED,
        "effect": effect,
        "ci": [low, high],
        "seeds": n,
        "sd": sd,
        "diffs": [float(d) for d in diffs],
        **extra,
    }
    if verdict == INCONCLUSIVE:
        alpha = 1 - extra.get("level", 1 - ALPHA)
        out["detectable"] = detectable(sd, n, alpha=alpha)
        out["seeds_needed"] = seeds_needed(effect, sd, alpha=alpha)
    return out


def _side(low: float, high: float, threshold: float, claim: str) -> str:
    if claim == "greater":
        return SUPPORTED if low > threshold else CONTRADICTED if high < threshold else INCONCLUSIVE
    return SUPPORTED if high < threshold else CONTRADICTED if low > threshold else INCONCLUSIVE


def paired(a, b, *, claim: str = "greater", delta: float = 0.0, level: float = 1 - ALPHA) -> dict:
    """Judge the claim "A is greater than B" (claim="greater") or "A is less than B" (claim="less") from values
    paired by seed.

    `delta` >= 0 is a practical margin: the claim becomes "A exceeds B by more than delta" (or "falls short of it
    by more than delta"), and the verdict compares the interval with +delta (or -delta) instead of zero.
    Returns {"verdict", "held" (supported), "effect" (mean of a - b), "ci" [low, high], "seeds", "sd", "diffs",
    "claim", "delta", "level"} and, when inconclusive, "detectable" and "seeds_needed".
    """
    if claim not in ("greater", "less"):
        raise ValueError(f"claim must be 'greater' or 'less', got {claim!r}")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
        raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    diffs = _pair(a, b)
    low, high = _interval(diffs, level)
    threshold = delta if claim == "greater" else -delta
    return _record(
        diffs, low, high, _side(low, high, threshold, claim), claim=claim, delta=float(delta), level=level
    )


def above(values, threshold: float, *, claim: str = "greater", level: float = 1 - ALPHA) -> dict:
    """Judge "the per-seed values lie above `threshold` on average" (claim="less": below it): a one-sample
    interval of the values minus the threshold (scipy.stats.ttest_1samp). Same record as `paired`."""
    v = _values("values", values)
    return paired(v, np.full_like(v, float(threshold)), claim=claim, level=level) | {"threshold": threshold}


def fixed(value: float, threshold: float = 0.0, *, claim: str = "greater") -> dict:
    """Judge a measurement that has no seed-to-seed spread (a seedless optimisation on a fixed function): the
    interval is the point itself, the verdict says which side of `threshold` it lies on (never inconclusive;
    equal to the threshold is contradicted). Same record as `paired`, with seeds = 1."""
    if claim not in ("greater", "less"):
        raise ValueError(f"claim must be 'greater' or 'less', got {claim!r}")
    effect = float(value) - float(threshold)
    if not math.isfinite(effect):
        raise ValueError(f"value and threshold must be finite numbers, got {value!r} and {threshold!r}")
    ok = effect > 0 if claim == "greater" else effect < 0
    verdict = SUPPORTED if ok else CONTRADICTED
    return {
        "verdict": verdict,
        "held": ok,
        "effect": effect,
        "ci": [effect, effect],
        "seeds": 1,
        "sd": 0.0,
        "diffs": [effect],
        "claim": claim,
        "delta": 0.0,
        "level": 1 - ALPHA,
        "threshold": float(threshold),
    }


def equivalent(a, b, delta: float, *, level: float = 1 - ALPHA) -> dict:
    """Judge "A and B do not differ by more than delta": supported when the whole interval of the paired
    difference lies inside (-delta, +delta), contradicted when it lies wholly outside [-delta, +delta],
    inconclusive otherwise. A 95 % interval inside the band is stricter than the two one-sided tests at 5 %."""
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
    diffs = _pair(a, b)
    low, high = _interval(diffs, level)
    if -delta < low and high < delta:
        verdict = SUPPORTED
    elif low > delta or high < -delta:
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    return _record(diffs, low, high, verdict, claim="equivalent", delta=float(delta), level=level)


def _p_value(diffs: np.ndarray) -> float:
    if np.ptp(diffs) == 0:
        return 0.0 if diffs[0] else 1.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(
    comparisons: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, claim: str = "greater"
) -> dict:
    """Judge a family of k paired claims "A_i is greater (less) than B_i" together, with Holm's step-down
    correction: sorted by p value, the i-th comparison (from 0) is tested at alpha / (k - i) until one fails;
    that one and every later comparison are judged at the level where the procedure stopped. Each interval is
    reported at the level it was judged at, so intervals and verdicts agree.

    `comparisons` maps a name to (a, b). Returns {name: the `paired` record, plus "p" and "family": k}.
    """
    if not comparisons:
        raise ValueError("comparisons must name at least one pair, got none")
    diffs = {name: _pair(a, b) for name, (a, b) in comparisons.items()}
    k = len(diffs)
    order = sorted(diffs, key=lambda name: _p_value(diffs[name]))
    out, stopped_at = {}, None
    for i, name in enumerate(order):
        step = i if stopped_at is None else stopped_at
        level = 1 - ALPHA / (k - step)
        a, b = comparisons[name]
        rec = paired(a, b, claim=claim, level=level)
        if stopped_at is None and rec["verdict"] == INCONCLUSIVE:
            stopped_at = i
        out[name] = rec | {"p": _p_value(diffs[name]), "family": k}
    return {name: out[name] for name in comparisons}


def best_of(values: Mapping[str, Sequence[float]], *, higher_is_better: bool = True) -> dict:
    """Pick the best of k options by mean and judge it against each of the k - 1 others (Holm-corrected).

    Returns {"best", "decided" (the best is supported against every other option), "versus": {other: record}}.
    Options are paired by seed: every list must have one value per seed, in the same seed order.
    """
    if len(values) < 2:
        raise ValueError(f"values must name at least two options, got {list(values)}")
    sign = 1 if higher_is_better else -1
    best = max(values, key=lambda name: sign * float(np.mean(_values(name, values[name]))))
    claim = "greater" if higher_is_better else "less"
    versus = holm({o: (values[best], values[o]) for o in values if o != best}, claim=claim)
    return {"best": best, "decided": all(r["held"] for r in versus.values()), "versus": versus}


def fmt(x: float) -> str:
    """A number for a verdict line: three significant decimals, or fewer for large values."""
    return f"{x:+.3f}" if abs(x) < 100 else f"{x:+.1f}"


def describe(record: Mapping) -> str:
    """One line for a verdict record: the outcome, the effect and its interval, the seeds; for an inconclusive
    verdict also the smallest detectable effect and the seeds that would detect the effect seen."""
    low, high = record["ci"]
    level = round(100 * record.get("level", 1 - ALPHA), 1)
    if record["seeds"] == 1:
        return f"{WORDS[record['verdict']]}: {fmt(record['effect'])}, deterministic (no seed-to-seed spread)"
    line = (
        f"{WORDS[record['verdict']]}: effect {fmt(record['effect'])}, {level:g}% CI "
        f"[{fmt(low)}, {fmt(high)}], {record['seeds']} seeds"
    )
    if record.get("family", 1) > 1:
        line += f" (Holm over {record['family']} comparisons)"
    if record["verdict"] == INCONCLUSIVE and "detectable" in record:
        need = record.get("seeds_needed")
        line += f"; detectable at this scale: {abs(record['detectable']):.3g}; " + (
            f"about {need} seeds would detect {fmt(record['effect'])}"
            if need
            else f"more than {MAX_SEEDS} seeds would be needed for {fmt(record['effect'])}"
        )
    return line


def combine(records: Mapping[str, Mapping]) -> dict:
    """One verdict for a claim made of several comparisons that must all hold ("A beats B at every size"):
    supported when every part is supported, contradicted when any part is contradicted, else inconclusive.
    The effect, interval and seeds reported are those of the weakest part (the lowest lower bound relative to
    its threshold). Correct the parts for multiplicity first (`holm`) when the claim is "at least one"."""
    if not records:
        raise ValueError("records must name at least one comparison, got none")
    verdicts = [r["verdict"] for r in records.values()]
    verdict = (
        SUPPORTED
        if all(v == SUPPORTED for v in verdicts)
        else CONTRADICTED
        if CONTRADICTED in verdicts
        else INCONCLUSIVE
    )

    def slack(r: Mapping) -> float:
        threshold = r.get("delta", 0.0)
        if r.get("claim") == "less":
            return -threshold - r["ci"][1]
        if r.get("claim") == "equivalent":
            return min(threshold + r["ci"][0], threshold - r["ci"][1])
        return r["ci"][0] - threshold

    pool = [k for k, r in records.items() if verdict == SUPPORTED or r["verdict"] == verdict]
    name = min(pool, key=lambda k: slack(records[k]))
    weakest = dict(records[name])
    return weakest | {
        "verdict": verdict,
        "held": verdict == SUPPORTED,
        "weakest": name,
        "parts": dict(records),
    }
