"""Domain-adversarial training, DANN (Ganin et al. 2016): the gradient reversal layer, the adaptation-weight
schedule, the domain discriminator and training through fit's extension point.

`grad_reverse`/`GradientReversal`, `dann_lambda` and `domain_discriminator` are the pieces; the `DANN` callback
and loss step plug them into `fit`, and `train_dann` runs it end to end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from . import checks
from .batches import TensorBatches
from .device import pick_device, seeded
from .loop import History
from .models import features
from .train import fit
from .transfer import _classifier, check_pair

__all__ = ["DANN", "GradientReversal", "dann_lambda", "domain_discriminator", "grad_reverse", "train_dann"]


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
    """The gradient reversal layer R_lambda: R(x) = x forward, dR/dx = -lambda I backward."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        checks.fail("lam", "a finite number >= 0", lam)
    return _ReverseGrad.apply(x, float(lam))


class GradientReversal(nn.Module):
    """`grad_reverse` as a layer with a settable `lam`."""

    def __init__(self, lam: float = 1.0):
        super().__init__()
        grad_reverse(torch.zeros(1), lam)  # validates lam
        self.lam = float(lam)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lam)


def dann_lambda(p: float, gamma: float = 10.0) -> float:
    """DANN's adaptation-weight schedule lambda_p = 2 / (1 + exp(-gamma p)) - 1, p in [0, 1].

    Ganin et al. (2016) use gamma = 10: lambda rises from 0 at the start (when the domain classifier's signal is
    noise) to about 1 at the end. Reference values: 0 at p = 0, 0.98661 at p = 0.5, 0.99991 at p = 1.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        checks.fail("p", "a number in [0, 1] (the training progress)", p)
    checks.positive("gamma", gamma)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def domain_discriminator(in_features: int, hidden: int = 100, *, seed: int = 0) -> nn.Sequential:
    """The domain classifier of DANN: features -> hidden ReLU layer -> one logit "is target"."""
    checks.integer("in_features", in_features, 1)
    checks.integer("hidden", hidden, 1)
    with seeded(seed):
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class DANN(nn.Module):
    """Domain-adversarial training (Ganin et al. 2016) as a fit callback plus loss step.

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
        checks.integer("batch_size", batch_size, 1)
        if (
            isinstance(max_lambda, bool)
            or not isinstance(max_lambda, (int, float))
            or not 0 <= max_lambda < math.inf
        ):
            checks.fail("max_lambda", "a finite number >= 0", max_lambda)
        checks.positive("gamma", gamma)
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
    """Train `model` on labelled source images and unlabelled target images with DANN, through `fit`.

    The source batches and the target stream are both seeded by `seed`; max_lambda = 0 gives the matched
    source-only baseline (see `DANN`). Returns fit's History and the DANN object (its discriminator trained).
    """
    x, y = check_pair("source", source)
    checks.integer("epochs", epochs, 1)
    checks.integer("batch_size", batch_size, 1)
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
