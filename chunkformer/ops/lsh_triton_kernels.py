"""The Triton kernels of LSH attention: one hash round's block attention, forward and backward, reading the
unsorted rows of q, k, v in place through the layout's token ids and building every mask from per-token
tables.

Imported only by ``chunkformer.ops.lsh_triton``, when the ``"triton"`` backend runs; it imports Triton.
``TRITON_INTERPRET=1`` must be set before this module is imported to run the kernels on CPU tensors.

Grid: one program per (query block, batch x head) of a round. A program holds its ``bucket_size`` query rows
(padded to ``BLOCK``, a power of two of at least 16, as ``tl.dot`` needs) and walks its key view, one or two
key blocks (``KEY_TILES``), with an online softmax. The mask of a (query, key) pair, from the token ids in
the slots and the tables, is the one ``chunkformer.ops.lsh.LSHLayout.keep`` builds:

* bucket-aligned layout (``CAUSAL``): in view in round e when 0 <= high_e[query] - code_e[key] < bucket_size
  (``key_code`` / ``query_high``); this holds causality, buckets, padding and keys from other buckets;
* sorted layout: both tokens real (``real``); in view in round e when key_block_e[key] is
  query_block_e[query] or query_previous_block_e[query];
* under shared QK, a query never meets its own token;
* first round wins: a pair in view in an earlier round e < r is masked in round r.
"""

from __future__ import annotations

import triton
import triton.language as tl

from chunkformer.ops.triton_support import interpreter_ready, interpreting

__all__ = ["INTERPRETED", "lsh_round_backward", "lsh_round_forward"]

INTERPRETED = interpreting() and interpreter_ready()
"""Whether the kernels below, and Triton's own library, were decorated for Triton's interpreter (CPU
tensors) rather than for a GPU."""


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    # In the interpreter a bf16 dot multiplies the bit patterns (triton issue 11584): cast to fp32 first.
    # On a GPU fp32 operands would otherwise run in TF32; "ieee" keeps today's fp32 results.
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _keep(
    query_tokens,
    key_tokens,
    group,
    round_index,
    n_rounds,
    seq_len,
    key_table_ptr,
    query_table_ptr,
    previous_table_ptr,
    real_ptr,
    BUCKET: tl.constexpr,
    CAUSAL: tl.constexpr,
    SHARED_QK: tl.constexpr,
):
    """(BLOCK, BLOCK) bool: the pairs of these query and key tokens that round ``round_index`` attends.
    Token ``seq_len`` (an empty slot) reads the tables' padding entry, which no pair has in view."""
    width = seq_len + 1
    tables = group * n_rounds * width
    row = tables + round_index * width
    if CAUSAL:
        gap = (
            tl.load(query_table_ptr + row + query_tokens)[:, None]
            - tl.load(key_table_ptr + row + key_tokens)[None, :]
        )
        keep = (gap >= 0) & (gap < BUCKET)
    else:
        query_real = tl.load(real_ptr + group * width + query_tokens) != 0
        key_real = tl.load(real_ptr + group * width + key_tokens) != 0
        keep = query_real[:, None] & key_real[None, :]
    if SHARED_QK:
        keep = keep & (query_tokens[:, None] != key_tokens[None, :])
    for earlier in range(round_index):
        row = tables + earlier * width
        if CAUSAL:
            gap = (
                tl.load(query_table_ptr + row + query_tokens)[:, None]
                - tl.load(key_table_ptr + row + key_tokens)[None, :]
            )
            keep = keep & ((gap < 0) | (gap >= BUCKET))
        else:
            key_block = tl.load(key_table_ptr + row + key_tokens)[None, :]
            keep = keep & (key_block != tl.load(query_table_ptr + row + query_tokens)[:, None])
            keep = keep & (key_block != tl.load(previous_table_ptr + row + query_tokens)[:, None])
    return keep


