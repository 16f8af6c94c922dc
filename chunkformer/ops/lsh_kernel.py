"""Reformer-style LSH attention: angular hashing, bucket sort, block attention, rounds merged exactly.

The layouts (which token sits in which block, what each query block sees) come from
:mod:`chunkformer.ops.lsh`; this module runs attention on the blocks and merges the hash rounds.

How rounds are merged: every round r gives, per query, an output o_r and the log-sum-exp l_r of its logits.
A (query, key) pair that several rounds put in view is attended in the first of them only, so the merged
result ``sum_r exp(l_r - L) o_r`` with ``L = logsumexp_r l_r`` is exactly softmax attention over the union of
keys the rounds put in view, each counted once. (Reformer instead lowers such a logit by log(count) in every
round; the result is the same in exact arithmetic, and keeping the first round needs only r(r - 1) / 2 round
comparisons and a 0 / -inf mask.)

The backward pass does not go through autograd's record of gathers: it re-gathers the blocks from the saved
inputs and layout and calls the block-attention backward with the merged output and the merged
log-sum-exp L, which yields each round's share of the exact gradient directly (the same identity ring
attention uses). Nothing of size N x N exists at any point; the largest buffers hold
N x n_hashes x 2 x bucket_size values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from chunkformer.ops.block_attention import (
    block_backward,
    block_forward,
    block_kernel,
    kernel_width,
    takes_overlapping_keys,
    zeroes_empty_rows,
)
from chunkformer.ops.dispatch import current_backend
from chunkformer.ops.lsh import (
    LSHLayout,
    bucket_aligned_layout,
    default_n_buckets,
    hash_buckets,
    random_rotations,
    sorted_layout,
)

__all__ = ["lsh_attention"]

_DEFAULT_SEED = 0


# Block tensors are laid out slot-major in memory, (G, slots, blocks, d), and viewed as (G, blocks, slots, d):
# that is the (batch, length, heads, dim) layout the CPU flash kernels work in, so they copy nothing, and
# their gradients come back in it too (measured: the backward kernel runs 2.5x faster than on
# block-major tensors).


# Empty slots point at token index N. No row N is ever materialised: those slots read token 0 instead, which
# is harmless because an empty key slot is always masked (weight exactly 0, so it adds exactly 0 to every
# gradient) and an empty query slot's output is never read and its incoming gradient is zeroed.


def _token_rows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Token ids (G, ...) -> row indices into the (G * N, d) flattening, empty slots -> the group's token 0."""
    offsets = torch.arange(ids.shape[0], device=ids.device).reshape(-1, *([1] * (ids.dim() - 1))) * seq_len
    return torch.where(ids < seq_len, ids, 0) + offsets


