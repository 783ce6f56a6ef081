"""fit(), evaluate(), checkpoints: reference values, determinism, kill-and-resume."""

from __future__ import annotations

import math
import os
import random
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from companion.batches import TensorBatches
from companion.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from companion.device import seed_everything
from companion.evaluation import accuracy, default_loss, evaluate
from companion.loop import StepContext, WeightedSum
from companion.optim import _OPTIMIZERS, _make_optimizer
from companion.train import fit

REPO = Path(__file__).resolve().parents[1]


def blobs(n: int = 400, seed: int = 0):
    """Two Gaussian blobs in 2-D, linearly separable with margin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1) * 2.0
    return x, y


class TwoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.1))
        self.cls = nn.Linear(16, 2)
        self.reg = nn.Linear(16, 1)

    def forward(self, x):
        h = self.trunk(x)
        return {"cls": self.cls(h), "reg": self.reg(h).squeeze(1)}


def test_default_loss_and_accuracy_reference_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 1, 1])
    expected = -(torch.log_softmax(logits, 1)[torch.arange(3), target]).mean()
    assert torch.isclose(default_loss(logits, target), expected)
    assert accuracy(logits, target) == pytest.approx(2 / 3)  # the tie [1, 1] argmaxes to class 0
    assert default_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)
    assert accuracy(torch.tensor([1.0]), torch.tensor([1.0])) is None
    multi = torch.tensor([[1.0, -1.0, 2.0]])
    assert accuracy(multi, torch.tensor([[1.0, 1.0, 1.0]])) == pytest.approx(2 / 3)


def test_fit_learns_single_task_and_history_has_per_task_keys():
    x, y = blobs()
    hist = fit(
        nn.Linear(2, 2),
        TensorBatches(x, y, 32, seed=0),
        epochs=5,
        lr=0.05,
        val=TensorBatches(x, y, 100, shuffle=False),
        device="cpu",
        progress=False,
    )
    assert len(hist) == 5
    assert hist.series("train_loss")[-1] < hist.series("train_loss")[0]
    assert hist.last["val_acc/main"] > 0.95
    assert hist.last["val_acc"] == hist.last["val_acc/main"]
    assert {"epoch", "step", "lr", "train_loss/main", "train_acc/main", "val_loss/main", "time_s"} <= set(
        hist.last
    )
    assert hist.last["step"] == 5 * math.ceil(400 / 32)


def test_fit_is_deterministic_for_a_seed():
    x, y = blobs()
    weights = []
    for _ in range(2):
        torch.manual_seed(123)
        model = TwoHead()
        fit(
            model,
            TensorBatches(x, {"cls": y, "reg": x[:, 0]}, 32, seed=1),
            epochs=2,
            device="cpu",
            seed=7,
            progress=False,
        )
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_multitask_summed_losses_equal_manual_gradient():
    """The default balancer backpropagates the plain sum of task losses (notebook 01's definition of MTL)."""
    x, y = blobs(64)
    torch.manual_seed(0)
    model = TwoHead().eval()
    targets = {"cls": y, "reg": x[:, 0]}
    out = model(x)
    manual = nn.functional.cross_entropy(out["cls"], y) + nn.functional.mse_loss(out["reg"], targets["reg"])
    grads = torch.autograd.grad(manual, list(model.parameters()))
    out = model(x)
    losses = {"cls": default_loss(out["cls"], y), "reg": default_loss(out["reg"], targets["reg"])}
    model.zero_grad()
    WeightedSum().backward(losses, StepContext(model=model, step=0, epoch=0))
    assert all(torch.allclose(g, p.grad) for g, p in zip(grads, model.parameters()))
    hist = fit(TwoHead(), TensorBatches(x, targets, 16), epochs=2, device="cpu", progress=False)
    assert {"train_loss/cls", "train_loss/reg", "train_acc/cls"} <= set(hist.last)
    assert "train_acc/reg" not in hist.last
    assert hist.last["train_loss"] == pytest.approx(hist.last["train_loss/cls"] + hist.last["train_loss/reg"])


def test_bf16_autocast_trains_on_cpu():
    x, y = blobs()
    hist = fit(
        nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2)),
        TensorBatches(x, y, 32),
        epochs=4,
        lr=0.02,
        precision="bf16",
        val=TensorBatches(x, y, 400),
        device="cpu",
        progress=False,
    )
    assert hist.last["val_acc"] > 0.95


