"""LSH attention's autograd function: per-round block attention, merge, and the backward pass.

Rounds run one after another and are merged online (``chunkformer.ops.lsh_merge.RoundMerge``); each
round's pair masks are built a piece at a time in the forward pass and kept for the backward pass, which
loops over rounds and pieces the same way. Nothing of size N x N exists at any point; the largest buffers
hold N x n_hashes x 2 x bucket_size values.
"""

from __future__ import annotations

import torch

from chunkformer.ops.block_attention import BlockKernel, kernel_width
from chunkformer.ops.lsh import LSHLayout
from chunkformer.ops.lsh_dropout import DropoutReplay
from chunkformer.ops.lsh_merge import RoundMerge
from chunkformer.ops.lsh_pieces import PieceRows, default_blocks_per_piece, rows_per_piece
from chunkformer.ops.lsh_rounds import BlockRounds
from chunkformer.ops.lsh_shared_qk import add_fallback_gradient, fold_key_gradient, self_fallback, unit_keys

__all__ = ["LSHAttentionFunction"]


class LSHAttentionFunction(torch.autograd.Function):
    """Attention of q on k, v over the pairs ``layout`` puts in view, rounds merged by log-sum-exp.

    Arguments of ``forward``: q, k (None under shared QK: the keys are the unit-normalised queries), v,
    layout, valid (real-token flags or None), scale, shared_qk, dropout (``DropoutReplay``), kernel,
    blocks_per_piece (None: sized to the device).

    Shape:
        - q, k: (G, N, d)
        - v: (G, N, dv)
        - valid: (G, N) bool
        - output: (G, N, dv)
    """

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
        dropout: DropoutReplay,
        kernel: BlockKernel,
        blocks_per_piece: int | None,
    ) -> torch.Tensor:
        groups, seq_len, _ = q.shape
        query_norm = None
        if shared_qk:
            k, query_norm = unit_keys(q)
        assert k is not None
        acc = torch.promote_types(q.dtype, torch.float32)
        if blocks_per_piece is None:
            n_keys = layout.key_ids.shape[3]
            width = kernel_width(q, v)
            blocks_per_piece = default_blocks_per_piece(
                groups, n_keys, width, q.element_size(), q.device.type
            )
        rounds = BlockRounds(layout, PieceRows(layout, seq_len), kernel, scale, dropout.p, blocks_per_piece)
        merge_rows = rows_per_piece(v.shape[-1], q.element_size(), q.device.type)
        merge = RoundMerge(layout, seq_len, v.shape[-1], acc, merge_rows)
        buffers: dict[str, torch.Tensor] = {}
        mask_scratch: dict[str, torch.Tensor] = {}
        keep_for_backward = any(ctx.needs_input_grad[:3])
        keeps: list[torch.Tensor | None] = []
        for round_index, dropout_mask in enumerate(dropout.round_masks(layout)):
            out_rows, lse_blocks, round_keep = rounds.attend(
                q, k, v, round_index, dropout_mask, buffers, mask_scratch, keep_for_backward
            )
            keeps.append(round_keep)
            merge.add(round_index, out_rows, lse_blocks, buffers)
            # Drop this round's temporaries before the next round allocates its own.
            del dropout_mask, out_rows, lse_blocks, round_keep
        mask_scratch.clear()
        buffers.clear()

        out, merged_lse, no_key = merge.result()
        fallback = None
        if shared_qk:
            fallback = self_fallback(no_key, valid)
            out = torch.where(fallback[..., None], v, out, out=out)
        out = out.to(v.dtype)

        ctx.save_for_backward(q, k, v, out, merged_lse, no_key, fallback, query_norm)
        ctx.rounds = rounds
        ctx.keeps = keeps
        ctx.dropout = dropout
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        q, k, v, out, merged_lse, no_key, fallback, query_norm = ctx.saved_tensors
        rounds: BlockRounds = ctx.rounds
        dropout: DropoutReplay = ctx.dropout
        groups, seq_len, _ = q.shape
        # Gradient rows are gathered from grad_out as it is, through one (G * N, dv) view (a copy only when it
        # has none; an expanded one, as from a sum, stays a view), and the rows of tokens with no key are
        # zeroed a piece at a time: no full-size masked copy.
        grad_rows = grad_out.to(q.dtype).reshape(-1, grad_out.shape[-1])
        grad_out = grad_rows.view(groups, seq_len, -1)
        acc = torch.promote_types(q.dtype, torch.float32)
        grad_q = q.new_zeros(groups * seq_len, q.shape[-1], dtype=acc)
        grad_k = k.new_zeros(groups * seq_len, k.shape[-1], dtype=acc)
        grad_v = v.new_zeros(groups * seq_len, v.shape[-1], dtype=acc)
        buffers: dict[str, torch.Tensor] = {}
        for round_index, dropout_mask in enumerate(dropout.round_masks(rounds.layout)):
            rounds.backward(
                round_index,
                dropout_mask,
                ctx.keeps[round_index],
                (q, k, v),
                (out, merged_lse),
                grad_out,
                no_key.reshape(-1),
                (grad_q, grad_k, grad_v),
                buffers,
            )
            del dropout_mask
        if fallback is not None:
            add_fallback_gradient(grad_v, grad_rows, fallback)
        grad_q = grad_q.reshape(q.shape)
        grad_k = grad_k.reshape(k.shape)
        grad_v = grad_v.reshape(v.shape)
        if query_norm is not None:
            grad_q = fold_key_gradient(grad_q, grad_k, k, query_norm, q.dtype)
            return (grad_q.to(q.dtype), None, grad_v.to(v.dtype)) + (None,) * 7
        return (grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)) + (None,) * 7
