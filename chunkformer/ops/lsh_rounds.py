"""One hash round of LSH attention: block attention a piece at a time, forward and backward.

Each round's kernels run a few query blocks at a time (see ``chunkformer.ops.lsh_pieces``), so the
gathered blocks, the float mask and the kernel buffers of only one piece exist at a time. The backward pass
re-gathers the blocks from the saved inputs and calls the block-attention backward with the MERGED output and
log-sum-exp, which yields the round's share of the exact gradient directly (the identity ring attention
uses); nothing goes through autograd's record of gathers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chunkformer.ops.block_attention import BlockKernel, block_backward, block_forward
from chunkformer.ops.lsh import LSHLayout
from chunkformer.ops.lsh_gather import add_rows, gather_rows, key_views
from chunkformer.ops.lsh_pieces import PieceRows, pieces

__all__ = ["BlockRounds", "logit_bias", "piece_keep"]

# -inf as an integer of the float's width: bits - bits * keep is 0 where keep and the bits of -inf elsewhere,
# two vectorised integer passes (torch.where(keep, 0, -inf) is not vectorised on CPU).
_MINUS_INF_BITS = {
    dtype: (int_dtype, int(torch.tensor(float("-inf"), dtype=dtype).view(int_dtype)))
    for dtype, int_dtype in (
        (torch.float16, torch.int16),
        (torch.bfloat16, torch.int16),
        (torch.float32, torch.int32),
        (torch.float64, torch.int64),
    )
}


def logit_bias(
    keep: torch.Tensor | None,
    pattern: torch.Tensor | None,
    dtype: torch.dtype,
    buffers: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """0 where the pair is attended, -inf elsewhere: one piece's additive mask, None when ``keep`` is.

    A round whose mask is one (bs, K) ``pattern`` gets the pattern's bias, broadcast (the kernels read a
    broadcast bias as such); others are written into ``buffers["bias"]`` when given, reused across pieces and
    rounds.

    Shape:
        - keep: (G, P, bs, K) bool
        - pattern: (bs, K) bool
        - output: (G, P, bs, K) in ``dtype``
    """
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
    # bits(-inf) - bits(-inf) * keep, the integer 0 / 1 copy of keep updated in one more pass. The 0-d
    # operand lives on the device: from a Python number it would be a host-to-device copy, which on CUDA
    # waits for the stream.
    if "minus inf" not in buffers or buffers["minus inf"].dtype != int_dtype:
        buffers["minus inf"] = torch.full((), minus_inf_bits, dtype=int_dtype, device=keep.device)
    torch.add(buffers["minus inf"], bits.copy_(keep.view(torch.uint8)), alpha=-minus_inf_bits, out=bits)
    return bits.view(dtype)


def piece_keep(
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


@dataclass(frozen=True)
class BlockRounds:
    """Block attention of every round of one call: what both passes share.

    Attributes:
        layout: where each token sits in each round.
        rows: the token rows of every piece.
        kernel: the block kernel.
        scale: logit scale.
        dropout_p: dropout probability (masks from ``chunkformer.ops.lsh_dropout.DropoutReplay``).
        blocks_per_piece: query blocks per kernel call.
    """

    layout: LSHLayout
    rows: PieceRows
    kernel: BlockKernel
    scale: float
    dropout_p: float
    blocks_per_piece: int

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        round_index: int,
        dropout_mask: torch.Tensor | None,
        buffers: dict[str, torch.Tensor],
        mask_scratch: dict[str, torch.Tensor],
        keep_for_backward: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Attention of one round's query blocks on their key views.

        Returns the round's outputs, slot-major (G * bs * Q, dv) rows in ``buffers["out_round"]``, its
        log-sum-exp (G, Q, bs) in ``buffers["lse_round"]`` (-inf for a query with no key in view), and, when
        ``keep_for_backward`` and the round's mask is not one pattern, the round's (G, Q, bs, K) bool mask for
        the backward pass, which would otherwise compare block numbers again.
        """
        layout, kernel = self.layout, self.kernel
        groups, _, n_blocks, bucket_size = layout.query_ids.shape
        n_keys, value_dim = layout.key_ids.shape[3], v.shape[-1]
        acc = torch.promote_types(q.dtype, torch.float32)
        # A round's mask is either one (bs, K) pattern that every block repeats, as the layout says, or
        # built a piece at a time, and then kept whole for the backward pass.
        pattern = layout.keep_pattern(round_index)
        round_keep = None
        if keep_for_backward and layout.needs_mask and pattern is None:
            round_keep = torch.empty(groups, n_blocks, bucket_size, n_keys, dtype=torch.bool, device=q.device)
        # The round's outputs, slot-major like the blocks; the kernels fill them a piece at a time.
        if "out_round" not in buffers:
            buffers["out_round"] = q.new_empty(groups, bucket_size, n_blocks, value_dim)
            buffers["lse_round"] = q.new_empty(groups, n_blocks, bucket_size, dtype=acc)
        out_blocks = buffers["out_round"].transpose(1, 2)
        lse_blocks = buffers["lse_round"]
        for blocks in pieces(n_blocks, self.blocks_per_piece):
            keep = piece_keep(layout, round_index, blocks, pattern, scratch=mask_scratch)
            if round_keep is not None:
                round_keep[:, blocks] = keep
            query_rows = self.rows("query", round_index, blocks)
            k_blocks, v_blocks = key_views(
                k, v, self.rows, round_index, blocks, buffers, kernel.takes_overlapping_keys
            )
            piece_out, piece_lse = block_forward(
                kernel,
                gather_rows(q, query_rows, bucket_size, buffers, "q"),
                k_blocks,
                v_blocks,
                logit_bias(keep, pattern, q.dtype, buffers),
                self.scale,
                None if dropout_mask is None else dropout_mask[:, blocks],
                self.dropout_p,
            )
            if keep is not None:
                # Kernels disagree on rows with no key in view (lse 0 or -inf): make it -inf. (A max over
                # bytes: bool any() is not vectorised on CPU.)
                attends_none = (keep if pattern is None else pattern).view(torch.uint8).amax(dim=-1) == 0
                piece_lse = piece_lse.masked_fill(attends_none, float("-inf"))
                if not kernel.zeroes_empty_rows:
                    # The merge weighs such a row by 0, which keeps 0 but not NaN.
                    piece_out = piece_out.masked_fill(attends_none[..., None], 0.0)
            out_blocks[:, blocks] = piece_out
            lse_blocks[:, blocks] = piece_lse
        return buffers["out_round"].reshape(-1, value_dim), lse_blocks, round_keep

    def backward(
        self,
        round_index: int,
        dropout_mask: torch.Tensor | None,
        round_keep: torch.Tensor | None,
        inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        merged: tuple[torch.Tensor, torch.Tensor],
        grad_out: torch.Tensor,
        no_key_rows: torch.Tensor,
        grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        buffers: dict[str, torch.Tensor],
    ) -> None:
        """Add one round's share of the gradients into ``grads`` (G * N, d) rows of q, k and v.

        ``inputs`` are q, k, v (G, N, d); ``merged`` the merged output (G, N, dv) and log-sum-exp (G, N);
        ``no_key_rows`` (G * N,) bool marks tokens with no key in any round.
        """
        layout, kernel, rows = self.layout, self.kernel, self.rows
        q, k, v = inputs
        out, merged_lse = merged
        grad_q, grad_k, grad_v = grads
        seq_len = q.shape[1]
        bucket_size = layout.query_ids.shape[3]
        bits_dtype = _MINUS_INF_BITS[q.dtype][0]  # the integer type of q's width
        pattern = layout.keep_pattern(round_index)
        for blocks in pieces(layout.query_ids.shape[2], self.blocks_per_piece):
            keep = piece_keep(layout, round_index, blocks, pattern, round_keep=round_keep)
            query_rows, key_rows = rows("query", round_index, blocks), rows("key", round_index, blocks)
            q_blocks = gather_rows(q, query_rows, bucket_size, buffers, "q")
            k_blocks, v_blocks = key_views(
                k, v, rows, round_index, blocks, buffers, kernel.takes_overlapping_keys
            )
            grad_blocks = gather_rows(grad_out, query_rows, bucket_size, buffers, "grad")
            # Rows of tokens with no key get no gradient through attention (with shared QK they return their
            # own value instead); empty query slots read token 0's gradient. Zeroing both keeps their rows of
            # every gradient exactly 0, whatever grad_out holds there (NaN included): the rows' bits are
            # and-ed with 0, the others' with all ones (masked_fill_ would broadcast the mask over the row).
            silent = no_key_rows.index_select(0, query_rows).view(grad_blocks.shape[0], bucket_size, -1)
            silent = silent.transpose(1, 2)
            if layout.empty_query_slots:
                silent = silent | (layout.query_ids[:, round_index, blocks] >= seq_len)
            row_bits = silent.to(bits_dtype).sub_(1)[..., None]
            grad_blocks.view(bits_dtype).bitwise_and_(row_bits)
            out_blocks = gather_rows(out, query_rows, bucket_size, buffers, "out")
            # (From the flat vector: index_select of one-value rows is slower.)
            lse_blocks = merged_lse.reshape(-1).index_select(0, query_rows)
            lse_blocks = lse_blocks.view(grad_blocks.shape[0], bucket_size, -1).transpose(1, 2)
            grad_q_blocks, grad_k_blocks, grad_v_blocks = block_backward(
                kernel,
                grad_blocks,
                q_blocks,
                k_blocks,
                v_blocks,
                out_blocks,
                lse_blocks,
                logit_bias(keep, pattern, q.dtype, buffers),
                self.scale,
                None if dropout_mask is None else dropout_mask[:, blocks],
                self.dropout_p,
            )
            add_rows(grad_q, query_rows, grad_q_blocks)
            add_rows(grad_k, key_rows, grad_k_blocks)
            add_rows(grad_v, key_rows, grad_v_blocks)
            del grad_q_blocks, grad_k_blocks, grad_v_blocks
