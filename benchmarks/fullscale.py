"""How long the whole course takes at full scale: an estimate from the measured quick-scale CPU cost.

    python -m benchmarks.fullscale [--out DIR] [--budget-s 600]

No machine here has a GPU and a full-scale CPU run takes many hours, so the full-scale runtime is estimated:

1. **Measured:** each code cell's duration in the committed notebooks (papermill records it when the runner
   executes them at quick scale on a 2-core CPU), scaled by the run's CPU time over its wall time when the
   machine was busier than its cores (notebooks/runtimes.json).
2. **Scaled, within two bounds:** a cell's cost grows with the scale parameters it depends on. The *low* bound
   counts only the parameters a cell names itself (`cfg.N_TRAIN`); the *high* bound also counts those reaching
   it through variables computed in earlier statements (found by walking the notebook's syntax trees statement by
   statement). A cell's factor is the product of the full/quick ratios of its parameters (squared for an image
   side, `*IMAGE_SIZE`); evaluation-only sizes (test and validation sets) are left out, since they add to a cell's
   cost rather than multiply it. The low bound misses data sized in an earlier cell; the high bound multiplies
   work that adds up (a model trained earlier with more epochs costs nothing more to use). The truth lies between.
3. **A GPU step from the CPU one:** small models in eager PyTorch are bound by kernel launches on a GPU, not by
   arithmetic. One training step of the course's standard model is measured here on the CPU (time, top-level
   aten operations, FLOPs); on a GPU the same step takes at least `ops x LAUNCH_S` and at least
   `FLOPs / GPU_FLOPS`. The speed-up S = CPU step / that GPU step divides both CPU estimates.

The assumptions (LAUNCH_S, GPU_FLOPS) are stated in the output and the JSON; the result is an estimate, never a
measurement: one full-scale notebook run on a GPU (`python -m companion run NB --scale full`) replaces it. It lands in `<out>/fullscale.json` (atomic).
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from companion.files import atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NOTEBOOKS = ROOT / "notebooks"
LAUNCH_S = 15e-6  # assumed cost of one eager op on a GPU (launch + dispatch), typical 5-20 us
GPU_FLOPS = (
    50e12  # assumed sustained fp32/TF32 throughput of one modern data-centre GPU on small convolutions
)
EVAL_ONLY = ("N_TEST", "VAL_SIZE", "N_VAL", "TEST_PER_CLASS", "VAL_PER_CLASS", "N_MAP")


def setup_defaults(cells: list[str], keyword: str = "defaults") -> dict[str, tuple[float, float]]:
    """The `defaults={NAME: (quick, full)}` (or `bounds={NAME: (low, high)}`) given to `setup(...)` in a notebook."""
    for source in cells:
        if "setup(" not in source:
            continue
        for node in ast.walk(_parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
                for kw in node.keywords:
                    if kw.arg == keyword:
                        return {k: tuple(v) for k, v in ast.literal_eval(kw.value).items()}
    return {}


def _parse(source: str) -> ast.Module:
    lines = [
        line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
    ]  # IPython magics
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


def _loads(node: ast.AST) -> set[str]:
    """Names a statement reads, `cfg.NAME` counted as NAME (the bare `cfg` is not) and `SEEDS`, the seed list
    every notebook builds from N_SEEDS, also as N_SEEDS."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id != "cfg":
            out.add(sub.id)  # `cfg` itself carries every parameter: only its attributes count
            if sub.id == "SEEDS":
                out.add("N_SEEDS")
        elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "cfg":
            out.add(sub.attr)
    return out


def _stores(node: ast.AST) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            out.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            out.add(sub.name)
    return out


def cell_dependencies(
    cells: list[str], params: set[str], *, through_variables: bool = True
) -> list[set[str]]:
    """For each cell, the scale parameters its code names, and with `through_variables` also those reaching it
    through variables assigned from them in earlier statements (the high bound's dependencies)."""
    deps: dict[str, set[str]] = {}
    result = []
    for source in cells:
        cell_deps: set[str] = set()
        # the parameters cell hands every parameter to setup and trains nothing: its variables are followed
        # (e.g. SEEDS from cfg.N_SEEDS), its own cost is not scaled
        parameters_cell = "setup(" in source
        for stmt in _parse(source).body:
            needed = set()
            for name in _loads(stmt):
                if name in params:
                    needed.add(name)
                elif through_variables:
                    needed |= deps.get(name, set())
            for name in _stores(stmt):
                deps[name] = (
                    (deps.get(name, set()) | needed) if isinstance(stmt, ast.AugAssign) else set(needed)
                )
            cell_deps |= needed
        result.append(set() if parameters_cell else cell_deps)
    return result


