"""Properties of the tiny-patch embedding with a chunk-shared position embedding (SCT eq. 1)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import ChunkPatchEmbed
from tests.layers._strategies import (
    ATOL,
    RTOL,
    SEEDS,
    as_pair,
    assert_gradients_reach_all_parameters,
    build,
    chunk_sizes,
    gradcheck_module,
    keep_global_rng,
    malformed_sizes,
    mistyped_sizes,
    one_thread,
    randn,
    randomize_,
    shape_message,
    wrong_channel_shapes,
    wrong_rank_shapes,
)

# One intra-op thread for tiny tensors; incidental draws from the global RNG stay inside each test.
pytestmark = pytest.mark.usefixtures(one_thread.__name__, keep_global_rng.__name__)


@dataclass(frozen=True)
class Case:
    patch_size: int
    in_chans: int
    dim: int
    chunk_size: int | tuple[int, int]
    shape: tuple[int, ...]  # (B, C, H, W) or (B, C, T, H, W)
    seed: int

    def module(self) -> ChunkPatchEmbed:
        module = build(
            lambda: ChunkPatchEmbed(self.patch_size, self.in_chans, self.dim, self.chunk_size), self.seed
        )
        # The default std of 0.02 is small next to the projection; make the positions clearly visible.
        randomize_([module.pos_embed], self.seed + 7, scale=1.0)
        return module

    def input(self) -> torch.Tensor:
        return randn(self.shape, self.seed + 1)


@st.composite
def cases(draw: st.DrawFn, frames: bool | None = None) -> Case:
    patch_size = draw(st.integers(1, 3))
    in_chans = draw(st.integers(1, 3))
    dim = draw(st.sampled_from([4, 8]))
    chunk_size = draw(chunk_sizes())
    grid_h, grid_w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    batch = draw(st.integers(1, 2))
    use_frames = draw(st.booleans()) if frames is None else frames
    time = (draw(st.integers(1, 2)),) if use_frames else ()
    shape = (batch, in_chans, *time, grid_h * patch_size, grid_w * patch_size)
    return Case(patch_size, in_chans, dim, chunk_size, shape, draw(SEEDS))


def reference(module: ChunkPatchEmbed, x: torch.Tensor) -> torch.Tensor:
    """Loop over patches: flatten (row, col, channel), project, add the in-chunk position's embedding."""
    p = module.patch_size
    chunk_h, chunk_w = as_pair(module.chunk_size)
    frames = x if x.dim() == 5 else x.unsqueeze(2)  # (B, C, T, H, W)
    batch, _, time, height, width = frames.shape
    weight = module.proj.weight.detach().double()
    bias = module.proj.bias.detach().double()
    pos = module.pos_embed.detach().double()
    out = torch.zeros(batch, time, height // p, width // p, module.dim, dtype=torch.float64)
    for b in range(batch):
        for t in range(time):
            for i in range(height // p):
                for j in range(width // p):
                    patch = frames[b, :, t, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (C, p, p)
                    flat = torch.tensor(
                        [
                            float(patch[c, r, s])
                            for r in range(p)
                            for s in range(p)
                            for c in range(patch.shape[0])
                        ],
                        dtype=torch.float64,
                    )
                    out[b, t, i, j] = weight @ flat + bias + pos[(i % chunk_h) * chunk_w + (j % chunk_w)]
    return out if x.dim() == 5 else out.squeeze(1)


@given(case=cases())
def test_matches_per_patch_reference(case: Case) -> None:
    module, x = case.module(), case.input()
    out = module(x)
    p = case.patch_size
    spatial = (x.shape[-2] // p, x.shape[-1] // p, case.dim)
    expected_shape = (x.shape[0], x.shape[2], *spatial) if x.dim() == 5 else (x.shape[0], *spatial)
    assert out.shape == expected_shape
    torch.testing.assert_close(out.double(), reference(module, x), atol=ATOL, rtol=RTOL)


@given(case=cases(frames=True))
def test_frames_are_embedded_independently(case: Case) -> None:
    module, x = case.module(), case.input()
    out = module(x)
    for t in range(x.shape[2]):
        torch.testing.assert_close(out[:, t], module(x[:, :, t]), atol=ATOL, rtol=RTOL)


@given(case=cases(frames=False))
def test_every_chunk_gets_the_same_positions(case: Case) -> None:
    # With a zero image all tokens are bias + position: the grid must tile the chunk's embedding.
    module = case.module()
    out = module(torch.zeros(case.shape))
    chunk_h, chunk_w = as_pair(case.chunk_size)
    grid = out - module.proj.bias
    for i in range(grid.shape[1]):
        for j in range(grid.shape[2]):
            torch.testing.assert_close(
                grid[:, i, j],
                module.pos_embed[(i % chunk_h) * chunk_w + j % chunk_w].expand_as(grid[:, i, j]),
            )


@given(case=cases())
def test_position_embedding_shape(case: Case) -> None:
    chunk_h, chunk_w = as_pair(case.chunk_size)
    module = case.module()
    assert module.pos_embed.shape == (chunk_h * chunk_w, case.dim)
    assert module.proj.in_features == case.patch_size**2 * case.in_chans
    assert module.proj.out_features == case.dim


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@given(data=st.data(), patch_size=st.integers(2, 4), rank=st.sampled_from([4, 5]))
def test_size_not_divisible_by_patch_raises(data: st.DataObject, patch_size: int, rank: int) -> None:
    height = data.draw(st.integers(1, 3 * patch_size))
    width = data.draw(st.integers(1, 3 * patch_size))
    if height % patch_size == 0 and width % patch_size == 0:
        width += 1
    shape = (1, 2, 2, height, width) if rank == 5 else (1, 2, height, width)
    module = ChunkPatchEmbed(patch_size, 2, 4, 2)
    with pytest.raises(ValueError, match=rf"patch_size={patch_size}.*{shape_message(shape)}"):
        module(torch.zeros(shape))


@given(data=st.data(), rank=st.sampled_from([4, 5]))
def test_wrong_channels_raises(data: st.DataObject, rank: int) -> None:
    shape = data.draw(wrong_channel_shapes(rank=rank, channels=3, channel_axis=1, side=2))
    layout = r"\(B, C, H, W\)" if rank == 4 else r"\(B, C, T, H, W\)"
    with pytest.raises(
        ValueError,
        match=rf"ChunkPatchEmbed expects input of shape {layout} with C=3, got {shape_message(shape)}",
    ):
        ChunkPatchEmbed(2, 3, 4, 2)(torch.zeros(shape))


@given(shape=wrong_rank_shapes(ranks=[4, 5], channels=3, channel_axis=1))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=rf"expects input of shape \(B, C, H, W\) or \(B, C, T, H, W\), got {shape_message(shape)}",
    ):
        ChunkPatchEmbed(2, 3, 4, 2)(torch.zeros(shape))


@given(chunk_size=malformed_sizes())
def test_malformed_chunk_size_raises(chunk_size: object) -> None:
    with pytest.raises(ValueError, match="ChunkPatchEmbed: chunk_size must be"):
        ChunkPatchEmbed(2, 3, 4, chunk_size)  # type: ignore[arg-type]


@given(chunk_size=mistyped_sizes())
def test_mistyped_chunk_size_raises_type_error(chunk_size: object) -> None:
    with pytest.raises(TypeError, match="ChunkPatchEmbed: chunk_size must be .*, got"):
        ChunkPatchEmbed(2, 3, 4, chunk_size)  # type: ignore[arg-type]


@given(value=st.integers(-3, 0), which=st.sampled_from(["patch_size", "in_chans", "dim"]))
def test_non_positive_sizes_raise(value: int, which: str) -> None:
    kwargs = {"patch_size": 2, "in_chans": 3, "dim": 4, which: value}
    with pytest.raises(ValueError, match=rf"ChunkPatchEmbed: {which} must be a positive int, got {value}"):
        ChunkPatchEmbed(**kwargs)


@given(
    value=st.one_of(st.floats(0.5, 4.0), st.booleans()),
    which=st.sampled_from(["patch_size", "in_chans", "dim"]),
)
def test_non_int_sizes_raise_type_error(value: object, which: str) -> None:
    kwargs = {"patch_size": 2, "in_chans": 3, "dim": 4, which: value}
    with pytest.raises(TypeError, match=rf"ChunkPatchEmbed: {which} must be an int, got (float|bool)"):
        ChunkPatchEmbed(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Gradients, meta device, compile
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=2)
@given(seed=SEEDS, frames=st.booleans())
def test_gradcheck_input_and_parameters(seed: int, frames: bool) -> None:
    module = build(lambda: ChunkPatchEmbed(2, 2, 3, (2, 1)), seed)
    shape = (1, 2, 2, 4, 6) if frames else (1, 2, 4, 6)
    gradcheck_module(module, [randn(shape, seed + 1, dtype=torch.float64)])


@given(case=cases())
def test_gradient_reaches_every_parameter(case: Case) -> None:
    module = case.module()
    x = case.input().requires_grad_(True)
    assert_gradients_reach_all_parameters(module, module(x), case.seed + 2)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(2, 3, 6, 4), (2, 3, 2, 6, 4)])
def test_runs_on_meta_device(shape: tuple[int, ...]) -> None:
    with torch.device("meta"):
        module = ChunkPatchEmbed(2, 3, 8, (2, 3))
        out = module(torch.empty(shape))
    assert out.device.type == "meta"
    assert out.shape == (*shape[:1], *shape[2:-2], 3, 2, 8)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = build(lambda: ChunkPatchEmbed(2, 3, 8, (2, 3)), 0).eval()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for seed, shape in enumerate([(2, 3, 6, 4), (1, 3, 10, 8), (1, 3, 2, 6, 4)]):
        x = randn(shape, seed + 1)
        torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)
