"""Properties of TimeSformer's divided space-time attention."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import DividedSpaceTimeAttention
from chunkformer.ops.zoo_reference import divided_space_time_reference
from tests.layers._strategies import (
    SEEDS,
    Heads,
    assert_backends_agree_with_math,
    assert_gradients_reach_all_parameters,
    bad_heads,
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


@dataclass(frozen=True)
class Case:
    heads: Heads
    shape: tuple[int, int, int, int]  # (B, T, N, C)
    with_cls: bool
    seed: int

    def module(self) -> DividedSpaceTimeAttention:
        module = build(lambda: DividedSpaceTimeAttention(self.heads.dim, self.heads.num_heads), self.seed)
        # Noise everywhere: identity LayerNorms, zero biases or a zero temporal_fc would hide bugs.
        randomize_(list(module.parameters()), self.seed + 7)
        return module.eval()

    def inputs(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        x = randn(self.shape, self.seed + 1, dtype=dtype)
        if not self.with_cls:
            return (x,)
        return x, randn((self.shape[0], 1, self.heads.dim), self.seed + 2, dtype=dtype)


@st.composite
def cases(draw: st.DrawFn, with_cls: bool | None = None) -> Case:
    spec = draw(heads())
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4)), spec.dim)
    cls = draw(st.booleans()) if with_cls is None else with_cls
    return Case(spec, shape, cls, draw(SEEDS))


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


@FEW
@given(case=cases())
def test_matches_reference(case: Case) -> None:
    module = case.module().double()
    inputs = case.inputs(torch.float64)
    got, expected = _as_tuple(module(*inputs)), _as_tuple(divided_space_time_reference(module, *inputs))
    assert len(got) == len(expected) == (2 if case.with_cls else 1)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


@FEW
@given(case=cases(), data=st.data())
def test_without_temporal_fc_frames_are_independent(case: Case, data: st.DataObject) -> None:
    # TimeSformer zero-initialises temporal_fc: the block is then per-frame spatial attention, and a change
    # in one frame reaches no other frame's tokens (the class token, averaged over frames, does see it).
    module = case.module()
    torch.nn.init.zeros_(module.temporal_fc.weight)
    torch.nn.init.zeros_(module.temporal_fc.bias)
    inputs = case.inputs()
    frame = data.draw(st.integers(0, case.shape[1] - 1))
    changed = inputs[0].clone()
    changed[:, frame] += 1.0
    before, after = _as_tuple(module(*inputs)), _as_tuple(module(changed, *inputs[1:]))
    others = [t for t in range(case.shape[1]) if t != frame]
    torch.testing.assert_close(after[0][:, others], before[0][:, others], atol=1e-6, rtol=0)


@FEW
@given(case=cases(), data=st.data())
def test_permuting_positions_permutes_the_output(case: Case, data: st.DataObject) -> None:
    # No position information inside the layer: the same permutation of every frame's tokens commutes.
    module, inputs = case.module(), case.inputs()
    order = torch.tensor(data.draw(st.permutations(range(case.shape[2]))))
    out = _as_tuple(module(*inputs))
    permuted = _as_tuple(module(inputs[0][:, :, order], *inputs[1:]))
    torch.testing.assert_close(permuted[0], out[0][:, :, order], atol=1e-5, rtol=1e-5)
    if case.with_cls:
        torch.testing.assert_close(permuted[1], out[1], atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(case=cases())
def test_every_backend_matches_math(case: Case) -> None:
    assert "math" in assert_backends_agree_with_math(case.module(), case.inputs())


@settings(max_examples=2, deadline=None)
@given(seed=SEEDS, with_cls=st.booleans())
def test_gradcheck_input_and_parameters(seed: int, with_cls: bool) -> None:
    case = Case(Heads(4, 2), (1, 2, 2, 4), with_cls, seed)
    gradcheck_module(case.module(), case.inputs(torch.float64))


@settings(max_examples=5, deadline=None)
@given(case=cases(with_cls=True))
def test_gradient_reaches_every_parameter(case: Case) -> None:
    module = case.module()
    x, cls = case.inputs()
    out, cls_out = module(x, cls)
    assert_gradients_reach_all_parameters(
        module, torch.cat([out.flatten(), cls_out.flatten()]), case.seed + 3
    )


def test_runs_on_meta_device() -> None:
    with torch.device("meta"):
        module = DividedSpaceTimeAttention(8, 2)
        out, cls = module(torch.empty(2, 3, 5, 8), torch.empty(2, 1, 8))
    assert out.device.type == cls.device.type == "meta"
    assert out.shape == (2, 3, 5, 8) and cls.shape == (2, 1, 8)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = Case(Heads(8, 2), (2, 3, 5, 8), True, 0).module()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x, cls = randn((2, 3, 5, 8), 1), randn((2, 1, 8), 2)
    for got, expected in zip(compiled(x, cls), module(x, cls), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(shape=wrong_rank_shapes(ranks=[4], channels=4))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=rf"DividedSpaceTimeAttention expects input of shape \(B, T, N, C\), got {shape_message(shape)}",
    ):
        DividedSpaceTimeAttention(4, 2)(torch.zeros(shape))


@pytest.mark.parametrize("cls_shape", [(2, 4), (3, 1, 4), (2, 2, 4), (2, 1, 5)])
def test_wrong_cls_token_shape_raises(cls_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"cls_token.*\(B, 1, C\).*got {shape_message(cls_shape)}"):
        DividedSpaceTimeAttention(4, 2)(torch.zeros(2, 3, 5, 4), torch.zeros(cls_shape))


@settings(max_examples=10, deadline=None)
@given(spec=bad_heads())
def test_dim_not_divisible_by_heads_raises(spec: Heads) -> None:
    with pytest.raises(ValueError, match=rf"DividedSpaceTimeAttention: dim \({spec.dim}\) must be divisible"):
        DividedSpaceTimeAttention(spec.dim, spec.num_heads)


def test_bad_drop_path_raises() -> None:
    with pytest.raises(ValueError, match=r"DividedSpaceTimeAttention: drop_path must be a float in \[0, 1\)"):
        DividedSpaceTimeAttention(4, 2, drop_path=1.5)
    with pytest.raises(TypeError, match="DividedSpaceTimeAttention: drop_path must be a float"):
        DividedSpaceTimeAttention(4, 2, drop_path="0.1")  # type: ignore[arg-type]
