"""fit's plug-ins one by one (companion.plugins): scripted metrics, resume, best weights, validation, the facade."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from companion.batches import TensorBatches
from companion.checkpoints import load_checkpoint
from companion.evaluation import batch_losses, evaluate
from companion.loop import StepContext, Update, WeightedSum
from companion.plugins import Checkpointer, EarlyStopping, EvaluateEvery, RestoreBest, Validate, infer_mode
from companion.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1) * 2.0
    return x, y


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def rows(history) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


def same_weights(a: nn.Module, b: nn.Module | dict) -> bool:
    other = b if isinstance(b, dict) else b.state_dict()
    return all(torch.equal(v, other[k]) for k, v in a.state_dict().items())


class Script:
    """Writes a scripted value into each epoch's row (a user callback: order 0)."""

    def __init__(self, values, key: str = "score"):
        self.values, self.key = values, key

    def on_epoch_end(self, state):
        state.row[self.key] = self.values[state.epoch]


class Snapshots:
    """Keeps the model's weights at every epoch end."""

    def __init__(self):
        self.weights = []

    def on_epoch_end(self, state):
        self.weights.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})


class Crash:
    """Raises right after optimiser step `at` (before that step's checkpoint); at=None: never."""

    def __init__(self, at: int | None):
        self.at = at

    def on_step_end(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt(f"crash at step {state.step}")


# ------------------------------------------------------------------------------------------- EarlyStopping


def stops_after(stopper: EarlyStopping, values: list[float], key: str = "val_loss") -> int | None:
    """How many epochs run before `stopper` sets state.stop (None: never) on a scripted metric sequence."""
    state = SimpleNamespace(stop=False, row=None)
    for epoch, value in enumerate(values, start=1):
        state.row = {key: value}
        stopper.on_epoch_end(state)
        if state.stop:
            return epoch
    return None


@pytest.mark.parametrize(
    ("mode", "patience", "values", "epochs"),
    [
        ("min", 2, [5, 4, 4.5, 3, 3.5, 3.2, 1], 6),  # best 3 at epoch 4, then two epochs without improvement
        ("max", 2, [5, 4, 4.5, 3, 3.5, 3.2, 1], 3),  # best 5 at epoch 1: 4 and 4.5 are the two bad ones
        ("min", 1, [2, 2], 2),  # an equal value is no improvement
        ("max", 3, [1, 2, 3, 4, 5], None),  # always improving: never stops
        ("min", 3, [1, 2, 3, 4, 5], 4),
    ],
)
def test_early_stopping_stops_after_exactly_patience_bad_epochs(mode, patience, values, epochs):
    assert stops_after(EarlyStopping(patience, mode=mode), values) == epochs


def test_mode_is_inferred_from_the_monitor_unless_given():
    assert infer_mode("val_loss") == "min" and infer_mode("val_acc/main") == "max"
    assert infer_mode("val_acc", "min") == "min" and infer_mode("val_loss", "max") == "max"
    values = [0.9, 0.8, 0.7, 0.6]  # an accuracy falling: bad epochs under the inferred "max"
    assert stops_after(EarlyStopping(2, monitor="val_acc"), values, "val_acc") == 3
    assert stops_after(EarlyStopping(2, monitor="val_acc", mode="min"), values, "val_acc") is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EarlyStopping(0), "patience must be a positive integer, got 0"),
        (lambda: EarlyStopping(2, mode="up"), "mode must be None, 'min' or 'max', got 'up'"),
        (lambda: RestoreBest(mode="lower"), "mode must be None, 'min' or 'max', got 'lower'"),
        (lambda: Checkpointer("ck.pt", every=0), "every must be None or a positive integer, got 0"),
        (
            lambda: Checkpointer("ck.pt", resume="best"),
            "resume must be 'latest' or 'latest-good', got 'best'",
        ),
    ],
)
def test_bad_plugin_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_monitor_missing_from_the_row_is_named():
    with pytest.raises(
        ValueError, match=r"monitor='val_loss' is not in the history row; available: \['score'\]"
    ):
        stops_after(EarlyStopping(1), [1.0], key="score")


