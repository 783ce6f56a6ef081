"""Multi-task architectures and balancers: hand-computed values, equivalences and short training runs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from companion.balancers import (
    DWA,
    FAMO,
    GradAggregation,
    GradNorm,
    Uncertainty,
    Weighted,
    dwa_weights,
    task_affinity,
)
from companion.experiments.runners import compare_models, size_sweep
from companion.loop import StepContext
from companion.mtl import (
    CrossStitch,
    HardSharing,
    L2Tied,
    MaskDecoder,
    MMoE,
    Separate,
    conv_tower,
    head,
    mlp_hard_sharing,
    mlp_trunk,
    param_count,
    separate_models,
)

MSE = {"a": F.mse_loss, "b": F.mse_loss}


def tiny_trunk(in_dim: int = 16, width: int = 8) -> nn.Module:
    trunk = nn.Sequential(nn.Flatten(1), nn.Linear(in_dim, width), nn.ReLU())
    trunk.num_features = width
    return trunk


def two_task_data(n: int = 64, seed: int = 0):
    """x in R^8; task a = a linear map, task b = a different one (both regression, 1 output)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = {"a": x @ torch.randn(8, 1, generator=g), "b": torch.tanh(x @ torch.randn(8, 1, generator=g))}
    return x, y


def hard_model(seed: int = 0) -> HardSharing:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    return HardSharing(trunk, {"a": head("regression", 16, 1), "b": head("regression", 16, 1)})


