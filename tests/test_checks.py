"""companion.checks: one message style, "NAME must be ..., got ...", and the value returned when it passes."""

from __future__ import annotations

import math

import pytest

from companion import checks


def test_integer_bounds_and_messages():
    assert checks.integer("steps", 3) == 3
    assert checks.integer("offset", 0, low=0) == 0
    assert checks.integer("rank", 1, low=0, high=1) == 1
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1, got 0$"):
        checks.integer("steps", 0)
    with pytest.raises(ValueError, match=r"^rank must be an integer in 0\.\.1, got 2$"):
        checks.integer("rank", 2, low=0, high=1)
    for bad in (
        True,
        2.0,
        "3",
        None,
    ):  # a bool is not an integer here, nor is a float that happens to be whole
        with pytest.raises(ValueError, match="steps must be an integer"):
            checks.integer("steps", bad)


def test_positive_probability_and_choice():
    assert checks.positive("lr", 1e-3) == 1e-3 and isinstance(checks.positive("lr", 2), float)
    assert checks.positive("clip", None, none=True) is None
    for bad in (0, -1.0, math.inf, math.nan, True, "0.1"):
        with pytest.raises(ValueError, match="^lr must be a positive finite number, got"):
            checks.positive("lr", bad)
    with pytest.raises(ValueError, match="^clip must be a positive finite number or None, got 0$"):
        checks.positive("clip", 0, none=True)
    assert checks.probability("p", 0) == 0.0 and checks.probability("p", 1) == 1.0
    with pytest.raises(ValueError, match=r"^p must be a number in \[0, 1\), got 1$"):
        checks.probability("p", 1, closed=False)
    assert checks.choice("mode", "max", ("min", "max")) == "max"
    with pytest.raises(ValueError, match=r"^mode must be one of \['min', 'max'\], got 'up'$"):
        checks.choice("mode", "up", ("min", "max"))


def test_task_names_and_a_custom_error_type():
    assert checks.task_names("losses", ["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="^losses must be at least one task, got"):
        checks.task_names("losses", [])
    with pytest.raises(ValueError, match=r"^losses \(a task name\) must be a non-empty string without '\.'"):
        checks.task_names("losses", ["a.b"])

    class ParamError(ValueError):
        pass

    with pytest.raises(ParamError, match="^SEED must be a non-negative integer, got -1$"):
        checks.fail("SEED", "a non-negative integer", -1, error=ParamError)
