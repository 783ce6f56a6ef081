"""Tests for companion.transfer: strategies, BatchNorm policies, layer-wise lrs, L2-SP, block transfer, sources."""

from __future__ import annotations

import copy

import pytest
import timm
import timm.optim
import torch
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from timm.scheduler import CosineLRScheduler
from torch import nn

import companion.transfer as T
from companion.batches import TensorBatches
from companion.evaluation import evaluate
from companion.experiments.runners import (
    block_sweep,
    group_rows,
    label_efficiency,
    labels_to_reach,
    probe_accuracy,
    steps_to,
)
from companion.models import new_head, stages
from companion.sources import source_model

LR, DECAY = 0.1, 0.5


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0, name: str = "course_cnn_s") -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, in_chans=1, num_classes=10)


def _data(n: int = 32, seed: int = 0, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g) * (1 + shift) + shift, torch.randint(0, 3, (n,), generator=g)


def _batches(n: int = 32, batch_size: int = 16, **kw) -> TensorBatches:
    x, y = _data(n, **kw)
    return TensorBatches(x, y, batch_size, seed=0)


def _clone(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _spy(monkeypatch, record):
    """Replace transfer's fit by a wrapper that calls record(model, kwargs, "start"/"end") around the real one."""
    real = T.fit

    def spy(model, train, **kw):
        record(model, kw, "start")
        out = real(model, train, **kw)
        record(model, kw, "end")
        return out

    monkeypatch.setattr(T, "fit", spy)


FIT = dict(device="cpu", progress=False)
RUN = dict(device="cpu")  # the sweeps never show progress bars


# ------------------------------------------------------------------------------------------- strategies


def test_linear_probe_freezes_the_trunk_and_trains_a_fresh_head():
    model = _model()
    old_head = model.head.fc.weight.detach().clone()
    model, groups = T.prepare(model, "linear_probe", num_classes=3, seed=1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["head.fc.weight", "head.fc.bias"]
    assert model.head.fc.weight.shape == (3, 128) and old_head.shape == (10, 128)
    torch.manual_seed(1)
    assert torch.equal(model.head.fc.weight, nn.Linear(128, 3).weight)  # the seeded fresh head
    assert [g["name"] for g in groups] == ["head"] and groups[0]["lr"] == 1e-3
    trunk, head = _clone(nn.ModuleList(stages(model))), model.head.fc.weight.detach().clone()
    T.fit(model, _batches(), epochs=1, param_groups=groups, **FIT)
    assert _same(trunk, _clone(nn.ModuleList(stages(model))))  # weights and (bn="eval") running stats
    assert not torch.equal(head, model.head.fc.weight)


def test_finetune_trains_everything_and_scratch_redraws_timm_init():
    model, groups = T.prepare(_model(), "finetune", lr=LR, head_lr=1.0)
    assert all(p.requires_grad for p in model.parameters())
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1.0), ("trunk", LR)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    pretrained = _model(seed=7)
    before = _clone(pretrained)
    model, _ = T.prepare(pretrained, "scratch", seed=5)
    reference = _model(seed=5)  # timm's own init for the same architecture and seed
    assert _same(_clone(model), _clone(reference))
    assert not torch.equal(before["stem.conv.weight"], model.state_dict()["stem.conv.weight"])


def test_discriminative_lrs_are_lr_times_decay_power_and_match_timm_scales():
    model, groups = T.prepare(_model(), "discriminative", lr=LR, layer_decay=DECAY)
    lrs = {g["name"]: g["lr"] for g in groups}
    # stages: stem, stages.0, stages.1, stages.2 (n = 4); the head sits at depth 4
    assert lrs == {
        "head": LR,
        "stage0": LR * DECAY**4,
        "stage1": LR * DECAY**3,
        "stage2": LR * DECAY**2,
        "stage3": LR * DECAY,
    }
    assert all("lr_scale" not in g for g in groups)
    ours = {id(p): g["lr"] for g in groups for p in g["params"]}
    timm_groups = timm.optim.param_groups_layer_decay(model, weight_decay=0.0, layer_decay=DECAY)
    theirs = {id(p): LR * g["lr_scale"] for g in timm_groups for p in g["params"]}
    assert ours == theirs


def _step(opt, sched, n: int, timm_sched: bool = False) -> None:
    for i in range(n):
        opt.step()
        sched.step_update(i + 1) if timm_sched else sched.step()


def test_decayed_lrs_survive_plain_torch_optimisers_and_schedulers():
    model = _model()
    _, groups = T.prepare(model, "discriminative", lr=LR, layer_decay=DECAY)
    depth = {"head": 0, "stage0": 4, "stage1": 3, "stage2": 2, "stage3": 1}
    for make, is_timm in (
        (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10), False),
        (lambda o: CosineLRScheduler(o, t_initial=10, t_in_epochs=False), True),
    ):
        opt = torch.optim.AdamW([dict(g) for g in groups], lr=123.0)
        _step(opt, make(opt), 3, is_timm)
        head = opt.param_groups[0]["lr"]
        assert 0 < head < LR
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(head * DECAY ** depth[g["name"]], rel=1e-12)
    # the trap: timm's own groups keep the decay in lr_scale, which a torch optimiser ignores
    opt = torch.optim.AdamW(timm.optim.param_groups_layer_decay(model, layer_decay=DECAY), lr=LR)
    assert {g["lr"] for g in opt.param_groups} == {LR}


