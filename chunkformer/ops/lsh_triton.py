"""LSH attention on the fused Triton kernels (backend ``"triton"``): the autograd function and the tables the
kernels read.

Where the block path (``chunkformer.ops.lsh_autograd``) gathers every piece's query, key and value rows
into blocks, builds the pair masks in torch and calls a block kernel, the Triton kernels
(``chunkformer.ops.lsh_triton_kernels``) take the unsorted q, k, v and each round's token ids per slot,
read the rows in place, and build the masks themselves from per-token tables: one launch per round, grid
(query blocks, batch x heads). Each round writes its output and log-sum-exp in token order, and
``chunkformer.ops.lsh_merge.RoundMerge`` merges the rounds as on the block path, without a gather.

The backward pass recomputes each round from the merged output and log-sum-exp. Query gradients are added
in place at each round's query rows (a token has one query slot per round and rounds run one after
another: no races). Key and value gradients are added with float32 atomics; when
``torch.are_deterministic_algorithms_enabled()``, each round's are stored per key slot instead and added into
token rows with one ``index_add_``, deterministic under that setting.

Tested through Triton's interpreter on CPU (``TRITON_INTERPRET=1``), not yet on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import torch

from chunkformer.ops.lsh import BucketAlignedLayout, LSHLayout, SortedLayout
from chunkformer.ops.lsh_merge import RoundMerge
from chunkformer.ops.lsh_pieces import rows_per_piece, token_rows
from chunkformer.ops.lsh_shared_qk import add_fallback_gradient, fold_key_gradient, self_fallback, unit_keys
from chunkformer.ops.triton_support import INTERPRET_VAR, interpreting

__all__ = ["KernelTables", "TritonLSHFunction", "kernel_tables", "triton_rounds"]

# tl.dot needs every dimension of a tile to be at least 16 and tl.arange a power of two.
_MIN_TILE = 16
# Warps per backward program. With Triton's default 4, ptxas spills registers on sm_90 (bf16, bucket 49:
# head 16, 72 bytes per thread stored and loaded; head 64, 808), with 8 none (185 and 250 registers); the
# forward keeps 4 (168 registers, no spills). Checked in tests/ops/test_lsh_triton_compiles.py.
_BACKWARD_WARPS = 8


@dataclass(frozen=True)
class KernelTables:
    """What the Triton kernels read besides q, k and v: token ids per slot and per-token integers that say
    which pairs each round has in view.

    Attributes:
        query_ids: (G, R, Q, bs) int32, the token in each query slot (N for an empty one).
        key_ids: (G, R, Q, K) int32, the token in each key slot of each query block's view.
        key_table, query_table, previous_table: (G, R, N + 1). Bucket-aligned layout: the key codes and the
            queries' highest visible codes (``previous_table`` unused); sorted layout: the key blocks, query
            blocks and the blocks before them.
        real: (G, N + 1) int32 real-token flags (read by the sorted layout only).
        causal: whether the tables are the bucket-aligned layout's.
    """

    query_ids: torch.Tensor
    key_ids: torch.Tensor
    key_table: torch.Tensor
    query_table: torch.Tensor
    previous_table: torch.Tensor
    real: torch.Tensor
    causal: bool


def kernel_tables(layout: LSHLayout) -> KernelTables:
    """The tables of ``layout``, in the integer types the kernels read (int32 where the values fit).

    Raises:
        TypeError: for a layout whose masks the kernels do not know how to build.
    """
    ids = (layout.query_ids.to(torch.int32).contiguous(), layout.key_ids.to(torch.int32).contiguous())
    if isinstance(layout, BucketAlignedLayout):
        # Codes are int64 when their differences would overflow int32; the kernel subtracts them as they are.
        codes, highs = layout.key_code.contiguous(), layout.query_high.contiguous()
        return KernelTables(*ids, codes, highs, highs, codes[:, 0], causal=True)
    if isinstance(layout, SortedLayout):
        blocks = (layout.key_block, layout.query_block, layout.query_previous_block)
        key_block, query_block, previous_block = (table.to(torch.int32).contiguous() for table in blocks)
        real = layout.real_flags.to(torch.int32).contiguous()
        return KernelTables(*ids, key_block, query_block, previous_block, real, causal=False)
    raise TypeError(
        f"the Triton LSH kernels take a SortedLayout or BucketAlignedLayout, got {type(layout).__name__}"
    )


def _kernels(device: torch.device) -> ModuleType:
    """The kernels' module, imported on first use (it imports Triton and decorates the kernels, which reads
    ``TRITON_INTERPRET``)."""
    from chunkformer.ops import lsh_triton_kernels

    if device.type == "cpu" and not lsh_triton_kernels.INTERPRETED:
        raise RuntimeError(
            "the Triton LSH kernels were decorated for a GPU and cannot run on CPU tensors: set "
            f"{INTERPRET_VAR}=1 before anything imports triton"
        )
    return lsh_triton_kernels


def _tile(size: int) -> int:
    return max(_MIN_TILE, 1 << math.ceil(math.log2(max(size, 1))))


def _constants(layout: LSHLayout, q: torch.Tensor, v: torch.Tensor, shared_qk: bool) -> dict[str, object]:
    """The kernels' compile-time constants for these inputs."""
    bucket_size, n_keys = layout.query_ids.shape[3], layout.key_ids.shape[3]
    return {
        "BUCKET": bucket_size,
        "KEY_TILES": n_keys // bucket_size,
        "BLOCK": _tile(bucket_size),
        "HEAD": _tile(q.shape[-1]),
        "VALUE": _tile(v.shape[-1]),
        "CAUSAL": isinstance(layout, BucketAlignedLayout),
        "SHARED_QK": shared_qk,
        # fp32 operands (ieee) for fp32 inputs everywhere and for every input in the interpreter, whose bf16
        # tl.dot is wrong; fp16 / bf16 operands with fp32 accumulation on a GPU.
        "DOT_FP32": q.dtype == torch.float32 or interpreting(),
    }


