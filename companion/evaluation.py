"""Losses and metrics shared by training and evaluation: `default_loss`, `accuracy`,
`batch_losses` (one batch through the model, one loss per task) and `evaluate`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .device import pick_device

LossFn = Callable[[Tensor, Tensor], Tensor]


def _as_dict(value, name: str = "main") -> dict:
    return value if isinstance(value, dict) else {name: value}


def default_loss(out: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for class indices, BCE-with-logits for 0/1 multi-label, MSE otherwise."""
    if not target.is_floating_point() and out.ndim == target.ndim + 1:
        return nn.functional.cross_entropy(out, target)
    if out.shape == target.shape and out.ndim >= 2 and out.shape[1] > 1 and _is_binary(target):
        return nn.functional.binary_cross_entropy_with_logits(out, target.float())
    return nn.functional.mse_loss(out.float(), target.float().view_as(out))


def _is_binary(t: Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def accuracy(out: Tensor, target: Tensor) -> float | None:
    """Share of correct class predictions, or of correct 0/1 labels for multi-label; None for regression."""
    if not target.is_floating_point() and out.ndim == target.ndim + 1:
        return (out.argmax(1) == target).float().mean().item()
    if out.shape == target.shape and out.ndim >= 2 and out.shape[1] > 1 and _is_binary(target):
        return ((out > 0).float() == target.float()).float().mean().item()
    return None


_PRECISIONS = ("fp32", "bf16", "fp16")


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _move(value, device: torch.device):
    if isinstance(value, dict):
        return {k: v.to(device, non_blocking=True) for k, v in value.items()}
    return value.to(device, non_blocking=True)


def batch_losses(
    model: nn.Module,
    x: Tensor,
    y: dict[str, Tensor],
    loss_fns: LossFn | dict[str, LossFn] | None = None,
    *,
    device: torch.device,
    precision: str = "fp32",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One batch through the model: ({task: output}, {task: loss}), one loss per task of y.

    The forward pass runs under `precision`'s autocast, the losses in float32 outside it. fit's step and
    `evaluate` both use it (evaluate under no_grad), so a training loss and a validation loss are one formula.
    """
    with _autocast(device, precision):
        out = _as_dict(model(x))
    fns = loss_fns if isinstance(loss_fns, dict) else dict.fromkeys(y, loss_fns or default_loss)
    missing = set(y) - set(out)
    if missing:
        raise ValueError(
            f"the model returned no output for task(s) {sorted(missing)}; outputs: {sorted(out)}"
        )
    return out, {t: (fns.get(t) or default_loss)(out[t].float(), y[t]) for t in y}


def evaluate(
    model: nn.Module,
    batches: Iterable,
    loss_fns: LossFn | dict[str, LossFn] | None = None,
    *,
    device: str | torch.device = "auto",
    precision: str = "fp32",
) -> dict[str, float]:
    """Mean loss and accuracy per task over batches, in eval mode without gradients.

    The model is moved to `device` (as fit does), so a model trained or loaded elsewhere evaluates where the
    batches go."""
    dev = pick_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for i, (x, y) in enumerate(batches):
            if getattr(x, "shape", None) is not None and len(x.shape) and x.shape[0] == 0:
                model.train(was_training)
                raise ValueError(f"batch {i} of batches is empty (0 samples): nothing to evaluate on it")
            x, y = _move(x, dev), _as_dict(_move(y, dev))
            out, losses = batch_losses(model, x, y, loss_fns, device=dev, precision=precision)
            n = x.shape[0]
            for task, target in y.items():
                _add(sums, counts, f"loss/{task}", losses[task].item(), n)
                acc = accuracy(out[task].float(), target)
                if acc is not None:
                    _add(sums, counts, f"acc/{task}", acc, n)
    model.train(was_training)
    if not counts:
        raise ValueError(
            "batches is empty (it yielded no samples): there is nothing to evaluate; pass the data to score "
            "(an iterator is used up after one pass)"
        )
    result = {k: sums[k] / counts[k] for k in sums}
    losses = [v for k, v in result.items() if k.startswith("loss/")]
    accs = [v for k, v in result.items() if k.startswith("acc/")]
    if losses:
        result["loss"] = sum(losses)
    if accs:
        result["acc"] = sum(accs) / len(accs)
    return result


def _add(sums: dict, counts: dict, key: str, value: float, n: int) -> None:
    sums[key] = sums.get(key, 0.0) + value * n
    counts[key] = counts.get(key, 0) + n
