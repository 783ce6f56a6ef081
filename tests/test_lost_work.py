"""Nothing a learner writes is ever lost (issue 23): fit refuses to do nothing, a resume is the same run or a
clear error, notebook runs are atomic, output names stay inside --out, editions respect edits, parameters are
checked early, and the command line answers in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from companion.data import TensorBatches
from companion.train import evaluate, fit

FAST = dict(device="cpu", progress=False)


def _data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] > 0).long()


# --- fit refuses to do nothing ---------------------------------------------------------------------------


@pytest.mark.parametrize("train", [[], "empty-batches"])
def test_fit_on_empty_data_is_an_error_not_zero_steps(train):
    """Before: 2 "epochs", 0 steps, train_loss 0 and no error."""
    if train == "empty-batches":
        train = TensorBatches(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 8)
    model = nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"train is empty.*0 steps"):
        fit(model, train, epochs=2, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fit_on_an_iterator_that_yields_nothing_is_an_error():
    with pytest.raises(ValueError, match="train yielded no batches in epoch 1"):
        fit(nn.Linear(2, 2), iter([]), epochs=2, **FAST)


def test_fit_names_an_empty_batch_instead_of_the_lower_lr_hint():
    x, y = _data(8)
    batches = [(x, y), (x[:0], y[:0])]
    with pytest.raises(ValueError, match=r"batch 1 of train is empty \(0 samples") as info:
        fit(nn.Linear(2, 2), batches, **FAST)
    assert "lower lr" not in str(info.value)


def test_fit_refuses_an_optimizer_built_on_another_models_parameters():
    """Before: weights unchanged, the same loss every epoch, no error."""
    x, y = _data()
    model, other = nn.Linear(2, 2), nn.Linear(2, 2)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer does not hold 2 of the model's 2 trainable .*'weight'"):
        fit(model, TensorBatches(x, y, 8), optimizer=opt, **FAST)
    assert torch.equal(model.weight, before)


def test_fit_accepts_an_optimizer_on_its_own_parameters_and_frozen_ones_left_out():
    x, y = _data()
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    history = fit(model, TensorBatches(x, y, 8), optimizer=opt, **FAST)
    assert history.last["step"] == 4


def test_evaluate_on_empty_data_is_an_error():
    """Before: `{}`, which a notebook then indexes far from the cause."""
    with pytest.raises(ValueError, match="batches is empty"):
        evaluate(nn.Linear(2, 2), [], device="cpu")
    x, y = _data(4)
    with pytest.raises(ValueError, match="batch 0 of batches is empty"):
        evaluate(nn.Linear(2, 2), [(x[:0], y[:0])], device="cpu")


# --- a resume is the same run or a clear error ---------------------------------------------------------


def test_a_resume_with_another_weight_decay_is_refused_naming_it(tmp_path):
    """Before: the run silently continued with the checkpoint's weight decay 0.0."""
    path = tmp_path / "ck.pt"
    x, y = _data()
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **FAST)
    kept = path.read_bytes()
    with pytest.raises(ValueError) as info:
        fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, weight_decay=0.5, checkpoint=path, **FAST)
    msg = str(info.value)
    assert str(path) in msg and "weight_decay=0.0" in msg and "weight_decay=0.5" in msg, msg
    assert path.read_bytes() == kept, "the checkpoint is left as it was"


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(optimizer="sgd"), "optimizer='AdamW'"),  # before: KeyError: 'momentum'
        (dict(clip_grad=1.0), "clip_grad=None"),
        (dict(scheduler="cosine"), "scheduler=None"),
    ],
)
def test_a_resume_with_another_optimizer_or_schedule_names_the_field(tmp_path, change, field):
    path = tmp_path / "ck.pt"
    x, y = _data()
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **FAST)
    with pytest.raises(ValueError, match=f"checkpoint {path}.*written with {field}".replace("[", r"\[")):
        fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, checkpoint=path, **FAST, **change)


def test_a_resume_with_another_architecture_names_the_checkpoint_and_parameter(tmp_path):
    """Before: torch's raw "size mismatch" without the checkpoint's path."""
    path = tmp_path / "ck.pt"
    x, y = _data()
    fit(nn.Linear(2, 2), TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **FAST)
    wider = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=f"checkpoint {path} was written with") as info:
        fit(wider, TensorBatches(x, y, 8), epochs=2, checkpoint=path, **FAST)
    assert "parameter" in str(info.value)


def test_a_resume_with_the_same_settings_continues(tmp_path):
    path = tmp_path / "ck.pt"
    x, y = _data()
    kw = dict(weight_decay=0.1, clip_grad=1.0, optimizer="sgd", **FAST)
    torch.manual_seed(0)
    ref = nn.Linear(2, 2)
    fit(ref, TensorBatches(x, y, 8), epochs=2, **kw)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    fit(model, TensorBatches(x, y, 8), epochs=2, max_steps=4, checkpoint=path, **kw)
    torch.manual_seed(0)
    resumed = nn.Linear(2, 2)
    fit(resumed, TensorBatches(x, y, 8), epochs=2, checkpoint=path, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), resumed.parameters()))
