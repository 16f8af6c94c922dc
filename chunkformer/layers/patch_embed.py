"""Tiny-patch embedding with a position embedding shared by every chunk (SCT eq. 1)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_input, check_positive_int
from chunkformer.ops import to_pair


class ChunkPatchEmbed(nn.Module):
    """Flatten each ``patch_size`` x ``patch_size`` patch, project it to ``dim``, and add a learnable position
    embedding indexed by the patch's position inside its chunk (eq. 1).

    The position embedding has ``chunk_size^2`` rows: every chunk of the patch grid gets the same one, so
    chunk attention sees the same positions in every window and the layer accepts any image size. Patches
    are flattened as (row, column, channel), matching a channels-last image.

    Args:
        patch_size: patch side p (SCT: 4).
        in_chans: input channels.
        dim: embedding width D.
        chunk_size: chunk side in patches, an int or an (h, w) pair (SCT: 7).

    Shape:
        - x: (B, C, H, W) -> (B, H / p, W / p, dim)
        - x: (B, C, T, H, W) -> (B, T, H / p, W / p, dim)
    """

    def __init__(
        self, patch_size: int = 4, in_chans: int = 3, dim: int = 96, chunk_size: int | tuple[int, int] = 7
    ) -> None:
        super().__init__()
        self.patch_size = check_positive_int(patch_size, "patch_size", "ChunkPatchEmbed")
        self.in_chans = check_positive_int(in_chans, "in_chans", "ChunkPatchEmbed")
        self.dim = check_positive_int(dim, "dim", "ChunkPatchEmbed")
        try:
            self.chunk_size = to_pair(chunk_size, "chunk_size")
        except (TypeError, ValueError) as error:
            raise type(error)(f"ChunkPatchEmbed: {error}") from None
        # A Linear rather than a strided Conv2d: the paper's E is a matrix, and FLOP counters then report
        # it as the matmul it is.
        self.proj = nn.Linear(patch_size * patch_size * in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(self.chunk_size[0] * self.chunk_size[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(
            x, "ChunkPatchEmbed", {4: "(B, C, H, W)", 5: "(B, C, T, H, W)"}, self.in_chans, channel_axis=1
        )
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"ChunkPatchEmbed expects H and W divisible by patch_size={self.patch_size}, "
                f"got H={height}, W={width} (input {tuple(x.shape)})"
            )
        pattern = "b c h w" if x.dim() == 4 else "b c t h w"
        patches = rearrange(
            x,
            pattern.replace("h w", "(h p1) (w p2)")
            + " -> "
            + pattern.replace("b c", "b").replace("h w", "h w (p1 p2 c)"),
            p1=self.patch_size,
            p2=self.patch_size,
        )
        tokens = self.proj(patches)
        return tokens + self._tiled_pos_embed(tokens.shape[-3], tokens.shape[-2])

    def _tiled_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """The chunk position embedding repeated over a height x width grid of patches."""
        chunk_h, chunk_w = self.chunk_size
        per_chunk = rearrange(self.pos_embed, "(ch cw) d -> ch cw d", ch=chunk_h, cw=chunk_w)
        tiled = per_chunk.repeat(math.ceil(height / chunk_h), math.ceil(width / chunk_w), 1)
        return tiled[:height, :width]

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, in_chans={self.in_chans}, dim={self.dim}, "
            f"chunk_size={self.chunk_size}"
        )