def test_early_stopping_in_fit_follows_a_callbacks_metric_whatever_the_list_order():
    x, y = blobs()
    scores = [1, 3, 2, 2.5, 0, 4, 5, 6]
    stopper = EarlyStopping(3, monitor="score", mode="max")  # listed first; runs after Script (order 20)
    hist = fit(
        net(),
        TensorBatches(x, y, 16),
        epochs=8,
        callbacks=[stopper, Script(scores)],
        device="cpu",
        progress=False,
    )
    assert len(hist) == 5 and hist.series("score") == [1, 3, 2, 2.5, 0]
    hist = fit(
        net(),
        TensorBatches(x, y, 16),
        epochs=8,
        early_stop=3,
        monitor="score",
        callbacks=[Script(scores)],
        device="cpu",
        progress=False,
    )  # the facade, mode inferred "min": 1 is never beaten
    assert len(hist) == 4
    hist = fit(
        net(),
        TensorBatches(x, y, 16),
        epochs=8,
        early_stop=3,
        monitor="score",
        mode="max",
        callbacks=[Script(scores)],
        device="cpu",
        progress=False,
    )
    assert len(hist) == 5


def test_stop_set_by_a_callback_during_a_step_closes_the_epoch_there():
    class StopAt:
        def on_step_end(self, state):
            if state.step == 6:
                state.stop = True

    x, y = blobs()
    hist = fit(
        net(),
        TensorBatches(x, y, 16),
        epochs=5,
        val=TensorBatches(x, y, 64),
        callbacks=[StopAt()],
        device="cpu",
        progress=False,
    )
    assert [r["step"] for r in hist] == [4, 6] and "val_loss" in hist.last


# --------------------------------------------------------------------------------------------- RestoreBest


@pytest.mark.parametrize(("mode", "scores", "best"), [("max", [1, 4, 2, 3], 1), ("min", [3, 4, 1, 2], 2)])
def test_restore_best_ends_on_the_best_epochs_weights(mode, scores, best):
    x, y = blobs()
    snaps, model = Snapshots(), net()
    fit(
        model,
        TensorBatches(x, y, 16),
        epochs=4,
        lr=0.05,
        device="cpu",
        progress=False,
        callbacks=[RestoreBest("score", mode), Script(scores), snaps],
    )
    assert same_weights(model, snaps.weights[best])
    assert not same_weights(model, snaps.weights[-1])
    facade = net()
    fit(
        facade,
        TensorBatches(x, y, 16),
        epochs=4,
        lr=0.05,
        restore_best=True,
        monitor="score",
        mode=mode,
        callbacks=[Script(scores)],
        device="cpu",
        progress=False,
    )
    assert same_weights(facade, model)


def test_restore_best_survives_a_resume_after_its_best_epoch(tmp_path):
    x, y = blobs()
    scores = [1.0, 0.2, 0.5, 0.7]  # best (min) at epoch 2; the run is interrupted in epoch 3

    def run(crash_at, ckpt):
        model = net()
        cbs = [Script(scores), Crash(crash_at), RestoreBest("score")]
        if ckpt is not None:
            cbs.append(Checkpointer(ckpt))
        fit(
            model,
            TensorBatches(x, y, 16, seed=1),
            epochs=4,
            lr=0.05,
            seed=2,
            callbacks=cbs,
            device="cpu",
            progress=False,
        )
        return model

    reference = run(None, None)
    with pytest.raises(KeyboardInterrupt):
        run(10, tmp_path / "ck.pt")  # 4 steps an epoch: step 10 is in epoch 3
    assert load_checkpoint(tmp_path / "ck.pt")["epoch"] == 2
    assert same_weights(run(None, tmp_path / "ck.pt"), reference)


# -------------------------------------------------------------------------------------------- Checkpointer