def test_unfreeze_top_opens_stages_from_the_top():
    model = _model()
    for k in range(5):
        T.unfreeze_top(model, k)
        assert T._trainable_stages(model) == list(range(4 - k, 4))
        assert model.head.fc.weight.requires_grad


def test_gradual_unfreezes_one_stage_per_epoch_with_one_optimiser():
    seen = []

    class Spy:  # runs after GradualUnfreezing opened the epoch's stages (its order is -20)
        def on_epoch_start(self, state):
            trained = {id(p) for p in state.model.parameters() if p.requires_grad}
            groups = [
                g["name"] for g in state.optimizer.param_groups if any(id(p) in trained for p in g["params"])
            ]
            seen.append((T._trainable_stages(state.model), id(state.optimizer), groups))

    model = _model()
    frozen = _clone(nn.ModuleList(stages(model)[:2]))
    top = model.stages[2][0].conv.weight.detach().clone()
    history = T.gradual(
        model, _batches(), epochs=3, num_classes=3, lr=LR, layer_decay=DECAY, callbacks=[Spy()], **FIT
    )
    assert [s for s, _, _ in seen] == [[], [3], [2, 3]]
    assert len({o for _, o, _ in seen}) == 1
    assert [sorted(n) for _, _, n in seen] == [["head"], ["head", "stage3"], ["head", "stage2", "stage3"]]
    assert history.series("unfrozen") == [0, 1, 2] and history.series("epoch") == [1, 2, 3]
    assert history.series("step") == [2, 4, 6]
    assert _same(frozen, _clone(nn.ModuleList(stages(model)[:2])))  # never unfrozen: weights and stats kept
    assert not torch.equal(top, model.stages[2][0].conv.weight)


def test_gradual_takes_a_scheduler_and_resumes_from_a_checkpoint(tmp_path):
    def run(**kw):
        torch.manual_seed(3)
        model = _model()
        history = T.gradual(
            model,
            _batches(),
            epochs=3,
            num_classes=3,
            lr=LR,
            layer_decay=DECAY,
            scheduler="cosine",
            **FIT,
            **kw,
        )
        return model, history

    whole, h_whole = run()
    assert h_whole.series("lr")[-1] < LR  # the cosine schedule ran over the three epochs
    ckpt = tmp_path / "gradual.pt"

    class Killed(Exception):
        pass

    class Kill:  # stands in for a killed process: stops inside epoch 2, after the checkpoint of step 3
        order = 40

        def on_step_end(self, state):
            if state.step == 3:
                raise Killed

    with pytest.raises(Killed):
        run(checkpoint=ckpt, checkpoint_every=1, callbacks=[Kill()])
    resumed, h_resumed = run(checkpoint=ckpt)
    assert _same(_clone(whole), _clone(resumed))
    assert h_resumed.series("unfrozen") == h_whole.series("unfrozen") == [0, 1, 2]


