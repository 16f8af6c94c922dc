"""Property tests for :func:`chunkformer.ops.lsh_attention` (Reformer-style angular-LSH attention).

The package's vectorised kernel is compared against the independent, deliberately slow reference the package
ships (:func:`chunkformer.ops.lsh_attention_reference`): plain Python loops over hash rounds, buckets and
blocks decide which keys every query sees (the union over rounds), then dense float64 softmax attention runs
restricted to that union. The reference imports nothing from the fast path; it redraws the rotations from a
generator built from the same seed.

Random tensors come from drawn seeds through a private ``torch.Generator``; the global RNG is left alone
(and some tests check that the kernel leaves it alone too).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from chunkformer.ops import (
    attention,
    available_backends,
    default_n_buckets,
    lsh_attention,
    lsh_attention_reference,
    lsh_pieces,
    lsh_reference,
    use_backend,
)
from chunkformer.ops.block_attention import BLOCK_KERNELS
from chunkformer.ops.lsh_reference import reference_hash_margin
from chunkformer.ops.lsh_rounds import logit_bias

SEEDS = st.integers(0, 2**31 - 1)

# The reference and the kernel hash in float32; a token whose best and second-best rotated coordinate are
# closer than this may legitimately land in another bucket, so such draws are discarded.
HASH_MARGIN = 1e-4


@pytest.fixture(autouse=True)
def keep_global_rng() -> Iterator[None]:
    """Every test runs on a private copy of the global RNG, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        yield


