"""The course's notebooks: their list (`COURSE`), where they are found, and their measured runtimes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..files import REPO, atomic_write, in_checkout

NOTEBOOK_DIR = REPO / "notebooks"


RUNTIMES = NOTEBOOK_DIR / "runtimes.json"
ESTIMATE = (
    REPO / "benchmarks" / "results" / "fullscale.json"
)  # full-scale GPU estimate (benchmarks/fullscale.py)


def runtimes() -> dict:
    """Measured runtimes, {notebook stem: {"cpu"|"gpu"|"cpu_first": {wall_s, cpu_s, load, cores, scale}}}:
    "cpu" and "gpu" from `make notebooks` (warm caches), "cpu_first" from `benchmarks/first_run.py` (the first run
    of the course, which fills the caches)."""
    return json.loads(RUNTIMES.read_text()) if RUNTIMES.exists() else {}


def expected_minutes(run: dict | None) -> float | None:
    """Minutes a learner should expect from one measured run. On a machine busier than its cores (load above the
    core count) the wall time says more about the neighbours than the notebook, so the kernel's CPU time is used."""
    if not run:
        return None
    seconds = run["cpu_s"] if run.get("load", 0) > run.get("cores", 1) else run["wall_s"]
    return round(seconds / 60, 1)


@dataclass(frozen=True)
class Notebook:
    """One course notebook; its minutes are measured (notebooks/runtimes.json), never typed in."""

    file: str
    title: str

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    @property
    def cpu_minutes(self) -> float | None:
        """Measured minutes at quick scale on a CPU machine (the course's reference: 2 cores); None if never run."""
        return expected_minutes(runtimes().get(self.stem, {}).get("cpu"))

    @property
    def first_run_minutes(self) -> float | None:
        """Measured minutes of the course's first run on the CPU machine (empty caches); None if never measured."""
        return expected_minutes(runtimes().get(self.stem, {}).get("cpu_first"))

    @property
    def gpu_minutes(self) -> float | None:
        """Measured minutes at full scale on a GPU; None until a GPU run has been recorded."""
        return expected_minutes(runtimes().get(self.stem, {}).get("gpu"))

    @property
    def gpu_estimate(self) -> tuple[float, float] | None:
        """Estimated (low, high) minutes at full scale on one GPU, from `benchmarks/fullscale.py`'s results."""
        row = (
            (json.loads(ESTIMATE.read_text()) if ESTIMATE.exists() else {})
            .get("notebooks", {})
            .get(self.stem)
        )
        if not row:
            return None
        low, high = (max(0.1, round(row["full_gpu_s"][k] / 60, 1)) for k in ("low", "high"))
        return low, high


COURSE = [
    Notebook("00_start_here.ipynb", "Start here: environment, course map, a first training run"),
    Notebook("01_definitions.ipynb", "Definitions: transfer vs multi-task learning side by side"),
    Notebook(
        "02_understanding_transfer.ipynb",
        "Understanding transfer: four strategies, which layers transfer, near vs far sources",
    ),
    Notebook(
        "03_multitask_approaches.ipynb",
        "Multi-task approaches: hard sharing, cross-stitch, L2-tied towers, MMoE vs separate models",
    ),
    Notebook(
        "04_core_difference.ipynb",
        "The core difference: sequential vs parallel, forgetting, and the two combinations",
    ),
    Notebook(
        "05_how_transfer_helps.ipynb",
        "How transfer helps: label efficiency, faster convergence, the gap at full data",
    ),
    Notebook(
        "06_benefits_of_mtl.ipynb",
        "Benefits of multi-task learning: generalisation, overfitting, data efficiency, convergence",
    ),
    Notebook(
        "07_applications_of_transfer.ipynb",
        "Applications: a real ImageNet backbone on animal silhouettes, a sentence encoder on movie reviews; where "
        "transfer is used",
    ),
    Notebook(
        "08_mtl_use_cases.ipynb",
        "MTL use cases: a perception toy with mixed losses, multi-label scans, two text tasks on one encoder",
    ),
    Notebook(
        "09_challenges_of_transfer.ipynb",
        "Challenges of transfer: domain mismatch, reliance on the source, negative transfer, choosing a source",
    ),
    Notebook(
        "10_obstacles_in_mtl.ipynb",
        "Obstacles in multi-task learning: imbalance, interference, gradient surgery",
    ),
    Notebook(
        "11_choosing.ipynb",
        "Choosing between transfer and multi-task learning: a decision map and an advisor",
    ),
    Notebook(
        "12_infographic.ipynb",
        "The infographic: the course on one page, every number read from a results file",
    ),
]


