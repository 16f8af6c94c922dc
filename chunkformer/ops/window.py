"""Cutting (B, H, W, C) token grids into non-overlapping windows and putting them back.

These are the functional pieces behind ``chunkformer.layers.ChunkAttention``: pad the grid at the
bottom/right to a multiple of the window, cut it into windows, and a mask telling real tokens from padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from chunkformer._deprecation import renamed_function

__all__ = [
    "pad_to_multiple",
    "to_pair",
    "window_padding_mask",
    "window_partition",
    "window_reverse",
    "window_valid_mask",
]


def to_pair(value: int | tuple[int, int] | list[int], name: str = "size") -> tuple[int, int]:
    """Normalise an int or an (h, w) pair to a pair of positive ints.

    Raises:
        TypeError: if the value is not an int or a pair of ints (a bool is not an int here).
        ValueError: if it is a sequence of another length, or a size is below 1.
    """
    expected = f"{name} must be a positive int or an (h, w) pair of them"

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) != 2:
        raise ValueError(f"{expected}, got a {type(value).__name__} of length {len(value)}: {value!r}")
    elif isinstance(value, (tuple, list)) and all(is_int(v) for v in value):
        pair = (value[0], value[1])
    else:
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def pad_to_multiple(x: torch.Tensor, multiple: tuple[int, int]) -> torch.Tensor:
    """Zero-pad the H and W axes of a channels-last grid at the bottom/right to multiples of ``multiple``.

    Returns ``x`` itself when no padding is needed.

    Shape:
        - x: (B, H, W, C)
        - output: (B, ceil(H / mh) * mh, ceil(W / mw) * mw, C)
    """
    height, width = x.shape[1], x.shape[2]
    pad_h = -height % multiple[0]
    pad_w = -width % multiple[1]
    if pad_h == 0 and pad_w == 0:
        return x
    # F.pad pads from the last axis backwards: (C_left, C_right, W_left, W_right, H_top, H_bottom).
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))


def window_partition(x: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """Cut a grid whose sides are multiples of the window into flattened windows, row-major.

    Shape:
        - x: (B, H, W, C) with H % wh == 0 and W % ww == 0
        - output: (B * (H / wh) * (W / ww), wh * ww, C)
    """
    window_h, window_w = window_size
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=window_h, ww=window_w)


def window_reverse(
    windows: torch.Tensor, window_size: tuple[int, int], height: int, width: int
) -> torch.Tensor:
    """Inverse of ``window_partition`` for a padded grid of ``height`` x ``width``.

    Shape:
        - windows: (B * (height / wh) * (width / ww), wh * ww, C)
        - output: (B, height, width, C)
    """
    window_h, window_w = window_size
    return rearrange(
        windows,
        "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c",
        nh=height // window_h,
        nw=width // window_w,
        wh=window_h,
        ww=window_w,
    )


def window_valid_mask(
    height: int, width: int, window_size: tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """Which tokens of each window are real (True) rather than padding, for a grid padded by
    ``pad_to_multiple``.

    True marks a token that may be attended to, so the mask is an ``attn_mask`` row as SDPA reads it (not a
    ``key_padding_mask``, where True marks padding). Its old name ``window_padding_mask`` said the
    opposite; that name still works, with a FutureWarning, for one release.

    Shape:
        - output: (num_windows, wh * ww), bool, windows in ``window_partition`` order
    """
    window_h, window_w = window_size
    padded_h = height + (-height % window_h)
    padded_w = width + (-width % window_w)
    rows = torch.arange(padded_h, device=device) < height
    cols = torch.arange(padded_w, device=device) < width
    real = rows[:, None] & cols[None, :]
    return rearrange(real, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window_h, ww=window_w)


window_padding_mask = renamed_function(window_valid_mask, "window_padding_mask")
