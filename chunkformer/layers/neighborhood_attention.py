"""Neighbourhood attention (NATTEN semantics) on 2-D frames and 3-D clips, tiled as NATTEN's fused kernels."""

from __future__ import annotations

import functools

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers._checks import check_input, check_int_tuple
from chunkformer.layers.attention import Attention
from chunkformer.ops.neighborhood import neighborhood_attention, neighborhood_mask

# Dense masks depend on the shape only; keep the last few (each is L * L bytes).
_cached_neighborhood_mask = functools.lru_cache(maxsize=4)(neighborhood_mask)


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
        tile_size: int | tuple[int, ...] | None = None,
        rel_pos_bias: bool = False,
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
        self.tile_size: tuple[int, ...] | None = (
            None if tile_size is None else check_int_tuple(tile_size, rank, "tile_size", owner, axes=axes)
        )
        if not isinstance(rel_pos_bias, bool):
            raise TypeError(
                f"{owner}: rel_pos_bias must be a bool, got {type(rel_pos_bias).__name__} {rel_pos_bias!r}"
            )
        if rel_pos_bias and any(self.is_causal):
            # NATTEN leaves it undefined (a causal window's offsets would reach only half of the table).
            raise NotImplementedError(
                f"{owner}: rel_pos_bias is undefined with causal masking, as in NATTEN; got "
                f"rel_pos_bias=True with is_causal {self.is_causal}. Disable one of them"
            )
        self.rpb: nn.Parameter | None
        if rel_pos_bias:
            # NATTEN's table and init: one bias per head and per offset, 2 k - 1 offsets along each axis.
            self.rpb = nn.Parameter(torch.empty(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            # Registered as None (as NATTEN does): ``layer.rpb`` exists and the state dict has no entry.
            self.register_parameter("rpb", None)

    def neighborhood_mask(
        self, sizes: tuple[int, ...], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The dense (L, L) bool ``attn_mask`` for a grid of ``sizes``, L = prod(sizes), True = may attend.

        What the tiled kernel computes, as one mask (``forward`` never builds it): for tests and
        inspection. Cached per shape and device in eager mode (the last 4); built inside the graph under
        ``torch.compile``.
        """
        device = torch.device("cpu") if device is None else torch.device(device)
        args = (tuple(sizes), self.kernel_size, self.dilation, self.is_causal, device)
        if torch.compiler.is_compiling():
            return neighborhood_mask(*args)
        return _cached_neighborhood_mask(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        layout = f"(B, {', '.join(a.upper() for a in self._axes)}, C)"
        check_input(x, type(self).__name__, {len(self._axes) + 2: layout}, self.dim)
        sizes = tuple(x.shape[1:-1])
        q, k, v = self._split_qkv(x, "b ... (three h d) -> three b h (...) d")
        out = neighborhood_attention(
            q,
            k,
            v,
            sizes,
            self.kernel_size,
            self.dilation,
            self.is_causal,
            rpb=self.rpb,
            tile_size=self.tile_size,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        return self._project_out(rearrange(out, "b h n d -> b n (h d)")).reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"is_causal={self.is_causal}, rel_pos_bias={self.rpb is not None}, tile_size={self.tile_size}"
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

    ``rel_pos_bias=True`` adds NATTEN's learned relative position bias (NAT, DiNAT): a parameter ``rpb`` of
    (num_heads, 2 kh - 1, 2 kw - 1), one bias per head and per offset of the key from the query (in steps of
    ``dilation``), added to the attention logits. It is the layer's only position information: without it
    the softmax knows what a key holds, not where in the window it lies. Off by default (NATTEN's current
    default); not with ``is_causal``, as in NATTEN. It costs a float bias per tile and, on the CPU, SDPA's
    unfused path (see ``docs/zoo.md``).

    Cost: tiled as NATTEN's fused kernels (``chunkformer.ops.neighborhood_attention``): queries are cut
    into tiles of ``tile_size`` (per axis, consecutive members of one dilation group), and each tile
    attends to the box of keys covering its queries' windows, box = tile_size + kernel_size - 1 per axis,
    with the exact neighbourhood mask inside it. That is about L * prod(box) * C multiply-adds for the
    logits and as many for the output (a NATTEN kernel does L * prod(kernel_size) * C), and a mask of
    L * prod(box) bytes, cached per shape; no (L, L) tensor. It is exact for any ``tile_size``, and runs on
    every backend of ``chunkformer.ops.attention``.

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim``.
        kernel_size: neighbourhood sides, an int or an (h, w) pair.
        dilation: distance between neighbours, an int or an (h, w) pair.
        is_causal: a bool for both axes or an (h, w) pair of bools.
        qkv_bias: add a bias to the query, key and value projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        tile_size: query tile sides, an int or an (h, w) pair; None (default): about half the kernel, the
            whole axis where it is at most twice the kernel (``chunkformer.ops.default_tile_size``). It
            changes speed and memory, not the result.
        rel_pos_bias: learn NATTEN's relative position bias ``rpb`` (initialised trunc_normal, std 0.02).

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
        tile_size: int | tuple[int, int] | None = None,
        rel_pos_bias: bool = False,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            kernel_size,
            dilation,
            is_causal,
            qkv_bias,
            attn_drop,
            proj_drop,
            tile_size,
            rel_pos_bias,
        )


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

    ``rel_pos_bias=True`` adds NATTEN's learned relative position bias (NAT, DiNAT): a parameter ``rpb`` of
    (num_heads, 2 kt - 1, 2 kh - 1, 2 kw - 1), one bias per head and per offset of the key from the query
    (in steps of ``dilation``), added to the attention logits. It is the layer's only position
    information: without it the softmax knows what a key holds, not where in the window it lies. Off by
    default (NATTEN's current default); not with ``is_causal``, as in NATTEN. It costs a float bias per
    tile and, on the CPU, SDPA's unfused path (see ``docs/zoo.md``).

    Cost: tiled as NATTEN's fused kernels (``chunkformer.ops.neighborhood_attention``): queries are cut
    into tiles of ``tile_size`` (per axis, consecutive members of one dilation group), and each tile
    attends to the box of keys covering its queries' windows, box = tile_size + kernel_size - 1 per axis,
    with the exact neighbourhood mask inside it. That is about L * prod(box) * C multiply-adds for the
    logits and as many for the output (a NATTEN kernel does L * prod(kernel_size) * C), and a mask of
    L * prod(box) bytes, cached per shape; no (L, L) tensor. It is exact for any ``tile_size``, and runs on
    every backend of ``chunkformer.ops.attention``.

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
        tile_size: query tile sides, an int or a (t, h, w) triple; None (default): about half the kernel, the
            whole axis where it is at most twice the kernel (``chunkformer.ops.default_tile_size``). It
            changes speed and memory, not the result.
        rel_pos_bias: learn NATTEN's relative position bias ``rpb`` (initialised trunc_normal, std 0.02).

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
        tile_size: int | tuple[int, int, int] | None = None,
        rel_pos_bias: bool = False,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            kernel_size,
            dilation,
            is_causal,
            qkv_bias,
            attn_drop,
            proj_drop,
            tile_size,
            rel_pos_bias,
        )