def test_lp_ft_fine_tunes_from_the_probed_head(monkeypatch):
    heads, trunks, open_stages = [], [], []

    def record(model, kw, when):
        heads.append(model.head.fc.weight.detach().clone())
        trunks.append(_clone(model.stem))
        if when == "start":
            open_stages.append(T._trainable_stages(model))

    _spy(monkeypatch, record)
    model = _model()
    history = T.lp_ft(
        model, _batches(), probe_epochs=2, ft_epochs=1, num_classes=3, lr=1e-3, probe_lr=LR, **FIT
    )
    probe_start, probe_end, ft_start, ft_end = heads
    assert torch.equal(ft_start, probe_end) and not torch.equal(probe_end, probe_start)
    assert not torch.equal(ft_end, ft_start)
    assert _same(trunks[0], trunks[1]) and not _same(trunks[2], trunks[3])  # probe: trunk fixed, then tuned
    assert open_stages == [[], [0, 1, 2, 3]]
    assert history.series("phase") == [1, 1, 2] and history.series("epoch") == [1, 2, 3]
    assert history.series("step") == [2, 4, 6]


def test_adapt_equals_prepare_then_fit():
    a, b = _model(), _model()
    T.adapt(a, "discriminative", _batches(), epochs=2, num_classes=3, lr=LR, layer_decay=DECAY, seed=3, **FIT)
    b, groups = T.prepare(b, "discriminative", num_classes=3, lr=LR, layer_decay=DECAY, seed=3)
    T.fit(b, _batches(), epochs=2, lr=LR, param_groups=groups, seed=3, **FIT)
    assert _same(_clone(a), _clone(b))
    history = T.adapt(_model(), "lp_ft", _batches(), epochs=3, num_classes=3, **FIT)
    assert history.series("phase") == [1, 2, 2]


# ------------------------------------------------------------------------------------- BatchNorm policies


@pytest.mark.parametrize("bn", T.BN_POLICIES)
def test_bn_policy_of_frozen_parts_on_shifted_data(bn):
    model, groups = T.prepare(_model(), "linear_probe", num_classes=3, bn=bn)
    stem = model.stem
    assert isinstance(stem.bn, FrozenBatchNormAct2d if bn == "freeze" else BatchNormAct2d)
    mean0, weight0 = stem.bn.running_mean.clone(), stem.bn.weight.detach().clone()
    conv0 = stem.conv.weight.detach().clone()
    x, y = _data(16, shift=3.0)  # the target data sit far from the source statistics
    model.train()
    T.fit(model, TensorBatches(x, y, 16), epochs=1, param_groups=groups, **FIT)
    assert torch.equal(stem.conv.weight, conv0) and torch.equal(stem.bn.weight, weight0)
    if bn == "train":  # PyTorch's default: the frozen layer's statistics drift to the target batch
        batch_mean = stem.conv(x).mean(dim=(0, 2, 3))
        assert torch.allclose(stem.bn.running_mean, 0.9 * mean0 + 0.1 * batch_mean, atol=1e-6)
    else:
        assert torch.equal(stem.bn.running_mean, mean0)
    # fine-tuning afterwards gives back plain, trainable BatchNorm layers with the same statistics
    mean1 = model.stem.bn.running_mean.clone()
    model, _ = T.prepare(model, "finetune")
    assert type(model.stem.bn) is BatchNormAct2d and not model.stem.bn._forward_pre_hooks
    assert torch.equal(model.stem.bn.running_mean, mean1)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    model(x)
    assert not torch.equal(model.stem.bn.running_mean, mean1)


def test_eval_policy_survives_model_train():
    model, _ = T.prepare(_model(), "linear_probe", bn="eval")
    model.train()
    assert model.stem.bn.training  # train() flips the flag...
    mean = model.stem.bn.running_mean.clone()
    model(_data(8, shift=3.0)[0])
    assert torch.equal(model.stem.bn.running_mean, mean)  # ...but the hook runs the layer in eval mode
    assert model.head.training


# ----------------------------------------------------------------------------------------- L2-SP


def test_l2sp_is_zero_at_start_and_exact_after_a_perturbation():
    model, _ = T.prepare(_model(), "finetune", num_classes=3, seed=0)
    start = _clone(model)
    reg = T.l2sp(model, start, alpha=0.2, beta=0.0)
    assert reg(model).item() == 0.0
    head_sq = model.head.fc.weight.pow(2).sum() + model.head.fc.bias.pow(2).sum()
    assert T.l2sp(model, start, alpha=0.2, beta=0.5)(model).item() == pytest.approx(
        0.25 * head_sq.item(), rel=1e-6
    )
    with torch.no_grad():
        model.stem.conv.weight[0, 0, 0, 0] += 0.3
        model.stages[1][0].bn.bias += 0.5  # 64 channels
    value = reg(model)
    assert value.item() == pytest.approx(0.1 * (0.3**2 + 64 * 0.25), rel=1e-5)
    value.backward()
    grad = model.stem.conv.weight.grad
    assert grad[0, 0, 0, 0].item() == pytest.approx(
        0.2 * 0.3, rel=1e-5
    )  # alpha * (w - w0): descent goes back
    assert grad.abs().sum().item() == pytest.approx(0.06, rel=1e-5)
    assert torch.allclose(model.stages[1][0].bn.bias.grad, torch.full((64,), 0.1))


