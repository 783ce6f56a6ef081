"""The fair-comparison protocol: every method gets the same seeds and the same tuning budget.

A comparison of methods in this course credits only the variable it varies. `tune` gives each method the same
small grid for its own hyperparameter, chosen on a validation split (never on the test set); `over_seeds` runs a
whole measurement once per seed and stacks the numbers so `companion.verdicts` can compare methods seed by seed;
`delta_m` sums a multi-task model up against single-task models in one number.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import cloudpickle
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm


def tune(
    run: Callable[[object], float], grid: Sequence, *, name: str = "value", workers: int | str | None = 1
) -> tuple[object, dict]:
    """Try every value of `grid`, return (best value, {value: validation score}); higher scores are better.

    `run(value)` trains with that value and returns a score on a validation split. Ties keep the earlier value,
    so list the grid in the order you would prefer it (e.g. the smaller learning rate first). `workers`: 1 (the
    default) tries the values one by one in this process; None or a count tries them in worker processes like
    `per_seed`'s seeds (`parallel_map`, the same scores; None: $COMPANION_SEED_WORKERS, else one per core), which
    suits only a `run` that keeps nothing by side effect.
    """
    grid = list(grid)
    if not grid:
        raise ValueError(f"{name} grid must name at least one value, got an empty grid")
    scores = dict(zip(grid, (float(v) for v in parallel_map(run, grid, workers=workers))))
    best = max(grid, key=lambda v: (scores[v], -grid.index(v)))
    return best, scores


def tune_each_seed(
    run: Callable[[tuple], Mapping],
    seeds: Sequence[int],
    names: Sequence[str],
    grid: Sequence,
    *,
    score: str = "val_acc",
    workers: int | str | None = None,
) -> dict[tuple[int, str], tuple[object, dict, Mapping]]:
    """`tune` for every (seed, name) with one batch of jobs: `run((seed, name, value))` trains once and returns a
    mapping holding a validation `score`; every (seed, name, value) runs through `parallel_map` (`workers`), then
    `tune` picks each (seed, name)'s value from the scores. Returns {(seed, name): (best value, {value: score},
    run's result at the best value)}."""
    plan = [(seed, name, value) for seed in seeds for name in names for value in grid]
    done = dict(zip(plan, parallel_map(run, plan, workers=workers)))
    out = {}
    for seed in seeds:
        for name in names:
            best, scores = tune(lambda v, key=(seed, name): done[(*key, v)][score], grid, name="grid")
            out[seed, name] = (best, scores, done[seed, name, best])
    return out


WORKERS_ENV = "COMPANION_SEED_WORKERS"


def seed_workers(workers: int | str | None = None) -> int:
    """How many processes `per_seed` and `tune` use: `workers` if given, else $COMPANION_SEED_WORKERS, else
    "auto": the machine's cores (`os.cpu_count()`), or 1 where a GPU is present (the runs would share it). Inside
    a worker it is always 1: a run that itself calls `per_seed` or `tune` runs them in its own process."""
    if _IN_WORKER:
        return 1
    value = os.environ.get(WORKERS_ENV, "auto") if workers is None else workers
    if value == "auto":
        return 1 if torch.cuda.is_available() else os.cpu_count() or 1
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or isinstance(value, bool):
        name = "workers" if workers is not None else WORKERS_ENV
        raise ValueError(f"{name} must be a positive integer or 'auto', got {value!r}")
    return n


_IN_WORKER = False  # set in a worker process: nested calls stay in that process


def _one_thread(run: Callable, item: object, worker: bool) -> object:
    """run(item) with one torch thread (in a worker for good; in this process, the thread count restored)."""
    global _IN_WORKER
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _IN_WORKER = _IN_WORKER or worker
    try:
        return run(item)
    finally:
        if not worker:
            torch.set_num_threads(threads)


def _from_file(path: str, item: object) -> object:
    """In a worker: load the function saved at `path` once (the latest one kept), run it on `item`."""
    if _LOADED.get("path") != path:
        _LOADED.clear()
        _LOADED.update(path=path, run=cloudpickle.loads(Path(path).read_bytes()))
    return _one_thread(_LOADED["run"], item, True)


_LOADED: dict = {}  # in a worker: the function of the current parallel_map call, loaded once


