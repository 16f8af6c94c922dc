"""Multi-head self-attention over a token sequence, the base of every attention layer here."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_heads, check_input, check_probability
from chunkformer.ops import attention


class Attention(nn.Module):
    """Multi-head self-attention (MSA) over the tokens of each sequence, as in ViT.

    Subclasses (``ChunkAttention``, ``ShiftedAttention``) only change which tokens form a
    sequence and where the keys come from; projections and kernel dispatch live here once.

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim``.
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Shape:
        - x: (B, N, C) -> (B, N, C)
        - attn_mask: optional, broadcastable to (B, num_heads, N, N); bool (True = may attend) or additive
          float.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.head_dim = check_heads(dim, num_heads, owner)
        self.dim = dim
        self.num_heads = num_heads
        self.attn_drop = check_probability(attn_drop, "attn_drop", owner)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(check_probability(proj_drop, "proj_drop", owner))

    def _split_qkv(self, x: torch.Tensor, pattern: str) -> torch.Tensor:
        """Project tokens to stacked q, k, v with heads split out; ``pattern`` names the layout."""
        return rearrange(self.qkv(x), pattern, three=3, h=self.num_heads)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention per head, heads merged back: (B, h, N, d) x3 -> (B, N, C). No output projection."""
        out = attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0)
        return rearrange(out, "b h n d -> b n (h d)")

    def _project_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(x))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, type(self).__name__, {3: "(B, N, C)"}, self.dim)
        q, k, v = self._split_qkv(x, "b n (three h d) -> three b h n d")
        return self._project_out(self._attend(q, k, v, attn_mask))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, attn_drop={self.attn_drop}"
