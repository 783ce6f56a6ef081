"""Transfer-learning strategies on timm backbones: probe, fine-tune, LP-FT, gradual unfreezing (notebooks 02-09).

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
- `l2sp` (Li et al. 2018), `transfer_blocks` (Yosinski et al. 2014), `forgetting` and cached `source_model`s.
- DANN (Ganin et al. 2016): `grad_reverse`/`GradientReversal`, `dann_lambda`, `domain_discriminator` and the
  `DANN` callback + loss step for fit's extension point; `train_dann` runs it (notebook 09).
- Sweeps: `label_efficiency` (accuracy per strategy, labels per class and seed), `block_sweep` (Yosinski's
  copy-n-stages experiment), `steps_to`, `labels_to_reach`, `group_rows` and `probe_accuracy` (logistic
  regression on cached features).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import timm
import torch
from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d, unfreeze_batch_norm_2d
from timm.layers.norm_act import FrozenBatchNorm2d  # torchvision's class, the one timm converts to
from torch import Tensor, nn

from .data import TensorBatches, data_root, load_dataset, subsample_per_class
from .device import pick_device
from .models import backbone, features, new_head, stages
from .train import CheckpointError, History, _make_optimizer, evaluate, fit, load_checkpoint, save_checkpoint

__all__ = [
    "BN_POLICIES",
    "DANN",
    "STRATEGIES",
    "GradientReversal",
    "adapt",
    "block_sweep",
    "dann_lambda",
    "domain_discriminator",
    "forgetting",
    "grad_reverse",
    "gradual",
    "group_rows",
    "l2sp",
    "label_efficiency",
    "labels_to_reach",
    "layer_groups",
    "lp_ft",
    "prepare",
    "probe_accuracy",
    "source_model",
    "steps_to",
    "train_dann",
    "transfer_blocks",
    "unfreeze_top",
]

STRATEGIES = ("scratch", "linear_probe", "finetune", "lp_ft", "gradual", "discriminative")
BN_POLICIES = ("train", "freeze", "eval")
_FROZEN_BN = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
_SOURCE_VERSION = 1  # bump to invalidate every cached source model


# ------------------------------------------------------------------------------------------- input checks


def _check_choice(name: str, value: object, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_positive(name: str, value: object, *, none: bool = False) -> None:
    if value is None and none:
        return
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    )
    if not ok:
        raise ValueError(
            f"{name} must be a positive finite number{' or None' if none else ''}, got {value!r}"
        )


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    bad = (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    )
    if bad:
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {span}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_decay(value: object) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise ValueError(f"layer_decay must be None or a number in (0, 1], got {value!r}")


def _classifier(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module) or not hasattr(model, "get_classifier"):
        raise ValueError(f"model must be a timm model with get_classifier(), got {type(model).__name__}")
    return model.get_classifier()


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
    _check_choice("bn", bn, BN_POLICIES)
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
    """Train the head and the top k trunk stages, freeze the rest under BatchNorm policy `bn` (notebook 04).

    k = 0 is a linear probe, k = len(stages(model)) trains everything (parameters outside the stages and the
    head, if any, unfreeze only then).
    """
    blocks = stages(model)
    _check_int("k", k, 0, len(blocks))
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
    """Optimiser parameter groups of the trainable parameters: head first, then the trunk (notebook 05).

    Without layer_decay the trunk is one group at `lr`; with it, stage i of the n in `stages(model)` gets
    lr * layer_decay ** (n - i) (the head's depth is n). The lr is stored already scaled, without timm's
    `lr_scale`, so torch and timm optimisers and schedulers all see the decayed rates.
    """
    _check_positive("lr", lr)
    _check_positive("head_lr", head_lr, none=True)
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


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run a block with the CPU generator seeded, leaving the global random state as it was."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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
    """Set a model up for a transfer strategy; returns it with its parameter groups for fit (notebooks 04-05).

    scratch: every weight redrawn; linear_probe: trunk frozen, head trained; finetune: all trained;
    discriminative: all trained with layer_decay (required) per stage. lp_ft and gradual start as a linear
    probe; `lp_ft`, `gradual` or `adapt` run their later phases. num_classes gives a fresh head (else the head is
    kept); bn is what the BatchNorm layers of frozen parts do; seed fixes the new weights.
    """
    _check_choice("strategy", strategy, STRATEGIES)
    _check_choice("bn", bn, BN_POLICIES)
    _check_decay(layer_decay)
    if strategy == "discriminative" and layer_decay is None:
        raise ValueError("layer_decay must be a number in (0, 1] for strategy='discriminative', got None")
    head = _classifier(model)
    with _seeded(seed):
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
    """LP-FT (Kumar et al. 2022): train a new head on the frozen trunk, then fine-tune all from it (notebook 05).

    Fine-tuning from a probed head instead of a random one distorts the pretrained features less. Rows of the
    returned History carry phase 1 (probe, at probe_lr) or 2 (fine-tune, at lr), with epochs counted on.
    """
    _check_int("probe_epochs", probe_epochs, 1)
    _check_int("ft_epochs", ft_epochs, 1)
    _check_positive("probe_lr", probe_lr)
    model, groups = prepare(model, "linear_probe", num_classes=num_classes, bn=bn, lr=probe_lr, seed=seed)
    probe = fit(
        model, train, epochs=probe_epochs, val=val, lr=probe_lr, param_groups=groups, seed=seed, **fit_kw
    )
    model, groups = prepare(model, "finetune", bn=bn, lr=lr, head_lr=head_lr, layer_decay=layer_decay)
    shifted = _shift(train, probe_epochs)
    tune = fit(model, shifted, epochs=ft_epochs, val=val, lr=lr, param_groups=groups, seed=seed + 1, **fit_kw)
    step = probe.last.get("step", 0)
    return History(_rows(probe, 0, 0, phase=1) + _rows(tune, len(probe), step, phase=2))


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
    """Gradual unfreezing (ULMFiT): epoch e trains the head and the top e * per_epoch stages (notebooks 04, 09).

    One fit call per epoch shares one optimiser, so its state survives; the parameters a stage brings when it
    unfreezes join as new groups (with their layer_decay lr). Rows carry "unfrozen", the number of trained stages.
    A fit scheduler or checkpoint would restart every epoch, so both are refused.
    """
    _check_int("epochs", epochs, 1)
    _check_int("per_epoch", per_epoch, 1)
    for key in ("scheduler", "checkpoint", "param_groups"):
        if key in fit_kw:
            raise ValueError(f"{key} is not supported by gradual (one fit call per epoch); leave it out")
    _check_choice("optimizer", optimizer, ("adamw", "adam", "sgd"))  # a name: the groups are built per epoch
    dev = pick_device(device)
    model, _ = prepare(model, "gradual", num_classes=num_classes, bn=bn, lr=lr, seed=seed)
    model.to(dev)
    n, opt, rows, step = len(stages(model)), None, [], 0
    for epoch in range(epochs):
        k = min(n, epoch * per_epoch)
        unfreeze_top(model, k, bn=bn)
        groups = layer_groups(model, lr, head_lr=head_lr, layer_decay=layer_decay)
        if opt is None:
            opt = _make_optimizer(optimizer, groups, lr, weight_decay)
        else:
            known = {id(p) for g in opt.param_groups for p in g["params"]}
            for g in groups:
                fresh = [p for p in g["params"] if id(p) not in known]
                if fresh:
                    opt.add_param_group({**g, "params": fresh})
        hist = fit(
            model,
            _shift(train, epoch),
            epochs=1,
            val=val,
            optimizer=opt,
            lr=lr,
            device=dev,
            seed=seed + epoch,
            **fit_kw,
        )
        rows += _rows(hist, epoch, step, unfrozen=k)
        step = rows[-1]["step"]
    return History(rows)


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
    """Train a model to a target task with one of STRATEGIES, end to end; returns fit's History (notebook 05).

    lp_ft probes for probe_epochs (default epochs // 2), then fine-tunes for the rest, both at lr; gradual
    unfreezes one stage per epoch. All others are `prepare` followed by one `fit`.
    """
    _check_choice("strategy", strategy, STRATEGIES)
    _check_int("epochs", epochs, 1)
    common = dict(num_classes=num_classes, bn=bn, lr=lr, head_lr=head_lr, layer_decay=layer_decay, seed=seed)
    if strategy == "gradual":
        return gradual(model, train, val, epochs=epochs, **common, **fit_kw)
    if strategy == "lp_ft":
        probe = max(1, epochs // 2) if probe_epochs is None else _check_int("probe_epochs", probe_epochs, 1)
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
    """L2-SP (Li et al. 2018): a fit regularizer, alpha/2 ||w - w0||^2 + beta/2 ||w_new||^2 (notebooks 05, 09).

    w0 are the `start` weights (a state dict or a model) of the transferred parameters: those of `model` found in
    `start` with the same shape, the classifier excepted. All other parameters are new layers, pulled towards 0.
    Sums run over trainable parameters only (frozen ones add constants).
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
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
    """Copy the first n stages of a trained source into a target of the same architecture (notebooks 02, 09).

    Yosinski et al. (2014)'s experiment: the copied stages are frozen (freeze=True, BatchNorm under `bn`) or
    trained further; the other stages and the head keep the target's own weights. Returns the target.
    """
    src, dst = stages(source), stages(target)
    if len(src) != len(dst):
        raise ValueError(f"target must have the {len(src)} stages of source, got {len(dst)}")
    _check_int("n", n, 0, len(src))
    _check_choice("bn", bn, BN_POLICIES)
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
    """Source-task accuracy before and after fine-tuning, and the drop: catastrophic forgetting (notebook 04).

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


# ------------------------------------------------------------------------------------------ source models


def _source_key(config: dict) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return f"{config['model']}-{config['dataset']}-{digest}"


def source_model(
    name: str,
    dataset: str,
    *,
    epochs: int = 3,
    n: int | None = None,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 128,
    size: int | None = None,
    root: str | Path | None = None,
    device: str | torch.device = "auto",
) -> tuple[nn.Module, dict]:
    """A course source model trained on a dataset once, then loaded from its cached checkpoint (notebooks 05, 07).

    n: training images per class (None: all). The checkpoint is `<root or data_root()>/cache/sources/<key>.pt`,
    keyed by the whole configuration, written atomically and read with weights_only; a missing or corrupt one
    is retrained (`cached_source`). Returns the model (CPU, eval mode) and {"test_acc", "steps", "key", "path",
    "cached"}.
    """
    _check_int("epochs", epochs, 1)
    _check_int("batch_size", batch_size, 1)
    _check_positive("lr", lr)
    if n is not None:
        _check_int("n", n, 1)
    config = dict(
        model=name, dataset=dataset, epochs=epochs, n=n, seed=seed, lr=float(lr), batch_size=batch_size
    )
    config.update(size=size, version=_SOURCE_VERSION)
    return cached_source(config, "sources", root=root, device=device)


def cached_source(
    config: dict,
    folder: str,
    *,
    root: str | Path | None = None,
    device: str | torch.device = "auto",
    relabel: Callable[[Tensor, int], Tensor] | None = None,
    min_steps: int = 0,
) -> tuple[nn.Module, dict]:
    """Train `config["model"]` on `config["dataset"]` once, then load it from `<root>/cache/<folder>/<key>.pt`
    (the key hashes the whole `config`; written atomically, read with weights_only, retrained when missing,
    corrupt or stale). Shared by `source_model` and `mismatch.noisy_source` (notebooks 05, 07, 09).

    `config` holds model, dataset, epochs, n (images per class or None), seed, lr, batch_size and size, plus
    anything else that should key the cache. `relabel(y, num_classes)` changes the training labels (label noise);
    with `min_steps`, training runs enough epochs for at least that many optimiser steps. Returns the model (CPU,
    eval mode) and {"test_acc" (clean test labels), "steps", "key", "path", "cached"}.
    """
    name, dataset, seed, size = config["model"], config["dataset"], config["seed"], config["size"]
    key = _source_key(config)
    path = Path(root if root is not None else data_root()).expanduser() / "cache" / folder / f"{key}.pt"
    if path.is_file():
        try:
            state = load_checkpoint(path)
            if state.get("config") == config:
                model = backbone(name, in_chans=state["in_chans"], num_classes=state["num_classes"])
                model.load_state_dict(state["model"])
                info = dict(test_acc=state["test_acc"], steps=state.get("steps"), key=key, path=str(path), cached=True)
                return model.eval(), info
        except (CheckpointError, KeyError, RuntimeError, TypeError):
            pass  # unreadable or stale: train again and overwrite it
    x, y = load_dataset(dataset, "train", root, size=size)
    if config["n"] is not None:
        x, y = subsample_per_class(x, y, config["n"], seed=seed)
    in_chans, num_classes = x.shape[1], int(y.max()) + 1
    if relabel is not None:
        y = relabel(y, num_classes)
    with _seeded(seed):
        model = backbone(name, in_chans=in_chans, num_classes=num_classes)
    dev = pick_device(device)
    batches = TensorBatches(x, y, config["batch_size"], seed=seed)
    epochs = max(config["epochs"], -(-min_steps // len(batches)))
    fit(model, batches, epochs=epochs, lr=config["lr"], device=dev, seed=seed, progress=False)
    x_test, y_test = load_dataset(dataset, "test", root, size=size)
    acc = evaluate(model, TensorBatches(x_test, y_test, 512, shuffle=False), device=dev)["acc"]
    model.cpu().eval()
    steps = len(batches) * epochs
    state = dict(
        model=model.state_dict(), config=config, in_chans=in_chans, num_classes=num_classes, test_acc=acc,
        steps=steps,
    )
    save_checkpoint(path, state)
    return model, dict(test_acc=acc, steps=steps, key=key, path=str(path), cached=False)


# ------------------------------------------------------------------------------------------ experiment sweeps


def _check_pair(name: str, pair: object) -> tuple[Tensor, Tensor]:
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


def _epochs_for(batches: TensorBatches, epochs: int, min_steps: int) -> int:
    """`epochs` passes, or more where a small set needs them to make at least `min_steps` optimiser steps."""
    return max(epochs, -(-min_steps // len(batches)))


def _lr_of(lr: float | Mapping[str, float], strategy: str) -> float:
    if isinstance(lr, Mapping):
        if strategy not in lr:
            raise ValueError(f"lr must give a rate for strategy {strategy!r}, got rates for {sorted(lr)}")
        lr = lr[strategy]
    _check_positive("lr", lr)
    return float(lr)


class _Chunks:
    """Passes of `steps` batches cut from an endless stream of epochs of `batches`, to evaluate every few steps.

    fit sees each chunk as one epoch, so its per-epoch validation runs every `steps` optimiser steps; the stream
    reshuffles (set_epoch) at every real epoch boundary and carries on across chunks and fit calls.
    """

    def __init__(self, batches: TensorBatches, steps: int):
        self.batches, self.steps, self._pass, self._it = batches, steps, 0, None

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the stream continues where the previous chunk stopped."""

    def __iter__(self) -> Iterator:
        done = 0
        while done < self.steps:
            if self._it is None:
                self.batches.set_epoch(self._pass)
                self._pass += 1
                self._it = iter(self.batches)
            batch = next(self._it, None)
            if batch is None:
                self._it = None
                continue
            done += 1
            yield batch


def label_efficiency(
    source: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    per_class: Iterable[int | None],
    strategies: Iterable[str] = ("scratch", "finetune"),
    seeds: Iterable[int] = (0,),
    epochs: int = 1,
    min_steps: int = 50,
    batch_size: int = 32,
    lr: float | Mapping[str, float] = 1e-3,
    bn: str = "eval",
    val: tuple[Tensor, Tensor] | None = None,
    eval_every: int | None = None,
    device: str | torch.device = "auto",
) -> list[dict]:
    """Target accuracy per strategy, labels per class and seed: the label-efficiency sweep (notebooks 02, 05, 07).

    Each run copies `source`, subsamples `per_class` labelled images of every class from `train` (None: all of
    them; the subset depends on the seed only, so all strategies of a seed see the same images), adapts with
    `adapt` for `epochs` passes, or as many more as it takes to make `min_steps` optimiser steps, and measures
    accuracy on `test`. lr may map strategy -> rate. With `val`, each run's history has val_acc per epoch, or
    every `eval_every` steps (then the history's "epochs" are chunks of that many steps: a convergence curve).
    Rows: {strategy, seed, per_class (all: the mean per class), label ("all" or the count), n_train, acc,
    epochs, steps, time_s, history}.
    """
    x, y = _check_pair("train", train)
    x_test, y_test = _check_pair("test", test)
    sizes, names, seed_list = list(per_class), list(strategies), list(seeds)
    for name, values in (("per_class", sizes), ("strategies", names), ("seeds", seed_list)):
        if not values:
            raise ValueError(f"{name} must name at least one value, got an empty list")
    for k in sizes:
        if k is not None:
            _check_int("per_class", k, 1)
    for s in names:
        _check_choice("strategy", s, STRATEGIES)
        _lr_of(lr, s)
    for s in seed_list:
        _check_int("seed", s, 0)
    _check_int("epochs", epochs, 1)
    _check_int("min_steps", min_steps, 0)
    _check_int("batch_size", batch_size, 1)
    if eval_every is not None:
        _check_int("eval_every", eval_every, 1)
        if val is None:
            raise ValueError("eval_every needs val: the (images, labels) to evaluate every eval_every steps")
    if "lp_ft" in names and epochs < 2 and min_steps < 2:
        raise ValueError(
            "epochs or min_steps must be >= 2 for strategy 'lp_ft' (a probe and a fine-tune phase)"
        )
    dev = pick_device(device)
    num_classes = int(y.max()) + 1
    test_batches = TensorBatches(x_test, y_test, 512, shuffle=False, device=dev)
    val_batches = (
        None if val is None else TensorBatches(*_check_pair("val", val), 512, shuffle=False, device=dev)
    )
    rows = []
    for seed in seed_list:
        for k in sizes:
            xs, ys = (x, y) if k is None else subsample_per_class(x, y, k, seed=seed)
            batches = TensorBatches(xs, ys, min(batch_size, len(xs)), seed=seed, device=dev)
            n_epochs = _epochs_for(batches, epochs, min_steps)
            train_on = batches
            if eval_every is not None:
                n_epochs = -(-n_epochs * len(batches) // eval_every)
            for strategy in names:
                if eval_every is not None:
                    train_on = _Chunks(batches, eval_every)
                model = copy.deepcopy(source)
                t0 = time.perf_counter()
                history = adapt(
                    model,
                    strategy,
                    train_on,
                    val_batches,
                    epochs=max(n_epochs, 2) if strategy == "lp_ft" else n_epochs,
                    num_classes=num_classes,
                    bn=bn,
                    lr=_lr_of(lr, strategy),
                    seed=seed,
                    device=dev,
                    progress=False,
                )
                acc = evaluate(model, test_batches, device=dev)["acc"]
                rows.append(
                    dict(
                        strategy=strategy,
                        seed=seed,
                        per_class=k if k is not None else round(len(ys) / num_classes),
                        label="all" if k is None else str(k),
                        n_train=len(ys),
                        acc=acc,
                        epochs=len(history),
                        steps=int(history.last.get("step", 0)),
                        time_s=time.perf_counter() - t0,
                        history=history,
                    )
                )
    return rows


def block_sweep(
    source: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    ns: Iterable[int] | None = None,
    epochs: int = 1,
    min_steps: int = 50,
    batch_size: int = 32,
    lr: float = 1e-3,
    bn: str = "eval",
    seed: int = 0,
    device: str | torch.device = "auto",
) -> list[dict]:
    """Yosinski et al. (2014)'s sweep: copy the first n source stages, frozen or fine-tuned, train the rest (notebook 02).

    For each n (default 0..len(stages)), a target of the source's architecture is redrawn with `seed` (the same
    random weights for every n), gets a fresh head and the first n stages of `source` (`transfer_blocks`), and
    trains on all of `train` for `epochs` (at least `min_steps` steps). n = 0 copies nothing: the scratch
    baseline, run once and reported for both modes. Rows: {n, frozen, acc, trainable (parameter count)}.
    """
    x, y = _check_pair("train", train)
    x_test, y_test = _check_pair("test", test)
    depth = len(stages(source))
    ns = list(range(depth + 1)) if ns is None else list(ns)
    if not ns:
        raise ValueError("ns must name at least one stage count, got an empty list")
    for n in ns:
        _check_int("n", n, 0, depth)
    _check_int("epochs", epochs, 1)
    _check_int("min_steps", min_steps, 0)
    _check_int("batch_size", batch_size, 1)
    _check_positive("lr", lr)
    _check_choice("bn", bn, BN_POLICIES)
    dev = pick_device(device)
    num_classes = int(y.max()) + 1
    batches = TensorBatches(x, y, min(batch_size, len(x)), seed=seed, device=dev)
    test_batches = TensorBatches(x_test, y_test, 512, shuffle=False, device=dev)
    n_epochs = _epochs_for(batches, epochs, min_steps)
    rows, baseline = [], None
    for n in ns:
        for frozen in (True, False):
            if n == 0 and baseline is not None:
                rows.append({**baseline, "frozen": frozen})
                continue
            target, _ = prepare(copy.deepcopy(source), "scratch", num_classes=num_classes, seed=seed)
            transfer_blocks(source, target, n, freeze=frozen, bn=bn)
            groups = layer_groups(target, lr)
            fit(
                target,
                batches,
                epochs=n_epochs,
                lr=lr,
                param_groups=groups,
                seed=seed,
                device=dev,
                progress=False,
            )
            acc = evaluate(target, test_batches, device=dev)["acc"]
            trainable = sum(p.numel() for p in target.parameters() if p.requires_grad)
            row = dict(n=n, frozen=frozen, acc=acc, trainable=trainable)
            rows.append(row)
            if n == 0:
                baseline = row
    return rows


def steps_to(history: Iterable[Mapping], threshold: float, *, key: str = "val_acc") -> int | None:
    """The optimiser step of the first history row whose `key` reaches `threshold`, or None (notebook 05)."""
    for row in history:
        value = row.get(key)
        if value is not None and value >= threshold:
            return int(row["step"])
    return None


def labels_to_reach(points: Mapping[float, float], target: float) -> float | None:
    """Labels per class at which an accuracy curve {labels: accuracy} first reaches `target` (notebook 05).

    Interpolated linearly in log(labels) between the last point below and the first point at or above the
    target; the smallest x if it is already there; None if the curve never gets there.
    """
    xs = sorted(points)
    if not xs or min(xs) <= 0:
        raise ValueError(f"points must map positive label counts to accuracies, got {dict(points)!r}")
    for i, x in enumerate(xs):
        if points[x] >= target:
            if i == 0:
                return float(x)
            x0, a0, a1 = xs[i - 1], points[xs[i - 1]], points[x]
            t = (target - a0) / (a1 - a0)
            return float(math.exp(math.log(x0) + t * (math.log(x) - math.log(x0))))
    return None


def group_rows(
    rows: Iterable[Mapping], *, value: str = "acc", series: str = "strategy", x: str = "per_class"
) -> dict[str, dict]:
    """{series: {x: [value of each row]}} from sweep rows, x in increasing order (notebooks 02, 05, 07)."""
    out: dict[str, dict] = {}
    for row in rows:
        for name in (value, series, x):
            if name not in row:
                raise ValueError(f"every row must have a {name!r} entry, got one with {sorted(row)}")
        out.setdefault(row[series], {}).setdefault(row[x], []).append(row[value])
    return {s: dict(sorted(d.items())) for s, d in out.items()}


def probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> float:
    """Test accuracy of a linear probe (multinomial logistic regression) on frozen features (notebook 07).

    The classic probe on cached features: each feature is standardised with the training mean and std, then a
    linear layer minimises mean cross-entropy + weight_decay / 2 * |W|^2 by full-batch L-BFGS from zero weights
    (a convex problem: the result does not depend on a seed). Runs in float64 on the CPU.
    """
    _check_positive("weight_decay", weight_decay)
    _check_int("max_iter", max_iter, 1)
    f, t = _check_pair("train", (train_features, train_labels))
    f_test, t_test = _check_pair("test", (test_features, test_labels))
    if f.ndim != 2 or f_test.ndim != 2 or f.shape[1] != f_test.shape[1]:
        raise ValueError(
            f"features must be N x D matrices of one width, got {tuple(f.shape)} and {tuple(f_test.shape)}"
        )
    f, f_test = f.detach().cpu().double(), f_test.detach().cpu().double()
    t, t_test = t.detach().cpu().long(), t_test.detach().cpu().long()
    mean, std = f.mean(0), f.std(0, unbiased=False).clamp_min(1e-8)
    a, b = (f - mean) / std, (f_test - mean) / std
    classes = int(max(t.max(), t_test.max())) + 1
    w = torch.zeros(f.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(a @ w + bias, t) + weight_decay / 2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1).eq(t_test).double().mean().item()


# ------------------------------------------------------------------------ domain-adversarial training (DANN)


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -lambda (Ganin et al. 2016)."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float = 1.0) -> Tensor:
    """The gradient reversal layer R_lambda: R(x) = x forward, dR/dx = -lambda I backward (notebook 09)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    return _ReverseGrad.apply(x, float(lam))


class GradientReversal(nn.Module):
    """`grad_reverse` as a layer with a settable `lam` (notebook 09)."""

    def __init__(self, lam: float = 1.0):
        super().__init__()
        grad_reverse(torch.zeros(1), lam)  # validates lam
        self.lam = float(lam)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lam)


def dann_lambda(p: float, gamma: float = 10.0) -> float:
    """DANN's adaptation-weight schedule lambda_p = 2 / (1 + exp(-gamma p)) - 1, p in [0, 1] (notebook 09).

    Ganin et al. (2016) use gamma = 10: lambda rises from 0 at the start (when the domain classifier's signal is
    noise) to about 1 at the end. Reference values: 0 at p = 0, 0.98661 at p = 0.5, 0.99991 at p = 1.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a number in [0, 1] (the training progress), got {p!r}")
    _check_positive("gamma", gamma)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def domain_discriminator(in_features: int, hidden: int = 100, *, seed: int = 0) -> nn.Sequential:
    """The domain classifier of DANN: features -> hidden ReLU layer -> one logit "is target" (notebook 09)."""
    _check_int("in_features", in_features, 1)
    _check_int("hidden", hidden, 1)
    with _seeded(seed):
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class DANN(nn.Module):
    """Domain-adversarial training (Ganin et al. 2016) as a fit callback plus loss step (notebook 09).

    Train with `fit(model, source_batches, callbacks=[dann], loss_step=dann.loss_step)` (or `train_dann`). At each
    step a batch of unlabelled target images is drawn from its own seeded stream; source and target go through
    the model's trunk together (`models.features`), the classifier sees the source half (cross-entropy on the
    labels) and the discriminator sees all features through the gradient reversal layer:

        min_{features, classifier} max_{discriminator}  L_y(source) - lambda * L_d(source vs target)

    The discriminator minimises L_d (binary cross-entropy, target = 1); the reversed gradient makes the trunk
    maximise it, pushing source and target features together. lambda follows `dann_lambda(progress)` times
    `max_lambda`; max_lambda = 0 keeps everything else (the same target batches through BatchNorm, the same
    discriminator) but cuts the adversarial gradient: the matched source-only baseline. Logs per epoch:
    "dann_lambda" and "domain_acc" (the discriminator's accuracy; 0.5 means the domains look alike).
    """

    def __init__(
        self,
        target: Tensor,
        in_features: int,
        *,
        batch_size: int = 64,
        hidden: int = 100,
        max_lambda: float = 1.0,
        gamma: float = 10.0,
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(target, Tensor) or target.ndim < 2 or target.shape[0] < 1:
            raise ValueError("target must be a non-empty tensor of unlabelled target images (N x C x H x W)")
        _check_int("batch_size", batch_size, 1)
        if isinstance(max_lambda, bool) or not isinstance(max_lambda, (int, float)) or not 0 <= max_lambda < math.inf:
            raise ValueError(f"max_lambda must be a finite number >= 0, got {max_lambda!r}")
        _check_positive("gamma", gamma)
        self.discriminator = domain_discriminator(in_features, hidden, seed=seed)
        self.grl = GradientReversal(0.0)
        self.max_lambda, self.gamma, self.seed = float(max_lambda), float(gamma), seed
        n = target.shape[0]
        self.stream = TensorBatches(
            target, torch.zeros(n, dtype=torch.long), min(batch_size, n), seed=seed + 7919, drop_last=True
        )
        self.drawn, self._it = 0, None

    # ---- the unlabelled target stream: its position is the number of batches drawn (saved in checkpoints)
    def _next_target(self) -> Tensor:
        per_pass = len(self.stream)
        if self._it is None:
            self.stream.set_epoch(self.drawn // per_pass)
            self._it = iter(self.stream)
            for _ in range(self.drawn % per_pass):
                next(self._it)
        batch = next(self._it, None)
        if batch is None:
            self._it = None
            return self._next_target()
        self.drawn += 1
        return batch[0]

    def get_extra_state(self) -> dict:
        return {"drawn": self.drawn}

    def set_extra_state(self, state: dict) -> None:
        self.drawn, self._it = int(state["drawn"]), None

    # ---- fit's extension point
    def on_step_start(self, state) -> None:
        """Set lambda from the training progress p."""
        self.grl.lam = self.max_lambda * dann_lambda(state.progress, self.gamma)

    def loss_step(self, model: nn.Module, x: Tensor, y: dict, state) -> tuple[dict, dict]:
        """Class loss on the source batch and domain loss on source + target features (fit's loss_step)."""
        xt = self._next_target().to(x.device)
        f = features(model, torch.cat([x, xt]))
        ns = x.shape[0]
        logits = _classifier(model)(f[:ns])
        d = self.discriminator(self.grl(f)).squeeze(1)
        is_target = torch.cat([torch.zeros(ns, device=x.device), torch.ones(len(xt), device=x.device)])
        domain = nn.functional.binary_cross_entropy_with_logits(d.float(), is_target)
        target = next(iter(y.values()))
        main = nn.functional.cross_entropy(logits.float(), target)
        state.logs["dann_lambda"] = self.grl.lam
        state.logs["domain_acc"] = ((d > 0).float() == is_target).float().mean().item()
        return {"main": logits}, {"main": main, "domain": domain}


def train_dann(
    model: nn.Module,
    source: tuple[Tensor, Tensor],
    target: Tensor,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_lambda: float = 1.0,
    gamma: float = 10.0,
    hidden: int = 100,
    val: Iterable | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    **fit_kw,
) -> tuple[History, DANN]:
    """Train `model` on labelled source images and unlabelled target images with DANN, through `fit` (notebook 09).

    The source batches and the target stream are both seeded by `seed`; max_lambda = 0 gives the matched
    source-only baseline (see `DANN`). Returns fit's History and the DANN object (its discriminator trained).
    """
    x, y = _check_pair("source", source)
    _check_int("epochs", epochs, 1)
    _check_int("batch_size", batch_size, 1)
    dev = pick_device(device)
    width = getattr(model, "num_features", None)
    if not isinstance(width, int):
        raise ValueError(f"model must be a timm model with num_features, got {type(model).__name__}")
    dann = DANN(
        target, width, batch_size=batch_size, hidden=hidden, max_lambda=max_lambda, gamma=gamma, seed=seed
    )
    batches = TensorBatches(x, y, min(batch_size, len(x)), seed=seed, device=dev)
    history = fit(
        model,
        batches,
        epochs=epochs,
        lr=lr,
        val=val,
        seed=seed,
        device=dev,
        callbacks=[dann],
        loss_step=dann.loss_step,
        **fit_kw,
    )
    return history, dann
