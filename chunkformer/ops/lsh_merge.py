"""Merging LSH attention's hash rounds by their log-sum-exp.

Every round r gives, per query, an output o_r and the log-sum-exp l_r of its logits. A (query, key) pair
that several rounds put in view is attended in the first of them only, so the merged result
``sum_r exp(l_r - L) o_r`` with ``L = logsumexp_r l_r`` is exactly softmax attention over the union of keys
the rounds put in view, each counted once. (Reformer instead lowers such a logit by log(count) in every
round: the same result in exact arithmetic, while keeping the first round needs only a 0 / -inf mask.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chunkformer.ops.lsh import LSHLayout
from chunkformer.ops.lsh_gather import select_rows

__all__ = ["RoundMerge"]


class RoundMerge:
    """Rounds merged online, one after another: running maximum, weight sum and average output per token.

    The output is kept as the running weighted average of the rounds' outputs: a round with weight w and
    output o moves it by w / (weights so far + w) towards o, one lerp per round.

    Shape:
        - ``add``'s ``out_rows``: (G * bs * Q, dv), the round's outputs slot-major, as the kernels fill
          them; ``lse_blocks``: (G, Q, bs)
        - ``result``: output (G, N, dv), merged log-sum-exp (G, N) (0 where no key), no_key (G, N) bool
    """

    def __init__(
        self, layout: LSHLayout, seq_len: int, value_dim: int, dtype: torch.dtype, merge_rows: int
    ) -> None:
        groups, _, n_blocks, bucket_size = layout.query_ids.shape
        device = layout.query_ids.device
        self.dtype = dtype
        # The merge reads a round's outputs in token order this many rows at a time: a whole round's worth
        # would be memory the OS maps and faults in afresh on every call.
        self.merge_rows = merge_rows
        self.running_max = torch.full((groups, seq_len), float("-inf"), dtype=dtype, device=device)
        self.weight_sum = torch.zeros(groups, seq_len, dtype=dtype, device=device)
        self.average = torch.zeros(groups * seq_len, value_dim, dtype=dtype, device=device)
        # Where each token's row of a round sits in the round's outputs: lse block-major (G, Q, bs), outputs
        # slot-major (G, bs, Q, dv). A token without a slot in a round (padding) reads row 0, masked.
        slots_per_round = n_blocks * bucket_size
        rounds = layout.rounds_used
        local = (
            layout.query_slot[:, :rounds]
            - torch.arange(rounds, device=device)[None, :, None] * slots_per_round
        )
        self.placed = (local >= 0) & (local < slots_per_round)
        local = torch.where(self.placed, local, 0)
        group_base = torch.arange(groups, device=device)[:, None, None] * slots_per_round
        block = torch.div(local, bucket_size, rounding_mode="floor")
        self.lse_index = group_base + local
        self.out_index = group_base + (local - block * bucket_size) * n_blocks + block

    def add(
        self,
        round_index: int,
        out_rows: torch.Tensor,
        lse_blocks: torch.Tensor,
        buffers: dict[str, torch.Tensor],
    ) -> None:
        """Merge one round's outputs and log-sum-exps; a token without a slot in it reads lse -inf."""
        lse = lse_blocks.reshape(-1)[self.lse_index[:, round_index]]
        lse = lse.masked_fill(~self.placed[:, round_index], float("-inf"))
        token_rows = self.out_index[:, round_index].reshape(-1)
        self._merge(lse, lambda chunk: select_rows(out_rows, token_rows[chunk], buffers, "merge"))

    def add_token_rows(self, lse: torch.Tensor, out: torch.Tensor) -> None:
        """Merge one round whose kernel wrote its outputs in token order (the Triton kernel): no gather.

        Shape:
            - lse: (G, N), -inf for a token with no key in view (or no slot) in the round
            - out: (G * N, dv), zeros where lse is -inf
        """
        self._merge(lse, lambda chunk: out[chunk])

    def _merge(self, lse: torch.Tensor, rows_of: Callable[[slice], torch.Tensor]) -> None:
        """One round's lse (G, N) into the running statistics; ``rows_of`` gives its output rows of a chunk
        of tokens."""
        new_max = torch.maximum(self.running_max, lse)
        safe_max = new_max.masked_fill(torch.isneginf(new_max), 0.0)
        new_weight = torch.exp(lse - safe_max)
        self.weight_sum.mul_(torch.exp(self.running_max - safe_max)).add_(new_weight)
        self.running_max = new_max
        # (A token with no key so far has weight sum 0 and step 0: its average stays 0.)
        step = new_weight.div_(self.weight_sum.clamp(min=torch.finfo(self.dtype).tiny)).reshape(-1, 1)
        for first in range(0, step.shape[0], self.merge_rows):
            chunk = slice(first, first + self.merge_rows)
            self.average[chunk].lerp_(rows_of(chunk).to(self.dtype), step[chunk])

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The merged output (in the merge's dtype, sharing its memory), log-sum-exp, and which tokens saw no
        key in any round."""
        groups, seq_len = self.running_max.shape
        no_key = torch.isneginf(self.running_max)
        out = self.average.view(groups, seq_len, -1)
        tiny = torch.finfo(self.dtype).tiny
        merged_lse = torch.where(no_key, 0.0, self.running_max + torch.log(self.weight_sum.clamp(min=tiny)))
        return out, merged_lse, no_key
