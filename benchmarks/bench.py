"""The course's benchmarks: every number is a ratio of two timings measured side by side in one run.

    python -m benchmarks.bench [--quick] [--only fit,aggregation,scores,batches] [--out DIR] [--repeats N]

Sections (each prints a table and lands in one JSON file, `<out>/bench.json`, written atomically):

- fit: `companion.fit` for one epoch vs a hand-written loop (same model, batches, optimiser; final weights compared).
- aggregation: one training step (forward, per-task losses, backward) with `GradAggregation(method, mode)` for
  every method, T = 2, 4, 8, 16 tasks, vs equal weighting (a plain backward of the mean loss), vs the former
  two-pass features mode, and vs torchjd on the same model and batch (params mode vs torchjd's
  `autojac.backward` + `jac_to_grad` over all parameters; features mode vs torchjd's `mtl_backward`, which
  aggregates the trunk's parameter Jacobian instead: the same cost class, not the same update).
- scores: LogME, H-score, LEEP, NCE, TransRate vs straightforward implementations of the papers' formulas
  (`benchmarks/references.py`) on 10k x 512 and 10k x 1280 features; the values must agree (max difference
  printed and stored).
- batches: one epoch of `TensorBatches` vs `DataLoader(TensorDataset)`.
- notebooks: each notebook's measured runtime, read from notebooks/runtimes.json (not re-run).

Timing: each repeat runs every variant once, in an order rotated from repeat to repeat (interleaved, so slow
phases of a shared machine hit all variants alike), after one warm-up round; a ratio is taken within each repeat
and summarised by its median and interquartile range. The torch thread count is stated in the output.
`--quick` uses tiny sizes and one repeat: the test suite runs it so the benchmark never rots (no timed
assertion anywhere).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench.py` as well as `python -m benchmarks.bench`
    sys.path.insert(0, str(ROOT))

from benchmarks import references  # noqa: E402
from companion import transferability as tr  # noqa: E402
from companion.aggregators import METHODS, aggregate, backward_features, task_gradients  # noqa: E402
from companion.balancers import GradAggregation  # noqa: E402
from companion.batches import TensorBatches  # noqa: E402
from companion.device import seed_everything  # noqa: E402
from companion.files import atomic_write  # noqa: E402
from companion.loop import StepContext  # noqa: E402
from companion.mtl import HardSharing, conv_tower, head  # noqa: E402
from companion.train import fit  # noqa: E402

SECTIONS = ("fit", "aggregation", "scores", "batches")
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------ timing
def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, `repeats` rounds after one warm-up round, order rotated per round."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            variants[name]()
            elapsed = time.perf_counter() - start
            if r > 0:
                times[name].append(elapsed)
    return times


def ratio(times: dict[str, list[float]], name: str, base: str) -> dict[str, float]:
    """Median and interquartile range of the per-round ratio time[name] / time[base]."""
    values = sorted(a / b for a, b in zip(times[name], times[base], strict=True))
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "rounds": len(values)}


def _fmt(r: dict[str, float]) -> str:
    return f"{r['median']:6.2f}x [{r['q1']:.2f}-{r['q3']:.2f}]"


def _table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title} (torch threads: {torch.get_num_threads()}; ratio median [interquartile range])")
    for row in [header, *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------------------------ fit
def _small_cnn(widths: list[int], classes: int) -> nn.Module:
    return nn.Sequential(
        *conv_tower(1, widths), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], classes)
    )


def bench_fit(quick: bool, repeats: int) -> dict:
    n, size, widths, batch = (96, 12, [4, 8], 32) if quick else (2048, 28, [16, 32], 64)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)
    finals: dict[str, nn.Module] = {}

    def with_fit():
        seed_everything(0)
        model = _small_cnn(widths, 10)
        fit(
            model, TensorBatches(x, y, batch, seed=0), epochs=1, lr=1e-3, seed=0, device="cpu", progress=False
        )
        finals["fit"] = model

    def by_hand():
        seed_everything(0)
        model = _small_cnn(widths, 10)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)  # fit's default
        model.train()
        for xb, yb in TensorBatches(x, y, batch, seed=0):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        finals["hand"] = model

    times = interleaved({"fit": with_fit, "hand": by_hand}, repeats)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(
            finals["fit"].state_dict().values(), finals["hand"].state_dict().values(), strict=True
        )
    )
    out = {"fit_vs_hand_loop": ratio(times, "fit", "hand"), "max_weight_difference": diff, "samples": n}
    _table(
        "fit vs a hand-written loop, one epoch",
        [("fit / hand loop", _fmt(out["fit_vs_hand_loop"]), f"{diff:.1e}")],
        ("", "ratio", "max |weight difference|"),
    )
    return out


# ------------------------------------------------------------------------------------------------ aggregation
def multitask_model(n_tasks: int, quick: bool) -> HardSharing:
    """The benchmark model: a small CNN trunk (conv-BN-ReLU-pool stages, global pooling) and T linear heads."""
    widths = [4, 8] if quick else [16, 32, 64]
    trunk = nn.Sequential(*conv_tower(1, widths), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return HardSharing(trunk, {f"t{i}": head("classification", widths[-1], 10) for i in range(n_tasks)})


def two_pass_features(model: HardSharing, losses: dict, method: str, seed: int) -> None:
    """The former features mode: backward of the mean loss (graph kept), then a second walk of the trunk."""
    (sum(losses.values()) / len(losses)).backward(retain_graph=True)
    G = task_gradients(losses, model.shared, mode="features").float()
    d = aggregate(G, method, seed=seed)
    backward_features(model.shared, d - G.mean(dim=0))


_TORCHJD = {
    "mean": "Mean",
    "sum": "Sum",
    "pcgrad": "PCGrad",
    "cagrad": "CAGrad",
    "mgda": "MGDA",
    "upgrad": "UPGrad",
    "imtl_g": "IMTLG",
}


def torchjd_aggregators() -> tuple[dict, dict[str, str]]:
    """torchjd's aggregator for each method it implements, and a reason for each it cannot run here."""
    try:
        from torchjd import aggregation
    except ImportError as err:
        return {}, dict.fromkeys(_TORCHJD, f"torchjd not importable ({err})")
    found, skipped = {}, {}
    for ours, theirs in _TORCHJD.items():
        try:
            agg = getattr(aggregation, theirs)(c=0.4) if ours == "cagrad" else getattr(aggregation, theirs)()
            agg(torch.randn(2, 5))  # UPGrad needs quadprog (via qpsolvers), CAGrad needs cvxpy
            found[ours] = agg
        except Exception as err:  # an optional solver missing: say which and go on
            skipped[ours] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return found, skipped


