"""How LSH attention cuts each round into pieces, and the token rows of every piece.

A piece is a few query blocks of one round that one kernel call covers. Small pieces keep the gathered
blocks, the mask and the kernels' buffers small and reused from call to call; ``PieceRows`` holds the
row indices each piece gathers from and scatters to.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from chunkformer.ops.lsh import LSHLayout

__all__ = ["PieceRows", "default_blocks_per_piece", "pieces", "rows_per_piece", "token_rows"]

# On CPU a kernel call covers at most this many bytes of keys (or key gradient): the kernels allocate their
# outputs afresh on every call, and glibc maps allocations above 32 MB freshly from the OS each time, so
# larger calls page-fault through their whole output; pieces this small reuse the same memory.
_PIECE_BYTES = 2 << 20
# On a GPU the caching allocator reuses blocks and every piece costs a dozen kernel launches: pieces there
# are large, a whole round at 64K tokens and 4 heads in bf16.
_CUDA_PIECE_BYTES = 64 << 20


def _piece_bytes(device_type: str) -> int:
    return _CUDA_PIECE_BYTES if device_type == "cuda" else _PIECE_BYTES


def rows_per_piece(width: int, element_size: int, device_type: str = "cpu") -> int:
    """Rows of ``width`` values that fit one piece's bytes, for passes over token rows (merge, fallback)."""
    return max(1, _piece_bytes(device_type) // (width * element_size))


def default_blocks_per_piece(
    groups: int, n_keys: int, width: int, element_size: int, device_type: str = "cpu"
) -> int:
    """Query blocks per kernel call when the caller gives none: as many as one piece's bytes of keys hold."""
    return max(1, _piece_bytes(device_type) // (groups * n_keys * width * element_size))


def pieces(n_blocks: int, blocks_per_piece: int) -> Iterator[slice]:
    """The query blocks of each kernel call: whole pieces, then a last, shorter one. Slices end at
    ``n_blocks``, so a piece has as many blocks as its slice says."""
    for start in range(0, n_blocks, blocks_per_piece):
        yield slice(start, min(start + blocks_per_piece, n_blocks))


def token_rows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Token ids (G, ...) -> row indices into the (G * N, d) flattening, empty slots -> the group's token 0.

    Empty slots point at token index N, and no row N exists: reading token 0 instead is harmless, since an
    empty key slot is always masked (weight exactly 0, so it adds exactly 0 to every gradient) and an empty
    query slot's output is never read and its incoming gradient is zeroed.
    """
    offsets = torch.arange(ids.shape[0], device=ids.device).reshape(-1, *([1] * (ids.dim() - 1))) * seq_len
    return torch.where(ids < seq_len, ids, 0) + offsets


class PieceRows:
    """Row indices of every round's pieces, slot-major, computed once per call and shared by both passes
    (each piece's query rows serve four gathers and a scatter, its key rows two of each).

    Shape:
        - query: (G, R, Q, bs)
        - key: (G, R, Q, K)
        - key_order: (G, R, Q * bs), or None when the layout has no key order
    """

    def __init__(self, layout: LSHLayout, seq_len: int) -> None:
        self.query = token_rows(layout.query_ids, seq_len)
        self.key = token_rows(layout.key_ids, seq_len)
        self.bucket_size = layout.query_ids.shape[-1]
        self.key_order = None if layout.key_order is None else token_rows(layout.key_order, seq_len)
        self._cache: dict[tuple[str, int, int, int], torch.Tensor] = {}

    def __call__(self, which: str, round_index: int, blocks: slice) -> torch.Tensor:
        """(G * S * P,) rows of one piece of one round, slot-major: the order
        ``chunkformer.ops.lsh_gather.gather_rows`` uses.

        ``which="window"`` (layouts with ``key_order``): the rows of sorted blocks start - 1 (cyclically)
        to stop - 1, block-major, (G * (P + 1) * bs,), which
        ``chunkformer.ops.lsh_gather.gather_windows`` reads as the key views.
        """
        key = (which, round_index, blocks.start, blocks.stop)
        if key not in self._cache:
            if which == "window":
                assert self.key_order is not None
                order = self.key_order[:, round_index].unflatten(-1, (-1, self.bucket_size))
                n_blocks = order.shape[1]
                stop = min(blocks.stop, n_blocks)
                indices = torch.arange(blocks.start - 1, stop, device=order.device) % n_blocks
                self._cache[key] = order[:, indices].reshape(-1)
            else:
                rows = (self.query if which == "query" else self.key)[:, round_index, blocks]
                self._cache[key] = rows.transpose(1, 2).reshape(-1)
        return self._cache[key]
