"""companion.experiments.memo: one run per distinct arguments, copies out, clear errors."""

from __future__ import annotations

import pytest
import torch

from companion.experiments.memo import memo


def test_memo_runs_once_per_distinct_arguments_and_fills_defaults():
    calls = []

    @memo
    def run(method: str, knob: float, split: str = "test", tasks: list[str] = ("left", "right")) -> dict:
        calls.append((method, knob, split, tuple(tasks)))
        return {"acc": knob * 10, "tasks": list(tasks)}

    assert run("equal", 0.5) == {"acc": 5.0, "tasks": ["left", "right"]}
    assert run("equal", knob=0.5, split="test") == {"acc": 5.0, "tasks": ["left", "right"]}
    assert run("equal", 0.5, tasks=["left", "right"])["acc"] == 5.0  # a list matches the tuple default
    assert run("equal", 0.5, "val")["acc"] == 5.0
    assert run("equal", 0.5, tasks=["left"]) == {"acc": 5.0, "tasks": ["left"]}
    assert calls == [
        ("equal", 0.5, "test", ("left", "right")),
        ("equal", 0.5, "val", ("left", "right")),
        ("equal", 0.5, "test", ("left",)),
    ]
    assert len(run.cache) == 3
    assert run.__name__ == "run"
    run.cache_clear()
    run("equal", 0.5)
    assert len(calls) == 4


def test_memo_hands_out_copies():
    @memo
    def weights(seed: int) -> dict:
        return {"w": torch.full((2,), float(seed))}

    first = weights(3)
    first["w"].add_(1.0)
    first["extra"] = 1
    again = weights(3)
    assert again.keys() == {"w"}
    assert again["w"].tolist() == [3.0, 3.0]


def test_memo_keys_dicts_and_sets_by_content():
    calls = []

    @memo
    def f(options: dict, names: set) -> int:
        calls.append(1)
        return len(options) + len(names)

    assert f({"a": 1, "b": [2, 3]}, {"x"}) == 3
    assert f({"b": [2, 3], "a": 1}, {"x"}) == 3
    assert len(calls) == 1


def test_memo_errors_name_the_argument():
    @memo
    def f(x, y=0):
        return x

    with pytest.raises(ValueError, match=r"^x: a memoised function needs hashable arguments"):
        f(torch.nn.Linear(1, 1).weight.detach().numpy())
    with pytest.raises(ValueError, match="^fn must be callable, got int"):
        memo(3)


def test_memo_travels_by_value_to_a_worker_process():
    # over_seeds' workers get the run by cloudpickle: a memoised function defined outside an importable module
    # (a notebook's __main__) must arrive with its code, not as a name the worker cannot look up
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import subprocess, sys
        import cloudpickle
        from companion.experiments.memo import memo

        @memo
        def data(seed):
            return [seed, seed * 2]

        @memo
        def run(seed, tasks=["a"]):
            return {"x": sum(data(seed)), "tasks": list(tasks)}

        payload = cloudpickle.dumps(lambda seed: run(seed))
        code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())(3))"
        out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, check=True)
        print(out.stdout.decode().strip())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'x': 9, 'tasks': ['a']}"


def test_many_runs_only_what_is_not_remembered_and_remembers_it():
    calls = []

    @memo
    def run(method, lr, seed=0):
        calls.append((method, lr, seed))
        return {"score": lr * 10 + seed}

    assert run("a", 1.0) == {"score": 10.0}
    out = run.many([("a", 1.0), ("a", 2.0, 1), {"method": "a", "lr": 2.0, "seed": 1}, ("b", 3.0)], workers=1)
    assert out == [{"score": 10.0}, {"score": 21.0}, {"score": 21.0}, {"score": 30.0}]
    assert calls == [("a", 1.0, 0), ("a", 2.0, 1), ("b", 3.0, 0)]  # each distinct call ran once
    assert run("b", 3.0) == {"score": 30.0} and len(calls) == 3  # read back, not rerun
    out[0]["score"] = -1
    assert run("a", 1.0) == {"score": 10.0}  # copies, as from a call


@pytest.mark.slow  # worker processes, each loading torch
def test_many_in_worker_processes_remembers_what_the_workers_computed():
    run = memo(_square_plus)
    assert run.many([(2,), (3,), (2,)], workers=2) == [5, 10, 5]
    assert sorted(run.cache.values()) == [5, 10]  # the workers' results are remembered here


def _square_plus(x):
    return x * x + 1