class _PieceRows:
    """Row indices of every round's pieces, slot-major, computed once per call and shared by both passes
    (each piece's query rows serve four gathers and a scatter, its key rows two of each)."""

    def __init__(self, layout: LSHLayout, seq_len: int) -> None:
        self.query = _token_rows(layout.query_ids, seq_len)  # (G, R, Q, bs)
        self.key = _token_rows(layout.key_ids, seq_len)  # (G, R, Q, K)
        self.bucket_size = layout.query_ids.shape[-1]
        self.key_order = None if layout.key_order is None else _token_rows(layout.key_order, seq_len)
        self._cache: dict[tuple[str, int, int, int], torch.Tensor] = {}

    def __call__(self, which: str, round_index: int, blocks: slice) -> torch.Tensor:
        """(G * S * P,) rows of one piece of one round, slot-major: the order :func:`_gather_rows` uses.

        ``which="window"`` (layouts with ``key_order``): the rows of sorted blocks start - 1 (cyclically)
        to stop - 1, block-major, (G * (P + 1) * bs,), which :func:`_gather_windows` reads as the key views.
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


def _gather_rows(
    x: torch.Tensor, rows: torch.Tensor, slots: int, buffers: dict[str, torch.Tensor] | None = None, name: str = ""
) -> torch.Tensor:
    """Rows of x (G, N, d) at slot-major ``rows`` -> blocks (G, P, S, d), slot-major in memory.

    With ``buffers``, the rows are written into ``buffers[name]`` (allocated on first use): rounds and pieces
    reuse one buffer instead of allocating, and page-faulting, a fresh one each.
    """
    groups, _, width = x.shape
    return _select_rows(x, rows, buffers, name).reshape(groups, slots, -1, width).transpose(1, 2)


def _select_rows(
    x: torch.Tensor, rows: torch.Tensor, buffers: dict[str, torch.Tensor] | None, name: str
) -> torch.Tensor:
    """Rows of the (G * N, d) flattening of x at ``rows``, into ``buffers[name]`` when buffers are given."""
    flat = x.reshape(-1, x.shape[-1])
    if buffers is None:
        return flat.index_select(0, rows)
    if name not in buffers or buffers[name].shape[0] < rows.numel():
        buffers[name] = flat.new_empty(rows.numel(), flat.shape[-1])
    return torch.index_select(flat, 0, rows, out=buffers[name][: rows.numel()])


def _gather_windows(
    x: torch.Tensor, rows: torch.Tensor, bucket_size: int, buffers: dict[str, torch.Tensor], name: str
) -> torch.Tensor:
    """Key views (G, P, 2 * bs, d) of one piece as overlapping windows over its P + 1 sorted blocks.

    Under the sorted layout key view g is sorted blocks g - 1 and g, so consecutive views share a block:
    gathering the P + 1 blocks once and reading them through strides halves the rows gathered (the CPU
    flash kernels take such strided inputs, measured no slower than contiguous ones).
    """
    groups, _, width = x.shape
    gathered = _select_rows(x, rows, buffers, name)
    per_group = rows.numel() // groups
    n_views = per_group // bucket_size - 1
    return gathered.as_strided(
        (groups, n_views, 2 * bucket_size, width),
        (per_group * width, bucket_size * width, width, 1),
        gathered.storage_offset(),
    )


def _add_rows(grad: torch.Tensor, rows: torch.Tensor, blocks: torch.Tensor) -> None:
    """Adjoint of :func:`_gather_rows`: add blocks (G, P, S, d) into the (G * N, d) rows of ``grad``."""
    grad.index_add_(0, rows, blocks.transpose(1, 2).reshape(-1, blocks.shape[-1]).to(grad.dtype))


def _key_views(
    k: torch.Tensor,
    v: torch.Tensor,
    piece_rows: _PieceRows,
    round_index: int,
    blocks: slice,
    buffers: dict[str, torch.Tensor],
    windows: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views (G, P, K, d) of one piece. Under the sorted layout each key block is gathered once
    and the views read as overlapping windows; a kernel that cannot take those (``windows`` False: the CUDA
    kernels) gets them copied into its contiguous (G, K, P, d) layout: on an H200 a copy runs far faster than
    a gather of random rows (32 MB copied in 0.025 ms; 524,288 random 128-byte rows gathered in 0.33 ms)."""
    if piece_rows.key_order is not None:
        rows = piece_rows("window", round_index, blocks)
        size = piece_rows.bucket_size
        k_views, v_views = _gather_windows(k, rows, size, buffers, "k"), _gather_windows(v, rows, size, buffers, "v")
        if windows:
            return k_views, v_views
        # (G, P, K, d) views of (G, K, P, d) memory: the kernels' layout, so _bmhk copies nothing more.
        k_views, v_views = (views.transpose(1, 2).contiguous().transpose(1, 2) for views in (k_views, v_views))
        return k_views, v_views
    rows = piece_rows("key", round_index, blocks)
    n_keys = piece_rows.key.shape[-1]
    return _gather_rows(k, rows, n_keys, buffers, "k"), _gather_rows(v, rows, n_keys, buffers, "v")


# -inf as an integer of the float's width: bits - bits * keep is 0 where keep and the bits of -inf elsewhere.
# Two vectorised integer passes (a third, as (keep - 1) * -bits, measured 1.5x slower); torch.where(keep, 0,
# -inf) measured 6x slower on CPU.
_MINUS_INF_BITS = {
    dtype: (int_dtype, int(torch.tensor(float("-inf"), dtype=dtype).view(int_dtype)))
    for dtype, int_dtype in (
        (torch.float16, torch.int16),
        (torch.bfloat16, torch.int16),
        (torch.float32, torch.int32),
        (torch.float64, torch.int64),
    )
}