def randn(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    # Draw in float32 and cast, so a case differs between dtypes only by rounding.
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LSHCase:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None  # (B, N) bool, True = padding
    bucket_size: int
    n_hashes: int
    n_buckets: int | None
    causal: bool
    shared_qk: bool
    seed: int  # of the rotations
    dropout_p: float = 0.0

    def __repr__(self) -> str:
        # Tensors are printed by shape only; the case is reproducible from hypothesis' seed.
        mask = None if self.mask is None else f"{int(self.mask.sum())} padded of {tuple(self.mask.shape)}"
        return (
            f"LSHCase(q={tuple(self.q.shape)}, v={tuple(self.v.shape)}, dtype={self.q.dtype}, mask={mask}, "
            f"bucket_size={self.bucket_size}, n_hashes={self.n_hashes}, n_buckets={self.n_buckets}, "
            f"causal={self.causal}, shared_qk={self.shared_qk}, seed={self.seed}, dropout_p={self.dropout_p})"
        )

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        printer.text(repr(self))  # type: ignore[attr-defined]

    @property
    def seq_len(self) -> int:
        return self.q.shape[2]

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def keys(self) -> torch.Tensor:
        return F.normalize(self.q, dim=-1) if self.shared_qk else self.k

    def real(self) -> torch.Tensor:
        """(B, N) bool: True for real tokens."""
        if self.mask is None:
            return torch.ones(self.q.shape[0], self.seq_len, dtype=torch.bool)
        return ~self.mask

    def run(
        self,
        q: torch.Tensor | None = None,
        k: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        generator: torch.Generator | None | str = "case",
        **overrides: object,
    ) -> torch.Tensor:
        q = self.q if q is None else q
        k = self.k if k is None else k
        v = self.v if v is None else v
        kwargs: dict[str, object] = {
            "bucket_size": self.bucket_size,
            "n_hashes": self.n_hashes,
            "n_buckets": self.n_buckets,
            "is_causal": self.causal,
            "shared_qk": self.shared_qk,
            "key_padding_mask": self.mask,
            "dropout_p": self.dropout_p,
        }
        kwargs.update(overrides)
        return lsh_attention(
            q,
            None if self.shared_qk else k,
            v,
            # "case": a fresh generator at the case's seed; None: the kernel's default.
            generator=self.generator() if generator == "case" else generator,  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )

    def cast(self, dtype: torch.dtype) -> LSHCase:
        return replace(self, q=self.q.to(dtype), k=self.k.to(dtype), v=self.v.to(dtype))


@st.composite
def padding_masks(draw: st.DrawFn, batch: int, seq_len: int) -> torch.Tensor | None:
    """No mask, a random mask, trailing padding, or a mask with one batch element all padding."""
    kind = draw(st.sampled_from(["none", "random", "trailing", "all_padding"]))
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(draw(SEEDS))
    if kind == "random":
        return torch.rand(batch, seq_len, generator=g) < draw(st.sampled_from([0.1, 0.3, 0.6]))
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    if kind == "trailing":
        for b in range(batch):
            mask[b, seq_len - draw(st.integers(0, seq_len)) :] = True
        return mask
    mask = torch.rand(batch, seq_len, generator=g) < 0.2
    mask[draw(st.integers(0, batch - 1))] = True
    return mask


@st.composite
def lsh_cases(
    draw: st.DrawFn,
    min_len: int = 1,
    max_len: int = 300,
    max_batch: int = 2,
    bucket_sizes: st.SearchStrategy[int] = st.integers(2, 16),  # noqa: B008
    n_hashes: st.SearchStrategy[int] = st.integers(1, 4),  # noqa: B008
    n_buckets: st.SearchStrategy[int | None] = st.sampled_from([None, None, 1, 2, 4, 6, 8, 16]),  # noqa: B008
    causal: bool | None = None,
    shared_qk: bool | None = None,
    masks: bool = True,
    dtype: torch.dtype = torch.float64,
) -> LSHCase:
    # Short sequences half the time (a few blocks, often one), else up to a few hundred tokens; lengths are
    # drawn freely so most are not multiples of the bucket size.
    if draw(st.booleans(), label="short"):
        seq_len = draw(st.integers(min_len, max(min_len, min(40, max_len))))
    else:
        seq_len = draw(st.integers(max(min_len, min(41, max_len)), max_len))
    batch, heads = draw(st.integers(1, max_batch)), draw(st.integers(1, 2))
    # Odd widths included: kernels vectorise over the head axis and odd widths take their tail paths.
    head_dim = draw(st.sampled_from([2, 3, 4, 5, 8]))
    value_dim = draw(st.one_of(st.just(head_dim), st.integers(1, 7)))
    g = torch.Generator().manual_seed(draw(SEEDS))
    return LSHCase(
        q=randn((batch, heads, seq_len, head_dim), g, dtype),
        k=randn((batch, heads, seq_len, head_dim), g, dtype),
        v=randn((batch, heads, seq_len, value_dim), g, dtype),
        mask=draw(padding_masks(batch, seq_len)) if masks else None,
        bucket_size=draw(bucket_sizes),
        n_hashes=draw(n_hashes),
        n_buckets=draw(n_buckets),
        causal=draw(st.booleans()) if causal is None else causal,
        shared_qk=draw(st.booleans()) if shared_qk is None else shared_qk,
        seed=draw(SEEDS),
    )


# ----------------------------------------------------------------------------------------------------------
# Independent slow reference
# ----------------------------------------------------------------------------------------------------------


def reference_n_buckets(seq_len: int, bucket_size: int) -> int:
    return 1 if seq_len <= bucket_size else 2 * math.ceil(seq_len / (2 * bucket_size))


def reference_lsh(
    case: LSHCase, q: torch.Tensor | None = None, v: torch.Tensor | None = None, k: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """The package's slow reference output in float64 (differentiable in q, k, v) and the smallest hash margin
    (draws whose margin is tiny may legitimately differ in a bucket)."""
    q = case.q.double() if q is None else q
    k = case.k.double() if k is None else k
    v = case.v.double() if v is None else v
    options = {
        "bucket_size": case.bucket_size,
        "n_hashes": case.n_hashes,
        "n_buckets": case.n_buckets,
        "shared_qk": case.shared_qk,
        "key_padding_mask": case.mask,
        "seed": case.seed,
    }
    want = lsh_attention_reference(q, k, v, is_causal=case.causal, **options)  # type: ignore[arg-type]
    return want, reference_hash_margin(case.q, case.k, **options)  # type: ignore[arg-type]


def test_reference_is_independent_of_the_fast_path() -> None:
    """The reference imports nothing from the package: it shares no code with what it checks."""
    source = inspect.getsource(lsh_reference)
    assert "chunkformer" not in "".join(line for line in source.splitlines() if "import" in line)


def exact_attention(case: LSHCase) -> torch.Tensor:
    """What LSH attention reduces to when every query sees every allowed key, via the package's math kernel.

    Causal: lower-triangular. Shared QK: keys normalised, the diagonal excluded, and a real row left with no
    key returns its own value. Padding: padded keys excluded, padded rows zeros.
    """
    batch, _, seq_len, _ = case.q.shape
    real = case.real()
    allowed = real[:, None, None, :].expand(batch, 1, seq_len, seq_len).clone()
    if case.causal:
        allowed &= torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    if case.shared_qk:
        allowed &= ~torch.eye(seq_len, dtype=torch.bool)
    out = attention(case.q, case.keys(), case.v, attn_mask=allowed, backend="math")
    empty = ~allowed.any(dim=-1, keepdim=True)  # (B, 1, N, 1)
    if case.shared_qk:
        out = torch.where(empty & real[:, None, :, None], case.v, out)
    return out.masked_fill(~real[:, None, :, None], 0.0)


# ----------------------------------------------------------------------------------------------------------
# 1. Fast path == slow reference
# ----------------------------------------------------------------------------------------------------------


def test_default_n_buckets_formula() -> None:
    for seq_len in range(1, 200):
        for bucket_size in (1, 2, 3, 7, 16, 64):
            assert default_n_buckets(seq_len, bucket_size) == reference_n_buckets(seq_len, bucket_size)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("shared_qk", [False, True], ids=["separate", "shared"])
@settings(max_examples=max(40, settings.default.max_examples))
@given(data=st.data())
def test_matches_slow_reference(causal: bool, shared_qk: bool, data: st.DataObject) -> None:
    case = data.draw(lsh_cases(causal=causal, shared_qk=shared_qk), label="case")
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    out = case.run(q, k, v)
    want, margin = reference_lsh(case, q, v, k)
    assume(margin > HASH_MARGIN)
    assert out.shape == case.v.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, want, atol=1e-9, rtol=1e-9)

    # Same seen sets, so the same gradients (hashing is piecewise constant).
    grad_out = randn(tuple(out.shape), torch.Generator().manual_seed(case.seed + 1))
    got = torch.autograd.grad((out * grad_out).sum(), (q, k, v), allow_unused=True, materialize_grads=True)
    expected = torch.autograd.grad(
        (want * grad_out).sum(), (q, k, v), allow_unused=True, materialize_grads=True
    )
    for name, g_got, g_want in zip("qkv", got, expected, strict=True):
        torch.testing.assert_close(g_got, g_want, atol=1e-8, rtol=1e-8, msg=lambda m, n=name: f"d{n}: {m}")


@given(case=lsh_cases(max_len=120))
def test_explicit_default_n_buckets_is_the_default(case: LSHCase) -> None:
    explicit = reference_n_buckets(case.seq_len, case.bucket_size)
    assert torch.equal(case.run(n_buckets=None), case.run(n_buckets=explicit))


# ----------------------------------------------------------------------------------------------------------
# 2. Exact limit and padding
# ----------------------------------------------------------------------------------------------------------


@st.composite
def one_block_cases(draw: st.DrawFn, n_hashes: st.SearchStrategy[int] = st.integers(1, 3)) -> LSHCase:  # noqa: B008
    """bucket_size >= N with the default n_buckets (one bucket, one block): LSH attention is exact."""
    case = draw(lsh_cases(max_len=40, n_buckets=st.just(None), n_hashes=n_hashes))
    bucket_size = case.seq_len + draw(st.integers(0, 5))
    return replace(case, bucket_size=bucket_size)


@given(case=one_block_cases(n_hashes=st.just(1)))
def test_one_round_one_block_is_exact_attention(case: LSHCase) -> None:
    torch.testing.assert_close(case.run(), exact_attention(case), atol=1e-10, rtol=1e-10)


@given(case=one_block_cases())
def test_one_block_is_exact_for_any_number_of_rounds(case: LSHCase) -> None:
    # Every round sees everything; the union counts each key once, so extra rounds change nothing.
    torch.testing.assert_close(case.run(), exact_attention(case), atol=1e-10, rtol=1e-10)


def test_exact_for_every_short_length() -> None:
    g = torch.Generator().manual_seed(0)
    for seq_len in range(1, 33):
        for causal in (False, True):
            for shared_qk in (False, True):
                q, k, v = (randn((1, 2, seq_len, 4), g) for _ in range(3))
                case = LSHCase(q, k, v, None, 32, 1, None, causal, shared_qk, seed=seq_len)
                torch.testing.assert_close(case.run(), exact_attention(case), atol=1e-10, rtol=1e-10)


@given(case=one_block_cases(n_hashes=st.just(1)))
def test_removing_padding_changes_nothing_at_real_positions(case: LSHCase) -> None:
    assume(case.mask is not None)
    out = case.run()
    assert case.mask is not None
    for b in range(case.q.shape[0]):
        real = ~case.mask[b]
        assert (out[b][:, ~real] == 0).all(), "a padded position has a non-zero output"
        if not real.any():
            continue
        alone = replace(
            case,
            q=case.q[b : b + 1, :, real],
            k=case.k[b : b + 1, :, real],
            v=case.v[b : b + 1, :, real],
            mask=None,
        )
        torch.testing.assert_close(out[b : b + 1][:, :, real], alone.run(), atol=1e-10, rtol=1e-10)


@given(case=lsh_cases(max_len=200), data=st.data())
def test_padded_tokens_never_receive_weight(case: LSHCase, data: st.DataObject) -> None:
    mask = case.mask if case.mask is not None else data.draw(padding_masks(case.q.shape[0], case.seq_len))
    assume(mask is not None and mask.any())
    case = replace(case, mask=mask)
    out = case.run()
    padded = mask[:, None, :, None]
    g = torch.Generator().manual_seed(case.seed + 7)
    q, k, v = (torch.where(padded, 100 * randn(tuple(t.shape), g), t) for t in (case.q, case.k, case.v))
    again = case.run(q, k, v)
    assert torch.isfinite(out).all()
    assert (out.masked_select(padded.expand_as(out)) == 0).all(), "a padded position has a non-zero output"
    assert torch.equal(out, again), "changing the padded tokens changed an output"


@given(case=lsh_cases(max_len=200), data=st.data())
def test_gradient_at_padded_tokens_reaches_no_other_token(case: LSHCase, data: st.DataObject) -> None:
    """Padded tokens attend to nothing and output a constant, so whatever gradient arrives at their outputs,
    NaN included, must change no gradient anywhere (the backward pass zeroes their rows)."""
    mask = case.mask if case.mask is not None else data.draw(padding_masks(case.q.shape[0], case.seq_len))
    assume(mask is not None and mask.any())
    case = replace(case, mask=mask)
    inputs = [t.clone().requires_grad_(True) for t in (case.q, case.k, case.v)]
    out = case.run(*inputs)
    used = [inputs[0], inputs[2]] if case.shared_qk else inputs  # shared QK takes no k
    weights = randn(tuple(out.shape), torch.Generator().manual_seed(case.seed), out.dtype)
    padded = mask[:, None, :, None].expand_as(out)
    clean = torch.autograd.grad(out, used, weights.masked_fill(padded, 0.0), retain_graph=True)
    poisoned = torch.autograd.grad(out, used, weights.masked_fill(padded, float("nan")))
    for expected, got in zip(clean, poisoned, strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_gradient_layout_does_not_matter(layout: str) -> None:
    """The backward pass reads grad_out through one (G * N, dv) view: a strided or an expanded (as from a sum)
    gradient gives the same gradients as its contiguous copy."""
    g = torch.Generator().manual_seed(3)
    q, v = (randn((2, 2, 37, 4), g).requires_grad_(True) for _ in range(2))
    mask = torch.zeros(2, 37, dtype=torch.bool)
    mask[1, 30:] = True
    out = lsh_attention(q, None, v, bucket_size=4, n_hashes=2, shared_qk=True, key_padding_mask=mask)
    if layout == "strided":
        grad = randn((2, 2, 37, 8), g)[..., ::2]
    else:
        grad = torch.ones((), dtype=out.dtype).expand(out.shape)
    assert not grad.is_contiguous()
    expected = torch.autograd.grad(out, (q, v), grad.contiguous(), retain_graph=True)
    for want, got in zip(expected, torch.autograd.grad(out, (q, v), grad), strict=True):
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------------------
# 3. Strict causality
# ----------------------------------------------------------------------------------------------------------


@settings(max_examples=max(40, settings.default.max_examples))
@given(
    case=lsh_cases(
        min_len=100,
        max_len=400,
        bucket_sizes=st.integers(2, 8),
        n_buckets=st.sampled_from([4, 6, 8, 12, 16]),
        causal=True,
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    data=st.data(),
)
def test_causal_output_ignores_the_future_bit_for_bit(
    case: LSHCase, dtype: torch.dtype, data: st.DataObject
) -> None:
    case = case.cast(dtype)
    seq_len = case.seq_len
    out = case.run()
    g = torch.Generator().manual_seed(data.draw(SEEDS, label="perturbation seed"))
    for cut in data.draw(st.lists(st.integers(0, seq_len - 1), min_size=1, max_size=3), label="cuts"):
        future = torch.arange(seq_len) > cut
        sel = future[None, None, :, None]
        q = torch.where(sel, 3 * randn(tuple(case.q.shape), g, dtype), case.q)
        k = torch.where(sel, 3 * randn(tuple(case.k.shape), g, dtype), case.k)
        v = torch.where(sel, 3 * randn(tuple(case.v.shape), g, dtype), case.v)
        mask = case.mask
        if mask is not None:
            mask = torch.where(future, torch.rand(mask.shape, generator=g) < 0.5, mask)
        perturbed = case.run(q, k, v, key_padding_mask=mask)
        assert torch.equal(perturbed[:, :, : cut + 1], out[:, :, : cut + 1]), (
            f"an output at a position <= {cut} changed when only positions > {cut} did"
        )


# ----------------------------------------------------------------------------------------------------------
# 4. Determinism and randomness
# ----------------------------------------------------------------------------------------------------------


@given(case=lsh_cases(max_len=150), dropout_p=st.sampled_from([0.0, 0.3]))
def test_same_seed_same_bits_and_global_rng_untouched(case: LSHCase, dropout_p: float) -> None:
    case = replace(case, dropout_p=dropout_p)
    before = torch.get_rng_state()
    first = case.run()
    second = case.run()
    assert torch.equal(torch.get_rng_state(), before), "lsh_attention touched the global RNG"
    assert torch.equal(first, second)
    # generator=None is a fixed seed (0): reproducible too.
    assert torch.equal(case.run(generator=None), case.run(generator=None))
    assert torch.equal(case.run(generator=None), case.run(generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), before)


@given(seed=SEEDS, causal=st.booleans(), shared_qk=st.booleans(), n_hashes=st.integers(1, 3))
def test_passed_generator_advances_by_one_rotation_draw(
    seed: int, causal: bool, shared_qk: bool, n_hashes: int
) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    q, k, v = (randn((1, 2, 64, 4), g) for _ in range(3))
    case = LSHCase(q, k, v, None, 8, n_hashes, 8, causal, shared_qk, seed)
    generator = case.generator()
    first = case.run(generator=generator)
    second = case.run(generator=generator)
    assert torch.equal(first, case.run()), "the first call did not use the generator's current state"
    assert not torch.equal(first, second), "a second call with the same generator reused the rotations"
    # The rotations are drawn once per call: the second call sees the generator after one draw.
    advanced = case.generator()
    torch.randn(4, n_hashes, 4, generator=advanced, dtype=torch.float32)
    assert torch.equal(second, case.run(generator=advanced))


# ----------------------------------------------------------------------------------------------------------
# 5. gradcheck
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("shared_qk", [False, True], ids=["separate", "shared"])
@settings(max_examples=max(3, settings.default.max_examples // 4))
@given(
    seed=SEEDS,
    seq_len=st.integers(7, 13),
    bucket_size=st.integers(2, 4),
    n_hashes=st.integers(1, 3),
    data=st.data(),
)
def test_gradcheck_float64(
    causal: bool,
    shared_qk: bool,
    seed: int,
    seq_len: int,
    bucket_size: int,
    n_hashes: int,
    data: st.DataObject,
) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (randn((2, 1, seq_len, 4), g).requires_grad_(True) for _ in range(3))
    mask = torch.rand(2, seq_len, generator=g) < 0.25
    mask[1, -data.draw(st.integers(1, 3)) :] = True
    case = LSHCase(q, k, v, mask, bucket_size, n_hashes, None, causal, shared_qk, seed)
    # The hash is piecewise constant: skip draws where a finite-difference step could flip a bucket.
    with torch.no_grad():
        _, margin = reference_lsh(case)
    assume(margin > 1e-3)

    if shared_qk:  # no k: keys are the normalised queries, so q's gradient covers both roles
        assert torch.autograd.gradcheck(lambda q, v: case.run(q, k, v), (q, v), eps=1e-6, atol=1e-5)
    else:
        assert torch.autograd.gradcheck(lambda q, k, v: case.run(q, k, v), (q, k, v), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# 5b. Pieces: the kernels run a few query blocks at a time; every way of cutting a round gives the same result
# ----------------------------------------------------------------------------------------------------------


def query_blocks(case: LSHCase) -> int:
    """Query blocks per round, from the layouts' definitions: ceil(N / bs) sorted blocks; causal, one block
    per bucket more (each bucket starts a block), and with separate q and k ceil(N / bs) more again."""
    blocks = max(1, math.ceil(case.seq_len / case.bucket_size))
    if not case.causal:
        return blocks
    n_buckets = (
        reference_n_buckets(case.seq_len, case.bucket_size) if case.n_buckets is None else case.n_buckets
    )
    key_blocks = blocks + n_buckets
    return key_blocks if case.shared_qk else key_blocks + blocks


PIECE_KINDS = (
    "one piece",
    "a piece per block",
    "equal pieces",
    "a last partial piece",
    "a last piece of one block",
)


@st.composite
def pieces_of(draw: st.DrawFn, n_blocks: int) -> tuple[str, int]:
    """A way of cutting n_blocks query blocks into kernel calls: (its kind, blocks per piece)."""
    kind = draw(st.sampled_from(PIECE_KINDS))
    if kind == "one piece":
        return kind, n_blocks + draw(st.integers(0, 2))
    if kind == "a piece per block":
        return kind, 1
    if kind == "equal pieces":
        divisors = [d for d in range(2, n_blocks) if n_blocks % d == 0]
        assume(divisors)
        return kind, draw(st.sampled_from(divisors))
    if kind == "a last piece of one block":  # the piece that crashed training (issue 23)
        sizes = [d for d in range(2, n_blocks) if n_blocks % d == 1]
    else:
        sizes = [d for d in range(2, n_blocks) if n_blocks % d > 1]
    assume(sizes)
    return kind, draw(st.sampled_from(sizes))


@st.composite
def piece_cases(draw: st.DrawFn) -> tuple[LSHCase, str, int]:
    """A case, half the time over whole blocks without padding (the first round's mask is then one pattern
    every block repeats, the broadcast branch), and a way of cutting it into pieces."""
    case = draw(lsh_cases(min_len=4, max_len=150, max_batch=3))
    if draw(st.booleans(), label="broadcast first round"):
        bucket_size, n_blocks = draw(st.integers(2, 8)), draw(st.integers(2, 12))
        g = torch.Generator().manual_seed(case.seed)
        batch, heads, _, head_dim = case.q.shape
        q, k, v = (
            randn((batch, heads, n_blocks * bucket_size, width), g)
            for width in (head_dim, head_dim, case.v.shape[-1])
        )
        case = replace(
            case,
            q=q,
            k=k,
            v=v,
            mask=None,
            bucket_size=bucket_size,
            causal=False,
            n_hashes=max(case.n_hashes, 2),
        )
    kind, blocks_per_piece = draw(pieces_of(query_blocks(case)))
    return case, kind, blocks_per_piece


def run_with_gradients(case: LSHCase, **overrides: object) -> list[torch.Tensor]:
    """Output and the gradients of q, k, v for a fixed random output gradient."""
    weights = randn(
        (*case.v.shape[:3], case.v.shape[-1]), torch.Generator().manual_seed(case.seed), case.v.dtype
    )
    inputs = [t.clone().requires_grad_(True) for t in (case.q, case.k, case.v)]
    out = case.run(*inputs, **overrides)
    grads = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True, materialize_grads=True)
    return [out.detach(), *grads]


# The first round's pattern broadcast over 4 blocks cut 3 + 1: the shape of the training crash of issue 23.
@example(
    pieces=(
        LSHCase(
            *(randn((2, 3, 16, 4), torch.Generator().manual_seed(i)) for i in range(3)),
            None,
            4,
            2,
            None,
            False,
            False,
            5,
        ),
        "a last piece of one block",
        3,
    ),
    dropout_p=0.0,
)
@example(
    pieces=(
        LSHCase(
            *(randn((1, 2, 24, 4), torch.Generator().manual_seed(i)) for i in range(3)),
            None,
            4,
            3,
            None,
            False,
            True,
            5,
        ),
        "equal pieces",
        2,
    ),
    dropout_p=0.0,
)
@settings(max_examples=max(60, settings.default.max_examples))
@given(pieces=piece_cases(), dropout_p=st.sampled_from([0.0, 0.0, 0.3]))
def test_any_cut_into_pieces_gives_the_same_result(
    pieces: tuple[LSHCase, str, int], dropout_p: float
) -> None:
    """Forward and backward in pieces of ``blocks_per_piece`` query blocks equal one call over all blocks (the
    output bit for bit; gradients up to the order in which a key's two views are added) and, without dropout,
    the slow reference. The row loops (merge, fallback) run a row at a time."""
    case, _, blocks_per_piece = pieces
    case = replace(case, dropout_p=dropout_p)
    whole = run_with_gradients(case, blocks_per_piece=query_blocks(case))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lsh_pieces, "_PIECE_BYTES", 1)
        cut = run_with_gradients(case, blocks_per_piece=blocks_per_piece)
    if dropout_p == 0.0:
        # The fused kernels compute each query block on its own: the cut cannot change an output bit.
        assert torch.equal(cut[0], whole[0]), (
            f"the output differs between one piece and pieces of {blocks_per_piece}"
        )
    else:
        # Dropout runs the math kernel's batched matmuls, whose blocking a BLAS may choose by batch size.
        torch.testing.assert_close(cut[0], whole[0], rtol=1e-12, atol=1e-12)
    for name, expected, got in zip(["grad q", "grad k", "grad v"], whole[1:], cut[1:], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"{name} differs")
    if dropout_p == 0.0:
        q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
        want, margin = reference_lsh(case, q, v, k)
        assume(margin > HASH_MARGIN)
        torch.testing.assert_close(cut[0], want.detach(), atol=1e-9, rtol=1e-9)
        weights = randn((*case.v.shape[:3], case.v.shape[-1]), torch.Generator().manual_seed(case.seed))
        expected = torch.autograd.grad(
            (want * weights).sum(), (q, k, v), allow_unused=True, materialize_grads=True
        )
        for name, got, g_want in zip("qkv", cut[1:], expected, strict=True):
            torch.testing.assert_close(got, g_want, atol=1e-8, rtol=1e-8, msg=lambda m, n=name: f"d{n}: {m}")


def test_piece_cases_reach_every_branch() -> None:
    """The strategy above draws every kind of cut, with and without the broadcast first round: the branches
    the property test is meant to cover are not left to luck."""
    seen: set[tuple[str, bool]] = set()

    @settings(max_examples=300, derandomize=True, database=None)
    @given(pieces=piece_cases())
    def collect(pieces: tuple[LSHCase, str, int]) -> None:
        case, kind, _ = pieces
        broadcast = case.mask is None and not case.causal and case.seq_len % case.bucket_size == 0
        seen.add((kind, broadcast))

    collect()
    assert seen == {(kind, broadcast) for kind in PIECE_KINDS for broadcast in (False, True)}


# The shapes of issue 23's table (bucket 49, 2 rounds: the SCT models' defaults), which crashed in the
# backward-enabled forward pass with the default pieces.
@pytest.mark.parametrize("shared_qk", [False, True], ids=["separate", "shared"])
@pytest.mark.parametrize(
    "shape",
    [(4, 6, 196, 64), (2, 8, 196, 96), (5, 6, 784, 32), (6, 6, 3136, 16)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_model_shapes_train_with_default_pieces(shape: tuple[int, int, int, int], shared_qk: bool) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (randn(shape, g, torch.float32) for _ in range(3))
    case = LSHCase(q, k, v, None, 49, 2, None, False, shared_qk, seed=3)
    default = run_with_gradients(case)
    one_call = run_with_gradients(case, blocks_per_piece=query_blocks(case))
    assert torch.equal(default[0], one_call[0]), "the output differs between the default pieces and one call"
    for name, expected, got in zip(["grad q", "grad k", "grad v"], one_call[1:], default[1:], strict=True):
        assert torch.isfinite(got).all(), f"{name} is not finite"
        torch.testing.assert_close(
            got, expected, msg=f"{name} differs between the default pieces and one call"
        )


@pytest.mark.parametrize(
    "bad,error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)]
)
def test_bad_blocks_per_piece_raises(bad: object, error: type[Exception]) -> None:
    q = torch.zeros(1, 1, 8, 4)
    with pytest.raises(
        error, match=rf"blocks_per_piece to be None or a positive int, got {re.escape(repr(bad))}"
    ):
        lsh_attention(q, q, q, bucket_size=4, blocks_per_piece=bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# 6. Half precision
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)], ids=["fp16", "bf16"])
@given(case=lsh_cases(max_len=150), data=st.data())
def test_half_precision_is_finite_and_close_to_float64(
    dtype: torch.dtype, tol: float, case: LSHCase, data: st.DataObject
) -> None:
    batch, seq_len = case.q.shape[0], case.seq_len
    mask = torch.zeros(batch, seq_len, dtype=torch.bool) if case.mask is None else case.mask.clone()
    # Always some padded rows; sometimes a whole batch element of padding.
    mask[:, data.draw(st.integers(0, seq_len - 1))] = True
    if data.draw(st.booleans()):
        mask[data.draw(st.integers(0, batch - 1))] = True
    half = replace(case, mask=mask).cast(dtype)
    wide = half.cast(torch.float64)  # the same values, so the same buckets
    q, k, v = (t.clone().requires_grad_(True) for t in (half.q, half.k, half.v))
    out = half.run(q, k, v)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out[mask[:, None, :, None].expand_as(out)] == 0).all()
    torch.testing.assert_close(out.double(), wide.run(), atol=tol, rtol=tol)
    out.float().sum().backward()
    for t in (q, v) if half.shared_qk else (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@given(seq_len=st.integers(2, 120), zero_rows=st.sets(st.integers(0, 119), min_size=1, max_size=8))
def test_zero_query_under_shared_qk_is_finite(dtype: torch.dtype, seq_len: int, zero_rows: set[int]) -> None:
    # A zero query's key is 0 / max(0, eps): with F.normalize's eps (1e-12, which is 0 in float16) it would be
    # NaN, and so would the logits of every query that sees it.
    g = torch.Generator().manual_seed(seq_len)
    q = randn((1, 2, seq_len, 8), g)
    q[:, :, [row % seq_len for row in zero_rows]] = 0.0
    v = randn((1, 2, seq_len, 8), g)
    half = LSHCase(q, q, v, None, 8, 2, None, False, True, seed=seq_len).cast(dtype)
    wide = half.cast(torch.float64)
    q_half, v_half = (t.clone().requires_grad_(True) for t in (half.q, half.v))
    out = half.run(q_half, None, v_half)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), wide.run(), atol=6e-2, rtol=6e-2)
    out.float().sum().backward()
    assert torch.isfinite(q_half.grad.float()).all() and torch.isfinite(v_half.grad.float()).all()


# ----------------------------------------------------------------------------------------------------------
# 7. More rounds, better approximation
# ----------------------------------------------------------------------------------------------------------


def clustered_case(seed: int, n_hashes: int) -> LSHCase:
    g = torch.Generator().manual_seed(seed)
    seq_len, head_dim, clusters = 256, 16, 8
    centres = randn((clusters, head_dim), g) * 4.0
    assignment = torch.randint(0, clusters, (seq_len,), generator=g)
    q = (centres[assignment] + 0.5 * randn((seq_len, head_dim), g))[None, None]
    v = randn((1, 1, seq_len, head_dim), g)
    return LSHCase(q, q, v, None, 16, n_hashes, None, False, True, seed=seed + 1000)


def test_error_falls_as_rounds_grow_on_clustered_data() -> None:
    errors = []
    for n_hashes in (1, 2, 4, 8):
        per_seed = []
        for seed in range(4):
            case = clustered_case(seed, n_hashes)
            exact = exact_attention(case)
            per_seed.append(((case.run() - exact).norm() / exact.norm()).item())
        errors.append(sum(per_seed) / len(per_seed))
    assert errors[0] > errors[1] > errors[2] > errors[3], errors
    assert errors[3] < 0.5 * errors[0], errors


# ----------------------------------------------------------------------------------------------------------
# 8. Errors
# ----------------------------------------------------------------------------------------------------------


def shape_re(shape: tuple[int, ...]) -> str:
    return re.escape(str(tuple(shape)))


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(B, H, N, d), small."""
    batch, heads = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (batch, heads, draw(st.integers(2, 9)), draw(st.integers(1, 5)))


@given(shape=shapes(), rank=st.sampled_from([1, 2, 3, 5]), which=st.sampled_from(["q", "k", "v"]))
def test_wrong_rank_raises(shape: tuple[int, int, int, int], rank: int, which: str) -> None:
    tensors = {name: torch.zeros(shape) for name in "qkv"}
    bad = (shape + (2,))[:rank] if rank <= 5 else shape
    tensors[which] = torch.zeros(bad)
    with pytest.raises(ValueError, match=rf"{which} of shape \(B, H, N, d\).*got {shape_re(bad)}"):
        lsh_attention(tensors["q"], tensors["k"], tensors["v"], bucket_size=2)


@given(shape=shapes(), axis=st.integers(0, 3), delta=st.integers(1, 3))
def test_key_shape_mismatch_names_both_shapes(
    shape: tuple[int, int, int, int], axis: int, delta: int
) -> None:
    bad = list(shape)
    bad[axis] += delta
    with pytest.raises(ValueError, match=rf"k .*{shape_re(shape)}.*got {shape_re(tuple(bad))}"):
        lsh_attention(torch.zeros(shape), torch.zeros(bad), torch.zeros(shape), bucket_size=2)


@given(shape=shapes(), axis=st.integers(0, 2), delta=st.integers(1, 3))
def test_value_shape_mismatch_names_both_shapes(
    shape: tuple[int, int, int, int], axis: int, delta: int
) -> None:
    bad = list(shape)
    bad[axis] += delta
    b, h, n, _ = shape
    with pytest.raises(ValueError, match=rf"v .*{re.escape(f'({b}, {h}, {n}')}.*got {shape_re(tuple(bad))}"):
        lsh_attention(torch.zeros(shape), torch.zeros(shape), torch.zeros(bad), bucket_size=2)


def test_shared_qk_rejects_a_separate_key() -> None:
    q, v = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    with pytest.raises(ValueError, match="shared_qk"):
        lsh_attention(q, q.clone(), v, bucket_size=2, shared_qk=True)
    # k=None and k=q itself are both accepted and mean the same thing.
    assert torch.equal(
        lsh_attention(q, None, v, bucket_size=2, shared_qk=True),
        lsh_attention(q, q, v, bucket_size=2, shared_qk=True),
    )
    with pytest.raises(ValueError, match="needs k"):
        lsh_attention(q, None, v, bucket_size=2, shared_qk=False)


@given(n_buckets=st.integers(1, 20).filter(lambda n: n % 2 == 1 and n != 1) | st.integers(-4, 0))
def test_bad_n_buckets_raises(n_buckets: int) -> None:
    q = torch.randn(1, 1, 6, 4)
    with pytest.raises(ValueError, match=rf"n_buckets.*even.*got {n_buckets}"):
        lsh_attention(q, q, q, bucket_size=2, n_buckets=n_buckets)


@given(bucket_size=st.integers(-3, 0), which=st.sampled_from(["bucket_size", "n_hashes"]))
def test_non_positive_sizes_raise(bucket_size: int, which: str) -> None:
    q = torch.randn(1, 1, 6, 4)
    kwargs = {"bucket_size": 2, which: bucket_size}
    with pytest.raises(ValueError, match=rf"{which} to be a positive int, got {bucket_size}"):
        lsh_attention(q, q, q, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["bucket_size", "n_hashes", "n_buckets"])
@pytest.mark.parametrize("bad", [2.0, True, "4", None])
def test_sizes_of_the_wrong_type_raise_type_error(name: str, bad: object) -> None:
    if name == "n_buckets" and bad is None:
        return  # None is n_buckets' default
    q = torch.randn(1, 1, 6, 4)
    with pytest.raises(
        TypeError, match=rf"{name} to be .*, got {re.escape(repr(bad))} \({type(bad).__name__}\)"
    ):
        lsh_attention(q, q, q, **{"bucket_size": 2, name: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["is_causal", "shared_qk"])
def test_flags_must_be_bools(name: str) -> None:
    q = torch.randn(1, 1, 6, 4)
    with pytest.raises(TypeError, match=rf"{name} to be a bool, got 1 \(int\)"):
        lsh_attention(q, q, q, bucket_size=2, **{name: 1})  # type: ignore[arg-type]


def test_dropout_of_the_wrong_type_raises_type_error() -> None:
    q = torch.randn(1, 1, 6, 4)
    with pytest.raises(TypeError, match=r"dropout_p to be a float, got '0.1' \(str\)"):
        lsh_attention(q, q, q, bucket_size=2, dropout_p="0.1")  # type: ignore[arg-type]


def test_mixed_dtypes_name_each_dtype() -> None:
    q = torch.randn(1, 1, 6, 4)
    with pytest.raises(TypeError, match=r"one dtype, got q torch.float32, k torch.float32, v torch.float64"):
        lsh_attention(q, q, q.double(), bucket_size=2)


@given(case=lsh_cases(max_len=60, masks=False))
def test_old_causal_keyword_warns_and_means_is_causal(case: LSHCase) -> None:
    k = None if case.shared_qk else case.k
    options = {"bucket_size": case.bucket_size, "n_hashes": case.n_hashes, "shared_qk": case.shared_qk}
    with pytest.warns(FutureWarning, match=r"causal= is renamed is_causal="):
        old = lsh_attention(case.q, k, case.v, causal=case.causal, **options)  # type: ignore[call-arg]
    assert torch.equal(old, lsh_attention(case.q, k, case.v, is_causal=case.causal, **options))


def test_both_causal_keywords_raise_type_error() -> None:
    q = torch.randn(1, 1, 6, 4)
    with pytest.raises(TypeError, match=r"both is_causal= and its old name causal="):
        lsh_attention(q, q, q, bucket_size=2, is_causal=False, causal=True)  # type: ignore[call-arg]


@given(shape=shapes(), bad=st.lists(st.integers(1, 10), min_size=1, max_size=3).map(tuple))
def test_mask_of_wrong_shape_raises(shape: tuple[int, int, int, int], bad: tuple[int, ...]) -> None:
    b, _, n, _ = shape
    assume(bad != (b, n))
    q = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"key_padding_mask.*{shape_re((b, n))}.*got {shape_re(bad)}"):
        lsh_attention(q, q, q, bucket_size=2, key_padding_mask=torch.zeros(bad, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8], ids=str)
def test_mask_of_wrong_dtype_raises(dtype: torch.dtype) -> None:
    q = torch.zeros(2, 1, 5, 4)
    with pytest.raises(TypeError, match="key_padding_mask.*bool"):
        lsh_attention(q, q, q, bucket_size=2, key_padding_mask=torch.zeros(2, 5, dtype=dtype))


@given(p=st.floats(1.0, 5.0) | st.floats(-5.0, -1e-6))
def test_bad_dropout_raises(p: float) -> None:
    q = torch.zeros(1, 1, 5, 4)
    with pytest.raises(ValueError, match="dropout_p"):
        lsh_attention(q, q, q, bucket_size=2, dropout_p=p)


# ----------------------------------------------------------------------------------------------------------
# 9. Memory: no N x N tensor
# ----------------------------------------------------------------------------------------------------------


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any dispatched op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


def test_the_instrument_sees_a_dense_score_matrix() -> None:
    seq_len = 256
    q = torch.randn(1, 1, seq_len, 16, requires_grad=True)
    with LargestTensor() as seen:
        attention(q, q, q, backend="math").sum().backward()
    assert seen.largest >= seq_len * seq_len


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("shared_qk", [False, True], ids=["separate", "shared"])
def test_no_quadratic_tensor_in_forward_or_backward(causal: bool, shared_qk: bool) -> None:
    seq_len = 4096
    g = torch.Generator().manual_seed(0)
    q, k, v = (randn((1, 1, seq_len, 16), g, torch.float32).requires_grad_(True) for _ in range(3))
    mask = torch.zeros(1, seq_len, dtype=torch.bool)
    mask[:, -100:] = True
    with LargestTensor() as forward:
        out = lsh_attention(
            q,
            None if shared_qk else k,
            v,
            bucket_size=32,
            n_hashes=2,
            is_causal=causal,
            shared_qk=shared_qk,
            key_padding_mask=mask,
        )
    with LargestTensor() as backward:
        out.sum().backward()
    assert backward.ops > 0, "the backward pass was not observed"
    assert q.grad is not None and v.grad is not None
    assert max(forward.largest, backward.largest) < seq_len * seq_len / 8, (forward.largest, backward.largest)


# ----------------------------------------------------------------------------------------------------------
# 10. Dropout
# ----------------------------------------------------------------------------------------------------------


@given(case=lsh_cases(min_len=8, max_len=120, masks=False), p=st.sampled_from([0.1, 0.5, 0.9]))
def test_dropout_is_seeded_active_and_differentiable(case: LSHCase, p: float) -> None:
    dropped = replace(case, dropout_p=p)
    before = torch.get_rng_state()
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    out = dropped.run(q, k, v)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.isfinite(out).all()
    assert torch.equal(out, dropped.run()), "same seed, different dropout"
    assert not torch.equal(out, case.run()), "dropout_p > 0 changed nothing"
    out.sum().backward()
    for t in (q, v) if case.shared_qk else (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all()


@settings(max_examples=max(15, settings.default.max_examples))
@given(case=lsh_cases(min_len=10, max_len=64, max_batch=1, masks=False), p=st.sampled_from([0.2, 0.5]))
def test_dropout_drops_each_attention_weight_independently(case: LSHCase, p: float) -> None:
    # With v = identity the output rows are the attention weights themselves: every weight must be either
    # dropped (0) or kept and rescaled by 1 / (1 - p), each (query, key) pair once, however many rounds
    # see it.
    seq_len = case.seq_len
    eye = torch.eye(seq_len, dtype=torch.float64).expand(1, case.q.shape[1], seq_len, seq_len)
    case = replace(case, v=eye.contiguous())
    weights = case.run()
    dropped = replace(case, dropout_p=p).run()
    if case.shared_qk:
        # A query with no key to attend to returns its own value, untouched by dropout.
        isolated = weights.diagonal(dim1=-2, dim2=-1) == 1
        weights = weights.masked_fill(isolated[..., None], 0.0)
        dropped = dropped.masked_fill(isolated[..., None], 0.0)
    seen = weights > 0
    kept = dropped != 0
    assert not (kept & ~seen).any(), "dropout put weight on a key the query does not see"
    torch.testing.assert_close(dropped[kept], weights[kept] / (1 - p), atol=1e-12, rtol=1e-9)
    pairs = int(seen.sum())
    if pairs >= 200:
        rate = 1 - kept.sum().item() / pairs
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / pairs) + 0.02, (rate, p, pairs)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("shared_qk", [False, True], ids=["separate", "shared"])
@settings(max_examples=max(2, settings.default.max_examples // 5))
@given(seed=SEEDS, n_hashes=st.integers(1, 3), padded=st.booleans())
def test_gradcheck_with_dropout(
    causal: bool, shared_qk: bool, seed: int, n_hashes: int, padded: bool
) -> None:
    # A fresh generator at one seed per call makes the dropped function deterministic, so its backward
    # (which must regenerate the very same masks) can be checked by finite differences.
    g = torch.Generator().manual_seed(seed)
    q, k, v = (randn((1, 2, 9, 4), g).requires_grad_(True) for _ in range(3))
    mask = (torch.rand(1, 9, generator=g) < 0.25) if padded else None
    case = LSHCase(q, k, v, mask, 3, n_hashes, None, causal, shared_qk, seed, dropout_p=0.3)
    with torch.no_grad():
        _, margin = reference_lsh(case)
    assume(margin > 1e-3)
    if shared_qk:
        assert torch.autograd.gradcheck(lambda q, v: case.run(q, k, v), (q, v), eps=1e-6, atol=1e-5)
    else:
        assert torch.autograd.gradcheck(lambda q, k, v: case.run(q, k, v), (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_logit_bias_is_zero_or_minus_inf(dtype: torch.dtype) -> None:
    """The additive mask is built from integer bit patterns: it must equal where(keep, 0, -inf) exactly."""
    keep = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    piece = keep[:, 1:]  # a non-contiguous piece, as the kernels receive
    bias = logit_bias(piece, None, dtype, {})
    assert bias.dtype == dtype
    assert torch.equal(bias, torch.where(piece, 0.0, float("-inf")).to(dtype))
    # A round whose mask is one pattern: its bias, broadcast over groups and blocks.
    pattern = keep[0, 0]
    bias = logit_bias(pattern.expand(2, 1, 4, 5), pattern, dtype, {})
    assert (
        bias.shape == (2, 1, 4, 5)
        and bias.untyped_storage().nbytes() == pattern.numel() * bias.element_size()
    )
    assert torch.equal(bias, torch.where(pattern, 0.0, float("-inf")).to(dtype).expand(2, 1, 4, 5))


# ----------------------------------------------------------------------------------------------------------
# 10. Fused kernels (CPU flash; on CUDA, SDPA's memory-efficient kernels and xformers) against the math kernel
# ----------------------------------------------------------------------------------------------------------


def fused_backends() -> list[object]:
    """(device, dispatch backend) pairs whose block kernel is a fused one; CUDA pairs skip without a GPU."""
    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    no_xformers = pytest.mark.skipif(
        not available_backends()["xformers"].available, reason="needs CUDA and a working xformers"
    )
    return [
        pytest.param("cpu", "sdpa", id="cpu-sdpa"),
        pytest.param("cuda", "sdpa", id="cuda-sdpa", marks=no_cuda),
        pytest.param("cuda", "xformers", id="cuda-xformers", marks=no_xformers),
    ]


def on_device(case: LSHCase, device: str, dtype: torch.dtype) -> LSHCase:
    mask = None if case.mask is None else case.mask.to(device)
    return replace(
        case, q=case.q.to(device, dtype), k=case.k.to(device, dtype), v=case.v.to(device, dtype), mask=mask
    )


def run_with_backend(case: LSHCase, backend: str, weights: torch.Tensor) -> list[torch.Tensor]:
    """Output and gradients (of a fixed weighted sum) under one dispatch backend, rotations from a generator
    on the inputs' device at the case's seed (so every backend sees the same layout)."""
    inputs = [t.clone().requires_grad_(True) for t in (case.q, case.k, case.v)]
    generator = torch.Generator(device=case.q.device).manual_seed(case.seed)
    with use_backend(backend):
        out = case.run(*inputs, generator=generator)
    (out.float() * weights).sum().backward()
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in inputs]
    return [out.detach()] + grads


@given(case=lsh_cases(max_len=200))
def test_cuda_plumbing_choices_change_nothing_on_cpu(case: LSHCase) -> None:
    """On CUDA, key views are copied out contiguously (not read as overlapping windows) and rows with no key
    are zeroed before the merge; forced on CPU, both must give the same output and gradients bit for bit."""
    weights = torch.randn(
        case.v.shape, generator=torch.Generator().manual_seed(case.seed), dtype=case.v.dtype
    )
    default = run_with_backend(case, "sdpa", weights)
    with pytest.MonkeyPatch.context() as patch:
        cuda_like_record = replace(
            BLOCK_KERNELS["cpu_flash"], takes_overlapping_keys=False, zeroes_empty_rows=False
        )
        patch.setitem(BLOCK_KERNELS, "cpu_flash", cuda_like_record)
        cuda_like = run_with_backend(case, "sdpa", weights)
    for name, expected, got in zip(["output", "grad q", "grad k", "grad v"], default, cuda_like, strict=True):
        assert torch.equal(got, expected), f"{name} differs"


@pytest.mark.parametrize("device,backend", fused_backends())
@given(case=lsh_cases(max_len=300))
def test_output_and_gradients_repeat_bit_for_bit(device: str, backend: str, case: LSHCase) -> None:
    """Same generator, same output and gradients. On CUDA the gradient scatter adds with float atomics, so the
    gradients repeat only in deterministic mode (measured on an H200: up to 5e-7 apart by default)."""
    case = on_device(case, device, torch.float32)
    weights = torch.randn(case.v.shape, generator=torch.Generator().manual_seed(case.seed)).to(device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(device == "cuda" or deterministic, warn_only=warn_only)
    try:
        first = run_with_backend(case, backend, weights)
        second = run_with_backend(case, backend, weights)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    for name, a, b in zip(["output", "grad q", "grad k", "grad v"], first, second, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical calls"


@pytest.mark.parametrize("device,backend", fused_backends())
@given(case=lsh_cases(max_len=300))
def test_fused_kernels_match_the_math_kernel(device: str, backend: str, case: LSHCase) -> None:
    case = on_device(case, device, torch.float32)
    weights = torch.randn(case.v.shape, generator=torch.Generator().manual_seed(case.seed)).to(device)
    fused = run_with_backend(case, backend, weights)
    reference = run_with_backend(case, "math", weights)
    for name, got, expected in zip(["output", "grad q", "grad k", "grad v"], fused, reference, strict=True):
        assert torch.isfinite(got).all(), name
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
        torch.testing.assert_close(got, expected, atol=2e-5 * scale, rtol=1e-4, msg=f"{name} differs")


@pytest.mark.parametrize("device,backend", fused_backends())
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)], ids=["fp16", "bf16"])
@given(case=lsh_cases(max_len=200), data=st.data())
def test_fused_half_precision_is_finite_and_close_to_float32(
    device: str, backend: str, dtype: torch.dtype, tol: float, case: LSHCase, data: st.DataObject
) -> None:
    batch, seq_len = case.q.shape[0], case.seq_len
    mask = torch.zeros(batch, seq_len, dtype=torch.bool) if case.mask is None else case.mask.clone()
    mask[:, data.draw(st.integers(0, seq_len - 1))] = True
    if data.draw(st.booleans()):
        mask[data.draw(st.integers(0, batch - 1))] = True  # a whole batch element of padding
    half = on_device(replace(case, mask=mask), device, dtype)
    wide = on_device(half, device, torch.float32)  # the same values, so the same buckets
    weights = torch.randn(case.v.shape, generator=torch.Generator().manual_seed(case.seed)).to(device)
    out, *grads = run_with_backend(half, backend, weights)
    expected = run_with_backend(wide, "math", weights)[0]
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out[mask.to(device)[:, None, :, None].expand_as(out)] == 0).all()
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)
    for grad in grads:
        assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("device,backend", fused_backends())
@given(
    case=lsh_cases(
        min_len=100,
        max_len=300,
        bucket_sizes=st.integers(2, 8),
        n_buckets=st.sampled_from([4, 8]),
        causal=True,
    ),
    data=st.data(),
)
def test_fused_kernels_are_strictly_causal(
    device: str, backend: str, case: LSHCase, data: st.DataObject
) -> None:
    case = on_device(case, device, torch.float32)
    seq_len = case.seq_len
    generator = torch.Generator(device=device)
    with use_backend(backend):
        out = case.run(generator=generator.manual_seed(case.seed))
        cut = data.draw(st.integers(0, seq_len - 1), label="cut")
        future = (torch.arange(seq_len) > cut).to(device)
        g = torch.Generator().manual_seed(data.draw(SEEDS, label="perturbation seed"))
        q, k, v = (
            torch.where(
                future[None, None, :, None], 3 * randn(tuple(t.shape), g, torch.float32).to(device), t
            )
            for t in (case.q, case.k, case.v)
        )
        perturbed = case.run(q, k, v, generator=generator.manual_seed(case.seed))
    assert torch.equal(perturbed[:, :, : cut + 1], out[:, :, : cut + 1])
