"""Training on several processes with torchrun and DistributedDataParallel (fit's scale-out).

Launch a training script with `torchrun --nproc_per_node N script.py` (one process per GPU, or N processes on
CPU): `fit` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) through `init`, joins the process
group (NCCL on CUDA, gloo on CPU), shards a `TensorBatches` training set, wraps the model in torch's
DistributedDataParallel (DDP) and keeps every process's weights identical. Without torchrun every function
here is a no-op and fit runs exactly as on one device, number for number.

Data. `shard` cuts each global batch of a TensorBatches into `world` equal, disjoint slices; process r gets
slice r. The slices of one batch, rank 0 first, are the single-process batch, so world x local batch = the
global batch and N processes take the same optimisation steps as one process would on the global batch.

Where gradients are averaged. Task losses are means over the local batch, so with equal local batches the
global loss is the mean of the ranks' losses and its gradient is the mean of theirs. Two cases:

1. Loss balancers (fit's default sum, `mtl.Weighted`, `Uncertainty`, `DWA`, `FAMO`, any balancer calling
   backward once on a function of the loss values). fit hands them each task loss with the *value* of the
   all-reduced (global) loss but the *gradient* of the local one (`global_values`), so every rank computes
   the weights a single process would on the global batch: backward of f(L) gives f'(L_global) dL_local on each
   rank, and DDP, which all-reduces (averages) parameter gradients in buckets during that one backward pass,
   turns it into f'(L_global) dL_global.
2. Per-task gradient balancers (`balancers.GradAggregation` in mode "params", `balancers.GradNorm`, any balancer with
   `per_task_grads = True`, and every step of a custom `loss_step`). The step runs under DDP's `no_sync()` and
   a hook on every trained parameter all-reduces each gradient the moment autograd produces it, whether by
   `torch.autograd.grad` or by `backward`. Every per-task gradient a balancer sees is therefore already the
   mean over ranks, i.e. that task's gradient on the global batch, and the aggregation, run on identical
   inputs with the same seed on every rank, equals the single-process one. Cost: one all-reduce per
   parameter per task gradient, instead of DDP's few buckets per step. A custom balancer that calls backward
   more than once, or differentiates with torch.autograd.grad, must say so with `per_task_grads = True`:
   DDP averages the gradients of the first backward pass of a step only.
   `GradAggregation(mode="features")` (and mode "auto" on a model that keeps `shared`) is refused: its rows are
   per-sample gradients of the shared representation, which live on different ranks, so aggregating them as
   a single process would needs the all-reduced Gramian G G^T inside the aggregator; use mode="params".

Parameters trained by fit but outside the model (an `nn.Module` balancer's or callback's) are all-reduced by
the same hooks in both cases. fit's `regularizer(model)` depends on the weights alone, the same on every rank,
so its gradient is added locally after DDP's pass (case 1) or averaged as identical values (case 2). Randomness: rank r draws from seed + r, so dropout masks differ between ranks as
they differ between samples, and a model with dropout matches a single process in distribution, not number
for number; BatchNorm statistics are per rank (convert with `torch.nn.SyncBatchNorm` on GPU if that matters).

Checkpoints are written by rank 0 only (atomically, as on one device) while the others wait at a barrier;
each rank's RNG state and running sums are gathered into the file, and on resume every rank loads it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .batches import TensorBatches
from .device import pick_device

__all__ = [
    "Sync",
    "all_reduce_mean",
    "barrier",
    "broadcast",
    "close",
    "gather",
    "global_values",
    "init",
    "is_main",
    "mean_values",
    "rank",
    "shard",
    "world",
    "wrap",
]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer (set by torchrun), got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (set by torchrun), got {raw!r}")
    return value


def active() -> bool:
    """True when this process belongs to a process group of two or more processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if active() else 0


def world() -> int:
    """The number of processes training together (1 without torchrun)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the process that writes files and shows progress bars."""
    return rank() == 0


def init(device: str | torch.device = "auto") -> tuple[int, int, torch.device]:
    """Join torchrun's process group if there is one; return (rank, world, device).

    Reads RANK, WORLD_SIZE and LOCAL_RANK. With WORLD_SIZE unset or 1 nothing happens: (0, 1,
    pick_device(device)). Otherwise the device type comes from `device` ("auto": CUDA if available, else CPU)
    and its index from LOCAL_RANK; the backend is NCCL on CUDA and gloo on CPU. Calling it again returns the
    group already joined. The group is left at interpreter exit (`close`).
    """
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return 0, 1, pick_device(device)
    local = _env_int("LOCAL_RANK", 0)
    kind = pick_device(device).type
    if kind == "mps":
        raise ValueError(
            "device='mps' cannot train under torchrun (no distributed backend); use 'cpu' or 'auto'"
        )
    dev = torch.device("cuda", local) if kind == "cuda" else torch.device("cpu")
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
        atexit.register(close)
    backend = dist.get_backend()
    if (backend == "nccl") != (dev.type == "cuda"):
        wanted = "'cuda' or 'auto'" if backend == "nccl" else "'cpu'"
        raise ValueError(
            f"device must be {wanted} in a process group with backend {backend!r}, got {str(dev)!r}"
        )
    return dist.get_rank(), dist.get_world_size(), dev


