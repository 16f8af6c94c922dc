"""Video Swin's 3-D (shifted) window attention with a relative position bias."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_input, check_int_tuple
from chunkformer.layers.attention import Attention

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

    Cost: each query attends to Tw * Hw * Ww keys. Windows that share a mask go through attention as one
    batch with one (num_heads, L, L) bias, L = Tw * Hw * Ww: only the last windows along an axis are cut
    by the shift or hold padding, so there are a few such groups (at most 27, 4 in Video Swin-T's shifted
    blocks), whatever the number of windows.

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

    def _window_groups(
        self, sizes: tuple[int, ...], padded: tuple[int, ...], shift: tuple[int, ...]
    ) -> list[tuple[list[int], bool]]:
        """The windows grouped by mask: (window indices, whether the mask hides any key) per group.

        Only the last windows along an axis are cut by the shift or hold padding, so along each axis the
        windows are of at most 3 kinds, and the windows of a clip fall into a few groups that share one mask
        (4 in Video Swin-T's shifted blocks at 8 x 56 x 56). Python ints only: nothing depends on data.
        """
        per_axis = []
        for size, full, window, s in zip(sizes, padded, self.window_size, shift, strict=True):
            kinds: dict[tuple[tuple[int, ...], tuple[bool, ...]], list[int]] = {}
            for index in range(full // window):
                positions = range(index * window, (index + 1) * window)
                # As in _allowed: Video Swin's regions; position p holds the token from (p + s) % full.
                labels = [int(p >= full - window) + int(p >= full - s) if s else 0 for p in positions]
                real = tuple((p + s) % full < size for p in positions)
                kinds.setdefault((tuple(label - labels[0] for label in labels), real), []).append(index)
            per_axis.append(list(kinds.items()))
        num_h, num_w = (n // w for n, w in zip(padded[1:], self.window_size[1:], strict=True))
        groups = []
        for (t_kind, t_indices), (h_kind, h_indices), (w_kind, w_indices) in itertools.product(*per_axis):
            indices = [(t * num_h + h) * num_w + w for t in t_indices for h in h_indices for w in w_indices]
            masked = any(any(labels) or not all(real) for labels, real in (t_kind, h_kind, w_kind))
            groups.append((indices, masked))
        return groups

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
        groups = self._window_groups(sizes, padded, shift)
        allowed = self._allowed(sizes, padded, shift, x.device) if any(m for _, m in groups) else None
        if len(groups) == num_windows > 1:
            # Every window its own mask (at most two windows along each axis): one call with the windows
            # folded into the heads beats a call per window (1.3x in forward+backward, 8 windows of 2x4x4).
            mask = bias[None].masked_fill(~allowed[:, None], float("-inf"))
            q, k, v = self._split_qkv(windows, "b n l (three h d) -> three b (n h) l d")
            out = self._attend(q, k, v, attn_mask=rearrange(mask, "n h i j -> 1 (n h) i j"))
            out = rearrange(out, "b l (n h d) -> b n l (h d)", n=num_windows, h=self.num_heads)
        else:
            # The windows of a group go through attention as one batch under one (num_heads, L, L) mask: a
            # mask per window cost 3x more in forward+backward on Video Swin-T's 8 x 56 x 56 tokens.
            outputs = []
            for indices, masked in groups:
                group = windows if len(groups) == 1 else windows[:, indices]
                mask = bias.masked_fill(~allowed[indices[0]], float("-inf")) if masked else bias
                q, k, v = self._split_qkv(group, "b n l (three h d) -> three (b n) h l d")
                out = self._attend(q, k, v, attn_mask=mask[None])
                outputs.append(rearrange(out, "(b n) l c -> b n l c", n=len(indices)))
            order = [index for indices, _ in groups for index in indices]
            inverse = [0] * num_windows
            for position, index in enumerate(order):
                inverse[index] = position
            out = outputs[0] if len(groups) == 1 else torch.cat(outputs, dim=1)[:, inverse]
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
