"""Shifted multi-head self-attention (SCT eqs. 6-7): keys from an earlier frame."""

from __future__ import annotations

import torch

from chunkformer.layers._checks import check_input, check_int
from chunkformer.layers.attention import Attention


class ShiftedAttention(Attention):
    """Per-frame multi-head self-attention whose keys come from frame ``(t - shift) mod T``.

    Queries and values of frame t come from frame t, keys from frame t - shift, cyclically (the paper
    defines frame 0 as frame T), so each frame's tokens are re-weighted by how they match the tokens of an
    earlier frame: an explicit motion cue. ``shift=0`` is ordinary per-frame MSA; a negative shift takes
    keys from a later frame. Whether token 0 is a per-frame [CLS] is up to the model.

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim``.
        shift: how many frames back the keys come from.
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Shape:
        - x: (B, T, N, C) -> (B, T, N, C)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        shift: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.shift = check_int(shift, "shift", "ShiftedAttention")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_input(x, "ShiftedAttention", {4: "(B, T, N, C)"}, self.dim)
        batch, frames, tokens, _ = x.shape
        q, k, v = self._split_qkv(x, "b t n (three h d) -> three (b t) h n d")
        # One projection of all frames, then move the keys: key of frame t := key of frame t - shift.
        k = k.unflatten(0, (batch, frames)).roll(self.shift, dims=1).flatten(0, 1)
        out = self._project_out(self._attend(q, k, v))
        return out.reshape(batch, frames, tokens, self.dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift={self.shift}"
