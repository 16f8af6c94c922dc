"""The distributed context of a run: one process, or one rank of a ``torchrun`` job (DDP).

Collectives are no-ops in a single process, so the training loop is written once for both.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "all_mean", "all_sum", "barrier", "gather_objects", "init_distributed"]


@dataclasses.dataclass(frozen=True)
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 in a single process).
        world: number of ranks.
        local_rank: rank on this machine (the CUDA device index).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files."""
        return self.rank == 0


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> DistContext:
    """Join the ``torchrun`` job described by the environment (``RANK``, ``WORLD_SIZE``, ...), if any.

    Uses nccl on CUDA and gloo on CPU. ``timeout_s`` bounds every collective: a rank that dies or hangs
    ends the others with an error instead of a silent hang. Without ``torchrun`` (or with one rank) it
    returns the single-process context and initialises nothing.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_mean(value: float, ctx: DistContext, device: torch.device) -> float:
    """The mean of ``value`` over the ranks."""
    if ctx.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / ctx.world


def all_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """The element-wise sums of ``values`` over the ranks (in float64)."""
    if ctx.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if ctx.world == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.world > 1:
        dist.barrier()