def test_l2sp_in_fit_keeps_weights_nearer_the_start():
    drift = []
    for alpha in (0.0, 100.0):
        model, groups = T.prepare(_model(), "finetune", num_classes=3, seed=0)
        start = _clone(model)
        T.fit(
            model,
            _batches(),
            epochs=2,
            lr=0.05,
            param_groups=groups,
            regularizer=T.l2sp(model, start, alpha=alpha),
            **FIT,
        )
        drift.append((model.stem.conv.weight - start["stem.conv.weight"]).norm().item())
    assert drift[1] < 0.5 * drift[0]


# ---------------------------------------------------------------------------- block transfer, forgetting


@pytest.mark.parametrize("freeze", [True, False])
def test_transfer_blocks_copies_the_first_n_stages(freeze):
    source, target = _model(seed=1), _model(seed=2)
    src, before = _clone(source), _clone(target)
    T.transfer_blocks(source, target, 2, freeze=freeze)
    after = target.state_dict()
    for key, value in after.items():
        copied = key.startswith(("stem.", "stages.0."))
        assert torch.equal(value, src[key] if copied else before[key]), key
    x, y = _data(8)
    nn.functional.cross_entropy(target(x), y).backward()
    for name, p in target.named_parameters():
        frozen = freeze and name.startswith(("stem.", "stages.0."))
        assert p.requires_grad is not frozen and (p.grad is None) is frozen, name
    with pytest.raises(ValueError, match=r"stage \d differs"):
        T.transfer_blocks(_model(name="course_cnn_m"), _model(), 4)


def test_forgetting_reattaches_the_source_head():
    x, y = _data(64)
    source = _model()
    source.eval()
    batches = TensorBatches(x, y, 32, shuffle=False)
    acc = evaluate(source, batches, device="cpu")["acc"]
    tuned = new_head(copy.deepcopy(source), 3)  # same trunk, a target head: nothing forgotten
    assert T.forgetting(source, tuned, batches) == {"before": acc, "after": acc, "drop": 0.0}
    with torch.no_grad():  # a wiped trunk: features are 0, the source head predicts argmax(bias) everywhere
        for name, p in tuned.named_parameters():
            if not name.startswith("head."):
                p.zero_()
    chance = (y == source.head.fc.bias.argmax()).float().mean().item()
    result = T.forgetting(source, tuned, batches)
    assert result["after"] == pytest.approx(chance) and result["drop"] == pytest.approx(acc - chance)


# ------------------------------------------------------------------------------------------ source models


def test_source_model_trains_once_then_loads(tmp_path, monkeypatch):
    kw = dict(epochs=1, n=3, seed=0, batch_size=16, root=tmp_path, device="cpu")
    model, info = source_model("course_cnn_s", "digits", **kw)
    path = tmp_path / "cache" / "sources" / f"{info['key']}.pt"
    assert not info["cached"] and info["path"] == str(path) and path.is_file() and 0 <= info["test_acc"] <= 1

    def refuse(*args, **kwargs):
        raise AssertionError("fit must not run when the source is cached")

    monkeypatch.setattr("companion.sources.fit", refuse)  # source_model trains in sources
    again, info2 = source_model("course_cnn_s", "digits", **kw)
    assert info2["cached"] and info2["test_acc"] == info["test_acc"] and _same(_clone(model), _clone(again))
    monkeypatch.undo()
    _, info3 = source_model("course_cnn_s", "digits", **{**kw, "seed": 1})
    assert info3["key"] != info["key"] and not info3["cached"]
    path.write_bytes(b"not a checkpoint")  # corrupt: trained again and rewritten
    _, info4 = source_model("course_cnn_s", "digits", **kw)
    assert not info4["cached"] and info4["key"] == info["key"] and info4["test_acc"] == info["test_acc"]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: T.prepare(m, "probe"), "strategy"),
        (lambda m: T.prepare(m, "linear_probe", bn="frozen"), "bn"),
        (lambda m: T.prepare(m, "discriminative"), "layer_decay"),
        (lambda m: T.prepare(m, "finetune", layer_decay=1.5), "layer_decay"),
        (lambda m: T.layer_groups(m, -1.0), "lr"),
        (lambda m: T.unfreeze_top(m, 5), "k"),
        (lambda m: T.transfer_blocks(m, _model(), 9), "n"),
        (lambda m: T.l2sp(m, {}, alpha=-1.0), "alpha"),
        (lambda m: T.gradual(m, [], epochs=1, bn="freeze", scheduler="cosine"), "scheduler"),
        (lambda m: T.prepare(nn.Linear(2, 2), "finetune"), "model"),
    ],
)
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call(_model())
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ experiment sweeps


