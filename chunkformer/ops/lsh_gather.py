"""Gathering token rows into blocks and adding block gradients back into token rows.

Blocks are laid out slot-major in memory, (G, slots, blocks, d), and viewed as (G, blocks, slots, d): that
is the (batch, length, heads, dim) layout the CPU flash kernels work in, so they copy nothing, and their
gradients come back in it too.
"""

from __future__ import annotations

import torch

from chunkformer.ops.lsh_pieces import PieceRows

__all__ = ["add_rows", "gather_rows", "gather_windows", "key_views", "select_rows"]


def select_rows(
    x: torch.Tensor, rows: torch.Tensor, buffers: dict[str, torch.Tensor] | None, name: str
) -> torch.Tensor:
    """Rows of the (G * N, d) flattening of x at ``rows``, into ``buffers[name]`` when buffers are given.

    Rounds and pieces reuse one buffer instead of allocating, and page-faulting, a fresh one each.
    """
    flat = x.reshape(-1, x.shape[-1])
    if buffers is None:
        return flat.index_select(0, rows)
    if name not in buffers or buffers[name].shape[0] < rows.numel():
        buffers[name] = flat.new_empty(rows.numel(), flat.shape[-1])
    return torch.index_select(flat, 0, rows, out=buffers[name][: rows.numel()])


def gather_rows(
    x: torch.Tensor,
    rows: torch.Tensor,
    slots: int,
    buffers: dict[str, torch.Tensor] | None = None,
    name: str = "",
) -> torch.Tensor:
    """Rows of x (G, N, d) at slot-major ``rows`` -> blocks (G, P, S, d), slot-major in memory, written into
    ``buffers[name]`` when buffers are given (see ``select_rows``)."""
    groups, _, width = x.shape
    return select_rows(x, rows, buffers, name).reshape(groups, slots, -1, width).transpose(1, 2)


def gather_windows(
    x: torch.Tensor, rows: torch.Tensor, bucket_size: int, buffers: dict[str, torch.Tensor], name: str
) -> torch.Tensor:
    """Key views (G, P, 2 * bs, d) of one piece as overlapping windows over its P + 1 sorted blocks.

    Under the sorted layout key view g is sorted blocks g - 1 and g, so consecutive views share a block:
    gathering the P + 1 blocks once and reading them through strides halves the rows gathered (the CPU
    flash kernels take such strided inputs as fast as contiguous ones).
    """
    groups, _, width = x.shape
    gathered = select_rows(x, rows, buffers, name)
    per_group = rows.numel() // groups
    n_views = per_group // bucket_size - 1
    return gathered.as_strided(
        (groups, n_views, 2 * bucket_size, width),
        (per_group * width, bucket_size * width, width, 1),
        gathered.storage_offset(),
    )


def add_rows(grad: torch.Tensor, rows: torch.Tensor, blocks: torch.Tensor) -> None:
    """Adjoint of ``gather_rows``: add blocks (G, P, S, d) into the (G * N, d) rows of ``grad``."""
    grad.index_add_(0, rows, blocks.transpose(1, 2).reshape(-1, blocks.shape[-1]).to(grad.dtype))


def key_views(
    k: torch.Tensor,
    v: torch.Tensor,
    piece_rows: PieceRows,
    round_index: int,
    blocks: slice,
    buffers: dict[str, torch.Tensor],
    windows: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views (G, P, K, d) of one piece.

    Under the sorted layout each key block is gathered once and the views read as overlapping windows; a
    kernel that cannot take those (``windows`` False: the CUDA kernels) gets them copied into its contiguous
    (G, K, P, d) layout, since on a GPU a copy costs far less than a gather of random rows.
    """
    if piece_rows.key_order is not None:
        rows = piece_rows("window", round_index, blocks)
        size = piece_rows.bucket_size
        k_views, v_views = (
            gather_windows(k, rows, size, buffers, "k"),
            gather_windows(v, rows, size, buffers, "v"),
        )
        if windows:
            return k_views, v_views
        # (G, P, K, d) views of (G, K, P, d) memory: the kernels' layout, so they copy nothing more.
        k_views, v_views = (
            views.transpose(1, 2).contiguous().transpose(1, 2) for views in (k_views, v_views)
        )
        return k_views, v_views
    rows = piece_rows("key", round_index, blocks)
    n_keys = piece_rows.key.shape[-1]
    return gather_rows(k, rows, n_keys, buffers, "k"), gather_rows(v, rows, n_keys, buffers, "v")
