"""Neighbourhood attention (NATTEN semantics) on 2-D and 3-D token grids, tiled as NATTEN's fused kernels.

Each query attends to the ``kernel_size`` window around it: centred on the query and, near a border, clamped
so that it stays full inside the grid; with ``dilation`` d along an axis the neighbours are d apart and the
window lives among the positions of the query's remainder modulo d (its dilation group); causal along an
axis, the window ends at the query (keys i, i - d, ..., at most ``kernel_size`` of them). A dilation group
shorter than the kernel (where NATTEN raises) is seen whole.

``neighborhood_attention`` never forms the (L, L) attention: it cuts the grid into query tiles (per axis,
``tile_size`` consecutive members of one dilation group), gives each tile the box of keys that covers the
union of its queries' windows (``tile_size + kernel_size - 1`` group members per axis) and the exact
neighbourhood mask inside the box, and runs every tile through ``chunkformer.ops.attention`` at once. The
index plan (``neighborhood_tiles``) is pure index arithmetic, so it runs on the meta device and under
``torch.compile(fullgraph=True)``; autograd only sees index_select. Work: about L * prod(box) * d
multiply-adds per head for the logits and as many for the output, where box = tile + kernel - 1 per axis.

``rpb``, NATTEN's relative position bias, is a learned table of (heads, 2 k - 1 per axis): the logit of a
query and a key gains ``rpb[h, (key - query) / dilation + kernel - 1 per axis]``, the key's offset from the
query counted in neighbours (NATTEN's ``get_pb_start`` + kernel index). Each tile's bias is gathered from the
table through the plan's per-axis offsets and handed to the kernel as a float mask (``-inf`` outside the
neighbourhood); gradients flow back to the table. Without it nothing changes (the bool mask, as before).
NATTEN refuses it with causal masking, and so do we.

``neighborhood_attention_dense`` is the same attention through an (L, L) bool mask (``neighborhood_mask``):
L * L work, for tests and small grids.

Layout: q, k, v are (B, heads, L, d) over the row-major flattened grid of ``sizes``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange

from chunkformer.ops.dispatch import attention

__all__ = [
    "NeighborhoodTiles",
    "default_tile_size",
    "neighborhood_attention",
    "neighborhood_attention_dense",
    "neighborhood_mask",
    "neighborhood_tiles",
]


# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------


def _int_tuple(value: object, rank: int, name: str, owner: str) -> tuple[int, ...]:
    expected = f"{owner}: {name} must be a positive int or a sequence of {rank} of them"
    if isinstance(value, int) and not isinstance(value, bool):
        values: tuple[int, ...] = (value,) * rank
    elif isinstance(value, (tuple, list)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        if len(value) != rank:
            raise ValueError(f"{expected}, got a {type(value).__name__} of length {len(value)}: {value!r}")
        values = tuple(value)
    else:
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")
    if min(values) < 1:
        raise ValueError(f"{expected}, got {value!r}")
    return values


def _bool_tuple(value: object, rank: int, owner: str) -> tuple[bool, ...]:
    expected = f"{owner}: is_causal must be a bool or a sequence of {rank} bools"
    if isinstance(value, bool):
        return (value,) * rank
    if isinstance(value, (tuple, list)) and all(isinstance(v, bool) for v in value):
        if len(value) != rank:
            raise ValueError(f"{expected}, got a {type(value).__name__} of length {len(value)}: {value!r}")
        return tuple(value)
    raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")


def _arguments(
    sizes: object,
    kernel_size: object,
    dilation: object,
    is_causal: object,
    tile_size: object,
    owner: str,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[bool, ...], tuple[int, ...]]:
    """Normalised (sizes, kernel_size, dilation, is_causal, tile_size); tile_size None -> the default."""
    if not isinstance(sizes, (tuple, list, torch.Size)) or len(sizes) not in (2, 3):
        raise ValueError(f"{owner}: sizes must be a sequence of 2 or 3 grid sides, got {sizes!r}")
    rank = len(sizes)
    sizes = _int_tuple(tuple(sizes), rank, "sizes", owner)
    kernel = _int_tuple(kernel_size, rank, "kernel_size", owner)
    causal = _bool_tuple(is_causal, rank, owner)
    if any(k % 2 == 0 and not c for k, c in zip(kernel, causal, strict=True)):
        raise ValueError(
            f"{owner}: kernel_size must be odd along every axis that is not causal, as in NATTEN, got "
            f"kernel_size {kernel} with is_causal {causal}"
        )
    dilation = _int_tuple(dilation, rank, "dilation", owner)
    if tile_size is None:
        tile = default_tile_size(sizes, kernel, dilation)
    else:
        tile = _int_tuple(tile_size, rank, "tile_size", owner)
    return sizes, kernel, dilation, causal, tile


def default_tile_size(
    sizes: tuple[int, ...], kernel_size: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[int, ...]:
    """Query tile sides: about half the kernel, (k + 1) // 2, along each axis; the whole dilation group
    along an axis whose groups are at most 2 k long, where a half-kernel tile's box would already hold
    three quarters of the group.

    Measured with ``NeighborhoodAttention3D`` (fp32, 1 thread, 2-core Xeon; numbers in the commit message):
    at 8 x 56 x 56 tokens and kernel (3, 7, 7), (2, 4, 4) was within 4 % of the fastest tile tried, forward
    and forward+backward; at 8 x 8 x 8 with (3, 5, 5), (2, 8, 8) was the fastest, 1.8x faster than (2, 3, 3).
    """
    tiles = []
    for size, kernel, step in zip(sizes, kernel_size, dilation, strict=True):
        longest = -(-size // step)
        tiles.append(longest if longest <= 2 * kernel else (kernel + 1) // 2)
    return tuple(tiles)


# ----------------------------------------------------------------------------------------------------------
# Windows, along one axis in dilation-group coordinates
# ----------------------------------------------------------------------------------------------------------


def _window(
    index: torch.Tensor, group_length: torch.Tensor | int, kernel: int, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """[start, stop) of the window of the group member ``index`` in a group of ``group_length`` members.

    Centred and clamped so it stays full (NATTEN's ``get_window_start``); a group shorter than the kernel
    gives start 0 (the whole group, once the caller keeps keys inside it). Causal: it ends at the query.
    """
    if causal:
        return (index - (kernel - 1)).clamp(min=0), index + 1
    start = torch.clamp(index - kernel // 2, max=group_length - kernel).clamp(min=0)
    return start, start + kernel


def _axis_mask(size: int, kernel: int, dilation: int, causal: bool, device: torch.device) -> torch.Tensor:
    """(size, size) bool: key j is in query i's neighbourhood along one axis."""
    position = torch.arange(size, device=device)
    query, key = position[:, None], position[None, :]
    same_group = query % dilation == key % dilation
    group_length = (size - query % dilation + dilation - 1) // dilation
    start, stop = _window(query // dilation, group_length, kernel, causal)
    k_index = key // dilation
    return same_group & (k_index >= start) & (k_index < stop)


def _axis_offset(size: int, kernel: int, dilation: int, device: torch.device) -> torch.Tensor:
    """(size, size) long: key j's rpb index relative to query i along one axis, ``(j - i) // d + k - 1``,
    clamped into the table (the clamped entries are outside the neighbourhood and masked anyway)."""
    position = torch.arange(size, device=device)
    offset = position[None, :] // dilation - position[:, None] // dilation + kernel - 1
    return offset.clamp(0, 2 * kernel - 2)


def neighborhood_mask(
    sizes: tuple[int, ...],
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    is_causal: bool | tuple[bool, ...] = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The dense (L, L) bool ``attn_mask`` over the row-major flattened grid, True = may attend.

    The product of the per-axis neighbourhoods; L * L bytes, so for small grids and tests.
    """
    sizes, kernel, dilation, causal, _ = _arguments(
        sizes, kernel_size, dilation, is_causal, 1, "neighborhood_mask"
    )
    device = torch.device("cpu") if device is None else torch.device(device)
    mask = torch.ones(1, 1, dtype=torch.bool, device=device)
    for size, k, step, c in zip(sizes, kernel, dilation, causal, strict=True):
        axis = _axis_mask(size, k, step, c, device)
        mask = rearrange(mask[:, None, :, None] & axis[None, :, None, :], "a i b j -> (a i) (b j)")
    return mask


# ----------------------------------------------------------------------------------------------------------
# The tile plan
# ----------------------------------------------------------------------------------------------------------


class _AxisTiles(NamedTuple):
    """One axis's tiles: ``tiles`` query tiles of ``tile`` slots, each with a box of ``box`` keys."""

    query: torch.Tensor  # (tiles, tile) positions; a padding slot repeats its group's last member
    valid: torch.Tensor  # (tiles, tile) bool: the slot is a real query, not padding
    key: torch.Tensor  # (tiles, box) positions; slots past the group's end repeat its last member
    mask: torch.Tensor  # (tiles, tile, box) bool: the key is in the query's window
    tile_of: torch.Tensor  # (size,) the tile holding each position as a real query
    slot_of: torch.Tensor  # (size,) its slot there
    offset: torch.Tensor  # (tiles, tile, box) long: the key's rpb index relative to the query


def _axis_tiles(
    size: int, kernel: int, dilation: int, causal: bool, tile: int, device: torch.device
) -> tuple[_AxisTiles, int, int]:
    """The tiles along one axis, with the tile and box sides actually used (at most the longest group)."""
    longest = -(-size // dilation)
    tile = min(tile, longest)
    box = min(tile + kernel - 1, longest)
    slots = torch.arange(tile, device=device)
    boxes = torch.arange(box, device=device)
    parts: list[tuple[torch.Tensor, ...]] = []
    # One pass per dilation group (a handful), each vectorised over its tiles.
    for remainder in range(min(dilation, size)):
        length = (size - remainder + dilation - 1) // dilation
        count = -(-length // tile)
        member = torch.arange(count, device=device)[:, None] * tile + slots  # (count, tile) group indices
        valid = member < length
        member = member.clamp(max=length - 1)
        start, stop = _window(member, length, kernel, causal)
        # Window starts never decrease along the group, so the first query's start, pulled back to keep the
        # box inside the group, gives a box that holds every window of the tile.
        box_start = start[:, :1].clamp(max=length - box).clamp(min=0)
        key = box_start + boxes  # (count, box)
        key_valid = key < length
        key = key.clamp(max=length - 1)
        mask = (
            (key[:, None, :] >= start[..., None]) & (key[:, None, :] < stop[..., None]) & key_valid[:, None]
        )
        # In group members, key - query is the offset in units of dilation; clamped where masked.
        offset = (key[:, None, :] - member[..., None] + kernel - 1).clamp(0, 2 * kernel - 2)
        parts.append((remainder + dilation * member, valid, remainder + dilation * key, mask, offset))
    query, valid, key, mask, offset = (torch.cat(list(column)) for column in zip(*parts, strict=True))
    # Where each position sits as a real query: tiles are numbered group after group.
    groups = torch.arange(dilation, device=device)
    counts = -(-((size - groups + dilation - 1) // dilation) // tile)
    first_tile = torch.cumsum(counts, 0) - counts
    position = torch.arange(size, device=device)
    member = position // dilation
    tile_of = first_tile[position % dilation] + member // tile
    return _AxisTiles(query, valid, key, mask, tile_of, member % tile, offset), tile, box


@dataclass(frozen=True, eq=False)
class NeighborhoodTiles:
    """The index plan of tiled neighbourhood attention for one grid shape.

    The N-d tiles are the products of the per-axis tiles; indices are into the row-major flattened grid.

    Attributes:
        sizes, kernel_size, dilation, is_causal: the attention's geometry, one entry per axis.
        tile_size: query tile sides used (at most the longest dilation group of each axis).
        box_size: key box sides, ``min(tile + kernel - 1, longest group)`` per axis.
        query_index: (tiles, Q) long, the query of each tile slot, Q = prod(tile_size); the last tile of a
            dilation group is padded with repeats of a real query.
        query_valid: (tiles, Q) bool, False for the padding slots.
        key_index: (tiles, K) long, the keys of each tile's box, K = prod(box_size).
        mask: (tiles, Q, K) bool, True where the slot's query may attend the key (every row has a key).
        inverse: (L,) long, for each grid position its real slot in the flattened (tiles * Q) slots.
        rpb_offset: per axis, (axis tiles, axis tile, axis box) long: the rpb index of each box key relative
            to each query slot along that axis (``key - query`` in neighbours, + kernel - 1); the N-d tile's
            bias is their outer product into the table.
    """

    sizes: tuple[int, ...]
    kernel_size: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    tile_size: tuple[int, ...]
    box_size: tuple[int, ...]
    query_index: torch.Tensor
    query_valid: torch.Tensor
    key_index: torch.Tensor
    mask: torch.Tensor
    inverse: torch.Tensor
    rpb_offset: tuple[torch.Tensor, ...]

    @property
    def num_tiles(self) -> int:
        return self.query_index.shape[0]


def _build_tiles(
    sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    dilation: tuple[int, ...],
    causal: tuple[bool, ...],
    tile: tuple[int, ...],
    device: torch.device,
) -> NeighborhoodTiles:
    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.long, device=device)

    def true(*shape: int) -> torch.Tensor:
        return torch.ones(shape, dtype=torch.bool, device=device)

    # One tile of one slot and one key over zero axes, folded with each axis in turn.
    query, key, tile_of, slot_of, valid, mask = (
        zeros(1, 1),
        zeros(1, 1),
        zeros(1),
        zeros(1),
        true(1, 1),
        true(1, 1, 1),
    )
    tiles, boxes, offsets = [], [], []
    # The N-d tile is the outer product of the per-axis tiles.
    for size, k, d, c, t in zip(sizes, kernel, dilation, causal, tile, strict=True):
        axis, used_tile, used_box = _axis_tiles(size, k, d, c, t, device)
        tiles.append(used_tile)
        boxes.append(used_box)
        offsets.append(axis.offset)
        n_axis = axis.query.shape[0]
        query = rearrange(
            query[:, None, :, None] * size + axis.query[None, :, None, :], "a i b j -> (a i) (b j)"
        )
        key = rearrange(key[:, None, :, None] * size + axis.key[None, :, None, :], "a i b j -> (a i) (b j)")
        valid = rearrange(valid[:, None, :, None] & axis.valid[None, :, None, :], "a i b j -> (a i) (b j)")
        mask = rearrange(
            mask[:, None, :, None, :, None] & axis.mask[None, :, None, :, None, :],
            "a i q s k l -> (a i) (q s) (k l)",
        )
        tile_of = rearrange(tile_of[:, None] * n_axis + axis.tile_of[None, :], "a i -> (a i)")
        slot_of = rearrange(slot_of[:, None] * used_tile + axis.slot_of[None, :], "a i -> (a i)")
    inverse = tile_of * math.prod(tiles) + slot_of
    return NeighborhoodTiles(
        sizes,
        kernel,
        dilation,
        causal,
        tuple(tiles),
        tuple(boxes),
        query,
        valid,
        key,
        mask,
        inverse,
        tuple(offsets),
    )


# Plans depend on the shape only; keep the last few (the mask is tiles * Q * K bytes).
_cached_tiles = functools.lru_cache(maxsize=8)(_build_tiles)


def neighborhood_tiles(
    sizes: tuple[int, ...],
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    is_causal: bool | tuple[bool, ...] = False,
    tile_size: int | tuple[int, ...] | None = None,
    device: torch.device | str | None = None,
) -> NeighborhoodTiles:
    """The tile plan of ``neighborhood_attention`` for a grid of ``sizes`` (2 or 3 axes).

    Cached per (sizes, kernel, dilation, causal, tile, device) in eager mode (the last 8); built inside the
    graph under ``torch.compile``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for an argument out of range (see ``neighborhood_attention``).
    """
    args = _arguments(sizes, kernel_size, dilation, is_causal, tile_size, "neighborhood_tiles")
    device = torch.device("cpu") if device is None else torch.device(device)
    if torch.compiler.is_compiling():
        return _build_tiles(*args, device)
    return _cached_tiles(*args, device)


# ----------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------


def _check_tokens(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sizes: tuple[int, ...], owner: str
) -> None:
    """q, k, v are 4-D tensors of L = prod(sizes) tokens each (the dispatch checks the rest)."""
    length = math.prod(sizes)
    for label, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{owner} expects {label} to be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[2] != length:
            raise ValueError(
                f"{owner} expects {label} of shape (B, heads, L, d) with L = prod(sizes) = {length} for "
                f"sizes {tuple(sizes)}, got {tuple(x.shape)}"
            )


def _check_rpb(
    rpb: object,
    heads: int,
    kernel: tuple[int, ...],
    causal: tuple[bool, ...],
    device: torch.device,
    owner: str,
) -> torch.Tensor:
    """rpb is a float (heads, 2 k - 1 per axis) table on q's device, and no axis is causal (as NATTEN)."""
    if not isinstance(rpb, torch.Tensor) or not rpb.is_floating_point():
        given = f"a {rpb.dtype} tensor" if isinstance(rpb, torch.Tensor) else type(rpb).__name__
        raise TypeError(f"{owner} expects rpb to be a floating-point torch.Tensor or None, got {given}")
    if any(causal):
        # NATTEN leaves it undefined (a causal window's offsets would reach only half of the table).
        raise NotImplementedError(
            f"{owner}: a relative position bias (rpb) is undefined with causal masking, as in NATTEN; "
            f"got rpb with is_causal {causal}. Pass rpb=None or make every axis non-causal"
        )
    expected = (heads, *(2 * k - 1 for k in kernel))
    if tuple(rpb.shape) != expected:
        raise ValueError(
            f"{owner} expects rpb of shape (heads, 2 * kernel_size - 1 per axis) = {expected} for {heads} "
            f"heads and kernel_size {kernel}, got {tuple(rpb.shape)}"
        )
    if rpb.device != device:
        raise ValueError(f"{owner} expects rpb on {device}, like q, got {rpb.device}")
    return rpb


def _rpb_bias(rpb: torch.Tensor, offsets: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """The bias of every (..., query, key) pair, ``rpb[h, offsets[0], offsets[1], ...]``, -inf where ``mask``
    is False: (heads, *mask.shape).

    Each axis's offsets have the same parts, e.g. (tiles, tile, box), and the pairs are their outer product,
    each part flattened row-major over the axes (as the plan flattens N-d tiles, queries and keys).
    """
    rank, parts = len(offsets), offsets[0].dim()
    sides = rpb.shape[1:]
    index = torch.zeros((), dtype=torch.long, device=rpb.device)
    for axis, offset in enumerate(offsets):
        # Axis a's part p goes to dimension p * rank + a, so the sum is already in row-major pair order.
        shape = [1] * (parts * rank)
        for part, size in enumerate(offset.shape):
            shape[part * rank + axis] = size
        index = index + offset.reshape(shape) * math.prod(sides[axis + 1 :])
    # One extra -inf entry for the excluded pairs: a flat index_select (a fast gather, and an index_add
    # backward) and no masking pass over the bias.
    excluded = math.prod(sides)
    index = torch.where(mask, index.reshape(mask.shape), excluded)
    table = torch.cat([rpb.flatten(1), rpb.new_full((rpb.shape[0], 1), float("-inf"))], dim=1)
    return table.index_select(1, index.flatten()).view(rpb.shape[0], *mask.shape)


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sizes: tuple[int, ...],
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    is_causal: bool | tuple[bool, ...] = False,
    *,
    rpb: torch.Tensor | None = None,
    tile_size: int | tuple[int, ...] | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Neighbourhood attention over a 2-D or 3-D grid, tile by tile (see the module docstring).

    Args:
        q: queries over the row-major flattened grid.
        k: keys.
        v: values.
        sizes: the grid's sides, (H, W) or (T, H, W).
        kernel_size: neighbourhood sides, an int or one per axis; odd along non-causal axes.
        dilation: distance between neighbours, an int or one per axis.
        is_causal: a bool for every axis or one per axis.
        rpb: NATTEN's relative position bias, or None: a table of (heads, 2 k - 1 per axis); the logit of
            query i and key j gains ``rpb[h, (j - i) // dilation + kernel - 1 per axis]`` (not scaled).
            Gradients reach it. Not with ``is_causal``, as in NATTEN.
        tile_size: query tile sides, an int or one per axis; None: ``default_tile_size``. Any
            size gives the same result; it trades the number of tiles against keys computed and masked.
        dropout_p: dropout on the attention weights (pass 0 in evaluation).
        scale: logit scale, ``1 / sqrt(d)`` when None.
        backend: the ``chunkformer.ops.attention`` backend; None defers to the context and environment.

    Returns:
        The attention output, in grid order.

    Raises:
        TypeError: for an argument of the wrong type (rpb: not a float tensor).
        ValueError: for a size below 1, an even kernel along a non-causal axis, a sequence of the wrong
            length, q whose length is not prod(sizes), or rpb of the wrong shape or device.
        NotImplementedError: for rpb with a causal axis (NATTEN refuses it too).

    Shape:
        - q, k: (B, heads, L, d), L = prod(sizes)
        - v: (B, heads, L, dv)
        - rpb: (heads, 2 kh - 1, 2 kw - 1) or (heads, 2 kt - 1, 2 kh - 1, 2 kw - 1)
        - output: (B, heads, L, dv)
    """
    owner = "neighborhood_attention"
    sizes, kernel, _, causal, _ = _arguments(sizes, kernel_size, dilation, is_causal, tile_size, owner)
    _check_tokens(q, k, v, sizes, owner)
    plan = neighborhood_tiles(sizes, kernel_size, dilation, is_causal, tile_size, q.device)
    batch, heads = q.shape[:2]
    if rpb is not None:
        _check_rpb(rpb, heads, kernel, causal, q.device, owner)
        return _tiled_with_rpb(q, k, v, plan, rpb, dropout_p, scale, backend)

    def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # Token-major rows (L, B, h, d) -> (tiles, B * h, n, d): the tiles are the dispatch's batch (the
        # mask broadcasts over B and heads), and the memory is (tiles, n, B * h, d), the layout the CPU
        # flash kernel works in, so neither it nor its backward copies.
        rows = x.permute(2, 0, 1, 3).index_select(0, index.flatten())
        return rows.reshape(plan.num_tiles, index.shape[1], batch * heads, x.shape[-1]).transpose(1, 2)

    out = attention(
        gather(q, plan.query_index),
        gather(k, plan.key_index),
        gather(v, plan.key_index),
        attn_mask=plan.mask[:, None],
        dropout_p=dropout_p,
        scale=scale,
        backend=backend,
    )
    # The real slots partition the grid: one gather puts every query back in place, padding dropped.
    out = out.transpose(1, 2).reshape(-1, batch, heads, out.shape[-1]).index_select(0, plan.inverse)
    return out.permute(1, 2, 0, 3)


def _tiled_with_rpb(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: NeighborhoodTiles,
    rpb: torch.Tensor,
    dropout_p: float,
    scale: float | None,
    backend: str | None,
) -> torch.Tensor:
    """``neighborhood_attention`` with a relative position bias: tiles folded into the heads.

    A float bias that needs a gradient sends SDPA to its math path (matmuls, no fused kernel). With the
    dispatch's heads as (heads, tiles), the (heads * tiles, Q, K) bias broadcasts over the batch: no copy
    per clip, and its gradient is one sum over the batch.
    """
    tiles = plan.num_tiles

    def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        rows = x.index_select(2, index.flatten())
        return rearrange(rows, "b h (t n) d -> b (h t) n d", t=tiles)

    bias = _rpb_bias(rpb, plan.rpb_offset, plan.mask)
    out = attention(
        gather(q, plan.query_index),
        gather(k, plan.key_index),
        gather(v, plan.key_index),
        attn_mask=rearrange(bias, "h t q k -> 1 (h t) q k"),
        dropout_p=dropout_p,
        scale=scale,
        backend=backend,
    )
    out = rearrange(out, "b (h t) q d -> b h (t q) d", t=tiles)
    return out.index_select(2, plan.inverse)


def neighborhood_attention_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sizes: tuple[int, ...],
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    is_causal: bool | tuple[bool, ...] = False,
    *,
    rpb: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``neighborhood_attention`` through the dense (L, L) mask: L * L work, for tests and small grids.

    With ``rpb`` the mask is a float (heads, L, L) bias, ``-inf`` outside the neighbourhood.

    Shape:
        - as ``neighborhood_attention``
    """
    owner = "neighborhood_attention_dense"
    sizes, kernel, steps, causal, _ = _arguments(sizes, kernel_size, dilation, is_causal, 1, owner)
    _check_tokens(q, k, v, sizes, owner)
    mask = neighborhood_mask(sizes, kernel_size, dilation, is_causal, q.device)
    if rpb is not None:
        _check_rpb(rpb, q.shape[1], kernel, causal, q.device, owner)
        offsets = tuple(
            _axis_offset(size, k, step, q.device) for size, k, step in zip(sizes, kernel, steps, strict=True)
        )
        mask = _rpb_bias(rpb, offsets, mask)[None]
    return attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, backend=backend)
