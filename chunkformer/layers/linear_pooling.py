"""Linear pooling (SCT eq. 4): squeeze each 2x2 cell into one token, then a linear map."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_input, check_positive_int
from chunkformer.ops import pad_to_multiple


class LinearPooling(nn.Module):
    """Halve the grid by concatenating each 2x2 cell's tokens, then project 4C -> ``out_dim``.

    The squeezed vector at output (i, j) concatenates x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1]
    (top-left, top-right, bottom-left, bottom-right). Odd H or W is zero-padded at the bottom/right. The
    projection ``proj`` has no bias, as E_t in eq. 4; ``norm_layer``, when given, normalises the 4C vector
    before it (as Swin's patch merging does).

    Args:
        dim: input width C.
        out_dim: output width (defaults to 2 * dim, as the paper halves 4C).
        norm_layer: optional norm class called as ``norm_layer(4 * dim)``, e.g. ``nn.LayerNorm``.

    Shape:
        - x: (B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), out_dim)
        - x: (B, T, H, W, C) -> (B, T, ceil(H / 2), ceil(W / 2), out_dim)
    """

    def __init__(
        self, dim: int, out_dim: int | None = None, norm_layer: Callable[[int], nn.Module] | None = None
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim", "LinearPooling")
        self.out_dim = check_positive_int(2 * dim if out_dim is None else out_dim, "out_dim", "LinearPooling")
        self.norm = norm_layer(4 * dim) if norm_layer is not None else nn.Identity()
        self.proj = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "LinearPooling", {4: "(B, H, W, C)", 5: "(B, T, H, W, C)"}, self.dim)
        leading, (height, width) = x.shape[:-3], x.shape[-3:-1]
        grid = pad_to_multiple(x.reshape(-1, height, width, self.dim), (2, 2))
        # (row offset, column offset, channel): TL, TR, BL, BR.
        squeezed = rearrange(grid, "b (h dh) (w dw) c -> b h w (dh dw c)", dh=2, dw=2)
        out = self.proj(self.norm(squeezed))
        return out.reshape(*leading, *out.shape[1:])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, out_dim={self.out_dim}"
