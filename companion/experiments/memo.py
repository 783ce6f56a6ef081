"""Remembering the results of expensive pure functions (a training run for given settings and seed)."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from .protocol import parallel_map


def _frozen(name: str, value: Any) -> Hashable:
    """`value` as a hashable key: lists and tuples as tuples, sets as frozensets, dicts as frozensets of pairs."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(name, v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(_frozen(name, v) for v in value)
    if isinstance(value, dict):
        return frozenset((k, _frozen(name, v)) for k, v in value.items())
    try:
        hash(value)
    except TypeError:
        raise ValueError(
            f"{name}: a memoised function needs hashable arguments (or lists, tuples, sets, dicts of them), "
            f"got {type(value).__name__}"
        ) from None
    return value


def memo(fn: Callable) -> Callable:
    """Cache `fn`'s results by its arguments: a repeated call returns a copy of the first result, not a new run.

    Arguments are matched as `fn` sees them (defaults filled in, keyword or positional alike; lists compared as
    tuples), so `run("equal", 1e-3)` and `run("equal", lr=1e-3, tasks=["left"])` share an entry when those are
    the defaults. Every call returns a deep copy, so a caller that changes a result cannot change the cache.
    The cache lives on the returned function (`.cache`, a dict argument key -> result; `.cache_clear()`), not in
    a module global. `.many(calls)` runs the calls not yet remembered side by side in worker processes and
    remembers their results (a run in a worker would otherwise be forgotten). Built on `functools.wraps` and
    `inspect.signature`: `functools.cache` alone rejects list arguments, tells `f(1)` from `f(x=1)` and hands out the cached object itself.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    signature = inspect.signature(fn)
    cache: dict = {}

    def bind(args: tuple, kwargs: dict) -> tuple[tuple, tuple, dict]:
        """(cache key, positional, keyword arguments) of one call, as `fn` sees it (defaults filled in)."""
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple((name, _frozen(name, value)) for name, value in bound.arguments.items())
        return key, bound.args, bound.kwargs

    @functools.wraps(fn)
    def remembered(*args: Any, **kwargs: Any) -> Any:
        key, args, kwargs = bind(args, kwargs)
        if key not in cache:
            cache[key] = fn(*args, **kwargs)
        return copy.deepcopy(cache[key])

    def many(
        calls: Iterable[tuple | Mapping],
        *,
        workers: int | str | None = None,
        progress: bool = False,
        desc: str = "runs",
    ) -> list:
        """`fn` for every call (a tuple of positional arguments, or a dict of keyword arguments), in order: the
        calls not yet remembered run side by side (`protocol.parallel_map`: worker processes, `workers` as for
        `per_seed`), their results join the cache, and every result comes back as a copy, as from a call."""
        bound = [
            bind((), dict(call)) if isinstance(call, Mapping) else bind(tuple(call), {}) for call in calls
        ]
        todo = list({key: (a, k) for key, a, k in bound if key not in cache}.items())
        done = parallel_map(
            lambda job: fn(*job[0], **job[1]),
            [job for _, job in todo],
            workers=workers,
            progress=progress,
            desc=desc,
        )
        cache.update(zip([key for key, _ in todo], done))
        return [copy.deepcopy(cache[key]) for key, _, _ in bound]

    remembered.cache = cache
    remembered.cache_clear = cache.clear
    remembered.many = many
    return remembered
