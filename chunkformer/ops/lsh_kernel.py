"""Reformer-style LSH attention: the public entry, ``lsh_attention``.

It checks the inputs, picks the kernel (``chunkformer.ops.lsh_auto``) and runs one pass
(``chunkformer.ops.lsh_pass``), whose steps each have a module: hashing and the layouts
(``chunkformer.ops.lsh``), per-round block attention (``chunkformer.ops.lsh_rounds``) merged by
log-sum-exp (``chunkformer.ops.lsh_merge``), both inside one autograd function
(``chunkformer.ops.lsh_autograd``), or the fused Triton kernels (``chunkformer.ops.lsh_triton``). The slow,
independent reference the fast paths are tested against is ``chunkformer.ops.lsh_attention_reference``.
"""

from __future__ import annotations

import torch

from chunkformer.ops.lsh import default_n_buckets
from chunkformer.ops.lsh_auto import lsh_kernel_for
from chunkformer.ops.lsh_checks import check_lsh_inputs, renamed_keyword
from chunkformer.ops.lsh_pass import run_pass

__all__ = ["lsh_attention"]

# The rotations' seed when the caller gives no generator, so calls are reproducible.
_DEFAULT_SEED = 0


@renamed_keyword("causal", "is_causal")
def lsh_attention(
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

    * ``is_causal=False``: tokens sorted by (bucket, position) per round (queries and keys separately unless
      ``shared_qk``) and cut into blocks; query block g sees key blocks g and g - 1 of the same round,
      cyclically; with one block, just that block. Buckets are not masked inside the view, as in Reformer.
    * ``is_causal=True``: the keys of the query's own bucket at positions <= its own, the newest
      ``bucket_size`` of them (bucket-aligned blocks, see ``chunkformer.ops.lsh.bucket_aligned_layout``).
      The output at position i depends only on inputs at positions <= i, bit for bit, for every seed. A
      query whose bucket holds no earlier key sees nothing and returns zeros (with ``shared_qk``, itself).

    ``shared_qk=True`` is Reformer's shared-QK attention: keys are the unit-normalised queries, and a token
    attends to itself only when it has nothing else to attend to (then it returns its own value). Keys are
    q / max(|q|, eps) with F.normalize's eps = 1e-12, or in float16, where 1e-12 rounds to 0, its smallest
    normal number: a zero query has key 0.
    ``shared_qk=False`` hashes q and k with the same rotations and sorts each: a query and the keys near it
    in angle usually share a bucket but, since the two sorts are cut into blocks independently, a query's
    block may not line up with all keys of its bucket; that is the approximation.

    ``n_buckets`` defaults to ``chunkformer.ops.lsh.default_n_buckets``: about N / bucket_size,
    rounded up to an even number, and 1 when N <= bucket_size. Hence with ``n_hashes=1`` and
    ``bucket_size >= N`` the result is exact softmax attention (causal when ``is_causal``).

    Padding: ``key_padding_mask`` marks tokens to ignore. They are hashed into a bucket of their own after
    all real ones, never receive weight, and their outputs are zeros; internal padding up to a whole block
    is handled the same way.

    Kernels: the blocks run on the attention dispatch's backend (``chunkformer.ops.use_backend``, the
    ``CHUNKFORMER_ATTN_BACKEND`` variable, else automatic): PyTorch's flash kernels on CPU and its
    memory-efficient kernels on CUDA for ``"sdpa"``, xformers' on CUDA for ``"xformers"``, batched matmul for
    ``"math"`` and whenever ``dropout_p > 0`` or no fused kernel takes the input (see the kernel records in
    ``chunkformer.ops.block_attention``). ``"triton"`` (on CUDA, or on CPU under ``TRITON_INTERPRET=1``)
    runs the fused Triton kernels of ``chunkformer.ops.lsh_triton``, which read the unsorted rows in place
    and build the masks themselves; with dropout it falls back to the math path. Automatic selection takes
    them on CUDA, in eager mode, for float16 and bfloat16 inputs, once they have passed a self-check on the
    device (``chunkformer.ops.lsh_auto``).

    Randomness: rotations (and dropout) come from ``generator``, on the inputs' device; the global RNG is
    neither read nor advanced. With ``generator=None`` a fixed seed is used, so calls are reproducible: bit
    for bit on CPU; on CUDA the output is, and the gradients are once
    ``torch.use_deterministic_algorithms(True)`` is set (by default they are added with float atomics,
    whose order varies in the last bit).

    Args:
        q: queries.
        k: keys; must be None (or q itself) when ``shared_qk``.
        v: values.
        bucket_size: block length; each query sees at most 2 x bucket_size keys per round.
        n_hashes: hash rounds; more rounds, better approximation, proportionally more work.
        n_buckets: buckets per round (1, or even).
        is_causal: strictly causal attention (see above). The old name ``causal=`` is still accepted, with a
            FutureWarning, until the next release.
        shared_qk: Reformer's shared-QK attention.
        key_padding_mask: True where a token is padding.
        generator: source of the rotations and dropout masks.
        dropout_p: dropout on the attention weights (pass 0 in evaluation).
        blocks_per_piece: query blocks per kernel call, which bounds the memory of each call; None sizes
            pieces to about 2 MB of keys on CPU (their buffers stay in cache and are reused) and 64 MB on
            CUDA. Every value gives the same output (bit for bit with the fused kernels; with dropout's math
            kernel up to rounding) and gradients equal up to the order of additions. Ignored by the
            ``"triton"`` kernels, which run a whole round per launch.

    Returns:
        The attention output.

    Raises:
        TypeError: for an argument of the wrong type (tensors, dtypes, flags, sizes, generator), or for both
            ``is_causal`` and ``causal``.
        ValueError: for a wrong value or shape, the expected and given ones named.

    Shape:
        - q, k: (B, H, N, d)
        - v: (B, H, N, dv)
        - key_padding_mask: (B, N)
        - output: (B, H, N, dv)
    """
    check_lsh_inputs(
        q,
        k,
        v,
        bucket_size,
        n_hashes,
        n_buckets,
        is_causal,
        shared_qk,
        key_padding_mask,
        generator,
        dropout_p,
        blocks_per_piece,
    )
    if n_buckets is None:
        n_buckets = default_n_buckets(q.shape[2], bucket_size)
    if generator is None:
        generator = torch.Generator(device=q.device if q.device.type != "meta" else "cpu")
        generator.manual_seed(_DEFAULT_SEED)
    kernel = lsh_kernel_for(q, k, v, dropout_p)
    return run_pass(
        q,
        k,
        v,
        kernel,
        bucket_size=bucket_size,
        n_hashes=n_hashes,
        n_buckets=n_buckets,
        is_causal=is_causal,
        shared_qk=shared_qk,
        key_padding_mask=key_padding_mask,
        generator=generator,
        dropout_p=dropout_p,
        blocks_per_piece=blocks_per_piece,
    )
