"""Executing one notebook so that nothing already written is lost (the runner's engine, `python -m companion run`).

papermill writes its output notebook after every cell; pointed at the notebook a learner keeps, a full disk or a
Ctrl-C would leave it truncated or half-run. So a run executes into a temporary file in the target's folder and
only a finished run replaces the target (`files.atomic_write`, the writer every file of the course goes
through). A run that stops (an error in a cell, a full disk, Ctrl-C) leaves the target byte-identical and keeps
what ran as `NAME.failed.ipynb`, with the error and the last cell that ran recorded. Output names made from
parameters are safe slugs (`slug`), and stay inside the output folder (`inside`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from ..files import atomic_write, write_error


def source_hash(nb: dict) -> str:
    """Hash of all code cells' sources: the committed outputs are fresh when it matches (tests)."""
    code = [
        c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]
    return hashlib.sha256("\n\x00".join(code).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the kernels started inside the block (papermill passes no env of its own),
    then put back what was there: the calling process keeps its own settings."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def failed_path(out: Path) -> Path:
    """Where a run of `out` that stopped keeps what ran: `NAME.failed.ipynb` beside it."""
    return out.with_name(f"{out.stem}.failed.ipynb")


def _without_folder(nb: dict, folder: Path) -> None:
    """Outputs of a committed run name files relative to the notebook's `folder`, not by this machine's absolute
    path (the claims cell prints where its results file went; a learner's own run shows the absolute path)."""
    prefixes = sorted(
        {str(folder.absolute()) + os.sep, str(folder.resolve()) + os.sep}, key=len, reverse=True
    )

    def clean(text):
        if isinstance(text, list):
            return [clean(t) for t in text]
        if isinstance(text, str):
            for prefix in prefixes:
                text = text.replace(prefix, "")
        return text

    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = clean(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/"):
                    out["data"][mime] = clean(value)


def _notebook_text(nb: dict) -> bytes:
    return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()


def _describe(err: BaseException) -> str:
    if type(err).__name__ == "PapermillExecutionError":
        return f"{err.ename}: {err.evalue}"
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt: interrupted (Ctrl-C)"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _keep_failed(partial: Path, source: Path, out: Path, err: BaseException) -> Path | None:
    """Write what a stopped run produced (or, unreadable, the source notebook) as `NAME.failed.ipynb`: a banner
    cell and metadata (`companion.failed`) say the error and the last cell that ran; cells that never ran lose
    papermill's "completed" mark. Outputs are dropped if the full copy cannot be written (a full disk); None
    when not even that can be written."""
    try:
        nb = json.loads(partial.read_text())
    except (OSError, ValueError):
        try:
            nb = json.loads(Path(source).read_text())
        except (OSError, ValueError):
            return None
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    ran = [c for c in code if c.get("execution_count") is not None]
    for cell in code:
        meta = cell.setdefault("metadata", {}).get("papermill")
        if (
            cell.get("execution_count") is None
            and isinstance(meta, dict)
            and meta.get("status") == "completed"
        ):
            meta["status"] = "not run"
    last = ran[-1]["execution_count"] if ran else None
    record = {
        "error": _describe(err),
        "last_cell_ran": last,
        "code_cells_ran": len(ran),
        "code_cells": len(code),
    }
    nb.setdefault("metadata", {}).setdefault("companion", {})["failed"] = record
    where = f"the last cell that ran is In [{last}]" if last is not None else "no code cell ran"
    banner = (
        f"**This run stopped before its end** ({record['error']}): {len(ran)} of {len(code)} code cells ran, "
        f"{where}. The previous `{out.name}` was left as it was."
    )
    nb["cells"] = [
        {"cell_type": "markdown", "metadata": {"tags": ["companion-failed"]}, "source": banner},
        *nb.get("cells", []),
    ]
    failed = failed_path(out)
    try:
        atomic_write(failed, lambda f: f.write(_notebook_text(nb)))
    except OSError:
        for cell in code:
            cell["outputs"] = []
        try:
            atomic_write(failed, lambda f: f.write(_notebook_text(nb)))
        except OSError:
            return None
    return failed


def kernel_manager() -> type:
    """The kernel manager the runner uses. On POSIX it talks to its kernel over Unix sockets in a private
    temporary folder, removed with the kernel: no TCP port is opened, so the kernel has no plain-text transport to
    warn about. Elsewhere it is jupyter_client's own (TCP). Imported here, like papermill: `import companion`
    does not load the notebook machinery."""
    from jupyter_client.manager import AsyncKernelManager

    if os.name != "posix":
        return AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._folder = tempfile.mkdtemp(prefix="companion-kernel-")
            self.transport = "ipc"
            self.ip = os.path.join(self._folder, "kernel")

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(self._folder, ignore_errors=True)

        cleanup_resources = _async_cleanup_resources  # what the async manager awaits

    return QuietKernelManager


def execute(
    path: Path,
    out: Path,
    parameters: dict | None = None,
    *,
    progress: bool = False,
    keep_previous: bool = False,
) -> float:
    """Run one notebook with papermill (kernel cwd = the notebook's folder) into `out`, atomically; returns the
    wall time in seconds.

    papermill writes into a temporary file in `out`'s folder; a finished run replaces `out` in one rename
    (`keep_previous`: the old one is kept as `NAME.ipynb.prev`). A run that stops, whatever the reason, leaves
    `out` as it was and keeps the partial run as `NAME.failed.ipynb`; the error is re-raised (a write error
    naming `out` and its likely cause) with a note saying where the partial run is.
    """
    import papermill as pm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
    t0 = time.perf_counter()
    try:
        with (
            _environment(MPLBACKEND="module://matplotlib_inline.backend_inline"),  # inline even if Agg is set
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="The specified file .* does not end in")
            pm.execute_notebook(
                str(path),
                str(partial),
                parameters=parameters or {},
                cwd=str(Path(path).parent),
                progress_bar=progress,
                kernel_name="python3",
                kernel_manager_class=kernel_manager(),
            )
        seconds = time.perf_counter() - t0
        nb = json.loads(partial.read_text())
        if "output_path" in nb["metadata"].get("papermill", {}):
            nb["metadata"]["papermill"]["output_path"] = str(out)  # not the temporary papermill wrote
        if not parameters:  # an unparameterised run may stand as the committed copy: stamp what produced it
            nb["metadata"].setdefault("companion", {})["source_hash"] = source_hash(nb)
            for key in (
                "input_path",
                "output_path",
            ):  # this machine's absolute paths stay out of committed files
                nb["metadata"].get("papermill", {}).pop(key, None)
            _without_folder(nb, Path(path).parent)
        atomic_write(out, lambda f: f.write(_notebook_text(nb)), keep_previous=keep_previous)
    except BaseException as err:
        kept = _keep_failed(partial, Path(path), out, err)
        note = f"{out.name} was left as it was" + (f"; the partial run is kept in {kept}" if kept else "")
        if isinstance(err, OSError) and write_error(out, err) is not err:
            named = write_error(out, err)
            named.add_note(note)
            raise named from err
        err.add_note(note)
        raise
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return seconds


def slug(params: dict) -> str:
    """A file name for a set of parameters: "default" for none, else a short readable part (letters, digits,
    `._=-` only, at most 40 characters: no `/`, `..` or newline can reach a path) and 8 hex digits of a hash of
    all the values, so different parameters never share a name."""
    if not params:
        return "default"
    text = "-".join(f"{k}={v}" for k, v in sorted(params.items()))
    readable = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._=-]+", "_", text)).strip("._-")[:40].rstrip("._-")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=repr).encode()).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else digest


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused (ValueError) unless it resolves to a file directly inside `folder`."""
    target = (folder / name).resolve()
    if target.parent != folder.resolve():
        raise ValueError(f"output name {name!r} would leave --out {folder}; this is a bug in the runner")
    return target


def uncommitted(path: Path) -> bool:
    """Whether git reports `path` as changed or untracked (False outside a git checkout or without git)."""
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())