@triton.jit
def lsh_round_forward(
    q_ptr,
    k_ptr,
    v_ptr,
    query_ids_ptr,
    key_ids_ptr,
    key_table_ptr,
    query_table_ptr,
    previous_table_ptr,
    real_ptr,
    out_ptr,
    lse_ptr,
    round_index,
    n_rounds,
    n_blocks,
    seq_len,
    head_dim,
    value_dim,
    scale,
    BUCKET: tl.constexpr,
    KEY_TILES: tl.constexpr,
    BLOCK: tl.constexpr,
    HEAD: tl.constexpr,
    VALUE: tl.constexpr,
    CAUSAL: tl.constexpr,
    SHARED_QK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One round's attention of one query block: output rows (fp32) and log-sum-exp, stored at the query
    tokens' rows in token order (-inf and zeros stay where nothing is in view).

    Shapes: q, k (G, N, d) and v (G, N, dv) contiguous; query_ids (G, R, Q, bs) and key_ids
    (G, R, Q, KEY_TILES * bs) int32 (N for an empty slot); tables (G, R, N + 1), real (G, N + 1);
    out (G, N, dv) and lse (G, N) float32.
    """
    block = tl.program_id(0)
    # int64 from here on: row offsets (group * seq_len + token) * head_dim pass 2**31 in large calls.
    group = tl.program_id(1).to(tl.int64)
    slots = tl.arange(0, BLOCK)
    in_block = slots < BUCKET
    view = (group * n_rounds + round_index) * n_blocks + block
    query_tokens = tl.load(query_ids_ptr + view * BUCKET + slots, mask=in_block, other=seq_len)
    query_real = query_tokens < seq_len
    dims = tl.arange(0, HEAD)
    value_dims = tl.arange(0, VALUE)
    query_rows = group * seq_len + query_tokens
    q = tl.load(
        q_ptr + query_rows[:, None] * head_dim + dims[None, :],
        mask=query_real[:, None] & (dims < head_dim)[None, :],
        other=0.0,
    )
    row_max = tl.full((BLOCK,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK,), tl.float32)
    acc = tl.zeros((BLOCK, VALUE), tl.float32)
    for tile in tl.static_range(KEY_TILES):
        key_tokens = tl.load(
            key_ids_ptr + view * (KEY_TILES * BUCKET) + tile * BUCKET + slots, mask=in_block, other=seq_len
        )
        key_real = key_tokens < seq_len
        key_rows = group * seq_len + key_tokens
        k = tl.load(
            k_ptr + key_rows[:, None] * head_dim + dims[None, :],
            mask=key_real[:, None] & (dims < head_dim)[None, :],
            other=0.0,
        )
        v = tl.load(
            v_ptr + key_rows[:, None] * value_dim + value_dims[None, :],
            mask=key_real[:, None] & (value_dims < value_dim)[None, :],
            other=0.0,
        )
        keep = _keep(
            query_tokens,
            key_tokens,
            group,
            round_index,
            n_rounds,
            seq_len,
            key_table_ptr,
            query_table_ptr,
            previous_table_ptr,
            real_ptr,
            BUCKET,
            CAUSAL,
            SHARED_QK,
        )
        logits = tl.where(keep, _dot(q, tl.trans(k), DOT_FP32) * scale, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        # A row with nothing in view so far keeps max -inf; subtract 0 there so exp gives 0, not NaN.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        weights = tl.exp(logits - safe_max[:, None])
        rescale = tl.exp(row_max - safe_max)
        row_sum = row_sum * rescale + tl.sum(weights, 1)
        if DOT_FP32:
            acc = acc * rescale[:, None] + _dot(weights, v, DOT_FP32)
        else:
            acc = acc * rescale[:, None] + _dot(weights.to(v.dtype), v, DOT_FP32)
        row_max = new_max
    attends = row_sum > 0
    out = acc / tl.where(attends, row_sum, 1.0)[:, None]
    lse = tl.where(attends, row_max + tl.log(tl.where(attends, row_sum, 1.0)), float("-inf"))
    tl.store(
        out_ptr + query_rows[:, None] * value_dim + value_dims[None, :],
        out,
        mask=query_real[:, None] & (value_dims < value_dim)[None, :],
    )
    tl.store(lse_ptr + query_rows, lse, mask=query_real)


@triton.jit
def lsh_round_backward(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    grad_ptr,
    lse_ptr,
    silent_ptr,
    query_ids_ptr,
    key_ids_ptr,
    key_table_ptr,
    query_table_ptr,
    previous_table_ptr,
    real_ptr,
    grad_q_ptr,
    grad_k_ptr,
    grad_v_ptr,
    round_index,
    n_rounds,
    n_blocks,
    seq_len,
    head_dim,
    value_dim,
    scale,
    BUCKET: tl.constexpr,
    KEY_TILES: tl.constexpr,
    BLOCK: tl.constexpr,
    HEAD: tl.constexpr,
    VALUE: tl.constexpr,
    CAUSAL: tl.constexpr,
    SHARED_QK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    """One round's share of the gradients for one query block, from the MERGED output and log-sum-exp (the
    weights are exp(logit - merged lse), each round's share of the exact gradient).

    grad_q (G, N, d) float32 is read, added to and written at the block's query rows: a token has at most
    one query slot per round, and rounds run one launch after another, so no two programs touch a row.
    Key and value gradients: with ``DETERMINISTIC`` False, added with ``tl.atomic_add`` into (G, N, d)
    float32 rows; with it True, stored per key slot into (G, Q, KEY_TILES * bs, d) float32 buffers that the
    caller adds into token rows with one ``index_add_`` (deterministic under
    ``torch.use_deterministic_algorithms``). ``silent`` (G, N) marks tokens with no key in any round: their
    incoming gradient counts as 0, whatever it holds (NaN included).
    """
    block = tl.program_id(0)
    # int64 from here on: row offsets (group * seq_len + token) * head_dim pass 2**31 in large calls.
    group = tl.program_id(1).to(tl.int64)
    slots = tl.arange(0, BLOCK)
    in_block = slots < BUCKET
    view = (group * n_rounds + round_index) * n_blocks + block
    query_tokens = tl.load(query_ids_ptr + view * BUCKET + slots, mask=in_block, other=seq_len)
    query_real = query_tokens < seq_len
    dims = tl.arange(0, HEAD)
    value_dims = tl.arange(0, VALUE)
    query_rows = group * seq_len + query_tokens
    head_mask = query_real[:, None] & (dims < head_dim)[None, :]
    q = tl.load(q_ptr + query_rows[:, None] * head_dim + dims[None, :], mask=head_mask, other=0.0)
    silent = tl.load(silent_ptr + query_rows, mask=query_real, other=1) != 0
    live = query_real & ~silent
    live_values = live[:, None] & (value_dims < value_dim)[None, :]
    grad = tl.load(
        grad_ptr + query_rows[:, None] * value_dim + value_dims[None, :], mask=live_values, other=0.0
    )
    out = tl.load(
        out_ptr + query_rows[:, None] * value_dim + value_dims[None, :], mask=live_values, other=0.0
    )
    delta = tl.sum(grad.to(tl.float32) * out.to(tl.float32), 1)
    lse = tl.load(lse_ptr + query_rows, mask=query_real, other=0.0)
    grad_q = tl.zeros((BLOCK, HEAD), tl.float32)
    for tile in tl.static_range(KEY_TILES):
        key_slots = view * (KEY_TILES * BUCKET) + tile * BUCKET + slots
        key_tokens = tl.load(key_ids_ptr + key_slots, mask=in_block, other=seq_len)
        key_real = key_tokens < seq_len
        key_rows = group * seq_len + key_tokens
        key_head_mask = key_real[:, None] & (dims < head_dim)[None, :]
        key_value_mask = key_real[:, None] & (value_dims < value_dim)[None, :]
        k = tl.load(k_ptr + key_rows[:, None] * head_dim + dims[None, :], mask=key_head_mask, other=0.0)
        v = tl.load(
            v_ptr + key_rows[:, None] * value_dim + value_dims[None, :], mask=key_value_mask, other=0.0
        )
        keep = _keep(
            query_tokens,
            key_tokens,
            group,
            round_index,
            n_rounds,
            seq_len,
            key_table_ptr,
            query_table_ptr,
            previous_table_ptr,
            real_ptr,
            BUCKET,
            CAUSAL,
            SHARED_QK,
        )
        logits = _dot(q, tl.trans(k), DOT_FP32) * scale
        weights = tl.where(keep, tl.exp(logits - lse[:, None]), 0.0)
        grad_weights = _dot(grad, tl.trans(v), DOT_FP32)
        grad_logits = weights * (grad_weights - delta[:, None])
        if DOT_FP32:
            grad_q += _dot(grad_logits, k, DOT_FP32) * scale
            grad_k = _dot(tl.trans(grad_logits), q, DOT_FP32) * scale
            grad_v = _dot(tl.trans(weights), grad, DOT_FP32)
        else:
            grad_q += _dot(grad_logits.to(k.dtype), k, DOT_FP32) * scale
            grad_k = _dot(tl.trans(grad_logits.to(q.dtype)), q, DOT_FP32) * scale
            grad_v = _dot(tl.trans(weights.to(grad.dtype)), grad, DOT_FP32)
        if DETERMINISTIC:
            # This round's slot (group, block, key slot); every one is written (zeros for empty ones), so
            # the buffers need no clearing.
            slot_rows = ((group * n_blocks + block) * (KEY_TILES * BUCKET) + tile * BUCKET + slots)[:, None]
            tl.store(
                grad_k_ptr + slot_rows * head_dim + dims[None, :],
                tl.where(key_real[:, None], grad_k, 0.0),
                mask=in_block[:, None] & (dims < head_dim)[None, :],
            )
            tl.store(
                grad_v_ptr + slot_rows * value_dim + value_dims[None, :],
                tl.where(key_real[:, None], grad_v, 0.0),
                mask=in_block[:, None] & (value_dims < value_dim)[None, :],
            )
        else:
            # Relaxed: the sums need atomicity, not ordering (they are read after the launch). Triton's
            # default, acq_rel, orders memory around every add (PTX atom.acq_rel, against red.relaxed).
            tl.atomic_add(
                grad_k_ptr + key_rows[:, None] * head_dim + dims[None, :],
                grad_k,
                mask=key_head_mask,
                sem="relaxed",
            )
            tl.atomic_add(
                grad_v_ptr + key_rows[:, None] * value_dim + value_dims[None, :],
                grad_v,
                mask=key_value_mask,
                sem="relaxed",
            )
    grad_q_at = grad_q_ptr + query_rows[:, None] * head_dim + dims[None, :]
    tl.store(grad_q_at, tl.load(grad_q_at, mask=head_mask, other=0.0) + grad_q, mask=head_mask)
