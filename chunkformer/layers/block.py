"""The pre-norm residual block that every attention layer is wrapped in (SCT eqs. 2, 3, 7, 8)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from chunkformer._deprecation import renamed_kwargs
from chunkformer.layers._checks import check_positive_int, check_probability
from chunkformer.layers.drop import DropPath
from chunkformer.layers.mlp import Mlp


class PreNormBlock(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, for any token mixer ``attn``.

    The attention layer is passed in, so one block serves chunk attention, LSH attention, shifted MSA and
    the clip encoder alike; keyword arguments of ``forward`` go to the attention layer (for example a
    padding mask).

    Args:
        dim: token width C.
        attn: the token mixer, a module mapping (..., C) to the same shape.
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (ignored when ``mlp_hidden_dim`` is given).
        mlp_hidden_dim: MLP hidden width.
        proj_drop: dropout inside the MLP. Its old name ``drop`` still works, with a FutureWarning, for one
            release.
        drop_path: stochastic depth probability for both residual branches.
        norm_layer: norm class called as ``norm_layer(dim)``.
        act_layer: MLP activation class.

    Shape:
        - x: (B, *, C) -> (B, *, C), whatever layout ``attn`` takes
    """

    @renamed_kwargs("PreNormBlock", drop="proj_drop")
    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float = 4.0,
        mlp_hidden_dim: int | None = None,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        check_positive_int(dim, "dim", "PreNormBlock")
        if not isinstance(attn, nn.Module):
            raise TypeError(f"PreNormBlock: attn must be an nn.Module, got {type(attn).__name__}")
        if mlp_hidden_dim is None:
            if not mlp_ratio > 0:
                raise ValueError(f"PreNormBlock: mlp_ratio must be > 0, got {mlp_ratio!r}")
            mlp_hidden_dim = max(1, round(dim * mlp_ratio))
        check_probability(drop_path, "drop_path", "PreNormBlock")
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim, act_layer=act_layer, proj_drop=proj_drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, **attn_kwargs: Any) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), **attn_kwargs))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
