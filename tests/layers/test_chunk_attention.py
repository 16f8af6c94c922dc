"""Properties of image local chunk self-attention (SCT eq. 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import ChunkAttention
from tests.layers._strategies import (
    ATOL,
    RTOL,
    SEEDS,
    Heads,
    as_pair,
    assert_gradients_reach_all_parameters,
    bad_heads,
    bad_probabilities,
    build,
    chunk_sizes,
    gradcheck_module,
    grid_side,
    heads,
    keep_global_rng,
    malformed_sizes,
    mistyped_sizes,
    one_thread,
    plain_attention,
    randn,
    shape_message,
    wrong_channel_shapes,
    wrong_rank_shapes,
)

# One intra-op thread for tiny tensors; incidental draws from the global RNG stay inside each test.
pytestmark = pytest.mark.usefixtures(one_thread.__name__, keep_global_rng.__name__)

LAYOUTS = r"\(B, H, W, C\) or \(B, T, H, W, C\)"


@dataclass(frozen=True)
class Case:
    heads: Heads
    chunk_size: int | tuple[int, int]
    shape: tuple[int, ...]  # (B, H, W, C) or (B, T, H, W, C)
    seed: int

    @property
    def chunk(self) -> tuple[int, int]:
        return as_pair(self.chunk_size)

    def module(self) -> ChunkAttention:
        return build(lambda: ChunkAttention(self.heads.dim, self.heads.num_heads, self.chunk_size), self.seed)

    def input(self) -> torch.Tensor:
        return randn(self.shape, self.seed + 1)


@st.composite
def cases(draw: st.DrawFn, frames: bool | None = None, min_full_windows: int = 0) -> Case:
    """Grids smaller than, equal to, multiples of and not divisible by the chunk, in 4-D or 5-D."""
    spec = draw(heads())
    chunk_size = draw(chunk_sizes())
    chunk_h, chunk_w = as_pair(chunk_size)
    height = draw(grid_side(chunk_h))
    width = draw(grid_side(chunk_w))
    if min_full_windows:
        # Weight-sharing tests need whole windows to swap: guarantee them, keep any ragged remainder.
        full_h = max(height // chunk_h, 1)
        full_w = max(math.ceil(min_full_windows / full_h), width // chunk_w)
        height = max(height, full_h * chunk_h)
        width = max(width, full_w * chunk_w)
    batch = draw(st.integers(1, 2))
    use_frames = draw(st.booleans()) if frames is None else frames
    leading = (batch, draw(st.integers(1, 2))) if use_frames else (batch,)
    return Case(spec, chunk_size, (*leading, height, width, spec.dim), draw(SEEDS))


def windows_of(height: int, width: int, chunk: tuple[int, int]) -> list[list[tuple[int, int]]]:
    """The (row, col) positions of the REAL tokens of every window, in row-major window order."""
    chunk_h, chunk_w = chunk
    out = []
    for top in range(0, height, chunk_h):
        for left in range(0, width, chunk_w):
            out.append(
                [
                    (r, c)
                    for r in range(top, min(top + chunk_h, height))
                    for c in range(left, min(left + chunk_w, width))
                ]
            )
    return out


def reference(module: ChunkAttention, x: torch.Tensor) -> torch.Tensor:
    """Loop over every frame and window, attend over the window's real tokens only, put results back."""
    height, width, dim = x.shape[-3:]
    frames = x.reshape(-1, height, width, dim)
    out = torch.zeros(frames.shape, dtype=torch.float64)
    for f in range(frames.shape[0]):
        for window in windows_of(height, width, module.chunk_size):
            tokens = torch.stack([frames[f, r, c] for r, c in window])
            attended = plain_attention(tokens, tokens, tokens, module, module.num_heads)
            for index, (r, c) in enumerate(window):
                out[f, r, c] = attended[index]
    return out.reshape(x.shape)