def losses_of(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    out = model(x)
    return {t: F.mse_loss(out[t], y[t]) for t in y}


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


# ------------------------------------------------------------------------------------------- architectures


def test_head_pools_maps_and_rejects_bad_kind():
    torch.manual_seed(0)
    h = head("classification", 4, 3)
    maps = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(h(maps), h[1](maps.mean(dim=(2, 3))))
    mlp = head("multilabel", 4, 6, hidden=10)
    assert param_count(mlp) == 4 * 10 + 10 + 10 * 6 + 6
    assert isinstance(head("mask", 4, 2), MaskDecoder)
    with pytest.raises(ValueError, match="kind"):
        head("segmentation", 4, 2)
    with pytest.raises(ValueError, match="out"):
        head("regression", 4, 0)


def test_hard_sharing_counts_outputs_and_shared():
    torch.manual_seed(0)
    heads = {"a": head("classification", 8, 3), "b": head("regression", 8, 1)}
    model = HardSharing(tiny_trunk(), heads)
    # trunk 16*8+8 = 136, head a 8*3+3 = 27, head b 8+1 = 9
    assert param_count(model) == 136 + 27 + 9
    separate = separate_models(lambda t: HardSharing(tiny_trunk(), {t: copy.deepcopy(heads[t])}), ["a", "b"])
    assert param_count(separate) == 2 * 136 + 27 + 9
    assert param_count(model) < param_count(separate)
    assert sum(p.numel() for p in model.shared_parameters()) == 136
    assert sum(p.numel() for p in model.task_parameters("a")) == 27
    x = torch.randn(5, 1, 4, 4)
    out = model(x)
    feats = model.trunk(x)
    torch.testing.assert_close(model.shared, feats)
    assert model.shared.requires_grad
    torch.testing.assert_close(out["a"], heads["a"](feats))
    torch.testing.assert_close(out["b"], heads["b"](feats))


def test_hard_sharing_mask_head_on_timm_trunk():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    trunk = timm.create_model("resnet10t", num_classes=0, in_chans=1, pretrained=False)
    c = trunk.num_features
    model = HardSharing(trunk, {"mask": head("mask", c, 2), "cls": head("classification", c, 3)}).eval()
    assert model.spatial
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = model(x)
        maps = trunk.forward_features(x)
        assert out["mask"].shape == (2, 2, 32, 32)
        expected_mask = F.interpolate(
            model.heads["mask"](maps), size=(32, 32), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(out["mask"], expected_mask)
        torch.testing.assert_close(out["cls"], model.heads["cls"][1](trunk(x)))  # timm pools the same maps


def test_cross_stitch_identity_equals_independent_towers():
    torch.manual_seed(0)
    towers = {t: conv_tower(1, [4, 6]) for t in "ab"}
    heads = {t: head("classification", 6, 3) for t in "ab"}
    model = CrossStitch(towers, heads, init_self=1.0).eval()
    x = torch.randn(3, 1, 8, 8)
    out = model(x)
    for t in "ab":
        h = x
        for stage in towers[t]:
            h = stage(h)
        torch.testing.assert_close(out[t], heads[t](h))
    # near identity: rows sum to 1, diagonal 0.9, and task a's loss now reaches tower b
    mixed = CrossStitch({t: conv_tower(1, [4, 6]) for t in "ab"}, heads, init_self=0.9)
    for w in mixed.stitch_weights():
        np.testing.assert_allclose(w, [[0.9, 0.1], [0.1, 0.9]], rtol=1e-6)
    mixed(x)["a"].sum().backward()
    assert mixed.towers["b"][0][0].weight.grad.abs().sum() > 0
    assert model.shared is not None and model.shared.shape[0] == 2


def test_l2tied_penalty_by_hand():
    towers = {t: nn.Linear(2, 2) for t in "abc"}
    model = L2Tied(towers, {t: head("regression", 2, 1) for t in "abc"})
    with torch.no_grad():
        for t in "abc":
            towers[t].weight.fill_(0.0)
            towers[t].bias.fill_(0.0)
    assert model.penalty().item() == 0.0
    with torch.no_grad():
        towers["b"].weight.fill_(1.0)  # 4 entries differ by 1
        towers["b"].bias.fill_(2.0)  # 2 entries differ by 2
    # pairs (a,b) and (b,c) each give 4*1 + 2*4 = 12; (a,c) gives 0
    assert model.penalty().item() == pytest.approx(24.0)
    assert list(model.shared_parameters()) == []
    with pytest.raises(ValueError, match="towers"):
        L2Tied({"a": nn.Linear(2, 2), "b": nn.Linear(2, 3)}, {"a": nn.Identity(), "b": nn.Identity()})


def test_mmoe_gates_sum_to_one_and_mix_experts():
    torch.manual_seed(0)
    model = MMoE(
        6, {"a": head("regression", 5, 1), "b": head("classification", 5, 2)}, num_experts=3, expert_dim=5
    )
    x = torch.randn(4, 6)
    gates = model.gate_weights(x)
    for g in gates.values():
        assert g.shape == (4, 3)
        np.testing.assert_allclose(g.sum(axis=1), np.ones(4), rtol=1e-6)
        assert (g > 0).all()
    out = model(x)
    experts = torch.stack([e(x) for e in model.experts], dim=1)
    mix = (torch.from_numpy(gates["b"]).unsqueeze(-1) * experts).sum(1)
    torch.testing.assert_close(out["b"], model.heads["b"](mix))
    torch.testing.assert_close(model.shared, experts)


# ------------------------------------------------------------------------------------------------ balancers


def test_weighted_matches_manual_sum():
    x, y = two_task_data()
    model = hard_model()
    logs = Weighted({"a": 0.25, "b": 2.0}).backward(losses_of(model, x, y), StepContext(model, 0, 0))
    got = grads(model)
    model.zero_grad()
    losses = losses_of(model, x, y)
    (0.25 * losses["a"] + 2.0 * losses["b"]).backward()
    for g, ref in zip(got, grads(model), strict=True):
        torch.testing.assert_close(g, ref)
    assert logs == {"w/a": 0.25, "w/b": 2.0}
    with pytest.raises(ValueError, match="weights"):
        Weighted({"a": -1.0})


def test_uncertainty_objective_and_gradient_by_hand():
    bal = Uncertainty(["a", "b"])
    with torch.no_grad():
        bal.log_vars.copy_(torch.tensor([0.5, -1.0]))
    p = torch.tensor(1.0, requires_grad=True)
    losses = {"a": 2.0 * p, "b": 3.0 * p}
    # exp(-0.5)*2 + 0.5 + exp(1)*3 - 1
    assert bal.objective(losses).item() == pytest.approx(8.8679068, abs=1e-6)
    logs = bal.backward(losses, StepContext(nn.Linear(1, 1), 0, 0))
    # d/ds_t = 1 - exp(-s_t) L_t ; d/dp = 2 exp(-0.5) + 3 exp(1)
    torch.testing.assert_close(bal.log_vars.grad, torch.tensor([-0.21306132, -7.15484548]))
    assert p.grad.item() == pytest.approx(9.36790614, abs=1e-6)
    assert logs["w/b"] == pytest.approx(math.e, rel=1e-6)
    assert isinstance(bal, nn.Module) and len(list(bal.parameters())) == 1


def test_dwa_weights_by_hand_and_through_epochs():
    history = [{"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 0.9}]
    # r = (0.5, 0.9), T = 2: w_a = 2 / (1 + exp(0.2)), w_b = 2 - w_a
    w = dwa_weights(history, temperature=2.0)
    assert w["a"] == pytest.approx(0.9003320053, abs=1e-9)
    assert w["b"] == pytest.approx(1.0996679947, abs=1e-9)
    assert dwa_weights(history[:1]) == {"a": 1.0, "b": 1.0}

    bal, ctx = DWA(temperature=2.0), StepContext(nn.Linear(1, 1), 0, 0)
    per_epoch = [[(1.2, 1.1), (0.8, 0.9)], [(0.6, 1.0), (0.4, 0.8)], [(0.1, 0.1)]]  # means (1,1), (0.5,0.9)
    seen = []
    for epoch, steps in enumerate(per_epoch):
        for la, lb in steps:
            p = torch.tensor(1.0, requires_grad=True)
            logs = bal.backward({"a": la * p, "b": lb * p}, ctx)
            seen.append((logs["w/a"], logs["w/b"]))
        bal.on_epoch_end(epoch)
    assert seen[:4] == [(1.0, 1.0)] * 4
    assert seen[4] == pytest.approx((0.9003320053, 1.0996679947), abs=1e-7)  # float32 losses
    assert p.grad.item() == pytest.approx(0.1 * 0.9003320053 + 0.1 * 1.0996679947, abs=1e-7)


def test_gradnorm_moves_weight_to_slower_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g) * torch.tensor([1.0, 1.0, 1.0, 0.1])
    # task a uses well-scaled inputs (fast), task b a feature with 10x smaller spread (slow)
    y = {"a": x[:, :2].sum(1, keepdim=True), "b": 10 * x[:, 3:]}
    torch.manual_seed(0)
    model = HardSharing(nn.Linear(4, 4), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    bal = GradNorm(alpha=1.5, lr=0.02)
    for step in range(40):
        opt.zero_grad()
        logs = bal.backward(losses_of(model, x, y), StepContext(model, step, 0))
        opt.step()
    assert bal.w is not None
    assert logs["w/a"] + logs["w/b"] == pytest.approx(2.0, abs=1e-5)
    assert logs["w/b"] > 1.2 > 1.0 > logs["w/a"]
    assert not isinstance(bal, nn.Module)
    with pytest.raises(ValueError, match="layer"):
        GradNorm(layer="nope").backward(losses_of(model, x, y), StepContext(model, 0, 0))


def test_famo_stays_on_simplex_and_favours_slow_task():
    bal, ctx = FAMO(lr_w=0.025, gamma=1e-3), StepContext(nn.Linear(1, 1), 0, 0)
    for step in range(60):
        p = torch.tensor(1.0, requires_grad=True)
        losses = {"a": p * math.exp(-0.1 * step), "b": p * math.exp(-0.01 * step)}  # a falls 10x faster
        logs = bal.backward(losses, ctx)
        w = np.array([logs["w/a"], logs["w/b"]])
        assert (w > 0).all() and w.sum() == pytest.approx(1.0, abs=1e-6)
    assert logs["w/b"] > 0.6 > logs["w/a"]
    # the network gradient: c * sum_t z_t / L_t * dL_t/dp with c = 1 / sum_t z_t / L_t, dL_t/dp = L_t
    z = bal.weights.numpy()
    ls = np.array([math.exp(-0.1 * 59), math.exp(-0.01 * 59)])
    assert p.grad.item() == pytest.approx(z.sum() / (z / ls).sum(), rel=1e-4)
    with pytest.raises(ValueError, match="losses"):
        FAMO().backward({"a": torch.tensor(-1.0, requires_grad=True)}, ctx)


@pytest.mark.parametrize("mode", ["params", "features"])
def test_grad_aggregation_mean_equals_mean_loss(mode):
    x, y = two_task_data()
    model = hard_model()
    logs = GradAggregation("mean", mode=mode).backward(losses_of(model, x, y), StepContext(model, 0, 0))
    got = grads(model)
    model.zero_grad()
    (sum(losses_of(model, x, y).values()) / 2).backward()
    for g, ref in zip(got, grads(model), strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
    assert logs["w/a"] == pytest.approx(0.5, abs=1e-5) and logs["w/b"] == pytest.approx(0.5, abs=1e-5)
    assert logs["conflict"] == float(logs["cos/a|b"] < 0)
    assert logs["grad_ratio"] >= 1.0


@pytest.mark.parametrize("mode", ["params", "features"])
def test_grad_aggregation_passes_the_methods_options_on(mode):
    x, y = two_task_data()
    model = hard_model()
    GradAggregation("cagrad", mode=mode, c=0.0).backward(losses_of(model, x, y), StepContext(model, 0, 0))
    got = grads(model)  # CAGrad with a ball of radius 0 is the mean gradient
    model.zero_grad()
    (sum(losses_of(model, x, y).values()) / 2).backward()
    for g, ref in zip(got, grads(model), strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
    model.zero_grad()
    GradAggregation("cagrad", mode=mode, c=0.5).backward(losses_of(model, x, y), StepContext(model, 0, 0))
    assert any(not torch.allclose(a, b) for a, b in zip(grads(model), got, strict=True))
    with pytest.raises(ValueError, match="c must be an option of 'upgrad'"):
        GradAggregation("upgrad", c=0.5)


def test_grad_aggregation_sum_replaces_only_what_flows_through_shared():
    x, y = two_task_data()
    ref = hard_model()
    losses = losses_of(ref, x, y)
    trunk = list(ref.shared_parameters())
    heads = [p for t in "ab" for p in ref.task_parameters(t)]
    sum_trunk = torch.autograd.grad(losses["a"] + losses["b"], trunk, retain_graph=True)
    mean_heads = torch.autograd.grad((losses["a"] + losses["b"]) / 2, heads)
    for mode, head_ref in [("params", [2 * g for g in mean_heads]), ("features", mean_heads)]:
        model = hard_model()
        GradAggregation("sum", mode=mode).backward(losses_of(model, x, y), StepContext(model, 0, 0))
        for p, g in zip(model.shared_parameters(), sum_trunk, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
        head_grads = [p.grad for t in "ab" for p in model.task_parameters(t)]
        for got, g in zip(head_grads, head_ref, strict=True):
            torch.testing.assert_close(got, g, rtol=1e-5, atol=1e-7)


def test_grad_aggregation_logs_cosine_of_shared_gradients():
    x, y = two_task_data()
    model = hard_model()
    logs = GradAggregation("mean", mode="params").backward(losses_of(model, x, y), StepContext(model, 0, 0))
    model.zero_grad()
    losses = losses_of(model, x, y)
    shared = list(model.shared_parameters())
    ga = torch.cat([g.flatten() for g in torch.autograd.grad(losses["a"], shared, retain_graph=True)])
    gb = torch.cat([g.flatten() for g in torch.autograd.grad(losses["b"], shared)])
    assert logs["cos/a|b"] == pytest.approx(F.cosine_similarity(ga, gb, dim=0).item(), abs=1e-5)
    big, small = sorted([ga.norm().item(), gb.norm().item()], reverse=True)
    assert logs["grad_ratio"] == pytest.approx(big / small, rel=1e-5)


def two_pass_features(model, losses, method, scale=1.0, seed=0):
    """The former two-pass features mode, kept as the reference: a backward of the mean loss (graph kept), the
    task gradients w.r.t. `shared`, then a second walk of the trunk along (aggregated - mean)."""
    from companion.aggregators import aggregate, backward_features, task_gradients

    scaled = {t: v * scale for t, v in losses.items()}
    (sum(scaled.values()) / len(scaled)).backward(retain_graph=True)
    G = task_gradients(scaled, model.shared, mode="features").float() / scale
    d = aggregate(G, method, seed=seed)
    backward_features(model.shared, (d - G.mean(dim=0)) * scale)


def many_task_model(n_tasks: int, kind: str):
    torch.manual_seed(n_tasks)
    if kind == "hard":
        trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU())
        return HardSharing(
            trunk, {f"t{i}": head("regression", 12, 1, hidden=5 * (i % 2)) for i in range(n_tasks)}
        )
    stem = nn.Sequential(nn.Linear(8, 10), nn.ReLU())  # MMoE: the stem also feeds the gates, outside `shared`
    return MMoE(10, {f"t{i}": head("regression", 6, 1) for i in range(n_tasks)}, 3, 6, stem=stem)


@pytest.mark.parametrize("kind", ["hard", "mmoe"])
@pytest.mark.parametrize("n_tasks", [2, 3])
@pytest.mark.parametrize("method", ["upgrad", "mgda", "pcgrad", "cagrad"])
def test_one_pass_features_mode_equals_the_two_pass_version(method, n_tasks, kind):
    g = torch.Generator().manual_seed(n_tasks)
    x = torch.randn(32, 8, generator=g)
    y = {f"t{i}": torch.randn(32, 1, generator=g) * (i + 1) for i in range(n_tasks)}
    for scale in (1.0, 64.0):
        ref = many_task_model(n_tasks, kind)
        two_pass_features(ref, losses_of(ref, x, y), method, scale=scale, seed=5)
        model = many_task_model(n_tasks, kind)
        bal = GradAggregation(method, mode="features")
        bal.backward(losses_of(model, x, y), StepContext(model, 5, 0, scale=scale))
        got, want = grads(model), grads(ref)
        assert any(w.abs().sum() > 0 for w in want)
        for (name, _), a, b in zip(model.named_parameters(), got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_auto_mode_picks_features_when_the_model_keeps_shared():
    x, y = two_task_data()
    model = hard_model()
    bal = GradAggregation("upgrad")
    assert bal.mode == "auto"
    bal.backward(losses_of(model, x, y), StepContext(model, 0, 0))
    assert bal.last_mode == "features"
    plain = nn.Sequential(nn.Linear(8, 4))

    class NoShared(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = plain

        def forward(self, x):
            out = self.net(x)
            return {"a": out[:, :1], "b": out[:, 1:2]}

    other = NoShared()
    bal.backward(losses_of(other, x, y), StepContext(other, 0, 0))
    assert bal.last_mode == "params"
    with pytest.raises(ValueError, match="shared"):
        GradAggregation("upgrad", mode="features").backward(losses_of(other, x, y), StepContext(other, 0, 0))


def balancers():
    return {
        "weighted": lambda: Weighted({"a": 1.0, "b": 0.5}),
        "uncertainty": lambda: Uncertainty(["a", "b"]),
        "dwa": lambda: DWA(),
        "gradnorm": lambda: GradNorm(),
        "famo": lambda: FAMO(),
        "agg_params": lambda: GradAggregation("mean", mode="params"),
        "agg_features": lambda: GradAggregation("mean", mode="features"),
        "agg_upgrad": lambda: GradAggregation("upgrad"),  # auto: features on HardSharing
        "agg_upgrad_params": lambda: GradAggregation("upgrad", mode="params"),
    }


@pytest.mark.parametrize("name", list(balancers()))
def test_loss_scale_multiplies_grad(name):
    x, y = two_task_data()
    results = []
    for scale in (1.0, 8.0):
        model = hard_model()
        make = balancers()[name]
        make().backward(losses_of(model, x, y), StepContext(model, 0, 0, scale=scale))
        results.append(grads(model))
    for g1, g8 in zip(*results, strict=True):
        torch.testing.assert_close(g8, 8.0 * g1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(balancers()))
def test_short_training_decreases_loss(name):
    x, y = two_task_data()
    model, bal = hard_model(), balancers()[name]()
    params = list(model.parameters()) + (list(bal.parameters()) if isinstance(bal, nn.Module) else [])
    opt = torch.optim.Adam(params, lr=1e-2)
    totals = []
    for step in range(50):
        losses = losses_of(model, x, y)
        totals.append(sum(v.item() for v in losses.values()))
        opt.zero_grad()
        logs = bal.backward(losses, StepContext(model, step, step // 10))
        opt.step()
        if step % 10 == 9 and hasattr(bal, "on_epoch_end"):
            bal.on_epoch_end(step // 10)
    assert totals[-1] < 0.5 * totals[0]
    assert {"w/a", "w/b"} <= set(logs) and all(math.isfinite(v) for v in logs.values())


def small_cross_stitch() -> CrossStitch:
    torch.manual_seed(0)
    towers = {t: conv_tower(1, [3, 4]) for t in "ab"}
    return CrossStitch(towers, {t: head("regression", 4, 1) for t in "ab"}, init_self=0.8)


def small_mmoe() -> MMoE:
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Flatten(1), nn.Linear(16, 6), nn.ReLU())
    return MMoE(6, {"a": head("regression", 5, 1), "b": head("regression", 5, 1)}, 3, 5, stem=stem)


@pytest.mark.parametrize("make", [small_cross_stitch, small_mmoe], ids=["cross_stitch", "mmoe"])
@pytest.mark.parametrize("mode", ["params", "features"])
def test_grad_aggregation_mean_on_soft_sharing_models(make, mode):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 4, 4, generator=g), {t: torch.randn(6, 1, generator=g) for t in "ab"}
    model = make()
    GradAggregation("mean", mode=mode).backward(losses_of(model, x, y), StepContext(model, 0, 0))
    got = grads(model)
    model.zero_grad()
    (sum(losses_of(model, x, y).values()) / 2).backward()
    for g_, ref in zip(got, grads(model), strict=True):
        torch.testing.assert_close(g_, ref, rtol=1e-5, atol=1e-7)
    assert any(r.abs().sum() > 0 for r in got)


def test_mmoe_trains_with_feature_aggregation():
    x, y = two_task_data()
    torch.manual_seed(0)
    mmoe = MMoE(
        8, {"a": head("regression", 8, 1), "b": head("regression", 8, 1)}, num_experts=3, expert_dim=8
    )
    opt = torch.optim.Adam(mmoe.parameters(), lr=1e-2)
    bal, first = GradAggregation("upgrad", mode="features"), None
    for step in range(40):
        losses = losses_of(mmoe, x, y)
        first = first or sum(v.item() for v in losses.values())
        opt.zero_grad()
        logs = bal.backward(losses, StepContext(mmoe, step, 0))
        opt.step()
    assert sum(v.item() for v in losses_of(mmoe, x, y).values()) < 0.5 * first
    assert logs["conflict"] in (0.0, 1.0) and -1.0 <= logs["cos/a|b"] <= 1.0


def test_fit_trains_uncertainty_weights_and_l2tied_penalty():
    from companion.batches import TensorBatches
    from companion.train import fit

    x, y = two_task_data(n=96)
    data = TensorBatches(x, y, batch_size=32, seed=0)

    def tied() -> L2Tied:
        torch.manual_seed(0)
        towers = {t: nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for t in "ab"}
        return L2Tied(towers, {t: head("regression", 8, 1) for t in "ab"})

    kw = {"epochs": 3, "loss_fns": MSE, "lr": 1e-2, "device": "cpu", "progress": False}
    free, bal = tied(), Uncertainty(["a", "b"])
    history = fit(free, data, balancer=bal, **kw)
    assert bal.log_vars.detach().abs().min() > 0  # trained by fit's optimiser
    assert history.series("w/a")[-1] == pytest.approx(math.exp(-bal.log_vars[0].item()), rel=0.2)
    pulled = tied()
    fit(pulled, data, balancer=DWA(), regularizer=lambda m: 1.0 * m.penalty(), **kw)
    assert pulled.penalty().item() < 0.5 * free.penalty().item()


def test_task_affinity_identical_tasks_positive_and_restores_weights():
    x, y = two_task_data()
    y = {"a": y["a"], "b": y["a"].clone()}
    model = hard_model()
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())  # two identical tasks
    before = copy.deepcopy(model.state_dict())
    aff = task_affinity(model, MSE, (x, y), lr=0.01)
    assert aff.shape == (2, 2)
    assert aff[0, 1] > 0 and aff[1, 0] > 0
    assert aff[0, 1] == pytest.approx(aff[1, 0], rel=1e-5) and aff[0, 0] > aff[0, 1]  # own head moves too
    stepped = _stepped(model, x, y, "a", 0.01)
    with torch.no_grad():
        ref = 1 - F.mse_loss(stepped(x)["b"], y["b"]) / F.mse_loss(model(x)["b"], y["b"])
    assert aff[0, 1] == pytest.approx(ref.item(), rel=1e-4)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="lr"):
        task_affinity(model, MSE, (x, y), lr=0)


def _stepped(model: nn.Module, x, y, task: str, lr: float) -> nn.Module:
    other = copy.deepcopy(model)
    loss = F.mse_loss(other(x)[task], y[task])
    loss.backward()
    with torch.no_grad():
        for p in other.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return other


def test_bad_inputs_raise_one_line_value_errors():
    cases = [
        lambda: HardSharing(tiny_trunk(), {}),
        lambda: HardSharing(tiny_trunk(), {"a.b": nn.Linear(8, 1)}),
        lambda: CrossStitch({"a": conv_tower(1, [4])}, {"a": nn.Identity()}, init_self=1.5),
        lambda: conv_tower(1, []),
        lambda: MMoE(0, {"a": nn.Identity()}),
        lambda: DWA(temperature=0),
        lambda: FAMO(lr_w=-1),
        lambda: GradAggregation("mean", mode="grads"),
        lambda: Uncertainty([]),
    ]
    for make in cases:
        with pytest.raises(ValueError) as err:
            make()
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------- experiments


def test_separate_models_forward_and_summed_training_equals_one_at_a_time():
    from companion.batches import TensorBatches
    from companion.train import fit

    x, y = two_task_data(n=48)

    def single(t: str, seed: int = 0) -> HardSharing:
        torch.manual_seed(seed + (t == "b"))
        return HardSharing(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), {t: head("regression", 8, 1)})

    sep = separate_models(single, ["a", "b"])
    assert isinstance(sep, Separate) and isinstance(sep, nn.ModuleDict)
    out = sep(x)
    assert set(out) == {"a", "b"}
    torch.testing.assert_close(out["b"], sep["b"](x)["b"])
    plain = Separate({"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})  # models returning tensors work too
    assert plain(x)["a"].shape == (48, 1)
    kw = {"epochs": 2, "loss_fns": MSE, "lr": 1e-2, "device": "cpu", "progress": False, "seed": 0}
    fit(sep, TensorBatches(x, y, batch_size=16, seed=0), **kw)
    alone = single("b")
    fit(alone, TensorBatches(x, {"b": y["b"]}, batch_size=16, seed=0), **kw)
    for p, q in zip(sep["b"].parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(p, q)  # the other task's loss never reaches model b
    with pytest.raises(ValueError, match="without that task"):
        Separate({"a": single("b")})(x)


def test_compare_models_trains_each_on_its_tasks_with_same_seed():
    x, y = two_task_data(n=96)
    train, test = (x[:64], {t: v[:64] for t, v in y.items()}), (x[64:], {t: v[64:] for t, v in y.items()})

    def only_a() -> HardSharing:
        return HardSharing(nn.Sequential(nn.Linear(8, 16), nn.ReLU()), {"a": head("regression", 16, 1)})

    builders = {"hard": lambda: hard_model(0), "single_a": only_a, "again": lambda: hard_model(0)}
    made = []
    kw = {"epochs": 3, "lr": 1e-2, "batch_size": 16, "seed": 5, "device": "cpu", "loss_fns": MSE}
    res = compare_models(builders, train, test, **kw, fit_kwargs={"again": lambda m: made.append(m) or {}})
    assert res["single_a"]["tasks"] == ["a"] and res["hard"]["tasks"] == ["a", "b"]
    assert "loss/b" not in res["single_a"]["test"] and "loss/b" in res["hard"]["test"]
    assert res["hard"]["params"] == param_count(res["hard"]["model"])
    assert made == [res["again"]["model"]]  # the callable form gets the fresh model
    # same seed, same builder: identical training, so identical results
    assert res["hard"]["test"]["loss/a"] == pytest.approx(res["again"]["test"]["loss/a"], rel=1e-6)
    assert res["hard"]["history"][-1]["train_loss"] < res["hard"]["history"][0]["train_loss"]
    assert res["hard"]["train"]["loss/a"] < res["hard"]["history"][0]["train_loss/a"]
    curved = compare_models(
        {"hard": lambda: hard_model(0)}, train, test, **kw, curves=True, fit_options={"scheduler": "cosine"}
    )
    assert len(curved["hard"]["history"].series("val_loss/a")) == 3
    assert curved["hard"]["history"][-1]["lr"] < 1e-3  # the cosine schedule reached every model
    assert curved["hard"]["test"]["loss/a"] == pytest.approx(curved["hard"]["history"][-1]["val_loss/a"])
    with pytest.raises(ValueError, match="fit_kwargs"):
        compare_models(builders, train, test, **kw, fit_kwargs={"nope": {}})
    with pytest.raises(ValueError, match="lacks targets"):
        compare_models({"h": lambda: hard_model(0)}, (train[0], {"a": train[1]["a"]}), test, **kw)


def test_size_sweep_rows_epochs_and_nested_subsets():
    x, y = two_task_data(n=120)
    seen = []

    def data(seed: int):
        seen.append(seed)
        return (x[:80], {t: v[:80] for t, v in y.items()}), (x[80:], {t: v[80:] for t, v in y.items()})

    rows = size_sweep(
        {"hard": lambda: hard_model(0)},
        data,
        [20, 80],
        [0, 1],
        steps=8,
        batch_size=10,
        lr=1e-2,
        device="cpu",
        loss_fns=MSE,
        curve_size=80,
    )
    assert seen == [0, 1]
    assert [(r["seed"], r["n"], r["epochs"]) for r in rows] == [
        (0, 20, 4),
        (0, 80, 1),
        (1, 20, 4),
        (1, 80, 1),
    ]
    assert all(r["model"] == "hard" and "loss/a" in r["test"] for r in rows)
    assert "val_loss/a" in rows[1]["history"][-1] and "val_loss/a" not in rows[0]["history"][-1]
    with pytest.raises(ValueError, match="exceeds the pool"):
        size_sweep({"hard": lambda: hard_model(0)}, data, [100], [0], steps=2, device="cpu", loss_fns=MSE)
    with pytest.raises(ValueError, match="steps"):
        size_sweep({"hard": lambda: hard_model(0)}, data, [10], [0], steps=0, device="cpu")


def _train_steps(model, bal, opt, x, y, steps, logs):
    """Steps `steps` of a toy run; every 5th step ends an epoch (so DWA's weights move)."""
    for step in steps:
        opt.zero_grad()
        logs.append(bal.backward(losses_of(model, x, y), StepContext(model, step, step // 5)))
        opt.step()
        if step % 5 == 4 and hasattr(bal, "on_epoch_end"):
            bal.on_epoch_end(step // 5)


@pytest.mark.parametrize("name", list(balancers()))
def test_balancer_state_round_trip_continues_identically(name, tmp_path):
    x, y = two_task_data()

    def start():
        model, bal = hard_model(), balancers()[name]()
        params = list(model.parameters()) + (list(bal.parameters()) if isinstance(bal, nn.Module) else [])
        return model, bal, torch.optim.Adam(params, lr=1e-2)

    model, bal, opt = start()
    full_logs: list[dict] = []
    _train_steps(model, bal, opt, x, y, range(23), full_logs)

    model_b, bal_b, opt_b = start()
    logs: list[dict] = []
    _train_steps(model_b, bal_b, opt_b, x, y, range(12), logs)  # stops inside the third "epoch"
    path = tmp_path / "state.pt"
    saved = {"model": model_b.state_dict(), "opt": opt_b.state_dict()}
    if hasattr(bal_b, "state_dict"):
        saved["bal"] = bal_b.state_dict()
    torch.save(saved, path)
    del model_b, bal_b, opt_b
    state = torch.load(path, weights_only=True)
    model_c, bal_c, opt_c = start()
    model_c.load_state_dict(state["model"])
    if "bal" in state:
        bal_c.load_state_dict(state["bal"])
    opt_c.load_state_dict(state["opt"])
    _train_steps(model_c, bal_c, opt_c, x, y, range(12, 23), logs)

    assert logs == full_logs, "the resumed run logs the same weights at every step"
    for a, b in zip(model.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(a, b)
    if hasattr(bal, "state_dict"):
        end, end_c = bal.state_dict(), bal_c.state_dict()
        assert repr(end) == repr(end_c)


@pytest.mark.parametrize("name", ["dwa", "gradnorm", "famo"])
def test_stateful_balancer_state_is_a_copy_and_checked(name):
    x, y = two_task_data()
    model, bal = hard_model(), balancers()[name]()
    fresh = bal.state_dict()  # before any step: nothing learned yet, still loadable
    other = balancers()[name]()
    other.load_state_dict(fresh)
    for step in range(3):
        bal.backward(losses_of(model, x, y), StepContext(model, step, 0))
    state = bal.state_dict()
    before = repr(state)
    bal.backward(losses_of(model, x, y), StepContext(model, 3, 0))
    assert repr(state) == before, "state_dict() holds copies, not the live tensors or containers"
    assert all(not v.requires_grad for v in state.values() if isinstance(v, torch.Tensor))
    with pytest.raises(ValueError, match=r"state must be a .*state_dict\(\) with keys"):
        other.load_state_dict({"weights": {}})


def test_mlp_hard_sharing_reference_values_and_seeded_weights():
    torch.manual_seed(0)
    net = mlp_hard_sharing(4, {"a": ("classification", 3), "b": ("regression", 1)}, width=8, hidden=4)
    # trunk (4*8+8) + (8*8+8), heads (8*4+4 + 4*3+3) and (8*4+4 + 4*1+1)
    assert param_count(net) == 204
    out = net(torch.arange(4.0).reshape(1, 1, 2, 2) / 4)
    assert out["a"].flatten().tolist() == pytest.approx([-0.203138, -0.036455, -0.472808], abs=1e-6)
    assert out["b"].flatten().tolist() == pytest.approx([-0.313684], abs=1e-6)
    # the same weights as writing the model out by hand, trunk first, then the heads in order
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Flatten(1), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    by_hand = HardSharing(trunk, {"a": head("classification", 8, 3, 4), "b": head("regression", 8, 1, 4)})
    for (name, p), (name_hand, p_hand) in zip(
        net.state_dict().items(), by_hand.state_dict().items(), strict=True
    ):
        assert name == name_hand and torch.equal(p, p_hand)
    assert (
        param_count(mlp_hard_sharing(324, dict.fromkeys(["left", "right"], ("classification", 10)))) == 75924
    )
    assert param_count(mlp_trunk(324)) == 58112


def test_mlp_hard_sharing_errors_name_the_argument():
    with pytest.raises(ValueError, match="^heads must be a non-empty dict"):
        mlp_hard_sharing(4, {})
    with pytest.raises(ValueError, match="^heads: entry 'a' must be a"):
        mlp_hard_sharing(4, {"a": "classification"})
    with pytest.raises(ValueError, match="in_features"):
        mlp_trunk(0)