def test_checkpointer_resumes_mid_epoch_to_bit_identical_weights_and_history(tmp_path):
    x, y = blobs(128)
    path = tmp_path / "ck.pt"

    def run(crash_at, ckpt=None):
        model = net()
        cbs = [Crash(crash_at)] + ([Checkpointer(ckpt, every=3)] if ckpt else [])
        hist = fit(
            model,
            TensorBatches(x, y, 16, seed=1),
            epochs=3,
            lr=0.02,
            scheduler="cosine",
            seed=5,
            callbacks=cbs,
            device="cpu",
            progress=False,
        )
        return model, rows(hist)

    reference, ref_rows = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(14, path)  # 8 steps an epoch: killed after step 14, the checkpoint of step 12 is the last one
    state = load_checkpoint(path)
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (1, 12, 4)
    assert state["running"]["counts"]["train_loss/main"] == 4 * 16
    model, resumed_rows = run(None, path)
    assert same_weights(model, reference) and resumed_rows == ref_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "ck.pt.prev"]  # no temporary left behind


def test_checkpointer_writes_atomically_a_failed_write_keeps_the_last_good_file(tmp_path, monkeypatch):
    x, y = blobs()
    path = tmp_path / "ck.pt"
    real_save = torch.save

    def broken(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    class BreakDiskInEpoch2:
        def on_epoch_start(self, state):
            if state.epoch == 1:
                monkeypatch.setattr(torch, "save", broken)

    with pytest.raises(OSError, match="disk full"):
        fit(
            net(),
            TensorBatches(x, y, 16),
            epochs=2,
            callbacks=[BreakDiskInEpoch2(), Checkpointer(path)],
            device="cpu",
            progress=False,
        )
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1  # the epoch-1 checkpoint, whole
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_checkpoint_of_another_run_is_refused_by_the_plugin(tmp_path):
    x, y = blobs(32)
    path = tmp_path / "ck.pt"
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), callbacks=[Checkpointer(path)], device="cpu", progress=False)
    with pytest.raises(ValueError, match="written with seed=0, this run has seed=1"):
        fit(
            nn.Linear(2, 2),
            TensorBatches(x, y, 8),
            seed=1,
            callbacks=[Checkpointer(path)],
            device="cpu",
            progress=False,
        )


def test_a_callbacks_state_finds_it_on_resume_when_plugins_are_added_around_it(tmp_path):
    class Counter:
        def __init__(self):
            self.steps = 0

        def on_step_end(self, state):
            self.steps += 1

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]

    x, y = blobs()
    path = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(
            net(),
            TensorBatches(x, y, 16),
            epochs=3,
            callbacks=[Counter(), Crash(6), Checkpointer(path, every=1)],
            device="cpu",
            progress=False,
        )
    assert load_checkpoint(path)["callback_names"] == ["Counter#0", "Crash#0", "_Record#0", "Checkpointer#0"]
    counter = Counter()
    fit(
        net(),
        TensorBatches(x, y, 16),
        epochs=3,
        val=TensorBatches(x, y, 64),
        early_stop=5,  # two plug-ins more
        callbacks=[counter, Crash(None), Checkpointer(path, every=1)],
        device="cpu",
        progress=False,
    )
    assert counter.steps == 12  # 5 counted before the crash (step 6 was not checkpointed), 7 after


# ------------------------------------------------------------------------------------------------ Validate


def test_validate_adds_evaluates_entries_to_each_row():
    x, y = blobs()
    val = TensorBatches(x[:40], y[:40], 16, shuffle=False)
    snaps, model = Snapshots(), net()
    hist = fit(
        model,
        TensorBatches(x, y, 16),
        epochs=2,
        lr=0.05,
        callbacks=[snaps, Validate(val)],
        device="cpu",
        progress=False,
    )
    for row, weights in zip(hist, snaps.weights, strict=True):
        probe = net()
        probe.load_state_dict(weights)
        expected = evaluate(probe, val, device="cpu")
        assert {k: row[k] for k in row if k.startswith("val_")} == {
            f"val_{k}": v for k, v in expected.items()
        }
    facade = fit(net(), TensorBatches(x, y, 16), epochs=2, lr=0.05, val=val, device="cpu", progress=False)
    assert rows(facade) == rows(hist)