def test_fp16_grad_scaler_path_runs_and_unscales():
    x, y = blobs()
    model = nn.Linear(2, 2)
    hist = fit(
        model,
        TensorBatches(x, y, 32),
        epochs=3,
        lr=0.05,
        precision="fp16",
        clip_grad=1.0,
        val=TensorBatches(x, y, 400),
        device="cpu",
        progress=False,
    )
    assert hist.last["val_acc"] > 0.95
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_loss_stops_with_step_and_task():
    x, y = blobs(64)
    x[40] = float("nan")
    with pytest.raises(FloatingPointError, match=r"loss of task 'main' is nan at step \d+ \(epoch 0"):
        fit(nn.Linear(2, 2), TensorBatches(x, y, 16, shuffle=False), epochs=1, device="cpu", progress=False)


def test_schedulers_follow_their_formulas():
    x, y = blobs(64)
    hist = fit(
        nn.Linear(2, 2),
        TensorBatches(x, y, 16),
        epochs=2,
        lr=0.1,
        scheduler="cosine",
        device="cpu",
        progress=False,
    )
    assert hist[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * 4 / 8)) / 2)
    assert hist[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    hist = fit(
        nn.Linear(2, 2),
        TensorBatches(x, y, 16),
        epochs=2,
        lr=0.1,
        scheduler="warmup_cosine",
        warmup_steps=4,
        device="cpu",
        progress=False,
    )
    assert hist[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * 4 / 8)) / 2, rel=1e-3)


def test_a_schedule_registered_by_name_is_built_and_stepped_per_update(monkeypatch):
    from companion import optim

    def halve_every_2(optimizer, total_steps, warmup_steps):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    monkeypatch.setitem(optim.SCHEDULERS, "halve", halve_every_2)
    x, y = blobs(64)  # 4 steps per epoch
    hist = fit(nn.Linear(2, 2), TensorBatches(x, y, 16), epochs=2, lr=0.1, scheduler="halve", device="cpu",
               progress=False)  # fmt: skip
    assert hist.series("lr") == [pytest.approx(0.1 * 0.5**2), pytest.approx(0.1 * 0.5**4)]


def test_param_groups_keep_their_own_learning_rates():
    x, y = blobs(64)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    groups = [{"params": model[0].parameters(), "lr": 0.001}, {"params": model[2].parameters(), "lr": 0.01}]
    opt = torch.optim.SGD(groups, lr=0.5)
    fit(
        model,
        TensorBatches(x, y, 16),
        epochs=1,
        optimizer=opt,
        scheduler="cosine",
        device="cpu",
        progress=False,
    )
    assert [g["initial_lr"] for g in opt.param_groups] == [0.001, 0.01]