def aggregation_variants(T: int, quick: bool, batch: int, size: int, methods: list[str], jd: dict) -> dict:
    """One training step per variant on the same T-task model and batch: equal weighting, both modes of every
    method, the former two-pass features mode, and torchjd where it implements the method."""
    torch.manual_seed(T)
    model = multitask_model(T, quick)
    params = [p for p in model.parameters() if p.requires_grad]
    trunk = list(model.shared_parameters())
    g = torch.Generator().manual_seed(T)
    x = torch.randn(batch, 1, size, size, generator=g)
    y = {f"t{i}": torch.randint(0, 10, (batch,), generator=g) for i in range(T)}

    def step(fn):
        def run():
            model.zero_grad(set_to_none=True)
            out = model(x)
            fn({t: F.cross_entropy(out[t], y[t]) for t in y})

        return run

    def mean_backward(ls):
        (sum(ls.values()) / len(ls)).backward()

    def ours(bal):
        return lambda ls: bal.backward(ls, StepContext(model, 0, 0))

    def jd_params(agg):
        from torchjd.autojac import backward as jd_backward
        from torchjd.autojac import jac_to_grad

        def run(ls):
            jd_backward(list(ls.values()), inputs=params)
            jac_to_grad(params, agg)

        return run

    def jd_mtl(agg):
        from torchjd.autojac import jac_to_grad, mtl_backward

        def run(ls):
            mtl_backward(list(ls.values()), features=model.shared, shared_params=trunk)
            jac_to_grad(trunk, agg)

        return run

    variants = {"equal": step(mean_backward)}
    for m in methods:
        for mode in ("params", "features"):
            variants[f"{m}/{mode}"] = step(ours(GradAggregation(m, mode=mode, log_cosine=False)))
        variants[f"{m}/features-two-pass"] = step(lambda ls, m=m: two_pass_features(model, ls, m, 0))
        if m in jd:
            variants[f"{m}/torchjd-params"] = step(jd_params(jd[m]))
            variants[f"{m}/torchjd-mtl"] = step(jd_mtl(jd[m]))
    return variants


