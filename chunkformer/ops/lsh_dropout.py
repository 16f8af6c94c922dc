"""Dropout masks that LSH attention's forward and backward passes draw alike.

The fused block kernels draw their own dropout masks and cannot replay them; LSH attention instead draws
every round's mask from a generator at a saved state, once in the forward pass and again, identically, in
the backward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from chunkformer.ops.lsh import LSHLayout

__all__ = ["DropoutReplay"]


@dataclass(frozen=True)
class DropoutReplay:
    """The dropout probability and the generator state every pass starts its draws from.

    Attributes:
        p: probability of dropping an attention weight.
        state: the generator's state before the draws; None when nothing is dropped.
    """

    p: float
    state: torch.Tensor | None

    @classmethod
    def record(cls, generator: torch.Generator, p: float, layout: LSHLayout) -> DropoutReplay:
        """Save ``generator``'s state, then advance it past the draws, as if they were taken from it."""
        if p == 0.0:
            return cls(p, None)
        state = generator.get_state()
        pairs = layout.query_ids[:, : layout.rounds_used].numel() * layout.key_ids.shape[-1]
        torch.rand(pairs, generator=generator, device=layout.query_ids.device)
        return cls(p, state)

    def round_masks(self, layout: LSHLayout) -> Iterator[torch.Tensor | None]:
        """Each round's keep mask (1.0 kept, 0.0 dropped) over its pairs, in round order, drawn lazily: a
        mask is drawn when the round asks for it. None for every round when nothing is dropped.

        Shape:
            - output: (G, Q, bs, K) float32, one per round
        """
        device = layout.query_ids.device
        generator = None
        if self.p != 0.0 and self.state is not None:
            generator = torch.Generator(device=device)
            generator.set_state(self.state)
        groups, _, blocks, slots = layout.query_ids.shape
        shape = (groups, blocks, slots, layout.key_ids.shape[-1])
        for _ in range(layout.rounds_used):
            if generator is None:
                yield None
            else:
                yield (torch.rand(shape, generator=generator, device=device) >= self.p).float()
