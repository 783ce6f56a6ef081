"""Training under torchrun (companion.distributed): one process's result on the global batch, kill and resume."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from companion import distributed
from companion.batches import TensorBatches
from companion.checkpoints import load_checkpoint, save_checkpoint
from companion.train import fit

REPO = Path(__file__).resolve().parents[1]

# The training runs compared below; the same file runs under torchrun (2 processes) and in this process (1).
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from torch import nn
    from companion import distributed
    from companion.balancers import FAMO, GradAggregation, GradNorm
    from companion.batches import TensorBatches
    from companion.train import fit

    class TwoHead(nn.Module):
        def __init__(self, p=0.0):
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(p))
            self.cls, self.reg = nn.Linear(16, 3), nn.Linear(16, 1)

        def forward(self, x):
            h = self.trunk(x)
            return {"cls": self.cls(h), "reg": self.reg(h).squeeze(1)}

    class Kill:  # rank 1 dies (SIGKILL) at the end of step `at`, after checkpoint at-1 was written
        def __init__(self, at):
            self.at = at

        def on_step_end(self, state):
            if state.step == self.at and distributed.rank() == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    targets = {"cls": (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long(), "reg": x[:, 4] - x[:, 5]}

    def result(model, hist):
        return {"weights": model.state_dict(), "history": [{k: v for k, v in r.items() if k != "time_s"} for r in hist]}

    def compare():
        out = {}
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        hist = fit(model, TensorBatches(x, targets["cls"], 16, seed=1), epochs=2, lr=0.02, seed=3, progress=False)
        out["single-task"] = result(model, hist)
        balancers = {"upgrad": GradAggregation("upgrad", mode="params"), "famo": FAMO(), "gradnorm": GradNorm()}
        for name, balancer in balancers.items():
            torch.manual_seed(0)
            model = TwoHead()
            hist = fit(model, TensorBatches(x, targets, 16, seed=1), epochs=2, lr=0.02, seed=3, balancer=balancer,
                       progress=False)
            out[name] = result(model, hist)
        try:
            fit(TwoHead(), TensorBatches(x, targets, 16), balancer=GradAggregation(mode="features"), progress=False)
        except ValueError as err:
            out["features"] = str(err)
        return out

    def resume(ckpt, kill_at=0):
        torch.manual_seed(0)
        model = TwoHead(p=0.2)  # dropout: each rank's random state must be restored too
        hist = fit(model, TensorBatches(x, targets, 16, seed=1), epochs=3, lr=0.02, seed=3,
                   balancer=GradAggregation("upgrad", mode="params"), checkpoint=ckpt, checkpoint_every=1,
                   callbacks=[Kill(kill_at)], progress=False)
        return result(model, hist)

    if __name__ == "__main__":
        kind, out = sys.argv[1], sys.argv[2]
        if kind == "all":
            res = {"compare": compare(), "resume": resume(sys.argv[3])}
        else:
            res = {"resume": resume(sys.argv[3], int(sys.argv[4]))}
        if distributed.is_main():
            torch.save(res, out)
    """
)

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)