@pytest.mark.parametrize("kwargs", [{"param_groups": "groups"}, {"weight_decay": 0.01}])
def test_an_optimizer_instance_refuses_param_groups_and_weight_decay(kwargs):
    x, y = blobs(16)
    model = nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if kwargs.get("param_groups") == "groups":
        kwargs = {"param_groups": [{"params": list(model.parameters()), "lr": 0.5}]}
    with pytest.raises(
        ValueError,
        match=r"optimizer must be a name .* got a SGD instance, which already holds its "
        r"parameter groups; pass param_groups/weight_decay to it, or pass a name",
    ):
        fit(model, TensorBatches(x, y, 8), optimizer=opt, device="cpu", progress=False, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name", _OPTIMIZERS)
def test_named_optimizers_from_timm_equal_torch_optim_bit_for_bit(name):
    """fit's named optimisers come from timm's factory; they must train exactly as torch.optim's classes did."""
    reference = {
        "adamw": lambda g: torch.optim.AdamW(g, lr=3e-3, weight_decay=0.1),
        "adam": lambda g: torch.optim.Adam(g, lr=3e-3, weight_decay=0.1),
        "sgd": lambda g: torch.optim.SGD(g, lr=3e-3, momentum=0.9, weight_decay=0.1),
    }[name]

    def train(make):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = make(
            [
                {"params": list(model[0].parameters()), "lr": 0.01},
                {"params": list(model[2].parameters()), "weight_decay": 0.0},
            ]
        )
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            opt.zero_grad()
            model(torch.randn(16, 5, generator=g)).pow(2).mean().backward()
            opt.step()
        return model, opt

    (a, opt_a), (b, opt_b) = train(reference), train(lambda g: _make_optimizer(name, g, 3e-3, 0.1))
    assert type(opt_a) is type(opt_b)
    hyper = [[{k: v for k, v in g.items() if k != "params"} for g in o.param_groups] for o in (opt_a, opt_b)]
    assert hyper[0] == hyper[1]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _global_states():
    np_state = np.random.get_state()
    return random.getstate(), (np_state[0], np_state[1].copy(), *np_state[2:]), torch.get_rng_state()


def _same_states(a, b) -> bool:
    return (
        a[0] == b[0]
        and a[1][0] == b[1][0]
        and np.array_equal(a[1][1], b[1][1])
        and a[1][2:] == b[1][2:]
        and torch.equal(a[2], b[2])
    )


class DrawAll:
    """Draws from Python's, NumPy's and torch's global generators at every step (inside fit)."""

    def __init__(self):
        self.first = None

    def on_fit_start(self, state):
        self.first = (random.random(), float(np.random.rand()), torch.rand(()).item())

    def on_step_start(self, state):
        state.logs["draw"] = random.random() + float(np.random.rand()) + torch.rand(()).item()


def test_fit_leaves_the_callers_random_states_alone():
    x, y = blobs(64)
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    model = TwoHead()
    before = _global_states()
    draws = DrawAll()
    fit(
        model,
        TensorBatches(x, {"cls": y, "reg": x[:, 0]}, 16),
        epochs=2,
        seed=7,
        callbacks=[draws],
        device="cpu",
        progress=False,
    )
    assert _same_states(before, _global_states())
    seed_everything(7)  # inside, fit seeds exactly as seed_everything(seed + rank) did before every run
    assert draws.first == (random.random(), float(np.random.rand()), torch.rand(()).item())
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    model = nn.Linear(2, 2)
    before = _global_states()
    bad = x.clone()
    bad[5] = float("nan")
    with pytest.raises(FloatingPointError):  # also when fit stops on an error
        fit(
            model,
            TensorBatches(bad, y, 16, shuffle=False),
            callbacks=[DrawAll()],
            device="cpu",
            progress=False,
        )
    assert _same_states(before, _global_states())


def test_two_fits_with_one_seed_agree_whatever_the_caller_draws_between():
    x, y = blobs(64)
    weights = []
    for draws in (0, 3):
        torch.manual_seed(0)
        model = TwoHead()
        random.random(), np.random.rand(draws + 1), torch.rand(draws + 5)  # the caller's own draws
        hist = fit(
            model,
            TensorBatches(x, {"cls": y, "reg": x[:, 0]}, 16, seed=1),
            epochs=2,
            seed=4,
            callbacks=[DrawAll()],
            device="cpu",
            progress=False,
        )
        weights.append(([p.detach().clone() for p in model.parameters()], hist.series("draw")))
    assert all(torch.equal(a, b) for a, b in zip(weights[0][0], weights[1][0]))
    assert weights[0][1] == weights[1][1]


def test_early_stopping_and_restore_best():
    x, y = blobs(64)
    val = TensorBatches(
        x, 1 - y, 64, shuffle=False
    )  # flipped labels: validation loss rises as training succeeds
    model = nn.Linear(2, 2)
    hist = fit(
        model,
        TensorBatches(x, y, 16),
        epochs=50,
        lr=0.05,
        val=val,
        early_stop=2,
        restore_best=True,
        device="cpu",
        progress=False,
    )
    assert len(hist) == 3  # best at epoch 1, then two epochs without improvement
    assert hist[1]["val_loss"] > hist[0]["val_loss"] and hist[2]["val_loss"] > hist[0]["val_loss"]
    assert evaluate(model, val, device="cpu")["loss"] == pytest.approx(hist[0]["val_loss"], rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"epochs": -3}, "epochs must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"optimizer": "lamb"}, "optimizer must be one of"),
        ({"scheduler": "linear"}, "scheduler must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"mode": "up"}, "mode must be None, 'min' or 'max', got 'up'"),
        ({"resume": "best"}, "resume must be 'latest' or 'latest-good', got 'best'"),
    ],
)
def test_bad_arguments_fail_before_training(kwargs, message):
    x, y = blobs(16)
    model = nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message) as err:
        fit(model, TensorBatches(x, y, 8), progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_evaluate_reference_values():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    res = evaluate(model, TensorBatches(x, y, 3, shuffle=False), device="cpu")
    assert res["acc/main"] == pytest.approx(0.75)
    expected = nn.functional.cross_entropy(x, y).item()
    assert res["loss/main"] == pytest.approx(expected, rel=1e-6)


def test_checkpoint_round_trip_and_corrupt_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1})
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 2})
    assert load_checkpoint(path)["step"] == 2
    assert (tmp_path / "ck.pt.prev").exists()
    assert not list(tmp_path.glob(".*tmp"))
    path.write_bytes(path.read_bytes()[:50])  # truncated, like a crash mid-copy by some other tool
    with pytest.raises(CheckpointError, match="corrupt or unreadable.*previous good checkpoint is kept"):
        load_checkpoint(path)
    assert torch.equal(load_checkpoint(tmp_path / "ck.pt.prev")["model"]["w"], torch.ones(2))
    x, y = blobs(16)
    with pytest.raises(CheckpointError):
        fit(nn.Linear(2, 2), TensorBatches(x, y, 8), checkpoint=path, device="cpu", progress=False)
    assert (tmp_path / "ck.pt.prev").exists()


