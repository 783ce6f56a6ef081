"""Transfer-learning strategies on timm backbones: probe, fine-tune, LP-FT, gradual unfreezing.

- `prepare` sets up one strategy: which parameters train, a fresh head, per-group learning rates and what the
  BatchNorm layers of the frozen parts do; `adapt` runs any strategy end to end with `fit`.
- `lp_ft` (Kumar et al. 2022) probes the new head, then fine-tunes everything from the probed head.
- `gradual` (Howard & Ruder 2018) unfreezes one more trunk stage per epoch, top stage first.
- `layer_groups` gives discriminative learning rates: stage i of n gets lr * layer_decay ** (n - i), the head lr.
  Each group carries its already-scaled `lr` and no `lr_scale`: timm's `param_groups_layer_decay` puts the decay
  in `lr_scale`, which only timm's schedulers apply, so with a torch optimiser or scheduler it is silently lost.
- BatchNorm in frozen parts, `bn=`: "train" (PyTorch's default: running statistics keep drifting to the new data),
  "freeze" (timm's freeze_batch_norm_2d: statistics and affine fixed, no parameters left) or "eval" (same layers,
  kept in eval mode by a forward pre-hook, so `model.train()` cannot undo it).
- `l2sp` (Li et al. 2018), `transfer_blocks` (Yosinski et al. 2014) and `forgetting`.

Built on this module, each in its own: cached source models (`companion.sources`: `source_model`,
`cached_source`), domain-adversarial training (`companion.dann`) and the sweeps (`companion.experiments.runners`:
`label_efficiency`, `block_sweep`, `steps_to`, `labels_to_reach`, `group_rows`, `probe_accuracy`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping

import timm
import torch
from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d, unfreeze_batch_norm_2d
from timm.layers.norm_act import FrozenBatchNorm2d  # torchvision's class, the one timm converts to
from torch import Tensor, nn

from . import checks
from .device import pick_device, seeded
from .evaluation import evaluate
from .loop import History
from .models import new_head, stages
from .optim import _OPTIMIZERS
from .train import fit

__all__ = [
    "BN_POLICIES",
    "STRATEGIES",
    "adapt",
    "forgetting",
    "gradual",
    "l2sp",
    "layer_groups",
    "lp_ft",
    "prepare",
    "transfer_blocks",
    "unfreeze_top",
]

STRATEGIES = ("scratch", "linear_probe", "finetune", "lp_ft", "gradual", "discriminative")
BN_POLICIES = ("train", "freeze", "eval")
_FROZEN_BN = (FrozenBatchNorm2d, FrozenBatchNormAct2d)


# ------------------------------------------------------------------------------------------- input checks


def _check_decay(value: object) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
        checks.fail("layer_decay", "None or a number in (0, 1]", value)


def _classifier(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module) or not hasattr(model, "get_classifier"):
        raise ValueError(f"model must be a timm model with get_classifier(), got {type(model).__name__}")
    return model.get_classifier()


def check_pair(name: str, pair: object) -> tuple[Tensor, Tensor]:
    """(images, labels) from a pair of tensors with one label per image (shared by the sweeps and DANN)."""
    ok = (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(isinstance(t, Tensor) for t in pair)
        and pair[0].shape[0] == pair[1].shape[0] > 0
    )
    if not ok:
        raise ValueError(
            f"{name} must be a non-empty (images, labels) pair of tensors with one label per image"
        )
    return pair[0], pair[1]


# ------------------------------------------------------------------------------- freezing and BatchNorm


def _keep_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: run this BatchNorm with its running statistics, whatever model.train() said."""
    module.training = False


def _unhook(module: nn.Module) -> None:
    hooks = module._forward_pre_hooks
    for key in [k for k, fn in hooks.items() if fn is _keep_eval]:
        del hooks[key]


def _with_policy(bn: nn.Module, policy: str) -> nn.Module:
    """The BatchNorm layer to use under a policy ("train" = a plain BatchNorm); may be a new module."""
    _unhook(bn)
    if policy == "freeze" and isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return freeze_batch_norm_2d(bn)
    if isinstance(bn, _FROZEN_BN) and policy != "freeze":
        bn = unfreeze_batch_norm_2d(bn).to(bn.running_mean.device)
    if policy == "eval" or (policy == "freeze" and not isinstance(bn, _FROZEN_BN)):  # 1d/3d: eval does it
        bn.register_forward_pre_hook(_keep_eval)
    return bn