def torchrun(script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch: the comparison runs and an uninterrupted checkpointed run."""
    folder = tmp_path_factory.mktemp("torchrun")
    script = folder / "runs.py"
    script.write_text(SCRIPT)
    torchrun(script, "all", str(folder / "all.pt"), str(folder / "full-ck.pt"))
    return script, torch.load(folder / "all.pt", weights_only=True)


@needs_gloo
@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_processes_equal_one_process_on_the_global_batch(launched):
    script, results = launched
    reference = runpy.run_path(str(script))["compare"]()  # this process: world 1, the same global batches
    dist_runs = results["compare"]
    for name in ("single-task", "upgrad", "famo", "gradnorm"):
        one, two = reference[name], dist_runs[name]
        for key, w in one["weights"].items():
            assert torch.allclose(two["weights"][key], w, rtol=0, atol=1e-5), f"{name}: {key} differs"
        for row_one, row_two in zip(one["history"], two["history"], strict=True):
            assert set(row_one) == set(row_two)
            assert all(row_two[k] == pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in row_one.items()), name
    assert "GradAggregation(mode='features') aggregates per-sample gradients" in dist_runs["features"]
    assert "pass GradAggregation(..., mode='params')" in dist_runs["features"]


@needs_gloo
@pytest.mark.slow
def test_kill_and_resume_under_torchrun_ends_as_the_uninterrupted_run(launched, tmp_path):
    script, results = launched
    ckpt, out = tmp_path / "ck.pt", tmp_path / "resumed.pt"
    killed = torchrun(script, "resume", str(out), str(ckpt), "8", check=False)
    assert killed.returncode != 0 and not out.exists(), "rank 1 was to be killed at step 8"
    state = load_checkpoint(ckpt)
    assert state["step"] == 7 and state["fingerprint"]["world_size"] == 2
    ranks = state["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    torchrun(script, "resume", str(out), str(ckpt), "0")
    full, resumed = results["resume"], torch.load(out, weights_only=True)["resume"]
    assert all(torch.equal(full["weights"][k], resumed["weights"][k]) for k in full["weights"])
    assert full["history"] == resumed["history"]


# --------------------------------------------------------------------------- one process: no torchrun needed


def test_shards_of_a_batch_are_disjoint_equal_and_make_up_the_batch():
    x = torch.arange(44).float().unsqueeze(1)
    y = {"a": torch.arange(44), "b": -torch.arange(44)}
    whole = TensorBatches(x, y, 8, seed=5)
    parts = [whole.shard(r, 4) for r in range(4)]
    assert len(whole) == 6 and [len(p) for p in parts] == [6] * 4  # 44 = 5 x 8 + 4: the last batch, 1 each
    for e in (0, 3):
        for p in (whole, *parts):
            p.set_epoch(e)
        for (xb, yb), *shards in zip(whole, *parts, strict=True):
            assert len({len(s[0]) for s in shards}) == 1 and len(shards[0][0]) * 4 == len(xb)
            assert torch.equal(torch.cat([s[0] for s in shards]), xb)
            assert torch.equal(torch.cat([s[1]["b"] for s in shards]), yb["b"])
    odd = TensorBatches(x[:42], y["a"][:42], 8, seed=5)  # last batch of 2 cannot feed 4 processes: dropped
    assert len(odd) == 6 and len(odd.shard(0, 4)) == 5
    assert (
        len(TensorBatches(x[:43], y["a"][:43], 8).shard(1, 2)) == 6
    )  # last batch of 3: 1 each, one left out


@pytest.mark.parametrize(
    ("rank", "world", "batch", "message"),
    [
        (0, 3, 8, "batch_size must be a multiple of the number of processes \\(3\\) to shard, got 8"),
        (2, 2, 8, "rank must be an integer in 0..1, got 2"),
        (0, 0, 8, "world must be an integer >= 1, got 0"),
    ],
)
def test_bad_shards_are_refused(rank, world, batch, message):
    batches = TensorBatches(torch.zeros(16, 1), torch.zeros(16), batch)
    with pytest.raises(ValueError, match=message):
        batches.shard(rank, world)
    with pytest.raises(ValueError, match="already shard 1 of 2"):
        batches.shard(1, 2).shard(0, 2)


def test_without_torchrun_everything_passes_through(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") == (0, 1, torch.device("cpu"))
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    batches = TensorBatches(torch.zeros(4, 1), torch.zeros(4), 2)
    assert distributed.shard(batches) is batches
    losses = {"a": torch.tensor(2.0, requires_grad=True)}
    assert distributed.global_values(losses) is losses
    assert distributed.gather({"x": 1}) == [{"x": 1}] and distributed.broadcast(3) == 3
    t = torch.ones(2)
    assert distributed.all_reduce_mean(t) is t and torch.equal(t, torch.ones(2))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer \\(set by torchrun\\), got 'two'"):
        distributed.init()


def test_a_checkpoint_of_two_processes_is_refused_by_one(tmp_path):
    path = tmp_path / "ck.pt"
    batches = TensorBatches(torch.randn(16, 2), torch.zeros(16, dtype=torch.long), 8)
    fit(nn.Linear(2, 2), batches, checkpoint=path, device="cpu", progress=False)
    state = load_checkpoint(path)
    state["fingerprint"]["world_size"] = 2
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match="written with world_size=2, this run has world_size=1"):
        fit(nn.Linear(2, 2), batches, checkpoint=path, device="cpu", progress=False)


def test_a_balancer_says_itself_whether_it_can_run_under_torchrun(monkeypatch):
    from companion.balancers import DWA, GradAggregation

    shared, plain = nn.Module(), nn.Linear(2, 2)
    shared.shared = nn.Linear(2, 2)
    assert GradAggregation("upgrad", mode="params").torchrun_refusal(shared) is None
    assert GradAggregation("upgrad", mode="auto").torchrun_refusal(plain) is None
    assert "mode='params'" in GradAggregation("upgrad", mode="auto").torchrun_refusal(shared)
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(ValueError, match=r"^balancer: GradAggregation\(mode='features'\) aggregates"):
        distributed.check_balancer(GradAggregation("upgrad", mode="features"), plain)
    distributed.check_balancer(DWA(), shared)  # no torchrun_refusal: nothing to refuse
