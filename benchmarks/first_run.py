"""The course's first run: every notebook at quick scale with empty caches, one after another.

    python -m benchmarks.first_run [--out build/first_run] [--seed 0] [NB ...]

A learner's first `make course` decodes the datasets, trains and saves the source models and embeds the texts; later
runs read all of that back from `data/cache/`. This script measures that first run: it links the datasets of the
data folder (`$COMPANION_DATA`, else the checkout's data/) into a temporary folder without `cache/`, points
COMPANION_DATA at it, runs each notebook in course order with the runner's `execute` (outputs to `--out`, never
over the committed notebooks; seeds in worker processes as `make course` runs them) and records its wall and CPU
seconds in notebooks/runtimes.json under "cpu_first" (the README's "first run" column). Run it on an otherwise
idle machine; the caches it fills are deleted with the temporary folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from companion.course.catalog import notebooks, record_runtime  # noqa: E402
from companion.course.runs import execute  # noqa: E402
from companion.course.tables import sync_runtimes  # noqa: E402
from companion.store import data_root  # noqa: E402


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cold_data(source: Path, into: Path) -> Path:
    """`into`/data: a link to every entry of the data folder `source` except its `cache/`."""
    data = into / "data"
    data.mkdir()
    for entry in source.iterdir():
        if entry.name != "cache":
            (data / entry.name).symlink_to(entry.resolve())
    return data


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(ROOT / "build" / "first_run"), help="folder for the executed notebooks"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="SEED of every notebook (the work does not depend on it)"
    )
    parser.add_argument("notebooks", nargs="*", help="notebook names or prefixes (default: the whole course)")
    args = parser.parse_args(argv)
    paths, out, seconds = notebooks(args.notebooks or None), Path(args.out), {}
    with tempfile.TemporaryDirectory(prefix="companion-first-run-") as tmp:
        os.environ["COMPANION_DATA"] = str(cold_data(data_root(), Path(tmp)))
        os.environ.setdefault("COMPANION_SEED_WORKERS", "auto")
        for path in paths:
            cpu0 = _child_cpu()
            wall = execute(
                path,
                out / path.name,
                {"SCALE": "quick", "SEED": args.seed, "RESULTS_DIR": str(out / "results")},
            )
            record_runtime(path.stem, wall, _child_cpu() - cpu0, "quick", "cpu", first_run=True)
            seconds[path.stem] = wall
            print(f"{path.stem}: {wall / 60:.1f} min (first run, caches empty)", flush=True)
    sync_runtimes()
    print(f"whole course, first run: {sum(seconds.values()) / 60:.1f} min")
    return seconds


if __name__ == "__main__":
    main()