def _names(model: nn.Module, parts: Iterable[nn.Module]) -> set[str]:
    """Names (in model) of the given modules and of all their descendants."""
    ids = {id(m) for part in parts for m in part.modules()}
    return {name for name, m in model.named_modules() if id(m) in ids}


def _freeze(model: nn.Module, frozen: set[str], bn: str) -> None:
    """Freeze the parameters of the modules named in `frozen`, train all others; BN policy on the frozen ones."""
    checks.choice("bn", bn, BN_POLICIES)
    for name, module in list(model.named_modules()):
        if name and isinstance(module, (nn.modules.batchnorm._BatchNorm, *_FROZEN_BN)):
            new = _with_policy(module, bn if name in frozen else "train")
            if new is not module:
                parent, _, attr = name.rpartition(".")
                new.train(module.training)
                setattr(model.get_submodule(parent), attr, new)
    for name, p in model.named_parameters():
        p.requires_grad_(name.rpartition(".")[0] not in frozen)


def unfreeze_top(model: nn.Module, k: int, *, bn: str = "eval") -> nn.Module:
    """Train the head and the top k trunk stages, freeze the rest under BatchNorm policy `bn`.

    k = 0 is a linear probe, k = len(stages(model)) trains everything (parameters outside the stages and the
    head, if any, unfreeze only then).
    """
    blocks = stages(model)
    checks.integer("k", k, 0, len(blocks))
    if k == len(blocks):
        _freeze(model, set(), bn)
    else:
        trained = _names(model, [_classifier(model), *blocks[len(blocks) - k :]])
        _freeze(model, {name for name, _ in model.named_modules()} - trained, bn)
    return model


def _trainable_stages(model: nn.Module) -> list[int]:
    return [i for i, s in enumerate(stages(model)) if any(p.requires_grad for p in s.parameters())]


# ------------------------------------------------------------------------------------- learning rates


def layer_groups(
    model: nn.Module, lr: float, *, head_lr: float | None = None, layer_decay: float | None = None
) -> list[dict]:
    """Optimiser parameter groups of the trainable parameters: head first, then the trunk.

    Without layer_decay the trunk is one group at `lr`; with it, stage i of the n in `stages(model)` gets
    lr * layer_decay ** (n - i) (the head's depth is n). The lr is stored already scaled, without timm's
    `lr_scale`, so torch and timm optimisers and schedulers all see the decayed rates.
    """
    checks.positive("lr", lr)
    checks.positive("head_lr", head_lr, none=True)
    _check_decay(layer_decay)
    head = {id(p) for p in _classifier(model).parameters()}
    depth: dict[int, int] = {}
    if layer_decay is not None:
        blocks = stages(model)
        depth = {id(p): i for i, s in enumerate(blocks) for p in s.parameters()}
        top = len(blocks) - 1  # parameters outside the stages train with the top stage
    groups: dict[str, dict] = {"head": {"name": "head", "params": [], "lr": head_lr or lr}}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in head:
            key, rate = "head", head_lr or lr
        elif layer_decay is None:
            key, rate = "trunk", lr
        else:
            i = depth.get(id(p), top)
            key, rate = f"stage{i}", lr * layer_decay ** (len(blocks) - i)
        groups.setdefault(key, {"name": key, "params": [], "lr": rate})["params"].append(p)
    return [g for g in groups.values() if g["params"]]


# ------------------------------------------------------------------------------------------ strategies


