"""Which tasks to train together: task affinity grouping after Fifty et al. 2021, "TAG".

TAG trains all tasks in one network for a while and measures, at every step, how much a step on task i's loss
alone lowers task j's loss (the lookahead affinity, `companion.balancers.task_affinity`). Averaged over the
steps, the T×T matrix says which tasks help each other; the grouping to train is the one whose tasks help each
other most. Here: `AffinityMeter` averages the matrix during `fit`, `grouping_score` scores a grouping,
`two_group_splits` lists the candidates and `rank_splits` orders them, best first.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from . import checks
from .balancers import task_affinity

__all__ = ["AffinityMeter", "grouping_score", "rank_splits", "two_group_splits"]


def _square(name: str, affinity) -> np.ndarray:
    a = np.asarray(affinity, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2 or not np.isfinite(a).all():
        checks.fail(name, "a finite T×T matrix with T >= 2", getattr(affinity, "shape", affinity))
    return a


def _groups(groups: Sequence[int], tasks: int) -> tuple[int, ...]:
    if isinstance(groups, str) or not isinstance(groups, Sequence) or len(groups) != tasks:
        checks.fail("groups", f"one group index per task ({tasks})", groups)
    for k in groups:
        checks.integer("groups (an entry)", k, 0)
    return tuple(groups)


def grouping_score(affinity, groups: Sequence[int]) -> float:
    """TAG's score of a grouping: for every task j, the mean affinity onto j from the other tasks
    of its group, mean_{i in group(j), i != j} A[i, j]; a task alone in its group scores 0. Averaged over tasks.

    `affinity[i, j]` is the lookahead affinity of task i onto task j; `groups[t]` is task t's group index.
    """
    a = _square("affinity", affinity)
    g = _groups(groups, len(a))
    per_task = []
    for j in range(len(a)):
        mates = [i for i in range(len(a)) if i != j and g[i] == g[j]]
        per_task.append(float(np.mean(a[mates, j])) if mates else 0.0)
    return float(np.mean(per_task))


def two_group_splits(tasks: int, *, balanced: bool = True) -> list[tuple[int, ...]]:
    """Every split of `tasks` tasks into two non-empty groups, as group indices with task 0 in group 0
    . `balanced`: only splits whose group sizes differ by at most one (4 tasks: 3 splits of 2 + 2).
    """
    checks.integer("tasks", tasks, 2)
    out = []
    for rest in itertools.product((0, 1), repeat=tasks - 1):
        g = (0, *rest)
        ones = sum(g)
        if ones and (not balanced or abs(tasks - 2 * ones) <= 1):
            out.append(g)
    return out


def rank_splits(affinity, *, balanced: bool = True) -> list[tuple[tuple[int, ...], float]]:
    """The two-group splits of `two_group_splits` with their `grouping_score`, best first.

    Ties keep the order of `two_group_splits`. The first entry is the grouping the affinities suggest, the last
    the one they advise against.
    """
    a = _square("affinity", affinity)
    scored = [(g, grouping_score(a, g)) for g in two_group_splits(len(a), balanced=balanced)]
    return sorted(scored, key=lambda gs: -gs[1])


class AffinityMeter:
    """A `fit` callback that averages the lookahead affinity over training, as TAG does.

    Every `every` optimiser steps it calls `task_affinity(model, loss_fns, batch, lr)` on the step's batch
    (after the step; the model is restored each time, so training is unchanged). `mean` is the running T×T mean,
    rows and columns in the order of `loss_fns`; `count` the number of measurements.
    """

    def __init__(self, loss_fns: dict, lr: float, every: int = 1):
        if not isinstance(loss_fns, dict) or len(loss_fns) < 2:
            checks.fail("loss_fns", "a dict task -> loss function with at least two tasks", loss_fns)
        self.tasks = checks.task_names("loss_fns", loss_fns)
        self.loss_fns = loss_fns
        self.lr = checks.positive("lr", lr)
        self.every = checks.integer("every", every)
        self.total = np.zeros((len(loss_fns), len(loss_fns)))
        self.count = 0

    def on_step_end(self, state) -> None:
        if state.step % self.every == 0:
            self.total += task_affinity(state.model, self.loss_fns, (state.x, state.y), self.lr)
            self.count += 1

    @property
    def mean(self) -> np.ndarray:
        """The mean affinity matrix so far (zeros before the first measurement)."""
        return self.total / max(self.count, 1)

    def state_dict(self) -> dict:
        """The running sum and count, saved in fit's checkpoints so a resumed run averages the same steps."""
        return {"total": self.total.tolist(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = np.asarray(state["total"], dtype=float), int(state["count"])
