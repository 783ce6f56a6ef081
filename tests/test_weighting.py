"""Loss weighting under a fair protocol (notebook 08): hand-computed values for the tunable balancers, the equal
tuning budget, the unit-free validation score and the perception scores."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from companion.balancers import GradNorm
from companion.experiments.weighting import (
    GradNormFloor,
    Traced,
    UncertaintyLR,
    log_loss_score,
    scene_scores,
    tune_each,
)
from companion.loop import StepContext


def two_head_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Linear(3, 4)
            self.a = nn.Linear(4, 1)
            self.b = nn.Linear(4, 1)

        def forward(self, x):
            h = torch.relu(self.trunk(x))
            return {"a": self.a(h), "b": self.b(h)}

    return Net()


def losses_of(model: nn.Module, scale_b: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=g)
    ya, yb = torch.randn(16, 1, generator=g), torch.randn(16, 1, generator=g)
    out = model(x)
    return {"a": ((out["a"] - ya) ** 2).mean(), "b": ((out["b"] * scale_b - yb * scale_b) ** 2).mean()}


def test_uncertainty_lr_first_step_is_adam_sign_step_with_its_own_rate():
    model = two_head_model()
    b = UncertaintyLR(["a", "b"], lr=0.5)
    losses = losses_of(model)
    expected_grad = [1 - losses[t].item() for t in ("a", "b")]  # d/ds (e^-s L + s) at s = 0
    logs = b.backward(losses, StepContext(model=model, step=1, epoch=0))
    # Adam's first step moves each parameter by -lr * sign(grad)
    want = [-0.5 * math.copysign(1.0, g) for g in expected_grad]
    assert b.log_vars.tolist() == pytest.approx(want, abs=1e-6)
    assert logs["w/a"] == pytest.approx(1.0) and logs["logvar/b"] == pytest.approx(
        0.0
    )  # logged before the step
    # the network got the gradient of the plain sum (weights e^0 = 1)
    assert model.a.weight.grad is not None and model.b.weight.grad is not None


def test_uncertainty_lr_reaches_its_fixed_point_log_loss():
    b = UncertaintyLR(["a"], lr=0.05)
    model = nn.Linear(1, 1)
    for step in range(1, 2000):
        b.backward({"a": torch.tensor(4.0)}, StepContext(model=model, step=step, epoch=0))
    assert b.log_vars.item() == pytest.approx(math.log(4.0), abs=0.05)


def test_uncertainty_lr_init_and_validation():
    assert UncertaintyLR(["a", "b"], init=2.0).log_vars.tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="lr"):
        UncertaintyLR(["a"], lr=0)
    with pytest.raises(ValueError, match="init"):
        UncertaintyLR(["a"], init=float("nan"))


def test_gradnorm_floor_matches_gradnorm_when_floor_does_not_bind():
    m1, m2 = two_head_model(), two_head_model()
    g1, g2 = GradNorm(lr=0.01, layer="trunk.weight"), GradNormFloor(lr=0.01, layer="trunk.weight", floor=1e-6)
    for step in range(1, 4):
        l1, l2 = (
            g1.backward(losses_of(m1), StepContext(m1, step, 0)),
            g2.backward(losses_of(m2), StepContext(m2, step, 0)),
        )
        assert l1["w/a"] == pytest.approx(l2["w/a"], rel=1e-6) and l1["w/b"] == pytest.approx(
            l2["w/b"], rel=1e-6
        )


def test_gradnorm_floor_goes_below_one_thousandth():
    # task b's loss is 10^8 times larger: its weight must fall far below GradNorm's fixed floor of 1e-3
    model = two_head_model()
    b = GradNormFloor(lr=0.5, layer="trunk.weight", floor=1e-8)
    fixed = GradNorm(lr=0.5, layer="trunk.weight")
    model2 = two_head_model()
    for step in range(1, 60):
        model.zero_grad()
        model2.zero_grad()
        logs = b.backward(losses_of(model, scale_b=1e4), StepContext(model, step, 0))
        logs2 = fixed.backward(losses_of(model2, scale_b=1e4), StepContext(model2, step, 0))
    assert logs["w/b"] < 1e-4
    assert logs2["w/b"] > 5e-4  # the fixed floor of 1e-3 (applied before renormalising to sum 2) binds
    assert logs["w/a"] + logs["w/b"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="floor"):
        GradNormFloor(floor=0)


def test_traced_keeps_every_step_and_refuses_modules():
    model = two_head_model()
    t = Traced(UncertaintyLR(["a", "b"], lr=0.1))
    for step in range(1, 4):
        t.backward(losses_of(model), StepContext(model, step, 0))
    assert [r["step"] for r in t.trace] == [1, 2, 3]
    assert t.series("w/a")[0] == pytest.approx(1.0)
    assert t.series("w/a")[1] == pytest.approx(math.exp(-t.trace[1]["logvar/a"]))
    with pytest.raises(ValueError, match="never logged"):
        t.series("w/zzz")
    with pytest.raises(ValueError, match="nn.Module"):
        Traced(nn.Linear(1, 1))


def test_tune_each_gives_every_method_the_same_tries():
    calls = []

    def run(method, value):
        calls.append((method, value))
        return {"x": -abs((value or 0) - 2), "y": -abs((value or 0) - 20)}[method] if method != "z" else 0.0

    out = tune_each(run, {"x": [1, 2, 3], "y": [10, 20, 30], "z": None})
    assert out["x"]["best"] == 2 and out["y"]["best"] == 20 and out["z"]["best"] is None
    assert out["x"]["tries"] == 3 and out["z"]["tries"] == 1
    assert out["y"]["scores"] == {10: -10.0, 20: 0.0, 30: -10.0}
    assert len(calls) == 7
    with pytest.raises(ValueError, match="same number of tries"):
        tune_each(run, {"x": [1, 2], "y": [10, 20, 30]})


def test_log_loss_score_values_and_unit_shift():
    assert log_loss_score({"a": 1.0, "b": math.e}) == pytest.approx(-1.0)
    # multiplying one task's labels by c multiplies its MSE by c^2: the score shifts by -2 log c for everyone
    base = log_loss_score({"a": 0.5, "b": 0.2})
    assert log_loss_score({"a": 0.5, "b": 0.2 * 512**2}) == pytest.approx(base - 2 * math.log(512))
    with pytest.raises(ValueError, match="positive"):
        log_loss_score({"a": 0.0})


def test_scene_scores_hand_computed():
    target = {
        "cls": torch.tensor([0, 1]),
        "box": torch.tensor([[0.5, 0.5, 0.25], [0.25, 0.75, 0.5]]),
        "mask": torch.zeros(2, 1, 4, 4),
    }
    target["mask"][0, 0, :2, :2] = 1  # 4 pixels
    target["mask"][1, 0, 0, 0] = 1  # 1 pixel
    mask_logits = -torch.ones(2, 1, 4, 4)
    mask_logits[0, 0, :2, :] = 1  # predicts 8 pixels, 4 of them right: IoU 4/8
    mask_logits[1, 0, 0, 0] = 1  # exact: IoU 1
    out = {
        "cls": torch.tensor([[2.0, 0.0], [3.0, 1.0]]),  # right, wrong
        "box": (target["box"] + torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.0, -0.5]])) * 512,
        "mask": mask_logits,
    }
    s = scene_scores(out, target, box_unit=512)
    assert s["class acc"] == pytest.approx(0.5)
    assert s["box error (px)"] == pytest.approx(4 * (0.25 + 0.5) / 6)  # mean |error| x image side (4 px)
    assert s["mask IoU"] == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="box_unit"):
        scene_scores(out, target, box_unit=0)