def triton_rounds(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: LSHLayout,
    tables: KernelTables,
    scale: float,
    shared_qk: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each used round's log-sum-exp and output in token order, one kernel launch per round, as
    ``chunkformer.ops.lsh_merge.RoundMerge.add_token_rows`` takes them; -inf and zeros for a token with
    nothing in view (or no slot) in the round. The tensors are reused: each is valid until the next round.

    Shape:
        - q, k: (G, N, d) contiguous (k the unit keys under shared QK)
        - v: (G, N, dv) contiguous
        - output: lse (G, N) float32, out (G, N, dv) float32
    """
    kernels = _kernels(q.device)
    groups, seq_len, head_dim = q.shape
    value_dim = v.shape[-1]
    constants = _constants(layout, q, v, shared_qk)
    n_rounds, n_blocks = layout.query_ids.shape[1:3]
    out_round = torch.empty(groups, seq_len, value_dim, dtype=torch.float32, device=q.device)
    lse_round = torch.empty(groups, seq_len, dtype=torch.float32, device=q.device)
    for round_index in range(layout.rounds_used):
        # Tokens without a query slot (or a key) in this round keep these.
        out_round.zero_()
        lse_round.fill_(float("-inf"))
        kernels.lsh_round_forward[(n_blocks, groups)](
            q,
            k,
            v,
            tables.query_ids,
            tables.key_ids,
            tables.key_table,
            tables.query_table,
            tables.previous_table,
            tables.real,
            out_round,
            lse_round,
            round_index,
            n_rounds,
            n_blocks,
            seq_len,
            head_dim,
            value_dim,
            scale,
            **constants,
        )
        yield lse_round, out_round


class TritonLSHFunction(torch.autograd.Function):
    """Attention of q on k, v over the pairs ``layout`` puts in view, on the Triton kernels; the same result
    as ``chunkformer.ops.lsh_autograd.LSHAttentionFunction`` without dropout.

    Arguments of ``forward``: q, k (None under shared QK: the keys are the unit-normalised queries), v,
    layout, valid (real-token flags or None), scale, shared_qk.

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
    ) -> torch.Tensor:
        groups, seq_len, _ = q.shape
        value_dim = v.shape[-1]
        q, v = q.contiguous(), v.contiguous()
        query_norm = None
        if shared_qk:
            k, query_norm = unit_keys(q)
        assert k is not None
        k = k.contiguous()
        tables = kernel_tables(layout)
        merge = RoundMerge(
            layout, seq_len, value_dim, torch.float32, rows_per_piece(value_dim, 4, q.device.type)
        )
        for lse_round, out_round in triton_rounds(q, k, v, layout, tables, scale, shared_qk):
            merge.add_token_rows(lse_round, out_round.view(-1, value_dim))

        out, merged_lse, no_key = merge.result()
        fallback = None
        if shared_qk:
            fallback = self_fallback(no_key, valid)
            out = torch.where(fallback[..., None], v, out, out=out)
        out = out.to(v.dtype).contiguous()
        ctx.save_for_backward(q, k, v, out, merged_lse, no_key, fallback, query_norm)
        ctx.layout, ctx.tables, ctx.scale, ctx.shared_qk = layout, tables, scale, shared_qk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        q, k, v, out, merged_lse, no_key, fallback, query_norm = ctx.saved_tensors
        layout: LSHLayout = ctx.layout
        tables: KernelTables = ctx.tables
        kernels = _kernels(q.device)
        groups, seq_len, head_dim = q.shape
        value_dim = v.shape[-1]
        n_rounds, n_blocks, _ = layout.query_ids.shape[1:]
        n_keys = layout.key_ids.shape[3]
        grad = grad_out.to(q.dtype).contiguous()
        grad_q = torch.zeros(groups, seq_len, head_dim, dtype=torch.float32, device=q.device)
        grad_k = torch.zeros_like(grad_q)
        grad_v = torch.zeros(groups, seq_len, value_dim, dtype=torch.float32, device=q.device)
        silent = no_key.to(torch.uint8)
        deterministic = torch.are_deterministic_algorithms_enabled()
        if deterministic:
            # Per key slot of one round, added into token rows after the round.
            key_slots = torch.empty(groups, n_blocks, n_keys, head_dim, dtype=torch.float32, device=q.device)
            value_slots = torch.empty(
                groups, n_blocks, n_keys, value_dim, dtype=torch.float32, device=q.device
            )
        for round_index in range(layout.rounds_used):
            kernels.lsh_round_backward[(n_blocks, groups)](
                q,
                k,
                v,
                out,
                grad,
                merged_lse,
                silent,
                tables.query_ids,
                tables.key_ids,
                tables.key_table,
                tables.query_table,
                tables.previous_table,
                tables.real,
                grad_q,
                key_slots if deterministic else grad_k,
                value_slots if deterministic else grad_v,
                round_index,
                n_rounds,
                n_blocks,
                seq_len,
                head_dim,
                value_dim,
                ctx.scale,
                DETERMINISTIC=deterministic,
                num_warps=_BACKWARD_WARPS,
                **_constants(layout, q, v, ctx.shared_qk),
            )
            if deterministic:
                rows = token_rows(layout.key_ids[:, round_index], seq_len).reshape(-1)
                grad_k.view(-1, head_dim).index_add_(0, rows, key_slots.view(-1, head_dim))
                grad_v.view(-1, value_dim).index_add_(0, rows, value_slots.view(-1, value_dim))
        if fallback is not None:
            add_fallback_gradient(grad_v.view(-1, value_dim), grad.view(-1, value_dim), fallback)
        if query_norm is not None:
            grad_q = fold_key_gradient(grad_q, grad_k, k, query_norm, q.dtype)
            return (grad_q.to(q.dtype), None, grad_v.to(v.dtype)) + (None,) * 4
        return (grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)) + (None,) * 4
