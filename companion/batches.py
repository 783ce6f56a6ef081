"""Seeded mini-batches and samples of in-memory data: `TensorBatches`, `EpochSampler`, `EpochLoader`,
`loader`, `split` and `subsample_per_class`.

The order of every epoch is a pure function of (seed, epoch), so a run repeats exactly and resumes mid-epoch
with `set_epoch`; under torchrun `TensorBatches.shard` gives each process its share of every batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from . import checks

Target = Tensor | dict[str, Tensor]


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit torch seed that is a pure function of (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _length(x: Tensor, y: Target) -> int:
    n = x.shape[0]
    ys = y.values() if isinstance(y, Mapping) else [y]
    for t in ys:
        if t.shape[0] != n:
            raise ValueError(f"y must have one label per row of x ({n}), got {t.shape[0]}")
    return n


def _index(y: Target, idx: Tensor) -> Target:
    if isinstance(y, Mapping):
        return {k: v[idx.to(v.device)] for k, v in y.items()}
    return y[idx.to(y.device)]


class TensorBatches:
    """Mini-batches of in-memory tensors, moved to the device once, seeded per epoch.

    The order of epoch e is a pure function of (seed, e): call `set_epoch(e)` before iterating to pick it
    (resuming mid-epoch = set_epoch, then skip the first k batches). Without set_epoch, each new pass
    moves on to the next epoch, like a shuffling DataLoader.

    Under torchrun, `shard(rank, world)` gives one process's share of every batch (see `companion.distributed`).
    """

    def __init__(
        self,
        x: Tensor,
        y: Target,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
        drop_last: bool = False,
    ):
        checks.integer("batch_size", batch_size)
        self.n = _length(x, y)
        if drop_last and self.n < batch_size:
            raise ValueError(
                f"batch_size must be <= the number of samples ({self.n}) with drop_last, got {batch_size}"
            )
        dev = torch.device(device) if device is not None else x.device
        self.x = x.to(dev)
        self.y = {k: v.to(dev) for k, v in y.items()} if isinstance(y, Mapping) else y.to(dev)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0
        self.rank, self.world = 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> Tensor:
        """The sample order of an epoch (a permutation when shuffling, else 0..N-1)."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))

    def shard(self, rank: int, world: int) -> TensorBatches:
        """Process `rank`'s share of every batch when `world` processes train together (taught with fit).

        Batch b of an epoch (the same global order on every process) is cut into `world` equal, disjoint,
        consecutive slices and this process gets slice `rank`: world x local batch = `batch_size`, and the slices
        of ranks 0..world-1 in turn are the single-process batch. A last, partial batch is cut to a multiple of
        `world` (at most world - 1 samples of an epoch are left out); if fewer than `world` samples remain it is
        dropped. The tensors are shared with this object, not copied.
        """
        checks.integer("world", world)
        checks.integer("rank", rank, 0, world - 1)
        if self.world != 1:
            raise ValueError(
                f"shard: these batches are already shard {self.rank} of {self.world}; shard the unsharded ones"
            )
        if self.batch_size % world:
            raise ValueError(
                f"batch_size must be a multiple of the number of processes ({world}) to shard, got {self.batch_size}"
            )
        if self.n < world:
            raise ValueError(f"shard: {self.n} samples cannot be shared among {world} processes")
        part = copy.copy(self)
        part.rank, part.world = rank, world
        return part

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest < self.world else full + 1

    def __iter__(self) -> Iterator[tuple[Tensor, Target]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = self.order(epoch).to(self.x.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                size = len(idx) // self.world
                idx = idx[self.rank * size : (self.rank + 1) * size]
            yield self.x[idx], _index(self.y, idx)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices 0..N-1, shuffled as a pure function of (seed, epoch)."""

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


def _seed_worker(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32  # base seed of this pass + worker id, set by the DataLoader
    random.seed(seed)
    np.random.seed(seed)


class EpochLoader(torch.utils.data.DataLoader):
    """A DataLoader whose order and worker seeds are a pure function of (seed, epoch)."""

    def __init__(self, dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int):
        self._seed, self.epoch = seed, 0
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=seed),
            num_workers=num_workers,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass uses."""
        self.epoch = int(epoch)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(_mix(self._seed, epoch) ^ 1)  # worker base seeds for this epoch
        return super().__iter__()


def loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
) -> EpochLoader:
    """A DataLoader for data too large for TensorBatches, with the same set_epoch semantics."""
    checks.integer("batch_size", batch_size)
    checks.integer("num_workers", num_workers, 0)
    return EpochLoader(dataset, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers)


def split(
    x: Tensor, y: Target, sizes_or_fractions: Sequence[int] | Sequence[float], *, seed: int
) -> list[tuple[Tensor, Target]]:
    """Random disjoint parts of (x, y), by sizes or by fractions of N.

    Fractions summing to 1 share out the leftover rows one by one from the first part, so every row is used.
    """
    n, parts = _length(x, y), list(sizes_or_fractions)
    if not parts:
        raise ValueError("sizes_or_fractions must be a non-empty list of sizes or of fractions")
    if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        if min(parts) < 0 or sum(parts) > n:
            raise ValueError(f"sizes_or_fractions must be sizes >= 0 summing to at most {n}, got {parts}")
        sizes = parts
    elif all(isinstance(p, float) for p in parts):
        if min(parts) < 0 or sum(parts) > 1 + 1e-6:
            raise ValueError(f"sizes_or_fractions must be fractions >= 0 summing to at most 1, got {parts}")
        sizes = [int(p * n) for p in parts]
        if abs(sum(parts) - 1) <= 1e-6:
            for i in range(n - sum(sizes)):
                sizes[i % len(sizes)] += 1
    else:
        raise ValueError(f"sizes_or_fractions must be all ints or all floats, got {parts}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for s in sizes:
        idx = perm[start : start + s].to(x.device)
        out.append((x[idx], _index(y, idx)))
        start += s
    return out


def subsample_per_class(
    x: Tensor, y: Target, per_class: int, *, seed: int, key: str | None = None
) -> tuple[Tensor, Target]:
    """Keep `per_class` random samples of every class, in their original order.

    With dict targets, `key` names the labels that define the classes.
    """
    _length(x, y)
    if isinstance(y, Mapping):
        if key not in y:
            raise ValueError(f"key must name one of the label tensors {sorted(y)}, got {key!r}")
        labels = y[key]
    else:
        labels = y
    checks.integer("per_class", per_class)
    labels = labels.cpu()
    classes, counts = labels.unique(return_counts=True)
    if counts.min() < per_class:
        short = [int(c) for c, k in zip(classes, counts) if k < per_class]
        raise ValueError(
            f"per_class must be <= the smallest class size ({int(counts.min())}); classes {short} are short"
        )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    keep = torch.cat([perm[labels[perm] == c][:per_class] for c in classes]).sort().values.to(x.device)
    return x[keep], _index(y, keep)
