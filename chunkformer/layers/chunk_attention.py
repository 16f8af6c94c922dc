"""Image local chunk self-attention (SCT eq. 2): MSA inside non-overlapping windows of tiny patches."""

from __future__ import annotations

import torch
from einops import repeat

from chunkformer.layers._checks import check_input
from chunkformer.layers.attention import Attention
from chunkformer.ops import pad_to_multiple, to_pair, window_partition, window_reverse, window_valid_mask


class ChunkAttention(Attention):
    """Multi-head self-attention inside each ``chunk_size`` window, with the same weights for every window.

    A token attends only to the tokens of its own chunk. When H or W is not a multiple of the chunk size,
    the grid is zero-padded at the bottom/right (as the paper pads the last chunks) and the padded keys are
    masked, so every real token gets exactly the attention over the real tokens of its window; padded
    positions are cropped from the output. Frames of a (B, T, H, W, C) input are independent.

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim``.
        chunk_size: window side, an int or an (h, w) pair (SCT: 7).
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Shape:
        - x: (B, H, W, C) -> (B, H, W, C)
        - x: (B, T, H, W, C) -> (B, T, H, W, C)

    Example:
        >>> import torch
        >>> from chunkformer.layers import ChunkAttention
        >>> layer = ChunkAttention(dim=32, num_heads=4, chunk_size=7)
        >>> layer(torch.randn(2, 8, 15, 20, 32)).shape
        torch.Size([2, 8, 15, 20, 32])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        chunk_size: int | tuple[int, int] = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        try:
            self.chunk_size = to_pair(chunk_size, "chunk_size")
        except (TypeError, ValueError) as error:
            raise type(error)(f"ChunkAttention: {error}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_input(x, "ChunkAttention", {4: "(B, H, W, C)", 5: "(B, T, H, W, C)"}, self.dim)
        leading, (height, width) = x.shape[:-3], x.shape[-3:-1]
        frames = x.reshape(-1, height, width, self.dim)
        padded = pad_to_multiple(frames, self.chunk_size)
        windows = window_partition(padded, self.chunk_size)
        attn_mask = None
        if padded.shape != frames.shape:
            real = window_valid_mask(height, width, self.chunk_size, device=x.device)
            attn_mask = repeat(real, "nw l -> (b nw) 1 1 l", b=frames.shape[0])
        q, k, v = self._split_qkv(windows, "bw l (three h d) -> three bw h l d")
        out = self._attend(q, k, v, attn_mask)
        out = window_reverse(out, self.chunk_size, padded.shape[1], padded.shape[2])
        # Crop before the output projection: padded positions are discarded anyway.
        out = self._project_out(out[:, :height, :width])
        return out.reshape(*leading, height, width, self.dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