def factor(deps: set[str], defaults: dict[str, tuple[float, float]]) -> float:
    """Full/quick cost ratio of a cell: product of the ratios of the work parameters it depends on."""
    f = 1.0
    for name in deps:
        if name not in defaults or name in EVAL_ONLY:
            continue
        quick, full = defaults[name]
        if not (isinstance(quick, (int, float)) and isinstance(full, (int, float)) and quick > 0):
            continue
        f *= (full / quick) ** (2 if name.endswith("IMAGE_SIZE") else 1)
    return f


def sequential_factor(stem: str, runtimes: dict) -> float:
    """cpu_s / wall_s of a notebook's recorded quick run: the CPU seconds behind each wall second of its cells.

    Above 1 where seeds and rates ran in worker processes side by side; below 1 where the machine was shared with
    other work (the cells waited). On a GPU the runs go one by one (`protocol.seed_workers`), so the CPU seconds,
    not the wall seconds, are what a full-scale run scales up. The runner records both (notebooks/runtimes.json).
    """
    run = runtimes.get(stem, {}).get("cpu") or {}
    if run.get("wall_s") and run.get("cpu_s"):
        return run["cpu_s"] / run["wall_s"]
    return 1.0


def notebook_estimate(path: Path, runtimes: dict | None = None, full: dict | None = None) -> dict:
    """Quick-scale measured CPU seconds of one committed notebook and its full-scale CPU estimate (low and high).

    Cell durations are scaled by `sequential_factor` when `runtimes` (notebooks/runtimes.json) has the run;
    `full` {NAME: value} replaces full-scale defaults (e.g. more seeds) before the cells are scaled.
    """
    nb = json.loads(path.read_text())
    busy = sequential_factor(path.stem, runtimes or {})
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    sources = ["".join(c["source"]) for c in code]
    defaults = setup_defaults(sources)
    defaults |= {k: (defaults[k][0], v) for k, v in (full or {}).items() if k in defaults}
    low = cell_dependencies(sources, set(defaults), through_variables=False)
    high = cell_dependencies(sources, set(defaults))
    row = {
        "quick_cpu_s": 0.0,
        "full_cpu_s": {"low": 0.0, "high": 0.0},
        "defaults": {k: list(v) for k, v in defaults.items()},
        "heavy_cells": [],
    }
    for i, (cell, d_low, d_high) in enumerate(zip(code, low, high, strict=True)):
        seconds = busy * float(cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0)
        f_low, f_high = factor(d_low, defaults), factor(d_high, defaults)
        row["quick_cpu_s"] += seconds
        row["full_cpu_s"]["low"] += seconds * f_low
        row["full_cpu_s"]["high"] += seconds * f_high
        if seconds >= 1.0:
            row["heavy_cells"].append(
                {
                    "code_cell": i,
                    "quick_s": round(seconds, 2),
                    "factor_low": round(f_low, 2),
                    "factor_high": round(f_high, 2),
                    "names": sorted(d_low & set(defaults)),
                    "reached": sorted((d_high - d_low) & set(defaults)),
                }
            )
    return row


def seeds_called_for(claims: list[dict], cap: int) -> dict:
    """The seeds a notebook's inconclusive claims call for: per claim, the most `seeds_needed` among its
    inconclusive comparisons (its parts, for a claim made of several), i.e. about how many paired seeds would
    detect the effect seen at quick scale (80 % power). Returns {"wanted": the most of those within `cap` (None
    if none), "claims": {short: seeds or None}, "beyond": the claims that need more than `cap` (None: beyond
    `verdicts.MAX_SEEDS`), which no affordable seed count settles}."""
    wanted, per_claim, beyond = None, {}, []
    for claim in claims:
        if claim.get("verdict") != "inconclusive":
            continue
        record = (claim.get("measured") or {}).get("verdict") or {}
        parts = [r for r in (record.get("parts") or {}).values() if r.get("verdict") == "inconclusive"] or [
            record
        ]
        needs = [r.get("seeds_needed") for r in parts if "detectable" in r]
        if not needs:  # a claim without an interval (e.g. deterministic): more seeds settle nothing
            continue
        need = None if None in needs else max(needs)
        name = claim.get("short") or claim.get("claim", "")[:60]
        per_claim[name] = need
        if need is None or need > cap:
            beyond.append(name)
        else:
            wanted = max(wanted or 0, need)
    return {"wanted": wanted, "claims": per_claim, "beyond": beyond}


