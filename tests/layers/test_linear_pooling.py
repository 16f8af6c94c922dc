"""Properties of linear pooling (SCT eq. 4): squeeze 2x2 cells, then a bias-free linear map."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chunkformer.layers import LinearPooling
from tests.layers._strategies import (
    ATOL,
    RTOL,
    SEEDS,
    assert_gradients_reach_all_parameters,
    build,
    gradcheck_module,
    keep_global_rng,
    layer_norms,
    one_thread,
    plain_layer_norm,
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
    dim: int
    out_dim: int | None
    with_norm: bool
    shape: tuple[int, ...]  # (B, H, W, C) or (B, T, H, W, C)
    seed: int

    def module(self) -> LinearPooling:
        norm = nn.LayerNorm if self.with_norm else None
        module = build(lambda: LinearPooling(self.dim, self.out_dim, norm_layer=norm), self.seed)
        # LayerNorm starts as the identity; random affine parameters make a misplaced norm visible.
        randomize_(layer_norms(module), self.seed + 7)
        return module

    def input(self) -> torch.Tensor:
        return randn(self.shape, self.seed + 1)


@st.composite
def cases(draw: st.DrawFn, with_norm: bool | None = None) -> Case:
    dim = draw(st.sampled_from([2, 4, 8]))
    out_dim = draw(st.one_of(st.none(), st.integers(1, 12)))
    height, width = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    leading = (draw(st.integers(1, 2)),) + ((draw(st.integers(1, 2)),) if draw(st.booleans()) else ())
    norm = draw(st.booleans()) if with_norm is None else with_norm
    return Case(dim, out_dim, norm, (*leading, height, width, dim), draw(SEEDS))


LAYOUTS = r"\(B, H, W, C\) or \(B, T, H, W, C\)"


def reference(module: LinearPooling, x: torch.Tensor) -> torch.Tensor:
    """Loop over 2x2 cells: concatenate TL, TR, BL, BR (zeros past the bottom/right edge), norm, project."""
    height, width, dim = x.shape[-3:]
    frames = x.reshape(-1, height, width, dim).double()
    weight = module.proj.weight.detach().double()
    out = torch.zeros(
        frames.shape[0], math.ceil(height / 2), math.ceil(width / 2), module.out_dim, dtype=torch.float64
    )
    for f in range(frames.shape[0]):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                cell = []
                for r, c in ((2 * i, 2 * j), (2 * i, 2 * j + 1), (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1)):
                    inside = r < height and c < width
                    cell.append(frames[f, r, c] if inside else torch.zeros(dim, dtype=torch.float64))
                squeezed = torch.cat(cell)
                if isinstance(module.norm, nn.LayerNorm):
                    squeezed = plain_layer_norm(squeezed, module.norm)
                out[f, i, j] = weight @ squeezed
    return out.reshape(*x.shape[:-3], *out.shape[1:])


@given(case=cases())
def test_matches_per_cell_reference(case: Case) -> None:
    module, x = case.module(), case.input()
    out = module(x)
    out_dim = 2 * case.dim if case.out_dim is None else case.out_dim
    height, width = case.shape[-3:-1]
    assert out.shape == (*case.shape[:-3], math.ceil(height / 2), math.ceil(width / 2), out_dim)
    torch.testing.assert_close(out.double(), reference(module, x), atol=ATOL, rtol=RTOL)


@given(case=cases())
def test_structure(case: Case) -> None:
    module = case.module()
    out_dim = 2 * case.dim if case.out_dim is None else case.out_dim
    assert module.out_dim == out_dim
    assert module.proj.in_features == 4 * case.dim and module.proj.out_features == out_dim
    assert module.proj.bias is None, "E_t in eq. 4 is a matrix: the projection must have no bias"
    if case.with_norm:
        assert isinstance(module.norm, nn.LayerNorm) and module.norm.normalized_shape == (4 * case.dim,)
    else:
        assert not any(isinstance(m, nn.LayerNorm) for m in module.modules())


@given(case=cases())
def test_leading_time_axis_is_independent(case: Case) -> None:
    module, x = case.module(), case.input()
    x5 = torch.stack([x, x.flip(0)], dim=1) if x.dim() == 4 else x
    out = module(x5)
    for t in range(x5.shape[1]):
        torch.testing.assert_close(out[:, t], module(x5[:, t]), atol=ATOL, rtol=RTOL)


@given(case=cases(with_norm=False))
def test_without_norm_is_linear(case: Case) -> None:
    # No bias and no norm: pooling is a linear map of the input, zeros included.
    module, x = case.module(), case.input()
    y = randn(case.shape, case.seed + 3)
    torch.testing.assert_close(module(2.0 * x - y), 2.0 * module(x) - module(y), atol=ATOL, rtol=RTOL)
    assert torch.count_nonzero(module(torch.zeros(case.shape))) == 0


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@given(value=st.integers(-3, 0))
def test_bad_dims_raise(value: int) -> None:
    with pytest.raises(ValueError, match="LinearPooling: dim must be a positive int"):
        LinearPooling(value)
    with pytest.raises(ValueError, match="LinearPooling: out_dim must be a positive int"):
        LinearPooling(4, value)


@given(value=st.one_of(st.floats(0.5, 4.0), st.booleans()))
def test_non_int_dims_raise_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="LinearPooling: dim must be an int, got"):
        LinearPooling(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LinearPooling: out_dim must be an int, got"):
        LinearPooling(4, value)  # type: ignore[arg-type]


@given(shape=wrong_rank_shapes(ranks=[4, 5], channels=4))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=rf"LinearPooling expects input of shape {LAYOUTS}, got {shape_message(shape)}",
    ):
        LinearPooling(4)(torch.zeros(shape))


@given(data=st.data(), rank=st.sampled_from([4, 5]))
def test_wrong_channels_raises(data: st.DataObject, rank: int) -> None:
    shape = data.draw(wrong_channel_shapes(rank=rank, channels=4))
    layout = r"\(B, H, W, C\)" if rank == 4 else r"\(B, T, H, W, C\)"
    with pytest.raises(ValueError, match=rf"{layout} with C=4, got {shape_message(shape)}"):
        LinearPooling(4)(torch.zeros(shape))


# ----------------------------------------------------------------------------------------------------
# Gradients, meta device, compile
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=2)
@given(seed=SEEDS, with_norm=st.booleans())
def test_gradcheck_input_and_parameters(seed: int, with_norm: bool) -> None:
    # Odd sides, so the zero-padded cells are part of what is differentiated.
    module = build(lambda: LinearPooling(2, 3, norm_layer=nn.LayerNorm if with_norm else None), seed)
    randomize_(layer_norms(module), seed + 7)
    gradcheck_module(module, [randn((1, 2, 3, 3, 2), seed + 1, dtype=torch.float64)])


@given(case=cases())
def test_gradient_reaches_every_parameter(case: Case) -> None:
    module = case.module()
    x = case.input().requires_grad_(True)
    assert_gradients_reach_all_parameters(module, module(x), case.seed + 2)
    assert x.grad is not None and (x.grad.abs().amax(dim=-1) > 0).all()


@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (2, 2, 4, 6, 8)])
def test_runs_on_meta_device(shape: tuple[int, ...]) -> None:
    with torch.device("meta"):
        module = LinearPooling(8, norm_layer=nn.LayerNorm)
        out = module(torch.empty(shape))
    assert out.device.type == "meta"
    assert out.shape == (*shape[:-3], math.ceil(shape[-3] / 2), math.ceil(shape[-2] / 2), 16)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = build(lambda: LinearPooling(8, 12, norm_layer=nn.LayerNorm), 0).eval()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for seed, shape in enumerate([(2, 5, 3, 8), (2, 4, 6, 8), (1, 2, 3, 5, 8)]):
        x = randn(shape, seed + 1)
        torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)