@given(case=cases())
def test_matches_per_window_reference(case: Case) -> None:
    module, x = case.module(), case.input()
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), reference(module, x), atol=ATOL, rtol=RTOL)


@given(case=cases(), data=st.data())
def test_change_stays_inside_its_window(case: Case, data: st.DataObject) -> None:
    module, x = case.module(), case.input()
    height, width = case.shape[-3:-1]
    leading = tuple(data.draw(st.integers(0, n - 1)) for n in case.shape[:-3])
    row, col = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
    changed = x.clone()
    changed[(*leading, row, col)] += randn((case.heads.dim,), case.seed + 2) + 1.0

    delta = (module(changed) - module(x)).abs().amax(dim=-1)
    inside = torch.zeros(delta.shape, dtype=torch.bool)
    chunk_h, chunk_w = case.chunk
    top, left = row // chunk_h * chunk_h, col // chunk_w * chunk_w
    inside[(*leading, slice(top, top + chunk_h), slice(left, left + chunk_w))] = True
    assert (delta[~inside] <= 1e-6).all(), "a token outside the perturbed window changed"
    # Every real token of the window attends to the changed key/value, so every one of them moves.
    assert (delta[inside] > 1e-6).all(), "a token inside the perturbed window did not change"


@given(case=cases(min_full_windows=2), data=st.data())
def test_swapping_two_full_windows_swaps_their_outputs(case: Case, data: st.DataObject) -> None:
    module, x = case.module(), case.input()
    chunk_h, chunk_w = case.chunk
    height, width = case.shape[-3:-1]
    full = [
        (r, c)
        for r in range(0, height - chunk_h + 1, chunk_h)
        for c in range(0, width - chunk_w + 1, chunk_w)
    ]
    first, second = data.draw(st.lists(st.sampled_from(full), min_size=2, max_size=2, unique=True))

    def region(corner: tuple[int, int]) -> tuple[slice, ...]:
        return (
            ...,
            slice(corner[0], corner[0] + chunk_h),
            slice(corner[1], corner[1] + chunk_w),
            slice(None),
        )

    swapped = x.clone()
    swapped[region(first)], swapped[region(second)] = x[region(second)], x[region(first)]
    out, out_swapped = module(x), module(swapped)
    expected = out.clone()
    expected[region(first)], expected[region(second)] = out[region(second)], out[region(first)]
    # Same weights everywhere: a window's output is a function of its content alone.
    torch.testing.assert_close(out_swapped, expected, atol=ATOL, rtol=RTOL)


@given(case=cases())
def test_each_window_alone_gives_the_same_output(case: Case) -> None:
    # Cutting a window (whole or ragged) out and running the layer on it alone gives that window's output:
    # neither neighbours nor the padding of ragged windows leak into a window.
    module, x = case.module(), case.input()
    out = module(x)
    chunk_h, chunk_w = case.chunk
    height, width = case.shape[-3:-1]
    for top in range(0, height, chunk_h):
        for left in range(0, width, chunk_w):
            cut = (..., slice(top, top + chunk_h), slice(left, left + chunk_w), slice(None))
            torch.testing.assert_close(module(x[cut].contiguous()), out[cut], atol=ATOL, rtol=RTOL)


@given(case=cases(frames=True))
def test_frames_are_independent(case: Case) -> None:
    module, x = case.module(), case.input()
    out = module(x)
    for t in range(x.shape[1]):
        torch.testing.assert_close(out[:, t], module(x[:, t]), atol=ATOL, rtol=RTOL)


