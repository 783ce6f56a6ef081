"""Files written so that no reader ever sees half of one: a temporary file in the
target's folder, flushed and fsynced, then `os.replace`. Data, checkpoints, results files and notebooks all go
through `atomic_write`; the dataset module is not needed to write a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[1]  # the course checkout, when the package runs from one
_STALE_AFTER_S = 15 * 60  # a temporary untouched this long is an orphan even if its writer's pid looks alive
_TEMP = re.compile(r"(?:(?P<pid>\d+)-)?[a-z0-9_]{8}")  # the middle of `.<name>.<pid>-<random>.part`


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would end the process there: trust the age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries that killed `atomic_write` calls left for this target (`.<name>.<pid>-<random>.part`, or the
    older `.<name>.<random>.part`) and that no live writer is using: their writer's process is gone, or they
    have not changed for 15 minutes. Files of other targets never match."""
    path = Path(path)
    prefix, now, out = f".{path.name}.", time.time(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if not (
                entry.name.startswith(prefix)
                and entry.name.endswith(".part")
                and entry.is_file(follow_symlinks=False)
            ):
                continue
            match = _TEMP.fullmatch(entry.name[len(prefix) : -len(".part")])
            if match is None:
                continue
            pid = match.group("pid")
            with contextlib.suppress(OSError):
                if (pid is not None and not _alive(int(pid))) or now - entry.stat().st_mtime > _STALE_AFTER_S:
                    out.append(Path(entry.path))
    return sorted(out)


_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file is larger than this process may write (disk full or a file-size limit, ulimit -f)",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EROFS: "the file system is read-only",
}
if hasattr(errno, "EDQUOT"):
    _CAUSES[errno.EDQUOT] = "your disk quota is used up"


def write_error(path: str | os.PathLike, err: OSError) -> OSError:
    """`err` (of the same OSError subclass) naming the file that could not be written and the likely cause (disk
    full, quota, file-size limit, permissions); any other error is returned as it was."""
    cause = _CAUSES.get(err.errno)
    if cause is None:
        return err
    return OSError(err.errno, f"cannot write {path}: {cause} ({err.strerror or os.strerror(err.errno)})")


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, keep_previous: bool = False
) -> Path:
    """Write a file via a temp file in its folder and os.replace, so no half file is ever visible.

    With `keep_previous`, an existing file is kept as `<name>.prev` (checkpoints use it). Temporaries that
    killed earlier writes of the same target left behind are removed first (see `stale_temporaries`). A write
    that fails for want of space, quota or permission raises the same OSError subclass naming `path` and the
    likely cause (`write_error`); the previous file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in stale_temporaries(path):
        with contextlib.suppress(OSError):
            os.unlink(orphan)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        if keep_previous and path.exists():  # hard-link, so `path` itself never goes missing
            prev = path.with_name(path.name + ".prev")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(prev)
            os.link(path, prev)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and write_error(path, err) is not err:
            raise write_error(path, err) from err
        raise
    return path


# ------------------------------------------------------------------------------------------------ locations


def in_checkout() -> bool:
    """True when the package runs from a checkout of the course (pyproject.toml and notebooks/ beside it), False
    for an installed copy (site-packages)."""
    return (REPO / "pyproject.toml").is_file() and (REPO / "notebooks").is_dir()


def user_folder() -> Path:
    """The per-user folder of an installed course (data/, results/): $XDG_DATA_HOME/companion or
    ~/.local/share/companion on Linux, ~/Library/Application Support/companion on macOS, %LOCALAPPDATA%\\companion
    on Windows. A checkout keeps both inside the repository instead."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base.expanduser() / "companion"


def resolve(path: str) -> Path:
    """A relative path is inside the repository in a checkout, else inside the per-user folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO if in_checkout() else user_folder()) / p
