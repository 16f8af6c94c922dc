"""Angular locality-sensitive hashing and the bucket-sorted layouts LSH attention runs on.

Everything here is integer bookkeeping without gradients: which token sits in which slot of which block,
and which key block each query block looks at. ``chunkformer.ops.lsh_rounds`` does the arithmetic.

Two layouts, ``SortedLayout`` and ``BucketAlignedLayout`` (built by ``sorted_layout`` and
``bucket_aligned_layout``; each builds its pair masks in a method), both vectorised over batch x heads x
hash rounds with static shapes (no data-dependent sizes, so they run on the meta device and under
``torch.compile``):

* **sorted** (non-causal): tokens sorted by (bucket, position) and cut into blocks of ``bucket_size``; query
  block g sees key blocks g and g - 1 (cyclically within the round), as in Reformer.
* **bucket-aligned** (causal): every bucket starts at a block boundary, so a key's slot is its rank inside its
  bucket and depends only on earlier tokens. A query sees the keys of its own bucket at positions <= its own,
  the newest ``bucket_size`` of them. This makes the output at position i a function of tokens <= i only,
  bit for bit, which the sorted layout is not (later tokens move block boundaries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "BucketAlignedLayout",
    "LSHLayout",
    "SortedLayout",
    "bucket_aligned_layout",
    "default_n_buckets",
    "hash_buckets",
    "random_rotations",
    "sorted_layout",
]


def default_n_buckets(seq_len: int, bucket_size: int) -> int:
    """Buckets used when ``n_buckets`` is None: about ``seq_len / bucket_size`` (so a bucket holds about one
    block of tokens), rounded up to an even number as angular hashing needs; 1 when the whole sequence fits
    in one block, which makes the attention exact."""
    if seq_len <= bucket_size:
        return 1
    return 2 * math.ceil(seq_len / (2 * bucket_size))


def random_rotations(
    head_dim: int,
    n_hashes: int,
    n_buckets: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Gaussian rotations for angular LSH, drawn from ``generator`` (never from the global RNG).

    Shape:
        - output: (head_dim, n_hashes, n_buckets // 2), float32
    """
    return torch.randn(
        head_dim, n_hashes, max(n_buckets // 2, 1), generator=generator, device=device, dtype=torch.float32
    )


_HASH_CHUNK_VALUES = 1 << 21
_HASH_CHUNK_MIN_ROWS = 1024
# On a GPU the cache argument does not hold and each piece costs a dozen kernel launches: pieces of 256 MB
# (float32), so 64K tokens, 4 heads and 4 rounds hash in two.
_CUDA_HASH_CHUNK_VALUES = 1 << 26


def _index_reductions_are_fast(device: torch.device) -> bool:
    """max/min with indices are one fused kernel on GPUs; only CPU needs the index-free search."""
    return device.type != "cpu"


def hash_buckets(x: torch.Tensor, rotations: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Angular LSH (Andoni et al. 2015): bucket = argmax over [x R, -x R], one rotation R per round.

    The same rotations serve every batch element and head, and queries and keys alike. With
    ``n_buckets == 1`` every token is in bucket 0.

    Shape:
        - x: (G, N, d)
        - rotations: (d, n_hashes, n_buckets // 2)
        - output: (G, n_hashes, N), int64 in [0, n_buckets)
    """
    groups, seq_len, _ = x.shape
    n_hashes = rotations.shape[1]
    if n_buckets == 1:
        return torch.zeros(groups, n_hashes, seq_len, dtype=torch.long, device=x.device)
    half = rotations.shape[-1]
    flat_rotations = rotations.reshape(rotations.shape[0], -1)
    rows = x.reshape(groups * seq_len, -1)
    buckets = torch.empty(groups * seq_len, n_hashes, dtype=torch.long, device=x.device)
    # The projections (G * N x n_hashes x n_buckets / 2 values, 2 GB at 64K tokens) are made and reduced a
    # few thousand rows at a time, so each piece is reduced while it is still in cache and never exists in
    # full.
    indexed = _index_reductions_are_fast(x.device)
    chunk_values = _CUDA_HASH_CHUNK_VALUES if x.device.type == "cuda" else _HASH_CHUNK_VALUES
    chunk = max(_HASH_CHUNK_MIN_ROWS, chunk_values // (n_hashes * half))
    argmax = _signed_argmax_indexed if indexed else _signed_argmax_
    # One buffer for every piece's projections: a fresh one each time page-faults when glibc maps it anew.
    projected_buffer = torch.empty(min(chunk, rows.shape[0]), n_hashes * half, device=x.device)
    for start in range(0, rows.shape[0], chunk):
        piece = rows[start : start + chunk].float()
        projected = torch.matmul(piece, flat_rotations, out=projected_buffer[: piece.shape[0]])
        buckets[start : start + chunk] = argmax(projected.unflatten(-1, (n_hashes, half)))
    return buckets.reshape(groups, seq_len, n_hashes).transpose(1, 2).contiguous()


def _signed_argmax_indexed(projected: torch.Tensor) -> torch.Tensor:
    """argmax over [p, -p] along the last axis (first index on ties) from max / min with indices."""
    top, top_index = projected.max(dim=-1)
    bottom, bottom_index = projected.min(dim=-1)
    return torch.where(top >= -bottom, top_index, bottom_index + projected.shape[-1])


def _signed_argmax_(projected: torch.Tensor) -> torch.Tensor:
    """argmax over [p, -p] along the last axis (first index on ties), overwriting ``projected``.

    Reductions that return indices are not vectorised on CPU, nor are comparisons into bool, so every pass
    here is a vectorised reduction or in-place arithmetic: the winner w from ``amax`` / ``amin``, then in
    place p == w as 0 / 1 floats, times (width - position), whose ``amax`` is width minus w's first
    position. A row with NaN (where nothing equals w) gets the last position of its half: in range, like
    every other row.
    """
    half = projected.shape[-1]
    top, bottom = projected.amax(dim=-1, keepdim=True), projected.amin(dim=-1, keepdim=True)
    upper = top >= -bottom
    hits = torch.eq(projected, torch.where(upper, top, bottom), out=projected)
    reversed_positions = torch.arange(half, 0, -1, dtype=projected.dtype, device=projected.device)
    first = (half - hits.mul_(reversed_positions).amax(dim=-1)).clamp_(max=half - 1).long()
    return first + torch.where(upper[..., 0], 0, half)


@dataclass
class LSHLayout:
    """Where every token goes, per hash round, and which pairs each round attends.

    ``G`` is batch x heads, ``R`` the hash rounds, ``Q`` query blocks per round, ``bs`` the bucket size and
    ``K`` the keys a query block sees (``bs`` or ``2 * bs``). Token index ``N`` marks an empty slot.

    Attributes:
        query_ids: (G, R, Q, bs) token in each query slot.
        key_ids: (G, R, Q, K) token in each key slot seen by the query block.
        query_slot: (G, R, N) flat index into the R x Q x bs query slots of each token in each round;
            ``R * Q * bs`` for a token with no slot in that round.
        needs_mask: False when every pair in view is attended (one round, no padding, no self-exclusion).
        rounds_used: rounds that can attend anything; later ones are skipped (when the whole sequence is one
            block, the first round already attends to every key).
        empty_query_slots: whether some query slot holds no token (padding, or blocks larger than needed).
        key_order: (G, R, Q * bs) tokens in key-sorted order when key block g of every round is sorted
            blocks g - 1 and g (cyclically), i.e. ``key_ids[:, r, g] == key_order[:, r, (g-1)*bs:(g+1)*bs]``;
            then the key views overlap and can be read as windows of one gathered copy. None otherwise.
        first_round_pattern: (bs, K) bool when the first round's mask is this one pattern in every block of
            every group (no padding, nothing to drop from earlier rounds); None otherwise.
    """

    query_ids: torch.Tensor
    key_ids: torch.Tensor
    query_slot: torch.Tensor
    needs_mask: bool
    rounds_used: int
    empty_query_slots: bool
    key_order: torch.Tensor | None = None
    first_round_pattern: torch.Tensor | None = None

    def keep(
        self, round_index: int, blocks: slice = slice(None), scratch: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """(G, P, bs, K) bool: the pairs round ``round_index`` attends in query blocks ``blocks`` (P of them);
        None when nothing is masked.

        A pair that several rounds put in view is kept in the first of them only, so the rounds together
        attend to each key of the union once. Built for one piece of one round at a time (its work stays in
        cache), comparing with the r earlier rounds. A round with a ``keep_pattern`` gets that pattern
        expanded (a read-only view). ``scratch`` lends work buffers that successive calls reuse; the result
        may live in them, so it is valid until the next call with the same ``scratch``.
        """
        if not self.needs_mask:
            return None
        return self._piece_keep(round_index, blocks, {} if scratch is None else scratch)

    def _piece_keep(self, round_index: int, blocks: slice, scratch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mask of one piece, as ``keep`` returns it; each layout knows how its pairs are in view."""
        raise NotImplementedError(f"{type(self).__name__} does not say which pairs it attends")

    def keep_pattern(self, round_index: int) -> torch.Tensor | None:
        """The (bs, K) bool pattern that round ``round_index``'s mask repeats in every block of every group,
        or None when its blocks differ or nothing is masked. Said by the layout, which knows it: a broadcast
        view cannot say it through its strides, since a size-1 dimension's stride is arbitrary."""
        if not self.needs_mask or round_index != 0:
            return None
        return self.first_round_pattern


@dataclass(kw_only=True)
class SortedLayout(LSHLayout):
    """Reformer's layout (see ``sorted_layout``): a pair is in view in a round when the key's block is the
    query's block or the one before it, so earlier rounds' pairs are found by comparing block numbers.

    Attributes:
        shared_qk: whether queries are keys (a token never attends to itself).
        has_padding: whether some slot holds padding (masked keys, empty query slots).
        not_self: (bs, K) bool, False where a query meets its own key (all True without shared QK).
        not_self_flags, real_flags: ``not_self`` and (G, N + 1) real-token flags in ``key_block``'s integer
            type, which the masks are built in.
        key_block, query_block, query_previous_block: (G, R, N + 1) block numbers per round (and the block
            before the query's, cyclically); empty slots get numbers above every real one.
    """

    shared_qk: bool
    has_padding: bool
    not_self: torch.Tensor
    not_self_flags: torch.Tensor
    real_flags: torch.Tensor
    key_block: torch.Tensor
    query_block: torch.Tensor
    query_previous_block: torch.Tensor

    def _piece_keep(self, round_index: int, blocks: slice, scratch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The mask is built in the block numbers' integer type: a comparison written into its inputs' own
        # type, and an and of two such masks, are vectorised on CPU; comparisons and ands that broadcast into
        # bool are not.
        query_ids, key_ids = self.query_ids, self.key_ids
        groups, _, _, bucket_size = query_ids.shape
        block_dtype, device = self.key_block.dtype, query_ids.device
        query_r = query_ids[:, round_index, blocks]
        shape = (groups, query_r.shape[1], bucket_size, key_ids.shape[-1])
        if not self.has_padding and round_index == 0:
            return self.not_self.expand(shape)
        kept = _scratch(scratch, "kept", torch.Size(shape), block_dtype, device)
        if self.has_padding:
            key_r = key_ids[:, round_index, blocks]
            query_real = _lookup(self.real_flags, query_r)[..., :, None]
            torch.bitwise_and(query_real, _lookup(self.real_flags, key_r)[..., None, :], out=kept)
            if self.shared_qk:
                kept.bitwise_and_(self.not_self_flags)
        else:
            kept.copy_(self.not_self_flags.expand(shape))
        # Pairs seen in an earlier round are dropped.
        differs = _scratch(scratch, "differs", torch.Size(shape), block_dtype, device)
        for earlier in range(round_index):
            # Block numbers of round `earlier` at the slots of round `round_index`, looked up for the
            # whole round at its first piece (a few small gathers instead of a few per piece).
            name = f"blocks of round {earlier} in round {round_index}"
            if name + ": keys" not in scratch:
                query_all = query_ids[:, round_index]
                scratch[name + ": keys"] = _lookup(self.key_block[:, earlier], key_ids[:, round_index])[
                    ..., None, :
                ]
                scratch[name + ": queries"] = _lookup(self.query_block[:, earlier], query_all)[..., :, None]
                scratch[name + ": previous"] = _lookup(self.query_previous_block[:, earlier], query_all)[
                    ..., :, None
                ]
            key_b = scratch[name + ": keys"][:, blocks]
            for side in (": queries", ": previous"):
                kept.bitwise_and_(torch.ne(key_b, scratch[name + side][:, blocks], out=differs))
        result = _scratch(scratch, "keep", torch.Size(shape), torch.bool, device)
        result.view(torch.uint8).copy_(kept)
        return result


@dataclass(kw_only=True)
class BucketAlignedLayout(LSHLayout):
    """The strictly causal layout (see ``bucket_aligned_layout``): a pair is in view in a round when the
    key is in the query's bucket with a rank in (newest - bucket_size, newest], which one integer code per
    token turns into two comparisons.

    Attributes:
        shared_qk: whether queries are keys (a token never attends to itself).
        key_code: (G, R, N + 1) bucket x stride + rank + bs per key; -1 for padding.
        query_high: (G, R, N + 1) the code of the newest key a query may see; far below every key code for a
            query with no key.
        not_self_codes: (bs, K) 0 where a query meets its own key, 1 elsewhere, in the codes' type; None
            without shared QK.
    """

    shared_qk: bool
    key_code: torch.Tensor
    query_high: torch.Tensor
    not_self_codes: torch.Tensor | None

    def _out_of_view(
        self, code_round: int, round_index: int, blocks: slice, out: torch.Tensor, below: torch.Tensor
    ) -> None:
        """``out`` <- -1 where round ``code_round`` does not have the pair in view, 0 where it does.

        In view: 0 <= high - code < bucket_size, i.e. high - code and code + bucket_size - 1 - high both
        non-negative; or-ed, the sign bit says whether either is negative, and an arithmetic shift spreads it.
        Integer arithmetic throughout: comparisons that broadcast into bool are not vectorised on CPU.
        """
        bucket_size = self.query_ids.shape[-1]
        sign_shift = torch.iinfo(self.key_code.dtype).bits - 1
        query_r, key_r = self.query_ids[:, round_index, blocks], self.key_ids[:, round_index, blocks]
        code = _lookup(self.key_code[:, code_round], key_r)[..., None, :]
        high = _lookup(self.query_high[:, code_round], query_r)[..., :, None]
        torch.sub(high, code, out=out)
        out.bitwise_or_(torch.sub(code + (bucket_size - 1), high, out=below)).bitwise_right_shift_(sign_shift)

    def _piece_keep(self, round_index: int, blocks: slice, scratch: dict[str, torch.Tensor]) -> torch.Tensor:
        groups, _, _, bucket_size = self.query_ids.shape
        code_dtype, device = self.key_code.dtype, self.query_ids.device
        n_blocks = self.query_ids[:, round_index, blocks].shape[1]
        shape = torch.Size((groups, n_blocks, bucket_size, self.key_ids.shape[-1]))
        kept = _scratch(scratch, "kept", shape, code_dtype, device)
        earlier_view = _scratch(scratch, "earlier", shape, code_dtype, device)
        below = _scratch(scratch, "below", shape, code_dtype, device)
        self._out_of_view(round_index, round_index, blocks, kept, below)
        kept.add_(1)  # 1 in view, 0 not
        if self.not_self_codes is not None:
            kept.bitwise_and_(self.not_self_codes)
        for earlier in range(round_index):
            self._out_of_view(earlier, round_index, blocks, earlier_view, below)
            kept.bitwise_and_(earlier_view)  # and-ed with 0 where that round had the pair in view
        result = _scratch(scratch, "keep", shape, torch.bool, device)
        result.view(torch.uint8).copy_(kept)
        return result


def _not_self_pattern(bucket_size: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """(bs, K) bool, False where query slot i meets key slot i of the last key block in view: under shared QK
    a query's own key sits there in every block, so self-exclusion is a fixed pattern, no comparison."""
    return (
        torch.arange(bucket_size, device=device)[:, None] + (n_keys - bucket_size)
        != torch.arange(n_keys, device=device)[None, :]
    )


def _scratch(
    scratch: dict[str, torch.Tensor], name: str, shape: torch.Size, dtype: torch.dtype, device
) -> torch.Tensor:
    """A work tensor of ``shape`` from ``scratch[name]``, grown when a call needs more than it holds."""
    numel = math.prod(shape)
    if name not in scratch or scratch[name].numel() < numel:
        scratch[name] = torch.empty(numel, dtype=dtype, device=device)
    return scratch[name][:numel].view(shape)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, dim=-1) - x


def _inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(-1, perm, positions)


def _lookup(features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token features (G, N + 1) looked up at token ids (G, ...) -> (G, ...)."""
    return torch.gather(features, 1, ids.reshape(ids.shape[0], -1)).reshape(ids.shape)


def _with_pad(features: torch.Tensor, value: int) -> torch.Tensor:
    """Append the padding token's feature along the token axis."""
    pad = torch.full((*features.shape[:-1], 1), value, dtype=features.dtype, device=features.device)
    return torch.cat([features, pad], dim=-1)


def _flat_query_slot(slot: torch.Tensor, placed: torch.Tensor, slots_per_round: int) -> torch.Tensor:
    rounds = slot.shape[1]
    offset = torch.arange(rounds, device=slot.device)[None, :, None] * slots_per_round
    return torch.where(placed, slot + offset, rounds * slots_per_round)


def sorted_layout(
    query_buckets: torch.Tensor,
    key_buckets: torch.Tensor,
    valid: torch.Tensor | None,
    bucket_size: int,
    n_buckets: int,
    shared_qk: bool,
) -> LSHLayout:
    """Reformer's layout: sort by (bucket, position), blocks of ``bucket_size``, look one block back.

    Query and key tokens are sorted separately (one sort when ``shared_qk``); query block g sees key blocks
    g - 1 and g of its round, cyclically, or only block 0 when there is one block. A pair is in view when
    both tokens are real (and, under shared QK, distinct). Padding tokens (``valid`` False, and the fill
    up to whole blocks) go to an extra bucket after all real ones, so they never displace real tokens.

    Shape:
        - query_buckets, key_buckets: (G, R, N)
        - valid: (G, N) bool, True for real tokens; None when all are real
    """
    groups, rounds, seq_len = query_buckets.shape
    device = query_buckets.device
    n_blocks = max(1, math.ceil(seq_len / bucket_size))
    padded_len = n_blocks * bucket_size
    pad_bucket = n_buckets
    has_padding = valid is not None or padded_len != seq_len

    def sort_tokens(buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = torch.full((groups, rounds, padded_len), pad_bucket, dtype=torch.long, device=device)
        full[..., :seq_len] = buckets if valid is None else torch.where(valid[:, None], buckets, pad_bucket)
        # A stable sort by bucket keeps positions ascending inside each bucket.
        order = torch.sort(full, dim=-1, stable=True).indices
        return order.clamp(max=seq_len), _inverse_permutation(order)[..., :seq_len]

    query_order, query_slot = sort_tokens(query_buckets)
    key_order, key_slot = (query_order, query_slot) if shared_qk else sort_tokens(key_buckets)

    query_ids = query_order.reshape(groups, rounds, n_blocks, bucket_size)
    key_blocks = key_order.reshape(groups, rounds, n_blocks, bucket_size)
    key_ids = torch.cat([key_blocks.roll(1, dims=2), key_blocks], dim=-1) if n_blocks > 1 else key_blocks

    placed = (
        torch.ones_like(query_slot, dtype=torch.bool)
        if valid is None
        else valid[:, None].expand_as(query_slot)
    )
    flat_slot = _flat_query_slot(query_slot, placed, padded_len)

    real = torch.ones(groups, seq_len, dtype=torch.bool, device=device) if valid is None else valid
    real = torch.cat([real, torch.zeros(groups, 1, dtype=torch.bool, device=device)], dim=-1)
    n_keys = key_ids.shape[-1]
    # Under shared QK a query and its own key sit at the same place of every block (slot i of the query
    # block is slot i of the last key block in view): self-exclusion is a fixed pattern, no comparison.
    not_self = (
        _not_self_pattern(bucket_size, n_keys, device)
        if shared_qk
        else torch.ones(bucket_size, n_keys, dtype=torch.bool, device=device)
    )

    # In round r' a pair is in view when the key's block is the query's block or the one before it.
    # Block numbers are compared as int16 where they fit: the comparisons run over every pair in view.
    # Empty slots get block numbers above every real one, distinct for queries and keys.
    block_dtype = torch.int16 if n_blocks < 2**15 - 8 else torch.int32
    empty_query, empty_key = torch.iinfo(block_dtype).max, torch.iinfo(block_dtype).max - 1
    query_block = _with_pad(
        torch.div(query_slot, bucket_size, rounding_mode="floor").to(block_dtype), empty_query
    )
    key_block = _with_pad(torch.div(key_slot, bucket_size, rounding_mode="floor").to(block_dtype), empty_key)
    query_previous_block = torch.where(query_block > 0, query_block - 1, query_block + n_blocks - 1)
    query_previous_block[..., -1] = empty_query

    return SortedLayout(
        query_ids,
        key_ids,
        flat_slot,
        needs_mask=rounds > 1 or has_padding or shared_qk,
        # One block: every round has every key in view, so the first round attends to the whole union.
        rounds_used=1 if n_blocks == 1 else rounds,
        empty_query_slots=has_padding,
        key_order=key_order if n_blocks > 1 else None,
        # Without padding the first round drops nothing: its mask is the self-exclusion pattern (all True
        # without shared QK) in every block.
        first_round_pattern=None if has_padding else not_self,
        shared_qk=shared_qk,
        has_padding=has_padding,
        not_self=not_self,
        not_self_flags=not_self.to(block_dtype),
        real_flags=real.to(block_dtype),
        key_block=key_block,
        query_block=query_block,
        query_previous_block=query_previous_block,
    )


def bucket_aligned_layout(
    query_buckets: torch.Tensor,
    key_buckets: torch.Tensor,
    valid: torch.Tensor | None,
    bucket_size: int,
    n_buckets: int,
    shared_qk: bool,
) -> LSHLayout:
    """The strictly causal layout.

    Keys of each bucket fill whole blocks in position order, each bucket starting a new block, so a key's
    slot is its rank r in its bucket. Query i, in bucket b, sees the keys of bucket b at positions <= i, the
    newest ``bucket_size`` of them: ranks in (n - bucket_size, n], where n is the rank of its newest such key.
    Those live in the key block holding rank n and the block before it; queries are grouped by that block.
    Every quantity a query's row depends on (ranks, in-block slots) is a function of tokens <= i.

    Block counts use static upper bounds: ceil(N / bucket_size) + n_buckets key blocks, and, for separate
    q and k, ceil(N / bucket_size) more query blocks, since a key block's queries may overflow one block.

    Shape:
        - query_buckets, key_buckets: (G, R, N)
        - valid: (G, N) bool, True for real tokens; None when all are real
    """
    groups, rounds, seq_len = query_buckets.shape
    device = query_buckets.device
    positions = torch.arange(seq_len, device=device)
    n_key_blocks = math.ceil(seq_len / bucket_size) + n_buckets
    key_slots = n_key_blocks * bucket_size
    pad_bucket = n_buckets
    real = (
        torch.ones(groups, 1, seq_len, dtype=torch.bool, device=device) if valid is None else valid[:, None]
    ).expand(groups, rounds, seq_len)

    key_buckets = torch.where(real, key_buckets, pad_bucket)
    sorted_buckets, order = torch.sort(key_buckets, dim=-1, stable=True)
    counts = torch.zeros(groups, rounds, n_buckets + 1, dtype=torch.long, device=device)
    counts.scatter_add_(-1, key_buckets, torch.ones_like(key_buckets))
    first_index = _exclusive_cumsum(counts)
    blocks_per_bucket = torch.div(counts + bucket_size - 1, bucket_size, rounding_mode="floor")
    blocks_per_bucket[..., pad_bucket] = 0
    first_block = _exclusive_cumsum(blocks_per_bucket)
    key_rank = _inverse_permutation(order) - torch.gather(first_index, -1, key_buckets)

    # Slot of every real key; padding keys go to one extra slot that is cut off.
    key_slot = torch.gather(first_block, -1, key_buckets) * bucket_size + key_rank
    key_slot = torch.where(real, key_slot, key_slots)
    slot_token = torch.full((groups, rounds, key_slots + 1), seq_len, dtype=torch.long, device=device)
    slot_token.scatter_(-1, key_slot, positions.expand(groups, rounds, seq_len).contiguous())
    slot_token = slot_token[..., :key_slots]

    query_buckets = torch.where(real, query_buckets, pad_bucket)
    if shared_qk:
        newest = key_rank
    else:
        # Rank of the newest key of the query's bucket at a position <= the query's (-1 if none).
        sorted_composite = sorted_buckets * seq_len + torch.gather(
            positions.expand(groups, rounds, seq_len), -1, order
        )
        upto = torch.searchsorted(sorted_composite, query_buckets * seq_len + positions, right=True)
        newest = upto - torch.gather(first_index, -1, query_buckets) - 1
    has_key = real & (newest >= 0)
    key_block = torch.gather(first_block, -1, query_buckets) + torch.div(
        newest.clamp(min=0), bucket_size, rounding_mode="floor"
    )

    if shared_qk:
        n_query_blocks = n_key_blocks
        query_slot = key_slot
        query_key_block = torch.arange(n_key_blocks, device=device).expand(groups, rounds, n_key_blocks)
    else:
        # Group queries by the key block of their newest visible key; a group may need several blocks.
        n_query_blocks = n_key_blocks + math.ceil(seq_len / bucket_size)
        group = torch.where(has_key, key_block, n_key_blocks)
        group_order = torch.sort(group, dim=-1, stable=True).indices
        group_size = torch.zeros(groups, rounds, n_key_blocks + 1, dtype=torch.long, device=device)
        group_size.scatter_add_(-1, group, torch.ones_like(group))
        rank_in_group = _inverse_permutation(group_order) - torch.gather(
            _exclusive_cumsum(group_size), -1, group
        )
        blocks_per_group = torch.div(group_size + bucket_size - 1, bucket_size, rounding_mode="floor")
        blocks_per_group[..., n_key_blocks] = 0
        query_block = torch.gather(_exclusive_cumsum(blocks_per_group), -1, group) + torch.div(
            rank_in_group, bucket_size, rounding_mode="floor"
        )
        query_slot = query_block * bucket_size + torch.remainder(rank_in_group, bucket_size)
        # Key block of each query block, scattered from its queries; empty blocks keep 0 (all masked).
        query_key_block = torch.zeros(groups, rounds, n_query_blocks + 1, dtype=torch.long, device=device)
        query_key_block.scatter_(-1, torch.where(has_key, query_block, n_query_blocks), key_block)
        query_key_block = query_key_block[..., :n_query_blocks]

    query_slots = n_query_blocks * bucket_size
    query_token = torch.full((groups, rounds, query_slots + 1), seq_len, dtype=torch.long, device=device)
    query_token.scatter_(
        -1,
        torch.where(has_key, query_slot, query_slots),
        positions.expand(groups, rounds, seq_len).contiguous(),
    )
    query_ids = query_token[..., :query_slots].reshape(groups, rounds, n_query_blocks, bucket_size)

    key_blocks = slot_token.reshape(groups, rounds, n_key_blocks, bucket_size)
    block_index = query_key_block[..., None].expand(-1, -1, -1, bucket_size)
    previous = torch.gather(key_blocks, 2, (block_index - 1).clamp(min=0))
    # Block 0 has no previous block: point its look-back at the padding token, not at itself again.
    previous = torch.where(block_index >= 1, previous, seq_len)
    key_ids = torch.cat([previous, torch.gather(key_blocks, 2, block_index)], dim=-1)

    # In round r' a pair is in view when the key is in the query's bucket with a rank in
    # (newest - bucket_size, newest]. One integer code per token makes that two comparisons.
    stride = seq_len + 2 * bucket_size + 2
    # (Differences of two codes span (n_buckets + 3) * stride + bucket_size, which must not overflow.)
    code_dtype = torch.int32 if (n_buckets + 4) * stride < 2**31 else torch.long
    key_code = _with_pad(
        torch.where(real, key_buckets * stride + key_rank + bucket_size, -1).to(code_dtype), -1
    )
    query_high = torch.where(has_key, query_buckets * stride + newest + bucket_size, -2 * stride)
    query_high = _with_pad(query_high.to(code_dtype), -2 * stride)
    # Under shared QK a query's own key sits at its own slot of the second key block in view (its own block).
    not_self = _not_self_pattern(bucket_size, key_ids.shape[-1], device)

    return BucketAlignedLayout(
        query_ids,
        key_ids,
        _flat_query_slot(query_slot, has_key, query_slots),
        needs_mask=True,
        rounds_used=rounds,
        empty_query_slots=True,
        shared_qk=shared_qk,
        key_code=key_code,
        query_high=query_high,
        not_self_codes=not_self.to(code_dtype) if shared_qk else None,
    )