def close() -> None:
    """Leave the process group (registered to run at exit by `init`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (no-op on one process)."""
    if active():
        dist.barrier()


def all_reduce_mean(t: Tensor) -> Tensor:
    """Replace t, in place, by its mean over the processes, and return it (no-op on one process)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def broadcast(obj):
    """Rank 0's `obj` on every process (a picklable object)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every process's `obj` (picklable), in rank order, on every process."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_values(values: dict[str, float]) -> dict[str, float]:
    """Each key's mean over the processes that have it (for fit's per-epoch history row)."""
    if not active():
        return values
    rows = gather(values)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: sum(row[k] for row in rows if k in row) / sum(k in row for row in rows) for k in keys}


class _GlobalValue(torch.autograd.Function):
    """Forward: the global value; backward: the gradient goes to the local tensor unchanged."""

    @staticmethod
    def forward(ctx, local: Tensor, value: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def global_values(losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """Losses whose values are the mean over processes and whose gradients are the local ones (case 1 above)."""
    if not active() or not losses:
        return losses
    names = list(losses)
    values = torch.stack([losses[k].detach().float().reshape(()) for k in names])
    all_reduce_mean(values)
    return {k: _GlobalValue.apply(losses[k], values[i].to(losses[k].dtype)) for i, k in enumerate(names)}


def wrap(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """The model in DistributedDataParallel (rank 0's weights and buffers are broadcast); as is on one process.

    `find_unused_parameters=True`, so a model whose steps leave some trained parameters without gradient (a
    head not in a batch's targets) trains too, at the cost of a graph walk per step.
    """
    if not active():
        return model
    dev = device if device is not None else next(model.parameters()).device
    ids = (
        [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    )
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def shard(batches):
    """This process's share of a TensorBatches (see `TensorBatches.shard`); the batches as they are on one process."""
    if not active():
        return batches
    if not isinstance(batches, TensorBatches):
        raise ValueError(
            f"batches must be a TensorBatches to shard, got {type(batches).__name__}; "
            "for a DataLoader use torch.utils.data.DistributedSampler"
        )
    return batches.shard(rank(), world())


def per_task_grads(balancer) -> bool:
    """Whether a balancer differentiates task losses one by one (case 2 of the module docstring)."""
    return bool(getattr(balancer, "per_task_grads", False))


def check_balancer(balancer, model: nn.Module) -> None:
    """Refuse, before training, a balancer that cannot equal the single-process result under torchrun. A balancer
    declares this itself: a method `torchrun_refusal(model)` returning why not, or None (no method: it can)."""
    if not active():
        return
    refusal = getattr(balancer, "torchrun_refusal", None)
    why = refusal(model) if refusal is not None else None
    if why:
        raise ValueError(f"balancer: {why}")


class Sync:
    """How fit keeps one process in step with the others (everything passes through on one process).

    `net` is the model to call for the forward pass (DDP-wrapped under torchrun); `step()` is the context of one
    optimisation step (case 2 of the module docstring: DDP's no_sync plus the all-reduce hooks; case 1: hooks on
    the parameters outside the model only); `losses()` gives the balancer global loss values.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[Tensor],
        *,
        per_task: bool,
        device: torch.device | None = None,
    ):
        self.rank, self.world = rank(), world()
        self.is_main = self.rank == 0
        self.model, self.per_task = model, per_task
        self.net = wrap(model, device) if self.world > 1 else model
        inside = {id(p) for p in model.parameters()}
        trained = [p for p in model.parameters() if p.requires_grad]
        seen = {id(p) for p in trained}
        extra = [p for p in params if p.requires_grad and id(p) not in inside and id(p) not in seen]
        self._hooked = trained + extra if per_task else extra

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """The forward and backward passes of one step run inside this."""
        if self.world == 1:
            yield
            return
        handles = [p.register_hook(_mean_hook) for p in self._hooked]
        try:
            with self.net.no_sync() if self.per_task else contextlib.nullcontext():
                yield
        finally:
            for h in handles:
                h.remove()

    def losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The task losses with global values (see `global_values`)."""
        return global_values(losses) if self.world > 1 else losses


def _mean_hook(grad: Tensor | None) -> Tensor | None:
    # None: torch.autograd.grad(..., allow_unused=True) asked for a parameter the loss does not reach (on every rank)
    return None if grad is None else all_reduce_mean(grad.clone())