def _reinit(model: nn.Module) -> None:
    """Redraw every weight: timm's own init when the architecture can be rebuilt, else each layer's reset."""
    try:
        cfg = model.pretrained_cfg
        in_chans = model.get_submodule(cfg["first_conv"]).in_channels
        fresh = timm.create_model(cfg["architecture"], in_chans=in_chans, num_classes=model.num_classes)
        model.load_state_dict(fresh.state_dict())
    except (AttributeError, KeyError, TypeError, RuntimeError):
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def prepare(
    model: nn.Module,
    strategy: str,
    *,
    num_classes: int | None = None,
    bn: str = "eval",
    lr: float = 1e-3,
    head_lr: float | None = None,
    layer_decay: float | None = None,
    seed: int | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Set a model up for a transfer strategy; returns it with its parameter groups for fit.

    scratch: every weight redrawn; linear_probe: trunk frozen, head trained; finetune: all trained;
    discriminative: all trained with layer_decay (required) per stage. lp_ft and gradual start as a linear
    probe; `lp_ft`, `gradual` or `adapt` run their later phases. num_classes gives a fresh head (else the head is
    kept); bn is what the BatchNorm layers of frozen parts do; seed fixes the new weights.
    """
    checks.choice("strategy", strategy, STRATEGIES)
    checks.choice("bn", bn, BN_POLICIES)
    _check_decay(layer_decay)
    if strategy == "discriminative" and layer_decay is None:
        checks.fail("layer_decay", "a number in (0, 1] for strategy='discriminative'", None)
    head = _classifier(model)
    with seeded(seed):
        if strategy == "scratch":
            _reinit(model)
        if num_classes is not None:
            new_head(model, num_classes)
            head = _classifier(model).to(_device(model))
    if strategy in ("linear_probe", "lp_ft", "gradual"):
        _freeze(model, {n for n, _ in model.named_modules()} - _names(model, [head]), bn)
    else:
        _freeze(model, set(), bn)
    return model, layer_groups(model, lr, head_lr=head_lr, layer_decay=layer_decay)


class _Shifted:
    """Batches whose set_epoch(e) picks epoch e + offset, so that successive fit calls keep reshuffling."""

    def __init__(self, batches, offset: int):
        self.batches, self.offset = batches, offset

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch + self.offset)


def _shift(batches, offset: int):
    return (
        _Shifted(batches, offset)
        if hasattr(batches, "set_epoch") and hasattr(batches, "__len__")
        else batches
    )


def _rows(history: History, epoch0: int, step0: int, **extra) -> list[dict]:
    return [{**r, "epoch": epoch0 + r["epoch"], "step": step0 + r["step"], **extra} for r in history]


def lp_ft(
    model: nn.Module,
    train: Iterable,
    val: Iterable | None = None,
    *,
    probe_epochs: int,
    ft_epochs: int,
    num_classes: int | None = None,
    lr: float = 1e-4,
    probe_lr: float = 1e-3,
    head_lr: float | None = None,
    layer_decay: float | None = None,
    bn: str = "eval",
    seed: int = 0,
    **fit_kw,
) -> History:
    """LP-FT (Kumar et al. 2022): train a new head on the frozen trunk, then fine-tune all from it.

    Fine-tuning from a probed head instead of a random one distorts the pretrained features less. Rows of the
    returned History carry phase 1 (probe, at probe_lr) or 2 (fine-tune, at lr), with epochs counted on.
    """
    checks.integer("probe_epochs", probe_epochs, 1)
    checks.integer("ft_epochs", ft_epochs, 1)
    checks.positive("probe_lr", probe_lr)
    model, groups = prepare(model, "linear_probe", num_classes=num_classes, bn=bn, lr=probe_lr, seed=seed)
    probe = fit(
        model, train, epochs=probe_epochs, val=val, lr=probe_lr, param_groups=groups, seed=seed, **fit_kw
    )
    model, groups = prepare(model, "finetune", bn=bn, lr=lr, head_lr=head_lr, layer_decay=layer_decay)
    shifted = _shift(train, probe_epochs)
    tune = fit(model, shifted, epochs=ft_epochs, val=val, lr=lr, param_groups=groups, seed=seed + 1, **fit_kw)
    step = probe.last.get("step", 0)
    return History(_rows(probe, 0, 0, phase=1) + _rows(tune, len(probe), step, phase=2))


class GradualUnfreezing:
    """fit plug-in for gradual unfreezing (ULMFiT, Howard & Ruder 2018).

    At the start of epoch e (counted from 0) the head and the top min(n, e * per_epoch) trunk stages train, the
    rest stays frozen under the BatchNorm policy `bn`; each epoch's history row gets "unfrozen", the number of
    trained stages. The optimiser must already hold every parameter (frozen ones get no gradient, so they do not
    move: AdamW and SGD skip a parameter without a gradient, weight decay included), except with bn="freeze",
    whose unfrozen BatchNorm layers bring new parameters: those join the optimiser here as new groups.
    """

    order = -20  # before validation and bookkeeping: the epoch trains and is evaluated with its stages open

    def __init__(
        self,
        per_epoch: int = 1,
        *,
        bn: str = "eval",
        lr: float = 1e-3,
        head_lr: float | None = None,
        layer_decay: float | None = None,
    ):
        self.per_epoch = checks.integer("per_epoch", per_epoch, 1)
        self.bn = checks.choice("bn", bn, BN_POLICIES)
        self.lr, self.head_lr, self.layer_decay, self.unfrozen = lr, head_lr, layer_decay, 0

    def on_epoch_start(self, state) -> None:
        self.unfrozen = min(len(stages(state.model)), state.epoch * self.per_epoch)
        unfreeze_top(state.model, self.unfrozen, bn=self.bn)
        known = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
        for g in layer_groups(state.model, self.lr, head_lr=self.head_lr, layer_decay=self.layer_decay):
            fresh = [p for p in g["params"] if id(p) not in known]
            if fresh:
                state.optimizer.add_param_group({**g, "params": fresh})

    def on_epoch_end(self, state) -> None:
        state.row["unfrozen"] = self.unfrozen


def gradual(
    model: nn.Module,
    train: Iterable,
    val: Iterable | None = None,
    *,
    epochs: int,
    per_epoch: int = 1,
    num_classes: int | None = None,
    lr: float = 1e-3,
    head_lr: float | None = None,
    layer_decay: float | None = None,
    bn: str = "eval",
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    device: str | torch.device = "auto",
    seed: int = 0,
    **fit_kw,
) -> History:
    """Gradual unfreezing (ULMFiT): epoch e trains the head and the top e * per_epoch stages.

    One fit call with the `GradualUnfreezing` plug-in and one optimiser holding every parameter group from the
    start (each stage at its layer_decay rate), so schedulers and checkpoints work as in any fit call. Rows carry
    "unfrozen", the number of trained stages. With bn="freeze" the unfrozen BatchNorm layers bring new
    parameters mid-run, which a scheduler or a checkpoint made at the start would not know: both are refused there.
    """
    checks.integer("epochs", epochs, 1)
    checks.integer("per_epoch", per_epoch, 1)
    if "param_groups" in fit_kw:
        raise ValueError(
            "param_groups is not supported by gradual (it builds the groups per stage); leave it out"
        )
    if bn == "freeze":
        for key in ("scheduler", "checkpoint"):
            if fit_kw.get(key) is not None:
                raise ValueError(
                    f"{key} is not supported by gradual with bn='freeze' (unfrozen BatchNorm layers bring new "
                    "parameters mid-run); use bn='eval' or leave it out"
                )
    checks.choice("optimizer", optimizer, _OPTIMIZERS)  # a name: fit builds it from the groups
    dev = pick_device(device)
    model, _ = prepare(model, "gradual", num_classes=num_classes, bn=bn, lr=lr, seed=seed)
    model.to(dev)
    if bn != "freeze":  # every stage's group exists from the start; frozen parameters just get no gradient
        unfreeze_top(model, len(stages(model)), bn=bn)
    groups = layer_groups(model, lr, head_lr=head_lr, layer_decay=layer_decay)
    unfreeze_top(model, 0, bn=bn)
    plugin = GradualUnfreezing(per_epoch, bn=bn, lr=lr, head_lr=head_lr, layer_decay=layer_decay)
    callbacks = [*(fit_kw.pop("callbacks", None) or []), plugin]
    return fit(
        model,
        train,
        epochs=epochs,
        val=val,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        param_groups=groups,
        device=dev,
        seed=seed,
        callbacks=callbacks,
        **fit_kw,
    )


def adapt(
    model: nn.Module,
    strategy: str,
    train: Iterable,
    val: Iterable | None = None,
    *,
    epochs: int,
    num_classes: int | None = None,
    bn: str = "eval",
    lr: float = 1e-3,
    head_lr: float | None = None,
    layer_decay: float | None = None,
    probe_epochs: int | None = None,
    seed: int = 0,
    **fit_kw,
) -> History:
    """Train a model to a target task with one of STRATEGIES, end to end; returns fit's History.

    lp_ft probes for probe_epochs (default epochs // 2), then fine-tunes for the rest, both at lr; gradual
    unfreezes one stage per epoch. All others are `prepare` followed by one `fit`.
    """
    checks.choice("strategy", strategy, STRATEGIES)
    checks.integer("epochs", epochs, 1)
    common = dict(num_classes=num_classes, bn=bn, lr=lr, head_lr=head_lr, layer_decay=layer_decay, seed=seed)
    if strategy == "gradual":
        return gradual(model, train, val, epochs=epochs, **common, **fit_kw)
    if strategy == "lp_ft":
        probe = (
            max(1, epochs // 2) if probe_epochs is None else checks.integer("probe_epochs", probe_epochs, 1)
        )
        if epochs - probe < 1:
            raise ValueError(f"epochs must exceed probe_epochs ({probe}) for strategy='lp_ft', got {epochs}")
        return lp_ft(
            model, train, val, probe_epochs=probe, ft_epochs=epochs - probe, probe_lr=lr, **common, **fit_kw
        )
    model, groups = prepare(model, strategy, **common)
    return fit(model, train, epochs=epochs, val=val, lr=lr, param_groups=groups, seed=seed, **fit_kw)


# ------------------------------------------------------------------------------- regularised transfer


def l2sp(
    model: nn.Module, start: Mapping[str, Tensor] | nn.Module, *, alpha: float = 0.01, beta: float = 0.01
) -> Callable[[nn.Module], Tensor]:
    """L2-SP (Li et al. 2018): a fit regularizer, alpha/2 ||w - w0||^2 + beta/2 ||w_new||^2.

    w0 are the `start` weights (a state dict or a model) of the transferred parameters: those of `model` found in
    `start` with the same shape, the classifier excepted. All other parameters are new layers, pulled towards 0.
    Sums run over trainable parameters only (frozen ones add constants).
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            checks.fail(name, "a finite number >= 0", value)
    state = start.state_dict() if isinstance(start, nn.Module) else start
    if not isinstance(state, Mapping):
        raise ValueError(f"start must be a state dict or a model, got {type(start).__name__}")
    head = {id(p) for p in _classifier(model).parameters()}
    anchors = {
        name: state[name].detach().clone()
        for name, p in model.named_parameters()
        if id(p) not in head and isinstance(state.get(name), Tensor) and state[name].shape == p.shape
    }

    def regularize(net: nn.Module) -> Tensor:
        near, new = [], []
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            w0 = anchors.get(name)
            if w0 is None:
                new.append(p.pow(2).sum())
                continue
            if w0.device != p.device or w0.dtype != p.dtype:
                w0 = anchors[name] = w0.to(p.device, p.dtype)
            near.append((p - w0).pow(2).sum())
        zero = torch.zeros((), device=_device(net))
        return alpha / 2 * sum(near, zero) + beta / 2 * sum(new, zero)

    return regularize


def transfer_blocks(
    source: nn.Module, target: nn.Module, n: int, *, freeze: bool = True, bn: str = "eval"
) -> nn.Module:
    """Copy the first n stages of a trained source into a target of the same architecture.

    Yosinski et al. (2014)'s experiment: the copied stages are frozen (freeze=True, BatchNorm under `bn`) or
    trained further; the other stages and the head keep the target's own weights. Returns the target.
    """
    src, dst = stages(source), stages(target)
    if len(src) != len(dst):
        raise ValueError(f"target must have the {len(src)} stages of source, got {len(dst)}")
    checks.integer("n", n, 0, len(src))
    checks.choice("bn", bn, BN_POLICIES)
    for i, (a, b) in enumerate(zip(src[:n], dst[:n])):
        sa, sb = a.state_dict(), b.state_dict()
        if [(k, v.shape) for k, v in sa.items()] != [(k, v.shape) for k, v in sb.items()]:
            raise ValueError(f"target must have the architecture of source; stage {i} differs")
        with torch.no_grad():
            for key, value in sb.items():
                value.copy_(sa[key])
    _freeze(target, _names(target, dst[:n]) if freeze else set(), bn)
    return target


def forgetting(
    before: nn.Module, after: nn.Module, source_batches: Iterable, *, source_head: nn.Module | None = None
) -> dict[str, float]:
    """Source-task accuracy before and after fine-tuning, and the drop: catastrophic forgetting.

    `after`'s trunk is evaluated with the source head (default: `before`'s classifier) put back on a copy of it;
    both run on `before`'s device. Returns {"before", "after", "drop" = before - after}.
    """
    head = source_head if source_head is not None else _classifier(before)
    probe = copy.deepcopy(after)
    old = _classifier(probe)
    name = next((n for n, m in probe.named_modules() if m is old and n), None)
    if name is None:
        raise ValueError(
            f"after must be a timm model whose classifier is a submodule, got {type(after).__name__}"
        )
    parent, _, attr = name.rpartition(".")
    dev = _device(before)
    setattr(probe.get_submodule(parent), attr, copy.deepcopy(head))
    probe.to(dev)
    accs = [evaluate(m, source_batches, device=dev).get("acc") for m in (before, probe)]
    if accs[0] is None:
        raise ValueError("source_batches must hold class labels, to measure an accuracy")
    return {"before": accs[0], "after": accs[1], "drop": accs[0] - accs[1]}
