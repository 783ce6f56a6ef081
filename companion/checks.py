"""Input checks shared by every module: one message style, "NAME must be ..., got ...".

Each check takes the parameter's name first, then its value, and returns the value (converted where said) so a
call can sit in an assignment. A failed check raises `ValueError` with one line naming the parameter and what
was expected, before any training starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["choice", "fail", "integer", "is_int", "positive", "probability", "task_names"]


def fail(name: str, expected: str, value: object, error: type[Exception] = ValueError) -> None:
    """Raise `error` with the course's message: "NAME must be EXPECTED, got VALUE"."""
    raise error(f"{name} must be {expected}, got {value!r}")


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def integer(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    """An integer in low..high (inclusive; no upper bound when `high` is None)."""
    if not is_int(value) or value < low or (high is not None and value > high):  # type: ignore[operator]
        fail(name, f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}", value)
    return value  # type: ignore[return-value]


def positive(name: str, value: object, *, none: bool = False) -> float | None:
    """A finite number > 0 as a float (or None when `none` allows it)."""
    if value is None and none:
        return None
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    )
    if not ok:
        fail(name, f"a positive finite number{' or None' if none else ''}", value)
    return float(value)  # type: ignore[arg-type]


def probability(name: str, value: object, *, closed: bool = True) -> float:
    """A number in [0, 1] (or [0, 1) with closed=False) as a float."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok or (not closed and value == 1):
        fail(name, "a number in [0, 1]" if closed else "a number in [0, 1)", value)
    return float(value)  # type: ignore[arg-type]


def choice(name: str, value: object, allowed: Iterable) -> object:
    """One of `allowed`."""
    allowed = list(allowed)
    if value not in allowed:
        fail(name, f"one of {allowed}", value)
    return value


def task_names(name: str, names: Iterable[object]) -> list[str]:
    """At least one task name, each a non-empty string without '.' (dots separate keys in the logs)."""
    names = list(names)
    if not names:
        fail(name, "at least one task", names)
    for task in names:
        if not isinstance(task, str) or not task or "." in task:
            fail(f"{name} (a task name)", "a non-empty string without '.'", task)
    return names  # type: ignore[return-value]
