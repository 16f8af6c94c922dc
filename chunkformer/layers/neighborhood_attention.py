"""Neighbourhood attention (NATTEN semantics) on 2-D frames and 3-D clips, through a dense mask."""

from __future__ import annotations

import functools

import torch
from einops import rearrange

from chunkformer.layers._checks import check_input, check_int_tuple
from chunkformer.layers.attention import Attention


def _axis_mask(size: int, kernel: int, dilation: int, causal: bool, device: torch.device) -> torch.Tensor:
    """(size, size) bool: key j is in query i's neighbourhood along one axis.

    Positions with the same remainder modulo ``dilation`` form a sub-sequence; inside it the window of
    ``kernel`` positions is centred on the query and clamped at the borders so that it stays full
    (NATTEN's ``get_window_start``), or, causal, ends at the query.
    """
    position = torch.arange(size, device=device)
    query, key = position[:, None], position[None, :]
    same_group = query % dilation == key % dilation
    q_index, k_index = query // dilation, key // dilation  # indices inside the dilation group
    if causal:
        return same_group & (k_index <= q_index) & (k_index > q_index - kernel)
    group_size = (size - query % dilation + dilation - 1) // dilation
    # A group shorter than the kernel (where NATTEN raises) gives a start of 0: the whole group.
    start = torch.minimum(q_index - kernel // 2, group_size - kernel).clamp(min=0)
    return same_group & (k_index >= start) & (k_index < start + kernel)


def _neighborhood_mask(
    sizes: tuple[int, ...],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    is_causal: tuple[bool, ...],
    device: torch.device,
) -> torch.Tensor:
    """(L, L) bool over row-major flattened positions: the product of the per-axis neighbourhoods."""
    mask = torch.ones(1, 1, dtype=torch.bool, device=device)
    for size, kernel, step, causal in zip(sizes, kernel_size, dilation, is_causal, strict=True):
        axis = _axis_mask(size, kernel, step, causal, device)
        mask = rearrange(mask[:, None, :, None] & axis[None, :, None, :], "a i b j -> (a i) (b j)")
    return mask


# Masks depend on the shape only; keep the last few (each is L * L bytes).
_cached_neighborhood_mask = functools.lru_cache(maxsize=4)(_neighborhood_mask)


class _NeighborhoodAttention(Attention):
    """Shared code of the 2-D and 3-D neighbourhood attentions; ``_axes`` names the token grid's axes."""

    _axes: tuple[str, ...] = ()

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, ...],
        dilation: int | tuple[int, ...] = 1,
        is_causal: bool | tuple[bool, ...] = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        owner = type(self).__name__
        rank = len(self._axes)
        axes = f"({', '.join(self._axes)}) {'pair' if rank == 2 else 'triple'}"
        self.kernel_size = check_int_tuple(kernel_size, rank, "kernel_size", owner, axes=axes)
        self.dilation = check_int_tuple(dilation, rank, "dilation", owner, axes=axes)
        if isinstance(is_causal, bool):
            self.is_causal: tuple[bool, ...] = (is_causal,) * rank
        elif isinstance(is_causal, (tuple, list)) and all(isinstance(c, bool) for c in is_causal):
            if len(is_causal) != rank:
                raise ValueError(
                    f"{owner}: is_causal must be a bool or a {axes} of bools, got a "
                    f"{type(is_causal).__name__} of length {len(is_causal)}: {is_causal!r}"
                )
            self.is_causal = tuple(is_causal)
        else:
            raise TypeError(
                f"{owner}: is_causal must be a bool or a {axes} of bools, "
                f"got {type(is_causal).__name__} {is_causal!r}"
            )
        if any(k % 2 == 0 and not c for k, c in zip(self.kernel_size, self.is_causal, strict=True)):
            # A centred window needs an odd side; a causal window ends at the query and may have any.
            raise ValueError(
                f"{owner}: kernel_size must be odd along every axis that is not causal, as in NATTEN, got "
                f"kernel_size {self.kernel_size} with is_causal {self.is_causal}"
            )

    def neighborhood_mask(
        self, sizes: tuple[int, ...], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The (L, L) bool ``attn_mask`` for a grid of ``sizes``, L = prod(sizes), True = may attend.

        Cached per shape and device in eager mode (the last 4); built inside the graph under
        ``torch.compile``.
        """
        device = torch.device("cpu") if device is None else torch.device(device)
        args = (tuple(sizes), self.kernel_size, self.dilation, self.is_causal, device)
        if torch.compiler.is_compiling():
            return _neighborhood_mask(*args)
        return _cached_neighborhood_mask(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        layout = f"(B, {', '.join(a.upper() for a in self._axes)}, C)"
        check_input(x, type(self).__name__, {len(self._axes) + 2: layout}, self.dim)
        sizes = tuple(x.shape[1:-1])
        q, k, v = self._split_qkv(x, "b ... (three h d) -> three b h (...) d")
        out = self._attend(q, k, v, self.neighborhood_mask(sizes, x.device))
        return self._project_out(out).reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"is_causal={self.is_causal}"
        )


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """Multi-head neighbourhood attention on a (B, H, W, C) grid of tokens.

    Each query attends to the ``kernel_size`` neighbourhood around it (Hassani et al., CVPR 2023; dilated:
    DiNAT, 2022), with NATTEN's semantics: the window is centred on the query (so its sides are odd, except
    along causal axes) and, near a border, clamped so that it stays inside the grid and full; every query
    sees exactly prod(kernel_size) keys. With
    ``dilation`` d along an axis, the neighbours are d apart and the clamping happens within the positions
    of the query's remainder modulo d. ``is_causal`` along an axis makes the window end at the query
    (keys i, i - d, ..., at most kernel_size of them), as NATTEN's per-axis ``is_causal``; a bool applies
    to every axis, as in NATTEN. Along an axis shorter than kernel_size * dilation, where NATTEN raises,
    each query sees all positions of its dilation group there.

    There is no relative position bias (NATTEN deprecated it).

    Cost: this first version computes attention densely over all L tokens with an (L, L) bool mask from
    index arithmetic (cached per shape): L * L * C multiply-adds for the logits and as many for the
    output, and L * L bytes of mask, where a NATTEN kernel does L * prod(kernel_size) * C. It is exact, runs
    on every backend of ``chunkformer.ops.attention``, and is meant for small grids and for tests.

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim``.
        kernel_size: neighbourhood sides, an int or an (h, w) pair.
        dilation: distance between neighbours, an int or an (h, w) pair.
        is_causal: a bool for both axes or an (h, w) pair of bools.
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Shape:
        - x: (B, H, W, C) -> (B, H, W, C)

    Example:
        >>> import torch
        >>> from chunkformer.layers import NeighborhoodAttention2D
        >>> layer = NeighborhoodAttention2D(dim=32, num_heads=4, kernel_size=7, dilation=2)
        >>> layer(torch.randn(2, 14, 16, 32)).shape
        torch.Size([2, 14, 16, 32])
    """

    _axes = ("h", "w")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, int] = 7,
        dilation: int | tuple[int, int] = 1,
        is_causal: bool | tuple[bool, bool] = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, kernel_size, dilation, is_causal, qkv_bias, attn_drop, proj_drop)


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """Multi-head neighbourhood attention on a (B, T, H, W, C) clip of tokens.

    Each query attends to the ``kernel_size`` neighbourhood around it (Hassani et al., CVPR 2023; dilated:
    DiNAT, 2022), with NATTEN's semantics: the window is centred on the query (so its sides are odd, except
    along causal axes) and, near a border, clamped so that it stays inside the grid and full; every query
    sees exactly prod(kernel_size) keys. With
    ``dilation`` d along an axis, the neighbours are d apart and the clamping happens within the positions
    of the query's remainder modulo d. ``is_causal`` along an axis makes the window end at the query
    (keys i, i - d, ..., at most kernel_size of them), as NATTEN's per-axis ``is_causal``; a bool applies
    to every axis, as in NATTEN. Along an axis shorter than kernel_size * dilation, where NATTEN raises,
    each query sees all positions of its dilation group there.

    There is no relative position bias (NATTEN deprecated it).

    Cost: this first version computes attention densely over all L tokens with an (L, L) bool mask from
    index arithmetic (cached per shape): L * L * C multiply-adds for the logits and as many for the
    output, and L * L bytes of mask, where a NATTEN kernel does L * prod(kernel_size) * C. It is exact, runs
    on every backend of ``chunkformer.ops.attention``, and is meant for small grids and for tests.

    For video, causal in time and centred in space is ``is_causal=(True, False, False)``.

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim``.
        kernel_size: neighbourhood sides, an int or a (t, h, w) triple.
        dilation: distance between neighbours, an int or a (t, h, w) triple.
        is_causal: a bool for all axes or a (t, h, w) triple of bools.
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Shape:
        - x: (B, T, H, W, C) -> (B, T, H, W, C)

    Example:
        >>> import torch
        >>> from chunkformer.layers import NeighborhoodAttention3D
        >>> layer = NeighborhoodAttention3D(32, 4, kernel_size=(3, 5, 5), is_causal=(True, False, False))
        >>> layer(torch.randn(2, 4, 8, 8, 32)).shape
        torch.Size([2, 4, 8, 8, 32])
    """

    _axes = ("t", "h", "w")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, int, int] = (3, 7, 7),
        dilation: int | tuple[int, int, int] = 1,
        is_causal: bool | tuple[bool, bool, bool] = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, kernel_size, dilation, is_causal, qkv_bias, attn_drop, proj_drop)