def bench_aggregation(quick: bool, repeats: int, tasks: list[int], methods: list[str]) -> dict:
    batch, size = (8, 12) if quick else (64, 28)
    jd, skipped = torchjd_aggregators()
    for m, why in skipped.items():
        print(f"torchjd {m}: skipped ({why})")
    result: dict = {"batch": batch, "image": [1, size, size], "torchjd_skipped": skipped, "T": {}}
    rows = []
    for T in tasks:
        times = interleaved(aggregation_variants(T, quick, batch, size, methods, jd), repeats)
        entry = {"seconds_equal": statistics.median(times["equal"])}
        for m in methods:
            e = {
                "params_vs_equal": ratio(times, f"{m}/params", "equal"),
                "features_vs_equal": ratio(times, f"{m}/features", "equal"),
                "two_pass_features_vs_equal": ratio(times, f"{m}/features-two-pass", "equal"),
                "features_vs_two_pass": ratio(times, f"{m}/features", f"{m}/features-two-pass"),
            }
            if m in jd:
                e["params_vs_torchjd"] = ratio(times, f"{m}/params", f"{m}/torchjd-params")
                e["features_vs_torchjd_mtl"] = ratio(times, f"{m}/features", f"{m}/torchjd-mtl")
            entry[m] = e
            rows.append(
                (
                    str(T),
                    m,
                    _fmt(e["params_vs_equal"]),
                    _fmt(e["features_vs_equal"]),
                    _fmt(e["two_pass_features_vs_equal"]),
                    _fmt(e["params_vs_torchjd"]) if m in jd else "skipped",
                    _fmt(e["features_vs_torchjd_mtl"]) if m in jd else "skipped",
                )
            )
        result["T"][str(T)] = entry
    _table(
        f"gradient aggregation, one step, batch {batch}: ratios to equal weighting and to torchjd "
        f"{_version('torchjd')}",
        rows,
        (
            "T",
            "method",
            "params/equal",
            "features/equal",
            "two-pass/equal",
            "params/torchjd",
            "features/torchjd-mtl",
        ),
    )
    return result


# ------------------------------------------------------------------------------------------------ scores
def score_inputs(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (10 classes 3 units apart along 10 axes), labels, and a softmax over d 'source classes'."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    f = rng.standard_normal((n, d))
    f[:, :10] += 3.0 * np.eye(10)[y]
    logits = 2.0 * f
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return f, y, probs


def score_pairs(f: np.ndarray, y: np.ndarray, probs: np.ndarray) -> dict[str, tuple[Callable, Callable]]:
    """(companion, reference) calls for each score on the same inputs."""
    hard = probs.argmax(axis=1)
    return {
        "logme": (lambda: tr.logme(f, y), lambda: references.logme(f, y)),
        "hscore": (lambda: tr.h_score(f, y), lambda: references.h_score(f, y)),
        "leep": (lambda: tr.leep(probs, y), lambda: references.leep(probs, y)),
        "nce": (lambda: tr.nce(hard, y), lambda: references.nce(hard, y)),
        "transrate": (lambda: tr.transrate(f, y), lambda: references.transrate(f, y)),
    }


def bench_scores(quick: bool, repeats: int) -> dict:
    shapes = [(400, 16), (400, 40)] if quick else [(10_000, 512), (10_000, 1280)]
    result, rows = {}, []
    for n, d in shapes:
        f, y, probs = score_inputs(n, d)
        entry = {}
        pairs = score_pairs(f, y, probs)
        for name, (ours, ref) in pairs.items():
            values = {}

            def timed(fn, key, values=values):
                def run():
                    values[key] = fn()

                return run

            times = interleaved(
                {"companion": timed(ours, "companion"), "reference": timed(ref, "reference")}, repeats
            )
            diff = abs(values["companion"] - values["reference"])
            entry[name] = {
                "companion_vs_reference": ratio(times, "companion", "reference"),
                "value": values["companion"],
                "reference_value": values["reference"],
                "abs_difference": diff,
            }
            rows.append(
                (
                    f"{n}x{d}",
                    name,
                    _fmt(entry[name]["companion_vs_reference"]),
                    f"{values['companion']:.6f}",
                    f"{diff:.1e}",
                )
            )
        result[f"{n}x{d}"] = entry
    _table(
        "transferability scores vs the papers' formulas done straightforwardly",
        rows,
        ("features", "score", "companion/reference", "value", "|difference|"),
    )
    return result


# ------------------------------------------------------------------------------------------------ batches
def bench_batches(quick: bool, repeats: int) -> dict:
    from torch.utils.data import DataLoader, TensorDataset

    n, batch = (256, 32) if quick else (10_000, 64)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    ours = TensorBatches(x, y, batch, seed=0)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0)
    )

    def epoch(batches):
        def run():
            total = 0
            for xb, _ in batches:
                total += len(xb)
            return total

        return run

    times = interleaved({"tensor_batches": epoch(ours), "dataloader": epoch(loader)}, repeats)
    out = {
        "tensor_batches_vs_dataloader": ratio(times, "tensor_batches", "dataloader"),
        "samples": n,
        "batch": batch,
    }
    _table(
        "one epoch of batches",
        [("TensorBatches / DataLoader(TensorDataset)", _fmt(out["tensor_batches_vs_dataloader"]))],
        ("", "ratio"),
    )
    return out


