"""One pass of LSH attention on a given kernel: hash the tokens, lay out the rounds, attend and merge.

``chunkformer.ops.lsh_attention`` checks its inputs, picks the kernel (``chunkformer.ops.lsh_auto``) and
calls ``run_pass``; the Triton kernels' self-check calls it too, with each kernel in turn.
"""

from __future__ import annotations

import math

import torch

from chunkformer.ops.block_attention import BlockKernel
from chunkformer.ops.lsh import (
    LSHLayout,
    bucket_aligned_layout,
    hash_buckets,
    random_rotations,
    sorted_layout,
)
from chunkformer.ops.lsh_autograd import LSHAttentionFunction
from chunkformer.ops.lsh_dropout import DropoutReplay

__all__ = ["hash_rounds", "lay_out", "run_pass"]


def hash_rounds(
    q: torch.Tensor,
    k: torch.Tensor | None,
    n_hashes: int,
    n_buckets: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets (G, R, N) of the queries and keys (the same tensor when k is None: shared QK), one random
    rotation per round shared by both."""
    rotations = random_rotations(q.shape[-1], n_hashes, n_buckets, generator, q.device)
    query_buckets = hash_buckets(q, rotations, n_buckets)
    key_buckets = query_buckets if k is None else hash_buckets(k, rotations, n_buckets)
    return query_buckets, key_buckets


def lay_out(
    query_buckets: torch.Tensor,
    key_buckets: torch.Tensor,
    valid: torch.Tensor | None,
    bucket_size: int,
    n_buckets: int,
    is_causal: bool,
    shared_qk: bool,
) -> LSHLayout:
    """The bucket-aligned layout when causal (a token's slot depends only on earlier tokens), else sorted."""
    build = bucket_aligned_layout if is_causal else sorted_layout
    return build(query_buckets, key_buckets, valid, bucket_size, n_buckets, shared_qk)


def run_pass(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    kernel: BlockKernel,
    *,
    bucket_size: int,
    n_hashes: int,
    n_buckets: int,
    is_causal: bool,
    shared_qk: bool,
    key_padding_mask: torch.Tensor | None,
    generator: torch.Generator,
    dropout_p: float,
    blocks_per_piece: int | None,
) -> torch.Tensor:
    """LSH attention of checked inputs on ``kernel`` (a record of ``chunkformer.ops.block_attention``):
    the Triton kernels for a record that reads rows in place, else the block path. Arguments as
    ``chunkformer.ops.lsh_attention`` takes them, with ``n_buckets`` and ``generator`` given.

    Shape:
        - q, k: (B, H, N, d)
        - v: (B, H, N, dv)
        - key_padding_mask: (B, N)
        - output: (B, H, N, dv)
    """
    batch, heads, seq_len, head_dim = q.shape
    groups = batch * heads
    q_flat = q.reshape(groups, seq_len, head_dim)
    k_flat = None if shared_qk else k.reshape(groups, seq_len, head_dim)
    v_flat = v.reshape(groups, seq_len, v.shape[-1])
    valid = None if key_padding_mask is None else (~key_padding_mask).repeat_interleave(heads, dim=0)

    with torch.no_grad():
        query_buckets, key_buckets = hash_rounds(q_flat, k_flat, n_hashes, n_buckets, generator)
        layout = lay_out(query_buckets, key_buckets, valid, bucket_size, n_buckets, is_causal, shared_qk)
        dropout = DropoutReplay.record(generator, dropout_p, layout)

    scale = 1.0 / math.sqrt(head_dim)
    if kernel.reads_rows_in_place:
        out = _triton_pass(q_flat, k_flat, v_flat, layout, valid, scale, shared_qk)
    else:
        out = LSHAttentionFunction.apply(
            q_flat, k_flat, v_flat, layout, valid, scale, shared_qk, dropout, kernel, blocks_per_piece
        )
    return out.reshape(batch, heads, seq_len, v.shape[-1])


# Dynamo cannot trace the kernels' launches (through the interpreter it fails inside Triton): under
# torch.compile the Triton path runs eagerly between graphs, a graph break that fullgraph=True refuses.
@torch.compiler.disable(reason="the Triton LSH kernels are launched from Python; they run eagerly")
def _triton_pass(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    layout: LSHLayout,
    valid: torch.Tensor | None,
    scale: float,
    shared_qk: bool,
) -> torch.Tensor:
    # Imported here: the Triton path's modules are only needed where it runs.
    from chunkformer.ops.lsh_triton import TritonLSHFunction

    return TritonLSHFunction.apply(q, k, v, layout, valid, scale, shared_qk)
