"""Remembering the results of expensive pure functions (a training run for given settings and seed)."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any


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
    a module global. Built on `functools.wraps` and `inspect.signature`: `functools.cache` alone rejects list
    arguments, tells `f(1)` from `f(x=1)` and hands out the cached object itself.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    signature = inspect.signature(fn)
    cache: dict = {}

    @functools.wraps(fn)
    def remembered(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple((name, _frozen(name, value)) for name, value in bound.arguments.items())
        if key not in cache:
            cache[key] = fn(*bound.args, **bound.kwargs)
        return copy.deepcopy(cache[key])

    remembered.cache = cache
    remembered.cache_clear = cache.clear
    return remembered
