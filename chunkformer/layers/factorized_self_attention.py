"""ViViT's factorised self-attention (model 3): spatial attention, then temporal attention, in one block."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_input, check_probability
from chunkformer.layers.attention import Attention
from chunkformer.layers.drop import DropPath


class FactorizedSelfAttention(nn.Module):
    """Factorised self-attention (ViViT model 3, Arnab et al., ICCV 2021), with its residuals.

    Every token first attends to the N tokens of its own frame, then to the T tokens at its spatial
    position, each step a pre-norm residual branch with its own projections (ViViT eqs. for model 3):

        y_s = MSA_s(LN(z)) + z,   y_t = MSA_t(LN(y_s)) + y_s

    A query sees N + T - 1 other tokens per block instead of the N * T of joint attention. The order is
    the reverse of TimeSformer's ``DividedSpaceTimeAttention`` (temporal first) and there is no extra
    projection between the steps.

    The layer returns the residual stream ``y_t``, so it is *not* wrapped in ``PreNormBlock``; follow it
    with ``y + drop_path(mlp(norm(y)))`` to make ViViT's block.

    Args:
        dim: token width C.
        num_heads: number of heads of both attentions; must divide ``dim``.
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after each output projection.
        drop_path: stochastic depth probability of both residual branches.
        norm_layer: norm class called as ``norm_layer(dim)``.

    Shape:
        - x: (B, T, N, C) -> (B, T, N, C), N tokens per frame in any order

    Example:
        >>> import torch
        >>> from chunkformer.layers import FactorizedSelfAttention
        >>> layer = FactorizedSelfAttention(dim=32, num_heads=4)
        >>> layer(torch.randn(2, 8, 49, 32)).shape
        torch.Size([2, 8, 49, 32])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_probability(drop_path, "drop_path", owner)
        try:
            self.spatial_attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
            self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        except (TypeError, ValueError) as error:
            # Attention names itself; the user built this layer.
            raise type(error)(str(error).replace("Attention:", f"{owner}:", 1)) from None
        self.dim = dim
        self.num_heads = num_heads
        self.spatial_norm = norm_layer(dim)
        self.temporal_norm = norm_layer(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, type(self).__name__, {4: "(B, T, N, C)"}, self.dim)
        batch = x.shape[0]
        xs = rearrange(x, "b t n c -> (b t) n c")
        res_spatial = self.drop_path(self.spatial_attn(self.spatial_norm(xs)))
        x = x + rearrange(res_spatial, "(b t) n c -> b t n c", b=batch)
        xt = rearrange(x, "b t n c -> (b n) t c")
        res_temporal = self.drop_path(self.temporal_attn(self.temporal_norm(xt)))
        return x + rearrange(res_temporal, "(b n) t c -> b t n c", b=batch)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
