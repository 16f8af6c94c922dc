"""TimeSformer's divided space-time attention: temporal attention, then spatial attention, in one block."""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from chunkformer.layers._checks import check_input, check_probability
from chunkformer.layers.attention import Attention
from chunkformer.layers.drop import DropPath


class DividedSpaceTimeAttention(nn.Module):
    """Divided space-time attention (TimeSformer, Bertasius et al., ICML 2021), with its residuals.

    First every token attends to the tokens at the same spatial position in all T frames (temporal
    attention, its own qkv/proj, then TimeSformer's extra ``temporal_fc`` projection), added to the input;
    then every token attends to the N tokens of its own frame (spatial attention). A query sees T + N - 1
    other tokens per block instead of the T * N of joint space-time attention.

    This is TimeSformer's ``Block`` with ``attention_type='divided_space_time'`` up to, not including, the
    MLP: it holds its own pre-norms and returns the residual stream ``x + temporal + spatial``, so it is
    *not* wrapped in ``PreNormBlock``; follow it with ``x + drop_path(mlp(norm2(x)))``. Parameter names
    (``temporal_norm1``, ``temporal_attn``, ``temporal_fc``, ``norm1``, ``attn``) are TimeSformer's, so its
    block weights load by name.

    The optional class token (B, 1, C) takes no part in temporal attention. It is copied into every frame
    for spatial attention and its T outputs are averaged into one residual, as TimeSformer does; the
    layer then returns ``(tokens, cls_token)``.

    TimeSformer initialises ``temporal_fc`` to zero in every block but the first, so that a model starts
    from its image weights; this layer keeps PyTorch's default init and leaves that choice to the model.
    As in TimeSformer, ``drop_path`` drops the temporal branch per (sample, position) and the spatial branch
    per (sample, frame).

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
        - cls_token: optional (B, 1, C); when given the output is the pair ((B, T, N, C), (B, 1, C))

    Example:
        >>> import torch
        >>> from chunkformer.layers import DividedSpaceTimeAttention
        >>> layer = DividedSpaceTimeAttention(dim=32, num_heads=4)
        >>> x, cls = torch.randn(2, 8, 49, 32), torch.randn(2, 1, 32)
        >>> layer(x).shape
        torch.Size([2, 8, 49, 32])
        >>> tokens, cls_out = layer(x, cls)
        >>> tokens.shape, cls_out.shape
        (torch.Size([2, 8, 49, 32]), torch.Size([2, 1, 32]))
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
            self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
            self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        except (TypeError, ValueError) as error:
            # Attention names itself; the user built this layer.
            raise type(error)(str(error).replace("Attention:", f"{owner}:", 1)) from None
        self.dim = dim
        self.num_heads = num_heads
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = norm_layer(dim)
        self.drop_path = DropPath(drop_path)

    @overload
    def forward(self, x: torch.Tensor, cls_token: None = None) -> torch.Tensor: ...

    @overload
    def forward(self, x: torch.Tensor, cls_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, x: torch.Tensor, cls_token: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        owner = type(self).__name__
        check_input(x, owner, {4: "(B, T, N, C)"}, self.dim)
        batch, frames, _, _ = x.shape
        if cls_token is not None:
            check_input(cls_token, f"{owner} cls_token", {3: "(B, 1, C)"}, self.dim)
            if cls_token.shape[:2] != (batch, 1):
                raise ValueError(
                    f"{owner} expects cls_token of shape (B, 1, C) = ({batch}, 1, {self.dim}) for x "
                    f"{tuple(x.shape)}, got {tuple(cls_token.shape)}"
                )

        # Temporal: one sequence of T tokens per (sample, spatial position).
        xt = rearrange(x, "b t n c -> (b n) t c")
        res_temporal = self.drop_path(self.temporal_attn(self.temporal_norm1(xt)))
        res_temporal = rearrange(res_temporal, "(b n) t c -> b t n c", b=batch)
        xt = x + self.temporal_fc(res_temporal)

        # Spatial: one sequence of N tokens (plus the class token) per (sample, frame).
        xs = rearrange(xt, "b t n c -> (b t) n c")
        if cls_token is not None:
            xs = torch.cat([repeat(cls_token, "b 1 c -> (b t) 1 c", t=frames), xs], dim=1)
        res_spatial = self.drop_path(self.attn(self.norm1(xs)))
        if cls_token is None:
            return xt + rearrange(res_spatial, "(b t) n c -> b t n c", b=batch)
        out = xt + rearrange(res_spatial[:, 1:], "(b t) n c -> b t n c", b=batch)
        # The class token got one update per frame; TimeSformer averages them.
        cls_out = cls_token + reduce(res_spatial[:, :1], "(b t) 1 c -> b 1 c", "mean", b=batch)
        return out, cls_out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