@given(case=cases(frames=False))
def test_int_chunk_equals_square_pair(case: Case) -> None:
    chunk_h, _ = case.chunk
    square = build(lambda: ChunkAttention(case.heads.dim, case.heads.num_heads, chunk_h), case.seed)
    pair = build(lambda: ChunkAttention(case.heads.dim, case.heads.num_heads, (chunk_h, chunk_h)), case.seed)
    x = case.input()
    assert pair.chunk_size == square.chunk_size == (chunk_h, chunk_h)
    torch.testing.assert_close(square(x), pair(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@given(chunk_size=malformed_sizes())
def test_malformed_chunk_size_raises(chunk_size: object) -> None:
    with pytest.raises(ValueError, match="ChunkAttention: chunk_size must be"):
        ChunkAttention(4, 2, chunk_size)  # type: ignore[arg-type]


@given(chunk_size=mistyped_sizes())
def test_mistyped_chunk_size_raises_type_error(chunk_size: object) -> None:
    with pytest.raises(TypeError, match="ChunkAttention: chunk_size must be .*, got"):
        ChunkAttention(4, 2, chunk_size)  # type: ignore[arg-type]


@given(spec=bad_heads())
def test_dim_not_divisible_by_heads_raises(spec: Heads) -> None:
    with pytest.raises(
        ValueError, match=rf"ChunkAttention: dim \({spec.dim}\) must be divisible by num_heads"
    ):
        ChunkAttention(spec.dim, spec.num_heads, 2)


@given(p=bad_probabilities(), which=st.sampled_from(["attn_drop", "proj_drop"]))
def test_bad_dropout_raises(p: float, which: str) -> None:
    with pytest.raises(ValueError, match=rf"ChunkAttention: {which} must be a float in \[0, 1\)"):
        ChunkAttention(4, 2, 2, **{which: p})


@given(shape=wrong_rank_shapes(ranks=[4, 5], channels=4))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=rf"ChunkAttention expects input of shape {LAYOUTS}, got {shape_message(shape)}"
    ):
        ChunkAttention(4, 2, 2)(torch.zeros(shape))


@given(data=st.data(), rank=st.sampled_from([4, 5]))
def test_wrong_channels_raises(data: st.DataObject, rank: int) -> None:
    shape = data.draw(wrong_channel_shapes(rank=rank, channels=4))
    layout = r"\(B, H, W, C\)" if rank == 4 else r"\(B, T, H, W, C\)"
    with pytest.raises(ValueError, match=rf"{layout} with C=4, got {shape_message(shape)}"):
        ChunkAttention(4, 2, 2)(torch.zeros(shape))


# ----------------------------------------------------------------------------------------------------
# Gradients, meta device, compile
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=2)
@given(seed=SEEDS, chunk_size=st.sampled_from([2, (2, 3)]))
def test_gradcheck_with_padding(seed: int, chunk_size: int | tuple[int, int]) -> None:
    # 3x4 is ragged for both chunk sizes, so the padded-and-masked path is the one differentiated.
    module = build(lambda: ChunkAttention(4, 2, chunk_size), seed)
    gradcheck_module(module, [randn((1, 3, 4, 4), seed + 1, dtype=torch.float64)])


@given(case=cases())
def test_gradient_reaches_every_parameter(case: Case) -> None:
    module = case.module()
    x = case.input().requires_grad_(True)
    assert_gradients_reach_all_parameters(module, module(x), case.seed + 2)
    assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad.abs().amax(dim=-1) > 0).all()


@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (2, 2, 4, 6, 8)])
def test_runs_on_meta_device(shape: tuple[int, ...]) -> None:
    with torch.device("meta"):
        module = ChunkAttention(8, 2, (2, 3))
        out = module(torch.empty(shape))
    assert out.device.type == "meta"
    assert out.shape == shape


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = build(lambda: ChunkAttention(8, 2, (2, 3)), 0).eval()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    # A ragged grid (padding + mask), a divisible one (no padding) and a 5-D input: shape changes may turn
    # on dynamic shapes, and the padding decision must still trace without a graph break.
    for seed, shape in enumerate([(2, 5, 4, 8), (2, 4, 6, 8), (1, 2, 3, 5, 8)]):
        x = randn(shape, seed + 1)
        torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)
