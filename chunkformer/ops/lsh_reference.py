"""A slow, independent reference for ``chunkformer.ops.lsh_attention``, as NATTEN ships its reference
backend: the fast path is tested against it.

It shares no code with the fast path (nothing from ``chunkformer.ops.lsh`` or the LSH kernel modules):
plain Python loops over hash rounds, buckets and blocks decide which keys every query sees (the union over
rounds, as a dense N x N mask), then dense float64 softmax attention runs restricted to that mask. The
rotations are redrawn from a generator seeded like the fast path's. It takes O(N^2) memory and Python time
per head: use it on short sequences.
"""

from __future__ import annotations

import bisect
import math

import torch
import torch.nn.functional as F

__all__ = ["lsh_attention_reference", "reference_hash_margin"]


def _n_buckets(seq_len: int, bucket_size: int, n_buckets: int | None) -> int:
    if n_buckets is not None:
        return n_buckets
    return 1 if seq_len <= bucket_size else 2 * math.ceil(seq_len / (2 * bucket_size))


def _rotations(head_dim: int, n_hashes: int, n_buckets: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(head_dim, n_hashes, max(n_buckets // 2, 1), generator=generator, dtype=torch.float32)


def _hash(x: torch.Tensor, rotation: torch.Tensor, n_buckets: int) -> tuple[list[int], list[float]]:
    """Bucket of every row of x (N, d) for one round's rotation (d, n_buckets // 2), and its margin: the gap
    between the best and second-best entry of [x R, -x R], in float64 from the float32 values (the fast
    path's float32 arithmetic can only disagree where it is tiny)."""
    if n_buckets == 1:
        return [0] * x.shape[0], [math.inf] * x.shape[0]
    projected = x.detach().float().double().cpu() @ rotation.double()
    both = torch.cat([projected, -projected], dim=-1)
    top2 = both.topk(2, dim=-1).values
    return both.argmax(dim=-1).tolist(), (top2[:, 0] - top2[:, 1]).tolist()


def _seen_by_bucket(
    query_buckets: list[int],
    key_buckets: list[int],
    real: list[bool],
    bucket_size: int,
    n_buckets: int,
    seen: torch.Tensor,
) -> None:
    """Causal: each query sees the newest ``bucket_size`` keys of its bucket at positions <= its own."""
    members: dict[int, list[int]] = {b: [] for b in range(n_buckets)}
    for j, bucket in enumerate(key_buckets):
        if real[j]:
            members[bucket].append(j)
    for i, bucket in enumerate(query_buckets):
        if not real[i]:
            continue
        bucket_keys = members[bucket]
        newest = bisect.bisect_right(bucket_keys, i) - 1
        for rank in range(max(0, newest - bucket_size + 1), newest + 1):
            seen[i, bucket_keys[rank]] = True


def _seen_by_sorted_blocks(
    query_buckets: list[int],
    key_buckets: list[int] | None,
    real: list[bool],
    bucket_size: int,
    n_buckets: int,
    seen: torch.Tensor,
) -> None:
    """Non-causal: tokens sorted by (bucket, position) and cut into blocks; query block g sees key blocks g
    and g - 1, cyclically (only block 0 when there is one). ``key_buckets`` None: one sort (shared QK)."""
    seq_len = len(query_buckets)
    n_blocks = max(1, math.ceil(seq_len / bucket_size))
    padded_len = n_blocks * bucket_size

    def sort_order(buckets: list[int]) -> list[int]:
        # Padding and fill tokens go to bucket n_buckets, after every real bucket.
        keyed = [(buckets[i] if i < seq_len and real[i] else n_buckets, i) for i in range(padded_len)]
        return [i for _, i in sorted(keyed)]

    query_order = sort_order(query_buckets)
    key_order = query_order if key_buckets is None else sort_order(key_buckets)
    for block in range(n_blocks):
        queries = [i for i in query_order[block * bucket_size : (block + 1) * bucket_size] if i < seq_len]
        key_blocks = {block, (block - 1) % n_blocks} if n_blocks > 1 else {0}
        keys = [
            j
            for key_block in sorted(key_blocks)
            for j in key_order[key_block * bucket_size : (key_block + 1) * bucket_size]
            if j < seq_len and real[j]
        ]
        for i in queries:
            if real[i]:
                seen[i, keys] = True


def _head_views(
    q: torch.Tensor,
    k: torch.Tensor,
    real: list[bool],
    rotations: torch.Tensor,
    bucket_size: int,
    n_buckets: int,
    is_causal: bool,
    shared_qk: bool,
) -> torch.Tensor:
    """(N, N) bool: which keys each query of one head sees in some round."""
    seq_len = q.shape[0]
    seen = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    for r in range(rotations.shape[1]):
        query_buckets, _ = _hash(q, rotations[:, r], n_buckets)
        key_buckets = query_buckets if shared_qk else _hash(k, rotations[:, r], n_buckets)[0]
        if is_causal:
            _seen_by_bucket(query_buckets, key_buckets, real, bucket_size, n_buckets, seen)
        else:
            separate = None if shared_qk else key_buckets
            _seen_by_sorted_blocks(query_buckets, separate, real, bucket_size, n_buckets, seen)
    if shared_qk:
        seen.fill_diagonal_(False)
    return seen


def _masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seen: torch.Tensor, fallback: torch.Tensor
) -> torch.Tensor:
    """Dense softmax attention of one head restricted to ``seen`` (N, N); an empty row returns its
    ``fallback`` row."""
    scale = q.shape[-1] ** -0.5
    logits = (q @ k.T) * scale
    has_key = seen.any(dim=-1)
    logits = torch.where(seen, logits, -math.inf)
    logits = torch.where(has_key[:, None], logits, 0.0)
    weights = torch.softmax(logits, dim=-1) * seen
    return torch.where(has_key[:, None], weights @ v, fallback)


def _real_tokens(q: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    if key_padding_mask is None:
        return torch.ones(q.shape[0], q.shape[2], dtype=torch.bool)
    return ~key_padding_mask.cpu()


def lsh_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    *,
    bucket_size: int = 64,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    is_causal: bool = False,
    shared_qk: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """What ``chunkformer.ops.lsh_attention`` computes, the slow way, in float64 and differentiable in
    q, k and v.

    The arguments mean what they mean there; ``seed`` stands for the generator: the fast path with
    ``generator=torch.Generator().manual_seed(seed)`` (or ``generator=None`` and ``seed=0``) on CPU draws
    the same rotations. Hashing is piecewise constant, so where a token's two best rotated coordinates are
    nearly tied (see ``reference_hash_margin``) float32 rounding may put it in another bucket than the
    fast path does. No dropout.

    Shape:
        - q, k: (B, H, N, d)
        - v: (B, H, N, dv)
        - key_padding_mask: (B, N) bool, True for padding
        - output: (B, H, N, dv) float64
    """
    q, v = q.double(), v.double()
    k = q if k is None or shared_qk else k.double()
    keys = F.normalize(q, dim=-1) if shared_qk else k
    batch, heads, seq_len, head_dim = q.shape
    n_buckets = _n_buckets(seq_len, bucket_size, n_buckets)
    rotations = _rotations(head_dim, n_hashes, n_buckets, seed)
    real = _real_tokens(q, key_padding_mask)
    rows = []
    for b in range(batch):
        per_head = []
        for h in range(heads):
            seen = _head_views(
                q[b, h], k[b, h], real[b].tolist(), rotations, bucket_size, n_buckets, is_causal, shared_qk
            ).to(q.device)
            # An isolated real token returns its own value under shared QK, zeros otherwise; padding zeros.
            fallback = v[b, h] * (real[b].to(q.device)[:, None] & shared_qk)
            per_head.append(_masked_attention(q[b, h], keys[b, h], v[b, h], seen, fallback))
        rows.append(torch.stack(per_head))
    return torch.stack(rows)


def reference_hash_margin(
    q: torch.Tensor,
    k: torch.Tensor | None,
    *,
    bucket_size: int = 64,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    shared_qk: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    seed: int = 0,
) -> float:
    """The smallest gap, over real tokens, rounds, batch and heads, between a token's best and second-best
    entry of [x R, -x R]: where it is tiny, float32 rounding may move the token to another bucket, and the
    fast path and ``lsh_attention_reference`` may legitimately disagree.

    Shape:
        - q, k: (B, H, N, d)
        - key_padding_mask: (B, N) bool, True for padding
    """
    batch, heads, seq_len, head_dim = q.shape
    n_buckets = _n_buckets(seq_len, bucket_size, n_buckets)
    rotations = _rotations(head_dim, n_hashes, n_buckets, seed)
    real = _real_tokens(q, key_padding_mask)
    inputs = (q,) if shared_qk or k is None else (q, k)
    margin = math.inf
    for b in range(batch):
        flags = real[b].tolist()
        for h in range(heads):
            for r in range(n_hashes):
                for x in inputs:
                    gaps = _hash(x[b, h], rotations[:, r], n_buckets)[1]
                    margin = min([margin] + [gap for gap, ok in zip(gaps, flags, strict=True) if ok])
    return margin