# ------------------------------------------------------------------------------------------------ notebooks
def notebook_runtimes(path: Path = ROOT / "notebooks" / "runtimes.json") -> dict:
    """The measured per-notebook runtimes the runner records (read, not re-run), and their total per device."""
    if not path.is_file():
        return {"missing": str(path)}
    data = json.loads(path.read_text())
    totals: dict[str, float] = {}
    for entry in data.values():
        for device, info in entry.items():
            if isinstance(info, dict) and isinstance(info.get("wall_s"), (int, float)):
                totals[device] = totals.get(device, 0.0) + float(info["wall_s"])
    rows = [
        (name, *(f"{dev}: {info.get('wall_s')} s" for dev, info in entry.items()))
        for name, entry in data.items()
    ]
    width = max(len(r) for r in rows) if rows else 1
    _table(
        "notebook runtimes (notebooks/runtimes.json)",
        [r + ("",) * (width - len(r)) for r in rows],
        ("notebook", *[""] * (width - 1)),
    )
    print("  total: " + ", ".join(f"{dev} {t:.0f} s" for dev, t in totals.items()))
    return {"notebooks": data, "total_wall_s": totals}


# ------------------------------------------------------------------------------------------------ main
def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise SystemExit(f"{name} must be a comma-separated list of positive ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{name} must be a comma-separated list of positive ints, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (what the tests run)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument(
        "--out", default=str(RESULTS), help="folder for bench.json (default benchmarks/results)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per comparison (default 7, quick 1)"
    )
    parser.add_argument(
        "--tasks", default=None, help="task counts for the aggregation section (default 2,4,8,16)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="aggregation methods to time")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--only must name sections of {SECTIONS}, got {unknown}")
    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - set(METHODS):
        raise SystemExit(f"--methods must name methods of {METHODS}, got {args.methods!r}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    if repeats < 1:
        raise SystemExit(f"--repeats must be a positive int, got {repeats}")
    tasks = _int_list(args.tasks, "--tasks") if args.tasks else ([2, 3] if args.quick else [2, 4, 8, 16])
    torch.manual_seed(0)
    result: dict = {
        "meta": {
            "quick": args.quick,
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {p: _version(p) for p in ("torch", "numpy", "scipy", "torchjd", "quadprog", "cvxpy")},
        }
    }
    print(
        f"benchmarks: torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
        f"{'quick' if args.quick else 'full'} sizes, {repeats} timed round(s) per comparison"
    )
    if "fit" in sections:
        result["fit"] = bench_fit(args.quick, repeats)
    if "aggregation" in sections:
        result["aggregation"] = bench_aggregation(args.quick, repeats, tasks, methods)
    if "scores" in sections:
        result["scores"] = bench_scores(args.quick, repeats)
    if "batches" in sections:
        result["batches"] = bench_batches(args.quick, repeats)
    result["notebook_runtimes"] = notebook_runtimes()
    path = Path(args.out) / "bench.json"
    atomic_write(path, lambda f: f.write(json.dumps(result, indent=1, default=_plain).encode()))
    print(f"\nwrote {path}")
    return result


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
