"""Tiled neighbourhood attention (``chunkformer.ops.neighborhood``) against its dense mask and the slow
reference's neighbourhoods (``chunkformer.ops.zoo_reference``)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.ops import (
    default_tile_size,
    neighborhood_attention,
    neighborhood_attention_dense,
    neighborhood_mask,
    neighborhood_tiles,
    use_backend,
)
from chunkformer.ops.zoo_reference import neighborhood_indices
from tests.layers._strategies import backends_for, keep_global_rng, one_thread, randn

pytestmark = pytest.mark.usefixtures(one_thread.__name__, keep_global_rng.__name__)

FEW = settings(max_examples=25, deadline=None)


@dataclass(frozen=True)
class Geometry:
    sizes: tuple[int, ...]
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    tile: tuple[int, ...] | None

    def args(self) -> tuple[tuple[int, ...], ...]:
        return self.sizes, self.kernel, self.dilation, self.causal  # type: ignore[return-value]


@st.composite
def geometries(
    draw: st.DrawFn, rank: int | None = None, max_tokens: int = 150, causal: bool = True
) -> Geometry:
    """Odd kernels (any along causal axes) 1-5, dilation 1-3, axes from one position (shorter than
    kernel * dilation) to a few windows; tiles from 1 to bigger than the grid, or the default. ``causal``
    False: no causal axis (what a relative position bias needs)."""
    rank = draw(st.sampled_from([2, 3])) if rank is None else rank
    causal = tuple(draw(st.booleans()) if causal else False for _ in range(rank))
    kernel = tuple(draw(st.integers(1, 4) if c else st.sampled_from([1, 3, 5])) for c in causal)
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    sizes = tuple(draw(st.integers(1, 12)) for _ in range(rank))
    while math.prod(sizes) > max_tokens:  # the reference checks loop over every query
        sizes = tuple(max(1, n // 2) for n in sizes)
    tile = draw(st.none() | st.tuples(*(st.integers(1, 14) for _ in range(rank))))
    return Geometry(sizes, kernel, dilation, causal, tile)


def qkv(geometry: Geometry, seed: int, dtype: torch.dtype = torch.float64, batch: int = 2, heads: int = 2):
    length = math.prod(geometry.sizes)
    return tuple(randn((batch, heads, length, 4), seed + i, dtype=dtype) for i in range(3))


def table(geometry: Geometry, seed: int, dtype: torch.dtype = torch.float64, heads: int = 2) -> torch.Tensor:
    """A relative position bias of standard normal noise: NATTEN's init (std 0.02) barely moves the softmax,
    so a misindexed table would pass at any sane tolerance."""
    return randn((heads, *(2 * k - 1 for k in geometry.kernel)), seed, dtype=dtype)


@FEW
@given(geometry=geometries(), seed=st.integers(0, 2**31 - 1))
def test_tiled_matches_dense(geometry: Geometry, seed: int) -> None:
    q, k, v = qkv(geometry, seed)
    tiled = neighborhood_attention(q, k, v, *geometry.args(), tile_size=geometry.tile)
    dense = neighborhood_attention_dense(q, k, v, *geometry.args())
    torch.testing.assert_close(tiled, dense, atol=1e-12, rtol=1e-12)


@FEW
@given(geometry=geometries())
def test_every_query_sees_exactly_the_reference_neighbourhood(geometry: Geometry) -> None:
    plan = neighborhood_tiles(*geometry.args(), tile_size=geometry.tile)
    sizes = geometry.sizes
    length = math.prod(sizes)
    # The real slots partition the grid, and the inverse finds each query's real slot.
    assert int(plan.query_valid.sum()) == length
    slots = plan.query_index.flatten()
    assert torch.equal(slots[plan.inverse], torch.arange(length))
    assert bool(plan.query_valid.flatten()[plan.inverse].all())
    # Every slot, padding included, has a key (a padding slot repeats a real query).
    assert bool(plan.mask.any(-1).all())
    strides = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
    for tile, slot in itertools.product(range(plan.num_tiles), range(plan.query_index.shape[1])):
        query = int(plan.query_index[tile, slot])
        position = [query // s % n for s, n in zip(strides, sizes, strict=True)]
        per_axis = [
            neighborhood_indices(i, n, k, d, c)
            for i, n, k, d, c in zip(position, sizes, *geometry.args()[1:], strict=True)
        ]
        expected = {
            sum(p * s for p, s in zip(key, strides, strict=True)) for key in itertools.product(*per_axis)
        }
        seen = plan.key_index[tile][plan.mask[tile, slot]].tolist()
        assert len(seen) == len(expected) and set(seen) == expected, (position, seen, expected)


@FEW
@given(geometry=geometries())
def test_plan_agrees_with_the_dense_mask(geometry: Geometry) -> None:
    plan = neighborhood_tiles(*geometry.args(), tile_size=geometry.tile)
    length = math.prod(geometry.sizes)
    rebuilt = torch.zeros(length, length, dtype=torch.bool)
    real = plan.query_valid[..., None] & plan.mask
    tiles, slots, keys = real.nonzero(as_tuple=True)
    rebuilt[plan.query_index[tiles, slots], plan.key_index[tiles, keys]] = True
    assert torch.equal(rebuilt, neighborhood_mask(*geometry.args()))


@settings(max_examples=15, deadline=None)
@given(geometry=geometries(max_tokens=60), seed=st.integers(0, 2**31 - 1))
def test_gradients_match_dense(geometry: Geometry, seed: int) -> None:
    inputs = [t.requires_grad_() for t in qkv(geometry, seed)]
    weights = randn((2, 2, math.prod(geometry.sizes), 4), seed + 9, dtype=torch.float64)
    tiled = neighborhood_attention(*inputs, *geometry.args(), tile_size=geometry.tile)
    grads = torch.autograd.grad((tiled * weights).sum(), inputs)
    dense = neighborhood_attention_dense(*inputs, *geometry.args())
    expected = torch.autograd.grad((dense * weights).sum(), inputs)
    for got, want in zip(grads, expected, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    ("sizes", "kernel", "dilation", "causal", "tile"),
    [((3, 5), (3, 3), (1, 2), (False, False), (2, 2)), ((2, 3, 3), (2, 3, 3), 1, (True, False, False), 2)],
)
def test_gradcheck(
    sizes: tuple[int, ...], kernel: tuple[int, ...], dilation: object, causal: tuple[bool, ...], tile: object
) -> None:
    geometry = Geometry(sizes, kernel, dilation, causal, tile)  # type: ignore[arg-type]
    inputs = tuple(t.requires_grad_() for t in qkv(geometry, 0, batch=1))
    assert torch.autograd.gradcheck(
        lambda q, k, v: neighborhood_attention(q, k, v, sizes, kernel, dilation, causal, tile_size=tile),
        inputs,
    )


@settings(max_examples=10, deadline=None)
@given(geometry=geometries(), seed=st.integers(0, 2**31 - 1))
def test_every_backend_matches_math(geometry: Geometry, seed: int) -> None:
    q, k, v = qkv(geometry, seed, dtype=torch.float32)
    with use_backend("math"):
        expected = neighborhood_attention(q, k, v, *geometry.args(), tile_size=geometry.tile)
    for name in backends_for(q):
        got = neighborhood_attention(q, k, v, *geometry.args(), tile_size=geometry.tile, backend=name)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_scale_is_passed_through() -> None:
    geometry = Geometry((4, 5), (3, 3), (1, 1), (False, False), None)
    q, k, v = qkv(geometry, 3)
    tiled = neighborhood_attention(q, k, v, *geometry.args(), scale=0.3)
    torch.testing.assert_close(tiled, neighborhood_attention_dense(q, k, v, *geometry.args(), scale=0.3))


def test_dropout_keeps_outputs_and_gradients_finite() -> None:
    geometry = Geometry((3, 6, 6), (3, 3, 3), (1, 1, 1), (True, False, False), (2, 4, 4))
    inputs = [t.requires_grad_() for t in qkv(geometry, 5, dtype=torch.float32)]
    out = neighborhood_attention(*inputs, *geometry.args(), tile_size=geometry.tile, dropout_p=0.5)
    grads = torch.autograd.grad(out.sum(), inputs)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert not torch.allclose(out, neighborhood_attention(*inputs, *geometry.args(), tile_size=geometry.tile))


def test_runs_on_meta_device() -> None:
    q = torch.empty(2, 3, 4 * 7 * 9, 8, device="meta")
    out = neighborhood_attention(q, q, q, (4, 7, 9), (3, 5, 5), (1, 2, 1), (True, False, False))
    assert out.device.type == "meta" and out.shape == q.shape


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    geometry = Geometry((3, 4, 6), (2, 3, 3), (1, 1, 2), (True, False, False), (1, 2, 5))

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return neighborhood_attention(q, k, v, *geometry.args(), tile_size=geometry.tile)

    q, k, v = qkv(geometry, 1, dtype=torch.float32)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), run(q, k, v), atol=1e-6, rtol=1e-6)


def test_plan_is_cached_per_shape_and_clamped_to_the_grid() -> None:
    plan = neighborhood_tiles((5, 6), 3, tile_size=(2, 100))
    assert plan is neighborhood_tiles((5, 6), (3, 3), 1, False, (2, 100))
    assert plan.tile_size == (2, 6) and plan.box_size == (4, 6)
    assert plan.mask.shape == (plan.num_tiles, 12, 24)


def test_default_tile_is_half_the_kernel_or_the_whole_short_axis() -> None:
    assert default_tile_size((8, 56, 56), (3, 7, 7), (1, 1, 1)) == (2, 4, 4)
    assert default_tile_size((8, 8, 8), (3, 5, 5), (1, 1, 1)) == (2, 8, 8)
    assert default_tile_size((56, 56), (7, 7), (4, 1)) == (14, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tile_size": 0}, ValueError, r"tile_size must be a positive int or a sequence of 2 of them, got 0"),
        ({"tile_size": (2, 2, 2)}, ValueError, "tile_size must be .*, got a tuple of length 3"),
        ({"tile_size": 2.0}, TypeError, "tile_size must be .*, got float 2.0"),
        ({"kernel_size": (2, 3)}, ValueError, "kernel_size must be odd along every axis that is not causal"),
        ({"is_causal": 1}, TypeError, "is_causal must be a bool or a sequence of 2 bools, got int 1"),
        ({"sizes": (4,)}, ValueError, r"sizes must be a sequence of 2 or 3 grid sides, got \(4,\)"),
        ({"sizes": (4, 4)}, ValueError, r"expects q of shape \(B, heads, L, d\) with L = prod\(sizes\) = 16"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    q = torch.zeros(1, 1, 12, 4)
    arguments = {"sizes": (3, 4), "kernel_size": 3, **kwargs}
    with pytest.raises(error, match=f"neighborhood_attention:? {message}"):
        neighborhood_attention(q, q, q, **arguments)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# Relative position bias
# ----------------------------------------------------------------------------------------------------------


def rpb_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, rpb: torch.Tensor
) -> torch.Tensor:
    """Query by query over its neighbours (``neighborhood_indices``), each logit plus
    rpb[h, (key - query) / dilation + kernel - 1 per axis]: NATTEN's definition, written out."""
    sizes, kernel, dilation = geometry.sizes, geometry.kernel, geometry.dilation
    grid = torch.arange(math.prod(sizes)).reshape(sizes)
    out = torch.zeros_like(q)
    for query in itertools.product(*(range(n) for n in sizes)):
        per_axis = [
            neighborhood_indices(i, n, kk, d, False)
            for i, n, kk, d in zip(query, sizes, kernel, dilation, strict=True)
        ]
        keys = list(itertools.product(*per_axis))
        rows = [int(grid[key]) for key in keys]
        entries = [
            tuple((j - i) // d + kk - 1 for i, j, kk, d in zip(query, key, kernel, dilation, strict=True))
            for key in keys
        ]
        bias = torch.stack([rpb[(slice(None), *entry)] for entry in entries], -1)  # (heads, keys)
        row = int(grid[query])
        logits = torch.einsum("bhd,bhnd->bhn", q[:, :, row], k[:, :, rows]) / math.sqrt(q.shape[-1]) + bias
        out[:, :, row] = torch.einsum("bhn,bhnd->bhd", logits.softmax(-1), v[:, :, rows])
    return out


@FEW
@given(geometry=geometries(causal=False, max_tokens=80), seed=st.integers(0, 2**31 - 1))
def test_rpb_matches_the_written_out_definition(geometry: Geometry, seed: int) -> None:
    q, k, v = qkv(geometry, seed)
    rpb = table(geometry, seed + 5)
    tiled = neighborhood_attention(q, k, v, *geometry.args(), rpb=rpb, tile_size=geometry.tile)
    torch.testing.assert_close(tiled, rpb_reference(q, k, v, geometry, rpb), atol=1e-12, rtol=1e-12)


@FEW
@given(geometry=geometries(causal=False), seed=st.integers(0, 2**31 - 1))
def test_rpb_tiled_matches_dense(geometry: Geometry, seed: int) -> None:
    q, k, v = qkv(geometry, seed)
    rpb = table(geometry, seed + 5)
    tiled = neighborhood_attention(q, k, v, *geometry.args(), rpb=rpb, tile_size=geometry.tile)
    dense = neighborhood_attention_dense(q, k, v, *geometry.args(), rpb=rpb)
    torch.testing.assert_close(tiled, dense, atol=1e-12, rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(geometry=geometries(causal=False, max_tokens=60), seed=st.integers(0, 2**31 - 1))
def test_rpb_gradients_match_dense(geometry: Geometry, seed: int) -> None:
    inputs = [t.requires_grad_() for t in (*qkv(geometry, seed), table(geometry, seed + 5))]
    weights = randn((2, 2, math.prod(geometry.sizes), 4), seed + 9, dtype=torch.float64)
    tiled = neighborhood_attention(*inputs[:3], *geometry.args(), rpb=inputs[3], tile_size=geometry.tile)
    grads = torch.autograd.grad((tiled * weights).sum(), inputs)
    dense = neighborhood_attention_dense(*inputs[:3], *geometry.args(), rpb=inputs[3])
    expected = torch.autograd.grad((dense * weights).sum(), inputs)
    for got, want in zip(grads, expected, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    ("sizes", "kernel", "dilation", "tile"),
    [((3, 5), (3, 3), (1, 2), (2, 2)), ((2, 3, 4), (1, 3, 3), (1, 1, 2), 2)],
)
def test_rpb_gradcheck(
    sizes: tuple[int, ...], kernel: tuple[int, ...], dilation: object, tile: object
) -> None:
    geometry = Geometry(sizes, kernel, dilation, (False,) * len(sizes), tile)  # type: ignore[arg-type]
    inputs = tuple(t.requires_grad_() for t in (*qkv(geometry, 0, batch=1), table(geometry, 3)))
    assert torch.autograd.gradcheck(
        lambda q, k, v, rpb: neighborhood_attention(
            q, k, v, sizes, kernel, dilation, rpb=rpb, tile_size=tile
        ),
        inputs,
    )


def test_rpb_table_entries_reach_the_queries_that_read_them() -> None:
    # One entry moved, on a 1-D-like grid (5 x 1) with kernel (3, 1): entry t is read by every query whose
    # window holds the key at (t - 2) rows away; here t = 3 (one row below) is read by rows 0-3.
    geometry = Geometry((5, 1), (3, 1), (1, 1), (False, False), None)
    q, k, v = qkv(geometry, 0)
    rpb = torch.zeros(2, 5, 1, dtype=torch.float64)
    moved = rpb.clone()
    moved[:, 3] = 1.0
    changed = neighborhood_attention(q, k, v, *geometry.args(), rpb=moved) != neighborhood_attention(
        q, k, v, *geometry.args(), rpb=rpb
    )
    assert changed.any(-1).any(0).any(0).tolist() == [True, True, True, True, False]


def test_rpb_runs_on_meta_device() -> None:
    q = torch.empty(2, 3, 4 * 7 * 9, 8, device="meta")
    rpb = torch.empty(3, 5, 9, 9, device="meta")
    out = neighborhood_attention(q, q, q, (4, 7, 9), (3, 5, 5), (1, 2, 1), rpb=rpb)
    dense = neighborhood_attention_dense(q, q, q, (4, 7, 9), (3, 5, 5), (1, 2, 1), rpb=rpb)
    assert out.device.type == dense.device.type == "meta" and out.shape == dense.shape == q.shape


def test_rpb_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    geometry = Geometry((3, 4, 6), (3, 3, 3), (1, 1, 2), (False, False, False), (1, 2, 5))

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor) -> torch.Tensor:
        return neighborhood_attention(q, k, v, *geometry.args(), rpb=rpb, tile_size=geometry.tile)

    inputs = (*qkv(geometry, 1, dtype=torch.float32), table(geometry, 2, torch.float32))
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), run(*inputs), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("op", [neighborhood_attention, neighborhood_attention_dense])
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"rpb": torch.zeros(2, 5, 3)},
            ValueError,
            r"expects rpb of shape \(heads, 2 \* kernel_size - 1 per axis\) = \(2, 5, 5\) for 2 heads and "
            r"kernel_size \(3, 3\), got \(2, 5, 3\)",
        ),
        (
            {"rpb": torch.zeros(1, 5, 5)},
            ValueError,
            r"expects rpb of shape .* = \(2, 5, 5\) for 2 heads and kernel_size \(3, 3\), got \(1, 5, 5\)",
        ),
        (
            {"rpb": torch.zeros(2, 5, 5, dtype=torch.long)},
            TypeError,
            "expects rpb to be a floating-point torch.Tensor or None, got a torch.int64 tensor",
        ),
        ({"rpb": [0.0]}, TypeError, "expects rpb to be a floating-point torch.Tensor or None, got list"),
        (
            {"rpb": torch.zeros(2, 5, 5), "is_causal": (True, False)},
            NotImplementedError,
            r"a relative position bias \(rpb\) is undefined with causal masking, as in NATTEN; got rpb with "
            r"is_causal \(True, False\)",
        ),
    ],
)
def test_bad_rpb_raises(op: object, kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    q = torch.zeros(1, 2, 12, 4)
    with pytest.raises(error, match=f"{op.__name__}:? {message}"):  # type: ignore[attr-defined]
        op(q, q, q, (3, 4), 3, **kwargs)  # type: ignore[operator]
