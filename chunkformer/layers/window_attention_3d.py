"""Video Swin's 3-D (shifted) window attention with a relative position bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_input, check_int_tuple
from chunkformer.layers.attention import Attention
from chunkformer.ops import attention

_AXES = "(t, h, w) triple"


class WindowAttention3D(Attention):
    """Multi-head self-attention inside (Tw, Hw, Ww) windows of a clip (Video Swin, Liu et al., CVPR 2022).

    Every token attends to the tokens of its window, with a learned bias per head for each relative
    offset (a table of (2Tw-1)(2Hw-1)(2Ww-1) rows, Video Swin's ``relative_position_bias_table``). With a
    non-zero ``shift_size`` the clip is cyclically shifted by ``-shift_size`` before the windows are cut
    and shifted back after, so windows straddle the previous layer's window borders; Video Swin's mask
    keeps tokens that the cyclic shift brought together from opposite ends of the clip from attending to
    each other. Alternate ``shift_size=0`` and half a window in consecutive blocks, as Video Swin does.

    Any (T, H, W) works: the clip is zero-padded at the end of each axis to a multiple of the window and
    padded keys are masked, so a real token attends exactly to the real tokens of its (shifted) window.
    Two differences from Video Swin follow from that: Video Swin lets tokens attend to the zero padding
    (its keys are the qkv bias), and it shrinks the window to the clip along an axis the clip is smaller
    than; here the window keeps its size and the missing tokens are masked, so the bias is indexed by the
    true offsets. Like Video Swin, the shift is 0 along an axis no longer than the window (one window there
    and nothing to shift).

    Cost: each query attends to Tw * Hw * Ww keys. The mask and bias are dense per window:
    (num_windows * num_heads * L * L) floats with L = Tw * Hw * Ww, built on every call when the clip is
    shifted or padded (else only the (num_heads, L, L) bias).

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim``.
        window_size: window sides, an int or a (t, h, w) triple (Video Swin-T: (8, 7, 7)).
        shift_size: cyclic shift, an int or a (t, h, w) triple with 0 <= shift < window (Video Swin: half
            a window in every other block).
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Shape:
        - x: (B, T, H, W, C) -> (B, T, H, W, C)

    Example:
        >>> import torch
        >>> from chunkformer.layers import WindowAttention3D
        >>> layer = WindowAttention3D(dim=32, num_heads=4, window_size=(2, 7, 7), shift_size=(1, 3, 3))
        >>> layer(torch.randn(2, 5, 14, 10, 32)).shape
        torch.Size([2, 5, 14, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int, int] = (2, 7, 7),
        shift_size: int | tuple[int, int, int] = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        owner = type(self).__name__
        self.window_size = check_int_tuple(window_size, 3, "window_size", owner, axes=_AXES)
        self.shift_size = check_int_tuple(shift_size, 3, "shift_size", owner, minimum=0, axes=_AXES)
        if any(s >= w for s, w in zip(self.shift_size, self.window_size, strict=True)):
            raise ValueError(
                f"{owner}: shift_size must be below window_size on every axis, got shift_size "
                f"{self.shift_size} for window_size {self.window_size}"
            )
        wt, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _relative_position_bias(self) -> torch.Tensor:
        """(num_heads, L, L): the bias of query i and key j of a window by their offset (Video Swin's)."""
        wt, wh, ww = self.window_size
        device = self.relative_position_bias_table.device
        axes = [torch.arange(n, device=device) for n in self.window_size]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, L)
        offset = coords[:, :, None] - coords[:, None, :]  # query minus key, (3, L, L)
        index = (
            (offset[0] + wt - 1) * (2 * wh - 1) * (2 * ww - 1)
            + (offset[1] + wh - 1) * (2 * ww - 1)
            + (offset[2] + ww - 1)
        )
        return rearrange(self.relative_position_bias_table[index], "i j h -> h i j")

    def _allowed(
        self, sizes: tuple[int, ...], padded: tuple[int, ...], shift: tuple[int, ...], device: torch.device
    ) -> torch.Tensor:
        """(num_windows, L, L) bool: key j is real and in the same shift region as query i (Video Swin's
        ``compute_mask``, plus padding)."""
        region = torch.zeros(padded, dtype=torch.long, device=device)
        real = torch.ones(padded, dtype=torch.bool, device=device)
        axes = zip(sizes, padded, self.window_size, shift, strict=True)
        for axis, (size, full, window, s) in enumerate(axes):
            position = torch.arange(full, device=device)
            # The shifted clip's regions along this axis: Video Swin's slices (0, -w), (-w, -s), (-s, None).
            label = (position >= full - window).long() + (position >= full - s).long() if s else position * 0
            view = [1, 1, 1]
            view[axis] = full
            region = region * 3 + label.view(view)
            # The padding sits at the end before the shift; roll it to where the shifted clip has it.
            real = real & (position < size).roll(-s).view(view)
        wt, wh, ww = self.window_size
        region = rearrange(region, "(nt wt) (nh wh) (nw ww) -> (nt nh nw) (wt wh ww)", wt=wt, wh=wh, ww=ww)
        real = rearrange(real, "(nt wt) (nh wh) (nw ww) -> (nt nh nw) (wt wh ww)", wt=wt, wh=wh, ww=ww)
        return (region[:, :, None] == region[:, None, :]) & real[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_input(x, type(self).__name__, {5: "(B, T, H, W, C)"}, self.dim)
        sizes = tuple(x.shape[1:4])
        wt, wh, ww = self.window_size
        # One window along an axis: nothing to shift (Video Swin's get_window_size rule).
        shift = tuple(
            s if n > w else 0 for n, w, s in zip(sizes, self.window_size, self.shift_size, strict=True)
        )
        pads = [-n % w for n, w in zip(sizes, self.window_size, strict=True)]
        # F.pad pads from the last axis backwards: (C, W, H, T), at the end of each.
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(x.shape[1:4])
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = rearrange(
            x, "b (nt wt) (nh wh) (nw ww) c -> b (nt nh nw) (wt wh ww) c", wt=wt, wh=wh, ww=ww
        )
        num_windows = windows.shape[1]
        bias = self._relative_position_bias()
        dropout_p = self.attn_drop if self.training else 0.0
        if not any(shift) and not any(pads):
            # Every window alike: one (num_heads, L, L) bias broadcast over all windows.
            q, k, v = self._split_qkv(windows, "b n l (three h d) -> three (b n) h l d")
            out = attention(q, k, v, attn_mask=bias[None], dropout_p=dropout_p)
            out = rearrange(out, "(b n) h l d -> b n l (h d)", n=num_windows)
        else:
            # Windows differ: fold them into the head axis so one (1, windows * heads, L, L) mask broadcasts
            # over the batch instead of being copied per sample.
            allowed = self._allowed(sizes, padded, shift, x.device)
            mask = bias[None].masked_fill(~allowed[:, None], float("-inf"))
            q, k, v = self._split_qkv(windows, "b n l (three h d) -> three b (n h) l d")
            out = attention(q, k, v, attn_mask=rearrange(mask, "n h i j -> 1 (n h) i j"), dropout_p=dropout_p)
            out = rearrange(out, "b (n h) l d -> b n l (h d)", n=num_windows)
        out = rearrange(
            out,
            "b (nt nh nw) (wt wh ww) c -> b (nt wt) (nh wh) (nw ww) c",
            nt=padded[0] // wt,
            nh=padded[1] // wh,
            wt=wt,
            wh=wh,
            ww=ww,
        )
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        # Crop before the output projection: padded positions are discarded anyway.
        return self._project_out(out[:, : sizes[0], : sizes[1], : sizes[2]])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}, shift_size={self.shift_size}"