def _logit_bias(
    keep: torch.Tensor | None,
    pattern: torch.Tensor | None,
    dtype: torch.dtype,
    buffers: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """0 where the pair is attended, -inf elsewhere: one piece's (G, P, bs, K) additive mask. A round whose
    mask is one (bs, K) ``pattern`` gets the pattern's bias, broadcast (the kernels read a broadcast bias as
    such); others are written into ``buffers["bias"]`` when given, reused across pieces and rounds."""
    if keep is None:
        return None
    if pattern is not None or buffers is None:
        zero = torch.zeros((), dtype=dtype, device=keep.device)
        minus_inf = torch.full((), float("-inf"), dtype=dtype, device=keep.device)
        return torch.where(keep if pattern is None else pattern, zero, minus_inf).expand(keep.shape)
    int_dtype, minus_inf_bits = _MINUS_INF_BITS[dtype]
    if "bias" not in buffers or buffers["bias"].numel() < keep.numel():
        buffers["bias"] = torch.empty(keep.numel(), dtype=int_dtype, device=keep.device)
    bits = buffers["bias"][: keep.numel()].view(keep.shape)
    # bits(-inf) - bits(-inf) * keep, the integer 0 / 1 copy of keep updated in one more pass. (The 0-d
    # operand is made on the device, once per call: from a Python number it would be a host-to-device copy,
    # which on CUDA waits for the stream.)
    if "minus inf" not in buffers or buffers["minus inf"].dtype != int_dtype:
        buffers["minus inf"] = torch.full((), minus_inf_bits, dtype=int_dtype, device=keep.device)
    torch.add(buffers["minus inf"], bits.copy_(keep.view(torch.uint8)), alpha=-minus_inf_bits, out=bits)
    return bits.view(dtype)


def _dropout_generator(
    generator_state: torch.Tensor | None, dropout_p: float, device: torch.device
) -> torch.Generator | None:
    """A generator at the saved state: forward and backward draw the same masks, round after round."""
    if dropout_p == 0.0 or generator_state is None:
        return None
    generator = torch.Generator(device=device)
    generator.set_state(generator_state)
    return generator


def _dropout_keep(layout: LSHLayout, dropout_p: float, generator: torch.Generator | None) -> torch.Tensor | None:
    """One round's dropout mask over its (G, Q, bs, K) pairs, drawn from ``generator`` for the whole round,
    so both passes draw the same masks in the same order and cut them into pieces alike."""
    if generator is None:
        return None
    groups, _, blocks, slots = layout.query_ids.shape
    shape = (groups, blocks, slots, layout.key_ids.shape[-1])
    return (torch.rand(shape, generator=generator, device=layout.query_ids.device) >= dropout_p).float()


# Kernel calls cover a few blocks at a time, at most this many bytes of keys (or key gradient) per call:
# the kernels allocate their outputs afresh on every call, and glibc maps allocations above 32 MB freshly
# from the OS each time, so larger calls page-fault through their whole output (measured in the backward
# kernel at 16K tokens: 20K faults, 10 of its 70 ms per call). Pieces this small reuse the same memory call
# after call, and the per-piece buffers (gathered blocks, mask) stay small too. 2 MB against 8 MB, in the
# benchmark's cell loop (forward, then forward+backward, repeated): page faults per step at 4K tokens 15-21K
# -> 0-4K and time 0.17 -> 0.13-0.15 s; 16K 0.58 -> 0.55 s; 64K 3.25 -> 2.9-3.1 s.
_PIECE_BYTES = 2 << 20
# On a GPU the page-fault argument does not apply (the caching allocator reuses blocks) and every piece costs
# a dozen kernel launches: pieces there are large, a whole round at 64K tokens and 4 heads in bf16.
_CUDA_PIECE_BYTES = 64 << 20

# F.normalize's default: keys are q / max(|q|, eps) under shared QK.
_NORMALIZE_EPS = 1e-12


def _normalize_eps(dtype: torch.dtype) -> float:
    """F.normalize's eps where the dtype holds it, else its smallest normal number: in float16 1e-12 rounds
    to 0, and a zero query (its norm 0) would get key 0 / 0 = NaN, and NaN logits for every query that
    sees it."""
    return max(_NORMALIZE_EPS, torch.finfo(dtype).tiny)


def _piece_bytes(device_type: str) -> int:
    return _CUDA_PIECE_BYTES if device_type == "cuda" else _PIECE_BYTES


def _rows_per_piece(width: int, element_size: int, device_type: str = "cpu") -> int:
    return max(1, _piece_bytes(device_type) // (width * element_size))


def _blocks_per_piece(groups: int, n_keys: int, width: int, element_size: int, device_type: str = "cpu") -> int:
    return max(1, _piece_bytes(device_type) // (groups * n_keys * width * element_size))


def _pieces(n_blocks: int, blocks_per_piece: int) -> Iterator[slice]:
    """The query blocks of each kernel call: whole pieces, then a last, shorter one. Slices end at
    ``n_blocks``, so a piece has as many blocks as its slice says."""
    for start in range(0, n_blocks, blocks_per_piece):
        yield slice(start, min(start + blocks_per_piece, n_blocks))


def _piece_keep(
    layout: LSHLayout,
    round_index: int,
    blocks: slice,
    pattern: torch.Tensor | None,
    round_keep: torch.Tensor | None = None,
    scratch: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """One piece's (G, P, bs, K) mask: the round's pattern expanded, or the piece of ``round_keep`` (the
    backward pass), or built by the layout (the forward pass, with its ``scratch``)."""
    if pattern is not None:
        return pattern.expand(layout.query_ids.shape[0], blocks.stop - blocks.start, *pattern.shape)
    if scratch is None:
        return None if round_keep is None else round_keep[:, blocks]
    return layout.keep(round_index, blocks, scratch)


class _LSHAttentionFunction(torch.autograd.Function):
    """Rounds run one after another, merged online (running max, weight sum and average output per token),
    and each round's kernels run a few blocks at a time, so the gathered blocks, the float mask and the
    kernel buffers of only one piece exist at a time. The pair masks are built a piece at a time too, so
    their work buffers stay small and in cache, and each round's bool mask is kept for the backward pass,
    which loops over rounds and pieces the same way. (Building the masks again in the backward pass
    instead measured slower at 16K tokens: 0.65-0.73 s against 0.57-0.62 s per forward+backward.)"""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor,
        layout: LSHLayout,
        valid: torch.Tensor | None,
        scale: float,
        shared_qk: bool,
        dropout_p: float,
        generator_state: torch.Tensor | None,
        kernel: str,
        blocks_per_piece: int | None,
    ) -> torch.Tensor:
        groups, seq_len, _ = q.shape
        query_norm = None
        if shared_qk:
            # Keys are the unit-normalised queries (as F.normalize computes them); normalising here lets the
            # backward fold the normalisation's gradient into q's in a few passes.
            query_norm = q.norm(2, dim=-1, keepdim=True)
            k = q / query_norm.clamp_min(_normalize_eps(q.dtype))
        assert k is not None
        acc = torch.promote_types(q.dtype, torch.float32)
        slots_per_round = layout.query_ids[0, 0].numel()
        n_blocks, bucket_size = layout.query_ids.shape[2], layout.query_ids.shape[3]
        n_keys = layout.key_ids.shape[3]
        if blocks_per_piece is None:
            blocks_per_piece = _blocks_per_piece(groups, n_keys, kernel_width(q, v), q.element_size(), q.device.type)
        windows = takes_overlapping_keys(kernel)
        dropout_generator = _dropout_generator(generator_state, dropout_p, q.device)
        running_max = torch.full((groups, seq_len), float("-inf"), dtype=acc, device=q.device)
        weight_sum = torch.zeros(groups, seq_len, dtype=acc, device=q.device)
        # The output is kept as the running weighted average of the rounds' outputs: a round with weight w
        # and output o moves it by w / (weights so far + w) towards o, one lerp per round (instead of a
        # scale, an add and a final division).
        average = torch.zeros(groups * seq_len, v.shape[-1], dtype=acc, device=q.device)
        # The merge reads a round's outputs in token order a few rows at a time (a whole round's worth is
        # 67 MB at 64K tokens, memory the OS would map and fault in afresh on every call).
        merge_rows = _rows_per_piece(v.shape[-1], q.element_size(), q.device.type)
        buffers: dict[str, torch.Tensor] = {}
        mask_scratch: dict[str, torch.Tensor] = {}
        # The backward pass reuses each round's pair mask (G x Q x bs x K bools, a quarter of the logits'
        # size) instead of comparing block numbers again.
        keeps: list[torch.Tensor | None] = []
        will_backward = any(ctx.needs_input_grad[:3])
        piece_rows = _PieceRows(layout, seq_len)
        # Where each token's row of a round sits in the round's outputs: lse block-major (G, Q, bs), outputs
        # slot-major (G, bs, Q, dv). A token without a slot in a round (padding) reads row 0, masked.
        rounds = layout.rounds_used
        local = layout.query_slot[:, :rounds] - torch.arange(rounds, device=q.device)[None, :, None] * slots_per_round
        placed = (local >= 0) & (local < slots_per_round)
        local = torch.where(placed, local, 0)
        group_base = torch.arange(groups, device=q.device)[:, None, None] * slots_per_round
        block = torch.div(local, bucket_size, rounding_mode="floor")
        lse_index = group_base + local
        out_index = group_base + (local - block * bucket_size) * n_blocks + block
        del local, block
        for round_index in range(rounds):
            dropout_mask = _dropout_keep(layout, dropout_p, dropout_generator)
            # A round's mask is either one (bs, K) pattern that every block repeats, as the layout says, or
            # built a piece at a time, and then kept whole for the backward pass.
            pattern = layout.keep_pattern(round_index)
            round_keep = None
            if will_backward and layout.needs_mask and pattern is None:
                round_keep = torch.empty(groups, n_blocks, bucket_size, n_keys, dtype=torch.bool, device=q.device)
            # The round's outputs, slot-major like the blocks; the kernels fill them a piece at a time.
            if "out_round" not in buffers:
                buffers["out_round"] = q.new_empty(groups, bucket_size, n_blocks, v.shape[-1])
                buffers["lse_round"] = q.new_empty(groups, n_blocks, bucket_size, dtype=acc)
            out_blocks = buffers["out_round"].transpose(1, 2)
            out_flat = buffers["out_round"].reshape(-1, v.shape[-1])
            lse_blocks = buffers["lse_round"]
            for blocks in _pieces(n_blocks, blocks_per_piece):
                piece_keep = _piece_keep(layout, round_index, blocks, pattern, scratch=mask_scratch)
                if round_keep is not None:
                    round_keep[:, blocks] = piece_keep
                query_rows = piece_rows("query", round_index, blocks)
                k_blocks, v_blocks = _key_views(k, v, piece_rows, round_index, blocks, buffers, windows)
                piece_out, piece_lse = block_forward(
                    kernel,
                    _gather_rows(q, query_rows, bucket_size, buffers, "q"),
                    k_blocks,
                    v_blocks,
                    _logit_bias(piece_keep, pattern, q.dtype, buffers),
                    scale,
                    None if dropout_mask is None else dropout_mask[:, blocks],
                    dropout_p,
                )
                if piece_keep is not None:
                    # Kernels disagree on rows with no key in view (lse 0 or -inf): make it -inf.
                    # (a max over bytes: bool any() is not vectorised on CPU, measured 6x slower)
                    attends_none = (piece_keep if pattern is None else pattern).view(torch.uint8).amax(dim=-1) == 0
                    piece_lse = piece_lse.masked_fill(attends_none, float("-inf"))
                    if not zeroes_empty_rows(kernel):
                        # The merge weighs such a row by 0, which keeps 0 but not NaN.
                        piece_out = piece_out.masked_fill(attends_none[..., None], 0.0)
                out_blocks[:, blocks] = piece_out
                lse_blocks[:, blocks] = piece_lse
            keeps.append(round_keep)
            # Each token's row in this round; a token without a slot reads lse -inf.
            lse = lse_blocks.reshape(-1)[lse_index[:, round_index]].masked_fill(~placed[:, round_index], float("-inf"))
            new_max = torch.maximum(running_max, lse)
            safe_max = new_max.masked_fill(torch.isneginf(new_max), 0.0)
            new_weight = torch.exp(lse - safe_max)
            weight_sum.mul_(torch.exp(running_max - safe_max)).add_(new_weight)
            running_max = new_max
            # (A token with no key so far has weight sum 0 and step 0: its average stays 0.)
            step = new_weight.div_(weight_sum.clamp(min=torch.finfo(acc).tiny)).reshape(-1, 1)
            token_rows = out_index[:, round_index].reshape(-1)
            for first in range(0, token_rows.numel(), merge_rows):
                chunk = slice(first, first + merge_rows)
                rows = _select_rows(out_flat, token_rows[chunk], buffers, "merge")
                average[chunk].lerp_(rows.to(acc), step[chunk])
            # Drop this round's temporaries before the next round allocates its own.
            del dropout_mask, lse, step
        mask_scratch.clear()
        buffers.clear()

        no_key = torch.isneginf(running_max)
        out = average.view(groups, seq_len, -1)
        merged_lse = torch.where(no_key, 0.0, running_max + torch.log(weight_sum.clamp(min=torch.finfo(acc).tiny)))
        fallback = None
        if shared_qk:
            fallback = no_key if valid is None else no_key & valid
            out = torch.where(fallback[..., None], v, out, out=out)
        out = out.to(v.dtype)

        ctx.save_for_backward(q, k, v, out, merged_lse, no_key, fallback, query_norm)
        ctx.layout = layout
        ctx.keeps = keeps
        ctx.piece_rows = piece_rows
        ctx.blocks_per_piece = blocks_per_piece
        ctx.scale = scale
        ctx.dropout_p = dropout_p
        ctx.generator_state = generator_state
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        q, k, v, out, merged_lse, no_key, fallback, query_norm = ctx.saved_tensors
        layout: LSHLayout = ctx.layout
        seq_len = q.shape[1]
        dropout_generator = _dropout_generator(ctx.generator_state, ctx.dropout_p, q.device)
        # Gradient rows are gathered from grad_out as it is, through one (G * N, dv) view (a copy only when it
        # has none; an expanded one, as from a sum, stays a view), and the rows of tokens with no key are
        # zeroed a piece at a time: no full-size masked copy.
        grad_rows = grad_out.to(q.dtype).reshape(-1, grad_out.shape[-1])
        grad_out = grad_rows.view(q.shape[0], seq_len, -1)
        no_key_rows = no_key.reshape(-1)
        bits_dtype = _MINUS_INF_BITS[q.dtype][0]  # the integer type of q's width
        acc = torch.promote_types(q.dtype, torch.float32)
        grad_q = q.new_zeros(q.shape[0] * seq_len, q.shape[-1], dtype=acc)
        grad_k = k.new_zeros(k.shape[0] * seq_len, k.shape[-1], dtype=acc)
        grad_v = v.new_zeros(v.shape[0] * seq_len, v.shape[-1], dtype=acc)
        buffers: dict[str, torch.Tensor] = {}
        keeps: list[torch.Tensor | None] = ctx.keeps
        piece_rows: _PieceRows = ctx.piece_rows
        n_blocks, bucket_size = layout.query_ids.shape[2], layout.query_ids.shape[3]
        blocks_per_piece: int = ctx.blocks_per_piece
        kernel: str = ctx.kernel
        windows = takes_overlapping_keys(kernel)
        for round_index in range(layout.rounds_used):
            dropout_mask = _dropout_keep(layout, ctx.dropout_p, dropout_generator)
            pattern = layout.keep_pattern(round_index)
            for blocks in _pieces(n_blocks, blocks_per_piece):
                piece_keep = _piece_keep(layout, round_index, blocks, pattern, round_keep=keeps[round_index])
                query_rows, key_rows = piece_rows("query", round_index, blocks), piece_rows("key", round_index, blocks)
                q_blocks = _gather_rows(q, query_rows, bucket_size, buffers, "q")
                k_blocks, v_blocks = _key_views(k, v, piece_rows, round_index, blocks, buffers, windows)
                grad_blocks = _gather_rows(grad_out, query_rows, bucket_size, buffers, "grad")
                # Rows of tokens with no key get no gradient through attention (with shared QK they return
                # their own value instead); empty query slots read token 0's gradient. Zeroing both keeps
                # their rows of every gradient exactly 0, whatever grad_out holds there (NaN included): the
                # rows' bits are and-ed with 0, the others' with all ones (5x faster than masked_fill_ with
                # the mask broadcast over the row).
                silent = no_key_rows.index_select(0, query_rows).view(grad_blocks.shape[0], bucket_size, -1)
                silent = silent.transpose(1, 2)
                if layout.empty_query_slots:
                    silent = silent | (layout.query_ids[:, round_index, blocks] >= seq_len)
                row_bits = silent.to(bits_dtype).sub_(1)[..., None]
                grad_blocks.view(bits_dtype).bitwise_and_(row_bits)
                out_blocks = _gather_rows(out, query_rows, bucket_size, buffers, "out")
                # (from the flat vector: index_select of one-value rows is 3.6x slower)
                lse_blocks = merged_lse.reshape(-1).index_select(0, query_rows)
                lse_blocks = lse_blocks.view(grad_blocks.shape[0], bucket_size, -1).transpose(1, 2)
                grad_q_blocks, grad_k_blocks, grad_v_blocks = block_backward(
                    kernel,
                    grad_blocks, q_blocks, k_blocks, v_blocks, out_blocks, lse_blocks,
                    _logit_bias(piece_keep, pattern, q.dtype, buffers),
                    ctx.scale,
                    None if dropout_mask is None else dropout_mask[:, blocks], ctx.dropout_p,
                )
                _add_rows(grad_q, query_rows, grad_q_blocks)
                _add_rows(grad_k, key_rows, grad_k_blocks)
                _add_rows(grad_v, key_rows, grad_v_blocks)
                del grad_q_blocks, grad_k_blocks, grad_v_blocks
            del dropout_mask
        if fallback is not None:
            # A token that falls back to itself returns its own value. Selected, not multiplied by 0 / 1, so
            # a non-finite gradient at another token stays there; a piece of rows at a time, so an expanded
            # grad_out is never materialised.
            falls_back = fallback.reshape(-1, 1)
            step = _rows_per_piece(grad_rows.shape[-1], grad_rows.element_size(), grad_rows.device.type)
            for first in range(0, grad_rows.shape[0], step):
                rows = slice(first, first + step)
                grad_v[rows] += torch.where(falls_back[rows], grad_rows[rows], 0.0)
        grad_q = grad_q.reshape(q.shape)
        grad_k = grad_k.reshape(k.shape)
        grad_v = grad_v.reshape(v.shape)
        if query_norm is not None:
            # Gradient of k = q / max(|q|, eps): (g - k (k . g)) / |q|, or g / eps where |q| < eps.
            norm, eps = query_norm.to(acc), _normalize_eps(q.dtype)
            # (einsum: no full-size temporary, measured 5x faster than (grad_k * k).sum at 64K tokens)
            radial = torch.einsum("gnd,gnd->gn", grad_k, k.to(acc))[..., None].masked_fill_(norm < eps, 0.0)
            grad_q += grad_k.addcmul_(k.to(acc), radial, value=-1.0).div_(norm.clamp_min(eps))
            return (grad_q.to(q.dtype), None, grad_v.to(v.dtype)) + (None,) * 8
        return (grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)) + (None,) * 8


def _check_lsh_inputs(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    bucket_size: int,
    n_hashes: int,
    n_buckets: int | None,
    shared_qk: bool,
    key_padding_mask: torch.Tensor | None,
    generator: torch.Generator | None,
    dropout_p: float,
    blocks_per_piece: int | None,
) -> None:
    for label, tensor in (("q", q), ("v", v)) + ((("k", k),) if k is not None else ()):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"lsh_attention expects {label} to be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(
                f"lsh_attention expects {label} of shape (B, H, N, d) (4 dims), got {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise TypeError(f"lsh_attention expects floating-point {label}, got {tensor.dtype}")
    batch, heads, seq_len, head_dim = q.shape
    if seq_len < 1:
        raise ValueError(f"lsh_attention expects N >= 1 tokens, got q of shape {tuple(q.shape)}")
    if shared_qk:
        if k is not None and k is not q:
            raise ValueError(
                "lsh_attention with shared_qk=True takes its keys from q (normalised): pass k=None or k=q"
            )
    elif k is None:
        raise ValueError("lsh_attention needs k when shared_qk=False")
    elif tuple(k.shape) != tuple(q.shape):
        raise ValueError(
            f"lsh_attention expects k of the same shape as q (B, H, N, d) = {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if tuple(v.shape[:3]) != (batch, heads, seq_len):
        raise ValueError(
            f"lsh_attention expects v of shape (B, H, N, dv) = ({batch}, {heads}, {seq_len}, dv), "
            f"got {tuple(v.shape)}"
        )
    if v.dtype != q.dtype or (k is not None and k.dtype != q.dtype):
        raise TypeError("lsh_attention expects q, k and v of one dtype")
    for name, value in (("bucket_size", bucket_size), ("n_hashes", n_hashes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"lsh_attention expects {name} to be a positive int, got {value!r}")
    if n_hashes > 127:
        raise ValueError(f"lsh_attention supports at most 127 hash rounds, got n_hashes={n_hashes}")
    if n_buckets is not None and (
        isinstance(n_buckets, bool)
        or not isinstance(n_buckets, int)
        or n_buckets < 1
        or (n_buckets > 1 and n_buckets % 2)
    ):
        raise ValueError(
            f"lsh_attention expects n_buckets to be None, 1 or an even int >= 2 (angular hashing splits "
            f"rotations into +/- halves), got {n_buckets!r}"
        )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError("lsh_attention expects key_padding_mask to be a bool tensor (True = padding)")
        if tuple(key_padding_mask.shape) != (batch, seq_len):
            raise ValueError(
                f"lsh_attention expects key_padding_mask of shape (B, N) = ({batch}, {seq_len}), "
                f"got {tuple(key_padding_mask.shape)}"
            )
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"lsh_attention expects generator to be a torch.Generator, got {type(generator).__name__}")
        if q.device.type != "meta" and torch.device(generator.device).type != q.device.type:
            raise ValueError(
                f"lsh_attention draws rotations on the inputs' device ({q.device}); "
                f"the generator lives on {generator.device}"
            )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"lsh_attention expects 0 <= dropout_p < 1, got {dropout_p}")
    if blocks_per_piece is not None and (
        isinstance(blocks_per_piece, bool) or not isinstance(blocks_per_piece, int) or blocks_per_piece < 1
    ):
        raise ValueError(f"lsh_attention expects blocks_per_piece to be None or a positive int, got {blocks_per_piece!r}")


def lsh_attention(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    *,
    bucket_size: int = 64,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    causal: bool = False,
    shared_qk: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dropout_p: float = 0.0,
    blocks_per_piece: int | None = None,
) -> torch.Tensor:
    """Angular-LSH attention with bucket sort (Reformer, Kitaev et al. 2020) for any sequence length.

    Each of ``n_hashes`` rounds hashes tokens into ``n_buckets`` buckets with a random rotation, sorts them
    by (bucket, position) and attends in blocks of ``bucket_size``. Rounds are merged by their
    log-sum-exp, with a pair that several rounds put in view attended in the first such round only, so the
    result is exact softmax attention over the union of keys the rounds put in view.

    Which keys a query sees:

    * ``causal=False``: tokens sorted by (bucket, position) per round (queries and keys separately unless
      ``shared_qk``) and cut into blocks; query block g sees key blocks g and g - 1 of the same round,
      cyclically; with one block, just that block. Buckets are not masked inside the view, as in Reformer.
    * ``causal=True``: the keys of the query's own bucket at positions <= its own, the newest
      ``bucket_size`` of them (bucket-aligned blocks, see :func:`chunkformer.ops.lsh.bucket_aligned_layout`).
      The output at position i depends only on inputs at positions <= i, bit for bit, for every seed. A
      query whose bucket holds no earlier key sees nothing and returns zeros (with ``shared_qk``, itself).

    ``shared_qk=True`` is Reformer's shared-QK attention: keys are the unit-normalised queries, and a token
    attends to itself only when it has nothing else to attend to (then it returns its own value). Keys are
    q / max(|q|, eps) with F.normalize's eps = 1e-12, or in float16, where 1e-12 rounds to 0, its smallest
    normal number: a zero query has key 0.
    ``shared_qk=False`` hashes q and k with the same rotations and sorts each: a query and the keys near it
    in angle usually share a bucket but, since the two sorts are cut into blocks independently, a query's
    block may not line up with all keys of its bucket; that is the approximation.

    ``n_buckets`` defaults to :func:`chunkformer.ops.lsh.default_n_buckets`: about N / bucket_size,
    rounded up to an even number, and 1 when N <= bucket_size. Hence with ``n_hashes=1`` and
    ``bucket_size >= N`` the result is exact softmax attention (causal when ``causal``).

    Padding: ``key_padding_mask`` marks tokens to ignore. They are hashed into a bucket of their own after
    all real ones, never receive weight, and their outputs are zeros; internal padding up to a whole block
    is handled the same way.

    Kernels: the blocks run on the attention dispatch's backend (:func:`chunkformer.ops.use_backend`, the
    ``CHUNKFORMER_ATTN_BACKEND`` variable, else automatic): PyTorch's flash kernels on CPU and its
    memory-efficient kernels on CUDA for ``"sdpa"``, xformers' on CUDA for ``"xformers"``, batched matmul for
    ``"math"`` and whenever ``dropout_p > 0`` (see :mod:`chunkformer.ops.block_attention`).

    Randomness: rotations (and dropout) come from ``generator``, on the inputs' device; the global RNG is
    neither read nor advanced. With ``generator=None`` a fixed seed is used, so calls are reproducible: bit for
    bit on CPU; on CUDA the output is, and the gradients are once ``torch.use_deterministic_algorithms(True)``
    is set (by default they are added with float atomics, whose order varies in the last bit).

    Args:
        q: queries.
        k: keys; must be None (or q itself) when ``shared_qk``.
        v: values.
        bucket_size: block length; each query sees at most 2 x bucket_size keys per round.
        n_hashes: hash rounds; more rounds, better approximation, proportionally more work.
        n_buckets: buckets per round (1, or even).
        causal: strictly causal attention (see above).
        shared_qk: Reformer's shared-QK attention.
        key_padding_mask: True where a token is padding.
        generator: source of the rotations and dropout masks.
        dropout_p: dropout on the attention weights (pass 0 in evaluation).
        blocks_per_piece: query blocks per kernel call, which bounds the memory of each call; None sizes
            pieces to about 2 MB of keys on CPU (their buffers stay in cache and are reused) and 64 MB on
            CUDA. Every value gives the same output (bit for bit with the fused kernels; with dropout's math
            kernel up to rounding) and gradients equal up to the order of additions.

    Returns:
        The attention output.

    Shape:
        - q, k: (B, H, N, d)
        - v: (B, H, N, dv)
        - key_padding_mask: (B, N)
        - output: (B, H, N, dv)
    """
    _check_lsh_inputs(
        q, k, v, bucket_size, n_hashes, n_buckets, shared_qk, key_padding_mask, generator, dropout_p, blocks_per_piece
    )
    batch, heads, seq_len, head_dim = q.shape
    if n_buckets is None:
        n_buckets = default_n_buckets(seq_len, bucket_size)
    if generator is None:
        generator = torch.Generator(device=q.device if q.device.type != "meta" else "cpu")
        generator.manual_seed(_DEFAULT_SEED)
    groups = batch * heads
    q_flat = q.reshape(groups, seq_len, head_dim)
    k_flat = None if shared_qk else k.reshape(groups, seq_len, head_dim)
    v_flat = v.reshape(groups, seq_len, v.shape[-1])
    if key_padding_mask is None:
        valid = None
    else:
        valid = (~key_padding_mask).repeat_interleave(heads, dim=0)

    with torch.no_grad():
        rotations = random_rotations(head_dim, n_hashes, n_buckets, generator, q.device)
        query_buckets = hash_buckets(q_flat, rotations, n_buckets)
        key_buckets = query_buckets if shared_qk else hash_buckets(k_flat, rotations, n_buckets)
        build = bucket_aligned_layout if causal else sorted_layout
        layout = build(query_buckets, key_buckets, valid, bucket_size, n_buckets, shared_qk)
        generator_state = generator.get_state() if dropout_p > 0.0 else None
        if generator_state is not None:
            # Advance the caller's generator past the dropout draws, as if they were taken from it.
            pairs = layout.query_ids[:, : layout.rounds_used].numel() * layout.key_ids.shape[-1]
            torch.rand(pairs, generator=generator, device=q.device)

    scale = 1.0 / math.sqrt(head_dim)
    kernel = block_kernel(current_backend(q, k, v), q.device, dropout_p)
    out = _LSHAttentionFunction.apply(
        q_flat, k_flat, v_flat, layout, valid, scale, shared_qk, dropout_p, generator_state, kernel, blocks_per_piece
    )
    return out.reshape(batch, heads, seq_len, v.shape[-1])