def test_unsafe_pickle_is_refused_not_called_corrupt(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"model": {}, "note": Path("a path object is not a tensor")}, path)
    with pytest.raises(CheckpointError, match="refused: not a weights-only checkpoint"):
        load_checkpoint(path)


def test_corrupt_checkpoint_resumes_from_the_previous_good_one_when_asked(tmp_path):
    x, y = blobs(64)

    def run(**kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
        fit(
            model,
            TensorBatches(x, y, 8, seed=1),
            epochs=3,
            lr=0.01,
            seed=2,
            device="cpu",
            progress=False,
            **kw,
        )
        return model

    reference = run()
    path = tmp_path / "ck.pt"
    run(checkpoint=path)  # ck.pt holds epoch 3, ck.pt.prev epoch 2
    path.write_bytes(b"\x00" * path.stat().st_size)  # same size, damaged
    with pytest.raises(
        CheckpointError,
        match=r'previous good checkpoint is kept at .*ck.pt.prev: fit\(..., resume="latest-good"\)',
    ):
        run(checkpoint=path)
    with pytest.raises(ValueError, match="resume must be 'latest' or 'latest-good', got 'best'"):
        run(checkpoint=path, resume="best")
    with pytest.warns(UserWarning, match="resuming from .*ck.pt.prev"):
        resumed = run(checkpoint=path, resume="latest-good")
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b), (
            "epoch 3 replayed from the epoch-2 checkpoint gives the uninterrupted weights"
        )
    assert (tmp_path / "ck.pt.corrupt").read_bytes() == b"\x00" * (tmp_path / "ck.pt.corrupt").stat().st_size
    assert load_checkpoint(path)["epoch"] == 3


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    x, y = blobs(32)
    path = tmp_path / "ck.pt"
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=1, checkpoint=path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="written with lr=0.001, this run has lr=0.01"):
        fit(
            nn.Linear(2, 2),
            TensorBatches(x, y, 8),
            epochs=1,
            lr=0.01,
            checkpoint=path,
            device="cpu",
            progress=False,
        )


SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    from companion.batches import TensorBatches
    from companion.train import fit

    ckpt, out, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
    def pause(m):
        time.sleep(slow)
        return torch.zeros(())
    fit(model, TensorBatches(x, y, 16, seed=3), epochs=3, lr=0.01, scheduler="cosine", seed=5,
        checkpoint=ckpt, checkpoint_every=1, regularizer=pause, device="cpu", progress=False)
    torch.save(model.state_dict(), out)
    """
)


def test_sigkill_mid_run_then_resume_gives_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, str(script)]
    subprocess.run(
        [*run, str(tmp_path / "a.pt"), str(tmp_path / "full.pt"), "0"], check=True, env=env, timeout=300
    )

    ckpt = tmp_path / "b.pt"
    proc = subprocess.Popen([*run, str(ckpt), str(tmp_path / "resumed.pt"), "0.05"], env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)
    assert 20 <= state["step"] < 48, "the run was not interrupted part-way"
    assert not (tmp_path / "resumed.pt").exists()
    subprocess.run([*run, str(ckpt), str(tmp_path / "resumed.pt"), "0"], check=True, env=env, timeout=300)

    full = torch.load(tmp_path / "full.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


MT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from torch import nn
    from companion.batches import TensorBatches
    from companion.balancers import DWA, FAMO, GradNorm
    from companion.mtl import HardSharing
    from companion.train import fit

    BALANCERS = {"dwa": DWA, "gradnorm": GradNorm, "famo": FAMO}

    class Die:
        \"\"\"SIGKILLs this process right after optimiser step `at` (before that step's checkpoint).\"\"\"
        def __init__(self, at):
            self.at = at
        def on_step_end(self, state):
            if state.step == self.at:
                os.kill(os.getpid(), signal.SIGKILL)

    def run(name, ckpt=None, every=None, die_at=None):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 6, generator=g)
        y = {"cls": (x[:, :3].sum(1) > 0).long(), "reg": torch.tanh(x[:, 3:] @ torch.randn(3, generator=g))}
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2))
        model = HardSharing(trunk, {"cls": nn.Linear(16, 2), "reg": nn.Sequential(nn.Linear(16, 1), nn.Flatten(0))})
        history = fit(model, TensorBatches(x, y, 24, seed=3), epochs=5, lr=0.02, seed=5, balancer=BALANCERS[name](),
                      checkpoint=ckpt, checkpoint_every=every, callbacks=[Die(die_at)] if die_at else None,
                      device="cpu", progress=False)
        rows = [{k: v for k, v in row.items() if k != "time_s"} for row in history]
        return model.state_dict(), rows

    if __name__ == "__main__":
        run(sys.argv[1], sys.argv[2], int(sys.argv[3]) or None, int(sys.argv[4]))
    """
)


@pytest.mark.parametrize(
    "name, every, die_at, resumes_at",
    [
        (
            "dwa",
            0,
            15,
            (3, 12, 0),
        ),  # killed in epoch 4: resumes from the end of epoch 3, DWA's weights moving
        ("gradnorm", 0, 10, (2, 8, 0)),
        ("famo", 0, 10, (2, 8, 0)),
        (
            "dwa",
            3,
            16,
            (3, 15, 3),
        ),  # checkpoints every 3 steps, 4 per epoch: resumes after batch 3 of epoch 4
        ("famo", 3, 11, (2, 9, 1)),
    ],
)
def test_sigkilled_balanced_multitask_run_resumes_bit_identically(tmp_path, name, every, die_at, resumes_at):
    script = tmp_path / "mt.py"
    script.write_text(MT_SCRIPT)
    ckpt = tmp_path / "mt.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script), name, str(ckpt), str(every), str(die_at)], env=env, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == resumes_at
    assert state["balancer"] is not None

    run = runpy.run_path(str(script))["run"]  # the same code in this process: uninterrupted, then resumed
    full, full_rows = run(name)
    resumed, resumed_rows = run(name, ckpt, every or None)
    assert resumed_rows == full_rows
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
