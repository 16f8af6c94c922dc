"""A distributed, resumable training sampler that yields ``(index, epoch)`` pairs."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffled indices, a new permutation per epoch, split across ranks, resumable mid-epoch.

    Like ``torch.utils.data.DistributedSampler`` (per-epoch seeding with ``seed + epoch``, padding by
    wrapping so every rank gets the same count, rank ``r`` taking positions ``r, r + world, ...``), plus:
    it yields ``(index, epoch)`` so the dataset can seed each sample from them, and ``set_start``
    skips the first samples of this rank's share, which is how a resumed run continues mid-epoch.
    With ``world_size=1`` and global batch ``B`` the first step sees the same videos as ranks ``0..W-1``
    with per-rank batch ``B / W`` together.

    Args:
        length: dataset size.
        num_replicas: world size.
        rank: this process's rank.
        shuffle: permute each epoch (else dataset order).
        seed: base seed of the permutations.
        drop_last: drop the tail so the total divides evenly (instead of wrapping).
    """

    def __init__(
        self,
        length: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: rank {rank} outside [0, {num_replicas})")
        self.length = length
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        per_rank = length // num_replicas if drop_last else -(-length // num_replicas)
        self.num_samples = per_rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation and rewind to its beginning."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"ResumableSampler: start {start} outside [0, {self.num_samples}]")
        self.start = start

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        total = self.num_samples * self.num_replicas
        if total > len(order):
            order += (order * (total // len(order) + 1))[: total - len(order)]
        return order[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        share = self._order()[self.rank :: self.num_replicas]
        return iter([(index, self.epoch) for index in share[self.start :]])

    def __len__(self) -> int:
        return self.num_samples - self.start