class StepSnapshots:
    """Keeps the model's weights after every optimiser step."""

    def __init__(self):
        self.weights = []

    def on_step_end(self, state):
        self.weights.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})


def test_evaluate_every_scores_the_weights_of_every_nth_step_and_leaves_training_alone():
    x, y = blobs()
    val = TensorBatches(x[:40], y[:40], 16, shuffle=False)
    snaps, curve, model = StepSnapshots(), EvaluateEvery(val, 3), net()
    kw = dict(
        epochs=2, lr=0.05, device="cpu", progress=False
    )  # 4 batches per epoch: 8 steps, crossing epochs
    fit(model, TensorBatches(x, y, 16), callbacks=[snaps, curve], **kw)
    assert [r["step"] for r in curve.rows] == [3, 6] and [r["epoch"] for r in curve.rows] == [1, 2]
    for row in curve.rows:
        probe = net()
        probe.load_state_dict(snaps.weights[row["step"] - 1])
        assert {k: v for k, v in row.items() if k.startswith("val_")} == {
            f"val_{k}": v for k, v in evaluate(probe, val, device="cpu").items()
        }
    plain = net()  # dropout is on: a mode left in eval after an evaluation would change the weights
    fit(plain, TensorBatches(x, y, 16), **kw)
    assert same_weights(model, plain)
    assert curve.history().series("val_acc") == [r["val_acc"] for r in curve.rows]
    again = EvaluateEvery(val, 3)
    again.load_state_dict(curve.state_dict())
    assert again.rows == curve.rows
    with pytest.raises(ValueError, match="steps must be"):
        EvaluateEvery(val, 0)


def test_keywords_and_plugins_in_any_order_train_the_same(tmp_path):
    x, y = blobs()
    val = TensorBatches(
        x, 1 - y, 64, shuffle=False
    )  # flipped labels: val_loss rises, early stopping triggers
    a, b = net(), net()
    kw = dict(epochs=20, lr=0.05, seed=3, device="cpu", progress=False)
    ha = fit(
        a,
        TensorBatches(x, y, 16, seed=1),
        val=val,
        early_stop=2,
        restore_best=True,
        checkpoint=tmp_path / "a.pt",
        checkpoint_every=5,
        **kw,
    )
    hb = fit(
        b,
        TensorBatches(x, y, 16, seed=1),
        callbacks=[Checkpointer(tmp_path / "b.pt", every=5), RestoreBest(), EarlyStopping(2), Validate(val)],
        **kw,
    )
    assert rows(ha) == rows(hb) and len(ha) == 3 and same_weights(a, b)
    sa, sb = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert all(torch.equal(v, sb["model"][k]) for k, v in sa["model"].items())


# ---------------------------------------------------------------------------------- the step, shared pieces


def test_update_is_one_plain_optimiser_step():
    x, y = blobs(16)
    a, b = net(), net()
    a.eval(), b.eval()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    _, losses = batch_losses(a, x, {"main": y}, device=torch.device("cpu"))
    update = Update(opt_a, WeightedSum(), clip_grad=0.01)
    update.backward(losses, a, 0, 0)
    update.apply(1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(b(x), y).backward()
    torch.nn.utils.clip_grad_norm_(list(b.parameters()), 0.01)
    opt_b.step()
    assert same_weights(a, b)
    assert StepContext(model=a, step=0, epoch=0, scale=4.0).scaled(torch.tensor(2.0)).item() == 8.0


def test_batch_losses_names_a_task_the_model_does_not_output():
    x, y = blobs(8)
    with pytest.raises(ValueError, match=r"no output for task\(s\) \['aux'\]; outputs: \['main'\]"):
        evaluate(nn.Linear(2, 2), [(x, {"main": y, "aux": y})], device="cpu")