def cpu_step(repeats: int = 7, batch: int = 64, size: int = 28) -> dict:
    """One AdamW training step of the course's standard model on this CPU: seconds (median), aten ops, FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from companion.models import backbone

    torch.manual_seed(0)
    model = backbone("course_cnn_s", in_chans=1, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    ops = sum(
        1
        for e in prof.events()  # top-level aten calls: each launches at least one kernel on a GPU
        if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
    )
    with FlopCounterMode(display=False) as counter:
        step()
    return {
        "batch": batch,
        "image": [1, size, size],
        "model": "course_cnn_s",
        "seconds": statistics.median(times),
        "aten_ops": ops,
        "flops": counter.get_total_flops(),
        "threads": torch.get_num_threads(),
    }


def speedup(step: dict) -> dict:
    """The GPU/CPU speed ratio modelled from the measured CPU step and the stated assumptions."""
    launch = step["aten_ops"] * LAUNCH_S
    compute = step["flops"] / GPU_FLOPS
    gpu = max(launch, compute)
    return {
        "value": step["seconds"] / gpu,
        "how": "CPU step / max(ops x LAUNCH_S, FLOPs / GPU_FLOPS)",
        "gpu_step_s": gpu,
        "launch_bound_s": launch,
        "compute_bound_s": compute,
        "assumptions": {"LAUNCH_S": LAUNCH_S, "GPU_FLOPS": GPU_FLOPS},
    }


def size_seeds(
    paths: list[Path], rows: dict, runtimes: dict, speed: float, budget_s: float, max_seeds: int
) -> dict:
    """Full-scale seeds per notebook; each row with N_SEEDS gains "sizing" {full_seeds, called_for, seeds,
    full_gpu_s}. Returns the course's sized GPU estimate {"low", "high"} in seconds.

    First the seeds the inconclusive claims call for (`seeds_called_for`, at least the full default). Then the
    rest of the budget: a notebook with an inconclusive claim still out of reach goes up to `max_seeds` (or its
    N_SEEDS bound), the cheapest extra seed first, while the course's high estimate stays within `budget_s`.
    """

    def gpu(path: Path, seeds: int) -> dict:
        cpu = notebook_estimate(path, runtimes, {"N_SEEDS": seeds})["full_cpu_s"]
        return {k: v / speed for k, v in cpu.items()}

    def total() -> dict:
        return {k: sum(r.get("sizing", r)["full_gpu_s"][k] for r in rows.values()) for k in ("low", "high")}

    caps = {}
    for p in paths:
        row = rows[p.stem]
        if "N_SEEDS" not in row["defaults"]:
            continue
        full_seeds = int(row["defaults"]["N_SEEDS"][1])
        results = p.parent / "results" / f"{p.stem}.json"
        claims = json.loads(results.read_text()).get("claims", []) if results.exists() else []
        bound = setup_defaults(_code_sources(p), "bounds").get("N_SEEDS", (0, max_seeds))[1]
        caps[p.stem] = min(max_seeds, int(bound))
        called = seeds_called_for(claims, caps[p.stem])
        seeds = max(full_seeds, called["wanted"] or 0)
        row["sizing"] = {
            "full_seeds": full_seeds,
            "called_for": called,
            "seeds": seeds,
            "full_gpu_s": gpu(p, seeds),
        }
    by_name = {p.stem: p for p in paths}
    still_open = [
        n for n in caps if rows[n]["sizing"]["called_for"]["beyond"] and rows[n]["sizing"]["seeds"] < caps[n]
    ]
    for name in sorted(
        still_open, key=lambda n: rows[n]["sizing"]["full_gpu_s"]["high"] / rows[n]["sizing"]["seeds"]
    ):
        z, more = rows[name]["sizing"], gpu(by_name[name], caps[name])
        if total()["high"] - z["full_gpu_s"]["high"] + more["high"] <= budget_s:
            z.update(seeds=caps[name], full_gpu_s=more)
    return total()


def _code_sources(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _totals(rows: dict, speed: float) -> dict:
    """Sums over the notebooks; each row gains its full-scale GPU estimate (CPU estimate / speed-up)."""
    total = {
        "quick_cpu_s": 0.0,
        "full_cpu_s": {"low": 0.0, "high": 0.0},
        "full_gpu_s": {"low": 0.0, "high": 0.0},
    }
    for row in rows.values():
        row["full_gpu_s"] = {k: v / speed for k, v in row["full_cpu_s"].items()}
        total["quick_cpu_s"] += row["quick_cpu_s"]
        for k in ("low", "high"):
            total["full_cpu_s"][k] += row["full_cpu_s"][k]
            total["full_gpu_s"][k] += row["full_gpu_s"][k]
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(RESULTS), help="folder for fullscale.json (default benchmarks/results)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=3600.0, help="the GPU time the full course should fit in"
    )
    parser.add_argument(
        "--max-seeds", type=int, default=20, help="the most seeds a full-scale comparison is sized to"
    )
    parser.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of committed, executed notebooks")
    args = parser.parse_args(argv)
    step = cpu_step()
    s = speedup(step)
    times = Path(args.notebooks) / "runtimes.json"
    runtimes = json.loads(times.read_text()) if times.exists() else {}
    paths = sorted(Path(args.notebooks).glob("[0-9][0-9]_*.ipynb"))
    rows = {p.stem: notebook_estimate(p, runtimes) for p in paths}
    total = _totals(rows, s["value"])
    sizing = size_seeds(paths, rows, runtimes, s["value"], args.budget_s, args.max_seeds)
    low, high = total["full_gpu_s"]["low"], total["full_gpu_s"]["high"]
    verdict = "fits" if high <= args.budget_s else "does not fit" if low > args.budget_s else "may fit"
    report = {
        "cpu_step": step,
        "speedup": s,
        "notebooks": rows,
        "budget_s": args.budget_s,
        "total": total,
        "verdict": verdict,
        "sized_total_gpu_s": sizing,
    }
    print(
        f"CPU step of course_cnn_s (batch {step['batch']}, {step['threads']} threads): {step['seconds'] * 1e3:.1f} ms, "
        f"{step['aten_ops']} aten ops, {step['flops'] / 1e9:.2f} GFLOP"
    )
    print(
        f"GPU speed-up S = {s['value']:.1f} ({s['how']}; LAUNCH_S {LAUNCH_S:.0e} s, GPU_FLOPS {GPU_FLOPS:.0e})"
    )
    print(
        f"{'notebook':28s} {'quick CPU s':>11s} {'full GPU min':>14s} {'seeds':>5s} {'called':>6s} {'sized GPU min':>14s}"
    )
    for name, r in rows.items():
        g, z = r["full_gpu_s"], r.get("sizing")
        line = f"{name:28s} {r['quick_cpu_s']:11.0f} {g['low'] / 60:6.1f} - {g['high'] / 60:5.1f}"
        if z:
            want = z["called_for"]["wanted"]
            line += (
                f" {z['full_seeds']:5d} {want or '-':>6} {z['full_gpu_s']['low'] / 60:6.1f} - "
                f"{z['full_gpu_s']['high'] / 60:5.1f}  -> N_SEEDS {z['seeds']}"
            )
            if z["called_for"]["beyond"]:
                line += f"; beyond {args.max_seeds} seeds: {len(z['called_for']['beyond'])} claim(s)"
        print(line)
    print(
        f"{'total':28s} {total['quick_cpu_s']:11.0f} {low / 60:6.1f} - {high / 60:5.1f}"
        f" {'':12} {sizing['low'] / 60:6.1f} - {sizing['high'] / 60:5.1f}"
    )
    print(
        f"estimated full-scale course on one GPU: {low / 60:.0f} to {high / 60:.0f} min at the committed defaults: it "
        f"{verdict} in {args.budget_s / 60:.0f} minutes; with the seeds sized for the inconclusive claims: "
        f"{sizing['low'] / 60:.0f} to {sizing['high'] / 60:.0f} min"
    )
    path = Path(args.out) / "fullscale.json"
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=1, default=float).encode()))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