def expected_time(nb: Notebook) -> str:
    """The header line every notebook carries, generated from its measured runtimes (kept in sync by the runner)."""
    cpu, gpu, estimate, first = nb.cpu_minutes, nb.gpu_minutes, nb.gpu_estimate, nb.first_run_minutes
    cpu_text = f"about {cpu:g} minutes on a 2-core CPU" if cpu is not None else "not yet measured on a CPU"
    first_text = ""
    if cpu is not None and first is not None and first - cpu >= 0.2:
        first_text = f"; {first:g} the first time, which fills the caches"
    gpu_text = f"about {gpu:g} minutes on a GPU" if gpu is not None else "not yet measured on a GPU"
    guess = ""
    if gpu is None and estimate is not None:
        guess = f"; estimated {minutes_span(estimate)} minutes by `benchmarks/fullscale.py`"
    return (
        f'**Expected time.** Measured: {cpu_text} (`SCALE="quick"`{first_text}); {gpu_text} '
        f'(`SCALE="full"`{guess}).'
    )


def minutes_span(estimate: tuple[float, float]) -> str:
    """An estimated range of minutes as text: "0.3" when both ends round to the same value, else "0.3 to 0.8"."""
    low, high = estimate
    return f"{low:g}" if low == high else f"{low:g} to {high:g}"


def record_runtime(
    stem: str, wall_s: float, cpu_s: float, scale: str, device: str, *, first_run: bool = False
) -> None:
    """Keep one measured run of a committed notebook in notebooks/runtimes.json (under "gpu" or "cpu"; a CPU run
    with empty caches, `first_run`, under "cpu_first")."""
    data = runtimes()
    key = "gpu" if device == "cuda" else "cpu_first" if first_run else "cpu"
    data.setdefault(stem, {})[key] = {
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "load": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "scale": scale,
    }
    text = json.dumps(dict(sorted(data.items())), indent=1) + "\n"
    atomic_write(RUNTIMES, lambda f: f.write(text.encode()))


def notebook_folder() -> Path:
    """Where notebook prefixes ("01") are looked up: $COMPANION_NOTEBOOKS if set, else the checkout's notebooks/."""
    env = os.environ.get("COMPANION_NOTEBOOKS")
    return Path(env).expanduser() if env else NOTEBOOK_DIR


def _not_found(name: str, folder: Path, count: int) -> ValueError:
    if not folder.is_dir():
        why = "it does not exist" + (
            "" if in_checkout() else ": this companion is installed, not a checkout of the course"
        )
        return ValueError(
            f"cannot find notebook {name!r}: looked in {folder} ({why}); pass the notebook's path "
            f"(python -m companion run path/to/00_start_here.ipynb) or set COMPANION_NOTEBOOKS to the folder "
            f"holding the course notebooks"
        )
    known = ", ".join(nb.file for nb in COURSE)
    return ValueError(
        f"notebook {name!r} matches {count} files in {folder}; use one of: {known}, or a notebook's path"
    )


def notebooks(names: list[str] | None = None) -> list[Path]:
    """Resolve notebook names, prefixes ("01") or paths to files; all course notebooks when empty. Names are
    looked up in `notebook_folder()`, an exact stem or file name first ("00_start_here" even beside
    "00_start_here-Copy1.ipynb"), then as a prefix; an error says where it looked and how to point the runner
    at them."""
    folder = notebook_folder()
    if not names:
        if not folder.is_dir():
            raise _not_found("(all)", folder, 0)
        return [folder / nb.file for nb in COURSE]
    found = []
    for name in names:
        path = Path(name).expanduser()
        if path.is_file():
            found.append(path.resolve())
            continue
        if name.endswith(".ipynb") and len(path.parts) > 1:
            raise ValueError(f"notebook file {name} does not exist")
        exact = folder / (name if name.endswith(".ipynb") else f"{name}.ipynb")
        if len(path.parts) == 1 and exact.is_file():  # an exact stem or file name wins over a prefix
            found.append(exact)
            continue
        matches = sorted(
            p
            for p in (folder.glob(f"{name}*.ipynb") if folder.is_dir() else [])
            if not p.name.endswith(".failed.ipynb")
        )  # a stopped run's NAME.failed.ipynb is not a notebook to run
        if len(matches) != 1:
            raise _not_found(name, folder, len(matches))
        found.append(matches[0])
    return found


COMMITTED_RESULTS = NOTEBOOK_DIR / "results"