def parallel_map(
    run: Callable,
    items: Iterable,
    *,
    workers: int | str | None = None,
    progress: bool = False,
    desc: str = "runs",
) -> list:
    """[run(item) for item in items], in order, each run with one torch thread; in `workers` processes when that
    resolves (`seed_workers`) to more than 1. joblib's loky backend; `run` is pickled once by cloudpickle (so a
    function defined in a notebook works, with whatever it captures, e.g. the data) into a temporary file that
    each worker loads once, and whatever it returns must be picklable. Since every run seeds itself and uses one
    thread, the results are bit-identical whatever the number of workers; side effects of `run` (e.g. a dict it
    fills) stay in the worker, so return what you keep."""
    items = list(items)
    n = min(seed_workers(workers), len(items))
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="companion-run-") as tmp:
        # loky notes when it retires an idle worker between jobs; the results are not affected
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs", category=UserWarning)
        if n > 1:
            path = Path(tmp) / "run.pkl"
            path.write_bytes(cloudpickle.dumps(run))
            rows = Parallel(n_jobs=n, backend="loky", return_as="generator")(
                delayed(_from_file)(str(path), item) for item in items
            )
        else:
            rows = (_one_thread(run, item, False) for item in items)
        return list(tqdm(rows, total=len(items), desc=desc, disable=not progress))


def per_seed(
    run: Callable[[int], object],
    seeds: Iterable[int],
    *,
    progress: bool = False,
    desc: str = "seeds",
    workers: int | str | None = None,
) -> list:
    """[run(seed) for seed in seeds], in the seeds' order, whatever `run` returns (any picklable value).

    The seeds run in worker processes (`parallel_map`; `workers`: default $COMPANION_SEED_WORKERS, else one per
    core, see `seed_workers`), each with one torch thread: the results are bit-identical to running the seeds
    one by one with one thread, since every run seeds itself.
    """
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    return parallel_map(run, seeds, workers=workers, progress=progress, desc=desc)


def over_seeds(
    run: Callable[[int], Mapping[str, float]],
    seeds: Iterable[int],
    *,
    progress: bool = False,
    workers: int | str | None = None,
) -> dict[str, list[float]]:
    """Run `run(seed)` for every seed (`per_seed`: in worker processes when `workers` > 1, same numbers); returns
    {metric: [value at each seed]} in the seeds' order.

    Every run must report the same metric names (a method that silently skips a seed would bias the mean).
    """
    seeds = list(seeds)
    rows = per_seed(run, seeds, progress=progress, workers=workers)
    out: dict[str, list[float]] = {}
    for i, (seed, row) in enumerate(zip(seeds, rows)):
        if i and set(row) != set(out):
            raise ValueError(f"seed {seed} reported metrics {sorted(row)}, earlier seeds {sorted(out)}")
        for key, value in row.items():
            out.setdefault(key, []).append(float(value))
    return out


def seed_stats(values: Sequence[float]) -> dict:
    """{"mean", "min", "max", "per_seed"} of one method's per-seed values (what tables and whiskers show)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("values must hold at least one per-seed number, got none")
    return {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "per_seed": [round(x, 4) for x in v]}


def mean_range(values: Sequence[float], digits: int = 3) -> str:
    """One method's per-seed values as "mean [min, max]" for a printed line."""
    s = seed_stats(values)
    return f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def delta_m(
    scores: Mapping[str, float], baseline: Mapping[str, float], *, lower_is_better: Iterable[str] = ()
) -> float:
    """Mean relative change of a multi-task model against single-task baselines, in percent.

    Delta_m = 100/T * sum_t (-1)^{l_t} (M_t - B_t) / B_t over the T tasks of `baseline` (Maninis et al. 2019, the
    summary the multi-task literature reports), where l_t = 1 for a metric where lower is better (an error, a
    loss). Positive: better than training one model per task, on average; each task counts relative to its own
    baseline, so tasks measured in different units can be averaged.
    """
    lower = set(lower_is_better)
    tasks = list(baseline)
    if not tasks:
        raise ValueError("baseline must name at least one task, got none")
    missing = [t for t in tasks if t not in scores]
    if missing:
        raise ValueError(f"scores must have every task of the baseline, missing {missing}")
    if any(not baseline[t] for t in tasks):
        raise ValueError(f"baseline must be non-zero for every task (it divides), got {dict(baseline)}")
    unknown = lower - set(tasks)
    if unknown:
        raise ValueError(f"lower_is_better must name tasks of the baseline, got {sorted(unknown)}")
    signed = [(-1 if t in lower else 1) * (scores[t] - baseline[t]) / abs(baseline[t]) for t in tasks]
    return 100.0 * sum(signed) / len(tasks)