def _pair(n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data(n, seed=seed)
    return x, torch.arange(n) % 3  # balanced: 10 per class


def test_label_efficiency_runs_every_strategy_on_the_same_subset_per_seed():
    source = _model()
    before = _clone(source)
    rows = label_efficiency(
        source, _pair(), _pair(12, seed=1), per_class=[2, None], strategies=["scratch", "linear_probe"],
        seeds=[0, 1], epochs=1, min_steps=5, batch_size=4, lr={"scratch": LR, "linear_probe": 0.01}, **RUN,
    )  # fmt: skip
    assert _same(before, _clone(source)), "the source is copied, never trained"
    assert len(rows) == 2 * 2 * 2
    assert [(r["seed"], r["label"], r["strategy"]) for r in rows[:4]] == [
        (0, "2", "scratch"), (0, "2", "linear_probe"), (0, "all", "scratch"), (0, "all", "linear_probe"),
    ]  # fmt: skip
    small = [r for r in rows if r["label"] == "2"]
    assert {(r["n_train"], r["per_class"]) for r in small} == {(6, 2)}
    # 6 images in batches of 4 make 2 steps a pass: 3 passes reach min_steps
    assert all(r["steps"] == 6 and r["epochs"] == 3 for r in small)
    full = [r for r in rows if r["label"] == "all"]
    # all 30 images: one pass is 8 steps, more than min_steps
    assert {(r["n_train"], r["per_class"], r["steps"]) for r in full} == {(30, 10, 8)}
    assert all(0 <= r["acc"] <= 1 and len(r["history"]) == r["epochs"] for r in rows)
    again = label_efficiency(
        _model(), _pair(), _pair(12, seed=1), per_class=[2], strategies=["linear_probe"], seeds=[1],
        min_steps=5, batch_size=4, lr=0.01, **RUN,
    )  # fmt: skip
    same_run = next(r for r in rows if (r["seed"], r["label"], r["strategy"]) == (1, "2", "linear_probe"))
    assert again[0]["acc"] == same_run["acc"], "a run is a pure function of its seed"


def test_label_efficiency_checks_its_arguments():
    call = dict(per_class=[2], min_steps=2, **RUN)
    for kw, match in (
        (dict(strategies=["probe"]), "strategy"),
        (dict(lr={"scratch": 0.1}, strategies=["finetune"]), "lr must give a rate"),
        (dict(per_class=[0]), "per_class"),
        (dict(seeds=[]), "seeds"),
    ):
        with pytest.raises(ValueError, match=match):
            label_efficiency(_model(), _pair(), _pair(), **{**call, **kw})
    with pytest.raises(ValueError, match="train"):
        label_efficiency(_model(), (torch.zeros(3, 1, 8, 8), torch.zeros(2)), _pair(), **call)


def test_block_sweep_copies_n_stages_frozen_or_fine_tuned():
    source = _model(seed=1)
    before = _clone(source)
    rows = block_sweep(
        source, _pair(), _pair(12, seed=1), ns=[0, 2, 4], min_steps=2, batch_size=10, lr=LR, **RUN
    )
    assert _same(before, _clone(source))
    assert [(r["n"], r["frozen"]) for r in rows] == [(n, f) for n in (0, 2, 4) for f in (True, False)]
    assert rows[0]["acc"] == rows[1]["acc"], "n = 0 copies nothing: one scratch run serves both modes"
    total = sum(p.numel() for p in source.parameters()) - source.head.fc.weight.numel() - 10 + 3 * 128 + 3
    trainable = {(r["n"], r["frozen"]): r["trainable"] for r in rows}
    assert trainable[(4, True)] == 3 * 128 + 3, "the whole trunk frozen: only the new head trains"
    assert trainable[(0, True)] == trainable[(4, False)] == total
    assert trainable[(4, True)] < trainable[(2, True)] < total
    with pytest.raises(ValueError, match="n must be"):
        block_sweep(source, _pair(), _pair(), ns=[5], **RUN)


def test_steps_to_group_rows_and_probe_accuracy():
    history = [{"step": 10, "val_acc": 0.5}, {"step": 20, "val_acc": 0.8}, {"step": 30, "val_acc": 0.9}]
    assert steps_to(history, 0.8) == 20 and steps_to(history, 0.95) is None
    assert steps_to(history, 0.4, key="missing") is None
    rows = [dict(strategy=s, per_class=k, acc=a) for s, k, a in (("a", 5, 0.1), ("a", 1, 0.2), ("a", 5, 0.3))]
    assert group_rows(rows) == {"a": {1: [0.2], 5: [0.1, 0.3]}}
    assert list(group_rows(rows)["a"]) == [1, 5]
    with pytest.raises(ValueError, match="'acc'"):
        group_rows([{"strategy": "a", "per_class": 1}])
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    f = torch.randn(40, 5, generator=g) + 4 * y[:, None]  # two well separated clusters
    assert probe_accuracy(f[:20], y[:20], f[20:], y[20:]) == 1.0
    with pytest.raises(ValueError, match="features"):
        probe_accuracy(f[:20], y[:20], f[20:, :3], y[20:])


def test_eval_every_gives_a_convergence_curve_from_one_continuing_stream():
    rows = label_efficiency(
        _model(), _pair(), _pair(12, seed=1), per_class=[None], strategies=["finetune"], epochs=2,
        min_steps=0, batch_size=10, val=_pair(9, seed=2), eval_every=2, **RUN,
    )  # fmt: skip
    history = rows[0]["history"]  # 30 images in batches of 10: 2 epochs are 6 steps, evaluated every 2
    assert history.series("step") == [2, 4, 6] and all("val_acc" in r for r in history)
    plain = label_efficiency(
        _model(), _pair(), _pair(12, seed=1), per_class=[None], strategies=["finetune"], epochs=2,
        min_steps=0, batch_size=10, **RUN,
    )  # fmt: skip
    assert rows[0]["acc"] == plain[0]["acc"], "evaluating every 2 steps must not change the training"
    seven = label_efficiency(
        _model(), _pair(), _pair(12, seed=1), per_class=[None], strategies=["finetune"], epochs=2,
        min_steps=0, batch_size=10, val=_pair(9, seed=2), eval_every=4, **RUN,
    )  # fmt: skip
    assert seven[0]["history"].series("step") == [4, 8]  # whole intervals: 6 steps round up to 8
    with pytest.raises(ValueError, match="eval_every needs val"):
        label_efficiency(_model(), _pair(), _pair(), per_class=[2], eval_every=2, **RUN)
    with pytest.raises(ValueError, match="one fit call"):
        label_efficiency(
            _model(), _pair(), _pair(), per_class=[2], strategies=["lp_ft"], val=_pair(), eval_every=2, **RUN
        )


def test_labels_to_reach_interpolates_in_log_labels():
    curve = {1: 0.3, 10: 0.7, 100: 0.9}
    assert labels_to_reach(curve, 0.2) == 1.0
    assert labels_to_reach(curve, 0.8) == pytest.approx(10**1.5)
    assert labels_to_reach(curve, 0.7) == pytest.approx(10.0)
    assert labels_to_reach(curve, 0.95) is None
    with pytest.raises(ValueError, match="points"):
        labels_to_reach({0: 0.5}, 0.4)


@pytest.mark.slow  # worker processes, each loading torch
def test_label_efficiency_in_worker_processes_gives_the_same_rows():
    kw = dict(
        per_class=[2, None],
        strategies=["scratch", "linear_probe"],
        seeds=[1, 0],
        min_steps=5,
        batch_size=4,
        lr=0.01,
        **RUN,
    )
    key = ("seed", "label", "strategy", "acc", "steps", "epochs", "n_train")
    one = label_efficiency(_model(), _pair(), _pair(12, seed=1), workers=1, **kw)
    two = label_efficiency(_model(), _pair(), _pair(12, seed=1), workers=2, **kw)
    assert [tuple(r[k] for k in key) for r in two] == [tuple(r[k] for k in key) for r in one]
    assert [(r["seed"], r["label"], r["strategy"]) for r in one[:2]] == [
        (1, "2", "scratch"),
        (1, "2", "linear_probe"),
    ]
