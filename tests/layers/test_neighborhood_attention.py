"""Properties of neighbourhood attention (NATTEN semantics) in 2-D and 3-D."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import Attention, NeighborhoodAttention2D, NeighborhoodAttention3D
from chunkformer.ops.zoo_reference import natten_window_start, neighborhood_indices, neighborhood_reference
from tests.layers._strategies import (
    SEEDS,
    Heads,
    assert_backends_agree_with_math,
    assert_gradients_reach_all_parameters,
    build,
    gradcheck_module,
    heads,
    keep_global_rng,
    one_thread,
    randn,
    randomize_,
    shape_message,
    wrong_rank_shapes,
)

pytestmark = pytest.mark.usefixtures(one_thread.__name__, keep_global_rng.__name__)

FEW = settings(max_examples=20, deadline=None)

Layer = NeighborhoodAttention2D | NeighborhoodAttention3D


@dataclass(frozen=True)
class Case:
    heads: Heads
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    shape: tuple[int, ...]  # (B, *grid, C)
    seed: int
    tile: tuple[int, ...] | None = None
    rpb: bool = False

    def module(self) -> Layer:
        cls = NeighborhoodAttention2D if len(self.kernel) == 2 else NeighborhoodAttention3D
        module = build(
            lambda: cls(
                self.heads.dim,
                self.heads.num_heads,
                self.kernel,
                self.dilation,
                self.causal,
                tile_size=self.tile,
                rel_pos_bias=self.rpb,
            ),
            self.seed,
        )
        # Noise everywhere, the rpb table included: at NATTEN's std 0.02 a misindexed table would pass.
        randomize_(list(module.parameters()), self.seed + 7)
        return module.eval()

    def input(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return randn(self.shape, self.seed + 1, dtype=dtype)


@st.composite
def cases(draw: st.DrawFn, rank: int | None = None, fits: bool = False, rpb: bool = False) -> Case:
    """Odd kernels (any along causal axes), dilation 1-2, grids from one position to a few windows wide,
    query tiles of any size; ``fits`` keeps every axis at least kernel * dilation long (NATTEN's domain);
    ``rpb``: with a relative position bias, so no causal axis."""
    rank = draw(st.sampled_from([2, 3])) if rank is None else rank
    spec = draw(heads())
    causal = tuple(False if rpb else draw(st.booleans()) for _ in range(rank))
    kernel = tuple(draw(st.integers(1, 3) if c else st.sampled_from([1, 3])) for c in causal)
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    low = [k * d if fits else 1 for k, d in zip(kernel, dilation, strict=True)]
    grid = tuple(draw(st.integers(lo, lo + 3)) for lo in low)
    # 3-D grids stay small: the reference loops over every query.
    if rank == 3 and math.prod(grid) > 60:
        grid = tuple(min(n, lo + 1) for n, lo in zip(grid, low, strict=True))
    shape = (draw(st.integers(1, 2)), *grid, spec.dim)
    # The default tiles, or any from one query to more than the grid.
    tile = draw(st.none() | st.tuples(*(st.integers(1, 8) for _ in range(rank))))
    return Case(spec, kernel, dilation, causal, shape, draw(SEEDS), tile, rpb)


@FEW
@given(case=cases())
def test_matches_reference(case: Case) -> None:
    module = case.module().double()
    x = case.input(torch.float64)
    torch.testing.assert_close(module(x), neighborhood_reference(module, x), atol=1e-10, rtol=1e-10)


@FEW
@given(case=cases(), data=st.data())
def test_a_change_reaches_only_the_queries_whose_neighbourhood_holds_it(
    case: Case, data: st.DataObject
) -> None:
    module, x = case.module(), case.input()
    grid = case.shape[1:-1]
    batch = data.draw(st.integers(0, case.shape[0] - 1))
    token = tuple(data.draw(st.integers(0, n - 1)) for n in grid)
    changed = x.clone()
    changed[(batch, *token)] += 1.0
    moved = (module(changed) - module(x)).abs().amax(dim=-1) > 1e-6
    expected = torch.zeros(moved.shape, dtype=torch.bool)
    for query in itertools.product(*(range(n) for n in grid)):
        expected[(batch, *query)] = all(
            t in neighborhood_indices(i, n, k, d, c)
            for t, i, n, k, d, c in zip(
                token, query, grid, case.kernel, case.dilation, case.causal, strict=True
            )
        )
    assert (moved == expected).all()


@FEW
@given(case=cases(fits=True))
def test_every_query_sees_a_full_window_containing_itself(case: Case) -> None:
    # NATTEN's clamping: inside its domain every query has exactly prod(kernel) keys (causal: up to that
    # many, ending at the query), one of them itself, all `dilation` apart along each axis.
    grid = case.shape[1:-1]
    mask = case.module().neighborhood_mask(grid)
    flat = torch.arange(math.prod(grid)).reshape(grid)
    for query in itertools.product(*(range(n) for n in grid)):
        row = mask[flat[query]]
        assert row[flat[query]], "a query does not see itself"
        keys = [torch.unravel_index(torch.tensor(j), grid) for j in row.nonzero().flatten().tolist()]
        if not any(case.causal):
            assert len(keys) == math.prod(case.kernel)
        for axis, d in enumerate(case.dilation):
            assert all((int(key[axis]) - query[axis]) % d == 0 for key in keys)


@settings(max_examples=30, deadline=None)
@given(
    length=st.integers(1, 20),
    kernel=st.sampled_from([1, 3, 5, 7]),
    dilation=st.integers(1, 3),
    data=st.data(),
)
def test_window_start_keeps_the_window_inside_and_centred_where_it_can(
    length: int, kernel: int, dilation: int, data: st.DataObject
) -> None:
    if length < kernel * dilation:
        return
    index = data.draw(st.integers(0, length - 1))
    start = natten_window_start(index, length, kernel, dilation)
    window = [start + j * dilation for j in range(kernel)]
    assert window[0] >= 0 and window[-1] < length and index in window
    centred = index - kernel // 2 * dilation
    if centred >= 0 and centred + (kernel - 1) * dilation < length:
        assert start == centred


@FEW
@given(spec=heads(), seed=SEEDS, sides=st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([1, 3, 5])))
def test_a_kernel_as_large_as_the_grid_is_global_attention(
    spec: Heads, seed: int, sides: tuple[int, int]
) -> None:
    module = build(lambda: NeighborhoodAttention2D(spec.dim, spec.num_heads, sides), seed)
    dense = build(lambda: Attention(spec.dim, spec.num_heads), seed)
    dense.load_state_dict(module.state_dict())
    x = randn((2, *sides, spec.dim), seed + 1)
    torch.testing.assert_close(module(x), dense(x.flatten(1, 2)).reshape(x.shape), atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(case=cases())
def test_every_backend_matches_math(case: Case) -> None:
    assert "math" in assert_backends_agree_with_math(case.module(), [case.input()])


@pytest.mark.parametrize(
    ("kernel", "dilation", "causal", "grid"),
    [((3, 3), (1, 2), (False, False), (3, 6)), ((2, 3, 3), 1, (True, False, False), (2, 3, 3))],
)
def test_gradcheck_input_and_parameters(
    kernel: tuple[int, ...], dilation: int | tuple[int, ...], causal: tuple[bool, ...], grid: tuple[int, ...]
) -> None:
    case = Case(Heads(4, 2), kernel, dilation, causal, (1, *grid, 4), 0)  # type: ignore[arg-type]
    gradcheck_module(case.module(), [case.input(torch.float64)])


@pytest.mark.parametrize("rank", [2, 3])
def test_gradient_reaches_every_parameter(rank: int) -> None:
    case = Case(Heads(4, 2), (3,) * rank, (1,) * rank, (False,) * rank, (2, *(4,) * rank, 4), 0)
    module = case.module()
    assert_gradients_reach_all_parameters(module, module(case.input()), 3)


def test_runs_on_meta_device() -> None:
    with torch.device("meta"):
        out2 = NeighborhoodAttention2D(8, 2, 3, dilation=2)(torch.empty(2, 7, 6, 8))
        out3 = NeighborhoodAttention3D(8, 2, (2, 3, 3), is_causal=(True, False, False))(
            torch.empty(1, 3, 4, 5, 8)
        )
    assert out2.device.type == out3.device.type == "meta"
    assert out2.shape == (2, 7, 6, 8) and out3.shape == (1, 3, 4, 5, 8)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = Case(Heads(8, 2), (2, 3, 3), (1, 1, 2), (True, False, False), (1, 3, 4, 6, 8), 0).module()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = randn((1, 3, 4, 6, 8), 1)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)


def test_training_with_attention_dropout_is_finite_and_random() -> None:
    module = NeighborhoodAttention3D(8, 2, (3, 3, 3), attn_drop=0.5).train()
    x = randn((2, 3, 5, 5, 8), 0).requires_grad_()
    out = module(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert not torch.allclose(out, module(x))
    module.eval()
    torch.testing.assert_close(module(x), module(x))


def test_flop_counter_sees_the_tiled_attention() -> None:
    # FlopCounterMode on meta (chunkformer.models.stats) must count the attention over each tile's key box.
    from torch.utils.flop_counter import FlopCounterMode

    from chunkformer.ops import neighborhood_tiles

    sizes, kernel, dim, heads = (4, 10, 10), (3, 5, 5), 16, 2
    with torch.device("meta"):
        module = NeighborhoodAttention3D(dim, heads, kernel)
        x = torch.empty(1, *sizes, dim)
    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    plan = neighborhood_tiles(sizes, kernel, device="meta")
    length = math.prod(sizes)
    attention_macs = 2 * plan.num_tiles * math.prod(plan.tile_size) * math.prod(plan.box_size) * dim
    linear_macs = length * dim * 4 * dim
    assert counter.get_total_flops() == 2 * (linear_macs + attention_macs)


def test_bad_tile_size_raises() -> None:
    with pytest.raises(
        ValueError,
        match=r"NeighborhoodAttention3D: tile_size must be a positive int or a "
        r"\(t, h, w\) triple of them, got a tuple of length 2: \(2, 2\)",
    ):
        NeighborhoodAttention3D(4, 2, 3, tile_size=(2, 2))
    with pytest.raises(TypeError, match=r"NeighborhoodAttention2D: tile_size must be .*, got float 2.0"):
        NeighborhoodAttention2D(4, 2, 3, tile_size=2.0)  # type: ignore[arg-type]


def test_mask_is_cached_per_shape() -> None:
    module = NeighborhoodAttention2D(4, 2, 3)
    assert module.neighborhood_mask((5, 6)) is module.neighborhood_mask((5, 6))
    assert module.neighborhood_mask((5, 6)).shape == (30, 30)


# ----------------------------------------------------------------------------------------------------
# Relative position bias
# ----------------------------------------------------------------------------------------------------


@FEW
@given(case=cases(rpb=True), kernel=st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([3, 5])))
def test_rpb_matches_reference(case: Case, kernel: tuple[int, int]) -> None:
    # Kernels up to 5 so that the table has room to be misread; the reference indexes it query by query.
    case = dataclasses.replace(case, kernel=(*case.kernel[:-2], *kernel))
    module = case.module().double()
    x = case.input(torch.float64)
    torch.testing.assert_close(module(x), neighborhood_reference(module, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    ("kernel", "dilation", "grid"), [((3, 3), (1, 2), (3, 6)), ((3, 3, 3), (1, 1, 2), (2, 3, 4))]
)
def test_rpb_gradcheck_input_and_parameters(
    kernel: tuple[int, ...], dilation: tuple[int, ...], grid: tuple[int, ...]
) -> None:
    rank = len(kernel)
    case = Case(Heads(4, 2), kernel, dilation, (False,) * rank, (1, *grid, 4), 0, rpb=True)
    gradcheck_module(case.module(), [case.input(torch.float64)])


@pytest.mark.parametrize("rank", [2, 3])
def test_rpb_gradient_reaches_the_table(rank: int) -> None:
    case = Case(Heads(4, 2), (3,) * rank, (1,) * rank, (False,) * rank, (2, *(4,) * rank, 4), 0, rpb=True)
    module = case.module()
    assert_gradients_reach_all_parameters(module, module(case.input()), 3)
    assert module.rpb is not None and module.rpb.grad is not None
    # A 4-long axis with kernel 3 puts keys at every offset -2..2 from some query: every entry is read.
    assert bool((module.rpb.grad != 0).all())


def test_rpb_is_natten_shaped_and_initialised() -> None:
    module = build(lambda: NeighborhoodAttention3D(96, 3, (3, 7, 7), rel_pos_bias=True), 0)
    assert isinstance(module.rpb, torch.nn.Parameter) and module.rpb.shape == (3, 5, 13, 13)
    # trunc_normal(std 0.02): small, not zero.
    table = module.rpb.detach()
    assert 0.015 < float(table.std()) < 0.025 and float(table.abs().max()) < 2.0
    assert NeighborhoodAttention2D(8, 2, (3, 5), rel_pos_bias=True).rpb.shape == (2, 5, 9)  # type: ignore[union-attr]


def test_rpb_only_in_the_state_dict_when_on() -> None:
    without = NeighborhoodAttention2D(8, 2, 3)
    with_rpb = NeighborhoodAttention2D(8, 2, 3, rel_pos_bias=True)
    assert without.rpb is None
    assert set(without.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    assert set(with_rpb.state_dict()) == {"rpb", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    assert "rel_pos_bias=False" in repr(without) and "rel_pos_bias=True" in repr(with_rpb)
    # A checkpoint from before rpb existed still loads into the default layer.
    without.load_state_dict(Attention(8, 2).state_dict())


def test_rpb_runs_on_meta_device() -> None:
    with torch.device("meta"):
        module = NeighborhoodAttention3D(8, 2, (3, 3, 5), dilation=(1, 2, 1), rel_pos_bias=True)
        out = module(torch.empty(2, 3, 4, 5, 8))
    assert out.device.type == module.rpb.device.type == "meta"  # type: ignore[union-attr]
    assert out.shape == (2, 3, 4, 5, 8)


def test_rpb_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = Case(Heads(8, 2), (3, 3, 3), (1, 1, 2), (False,) * 3, (2, 3, 4, 6, 8), 0, rpb=True).module()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = randn((2, 3, 4, 6, 8), 1)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layer", [NeighborhoodAttention2D, NeighborhoodAttention3D])
def test_rpb_with_causal_is_refused(layer: type[Layer]) -> None:
    rank = len(layer._axes)
    causal = (True,) + (False,) * (rank - 1)
    with pytest.raises(
        NotImplementedError,
        match=rf"{layer.__name__}: rel_pos_bias is undefined with causal masking, as in NATTEN; got "
        rf"rel_pos_bias=True with is_causal {re.escape(str(causal))}",
    ):
        layer(4, 2, 3, is_causal=causal, rel_pos_bias=True)


def test_rpb_flag_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="NeighborhoodAttention2D: rel_pos_bias must be a bool, got int 1"):
        NeighborhoodAttention2D(4, 2, 3, rel_pos_bias=1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(shape=wrong_rank_shapes(ranks=[4], channels=4))
def test_wrong_rank_raises_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=rf"NeighborhoodAttention2D expects input of shape \(B, H, W, C\), got {shape_message(shape)}",
    ):
        NeighborhoodAttention2D(4, 2, 3)(torch.zeros(shape))


@settings(max_examples=10, deadline=None)
@given(shape=wrong_rank_shapes(ranks=[5], channels=4))
def test_wrong_rank_raises_3d(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=r"NeighborhoodAttention3D expects input of shape \(B, T, H, W, C\), got "
        + shape_message(shape),
    ):
        NeighborhoodAttention3D(4, 2, 3)(torch.zeros(shape))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"kernel_size": 0}, ValueError, r"kernel_size must be a positive int or a \(h, w\) pair"),
        ({"kernel_size": (3, 3, 3)}, ValueError, "kernel_size must be .*, got a tuple of length 3"),
        ({"kernel_size": 3.0}, TypeError, "kernel_size must be .*, got float 3.0"),
        ({"kernel_size": (2, 3)}, ValueError, "kernel_size must be odd along every axis that is not causal"),
        ({"dilation": 0}, ValueError, "dilation must be a positive int"),
        ({"is_causal": 1}, TypeError, r"is_causal must be a bool or a \(h, w\) pair of bools, got int 1"),
        ({"is_causal": (True,)}, ValueError, "is_causal must be .*, got a tuple of length 1"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(error, match=f"NeighborhoodAttention2D: {message}"):
        NeighborhoodAttention2D(4, 2, **kwargs)  # type: ignore[arg-type]


def test_even_kernel_is_fine_along_a_causal_axis() -> None:
    module = NeighborhoodAttention3D(4, 2, (2, 3, 3), is_causal=(True, False, False))
    assert module.kernel_size == (2, 3, 3) and module.is_causal == (True, False, False)
