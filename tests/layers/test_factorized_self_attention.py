"""Properties of ViViT's factorised self-attention (model 3)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import FactorizedSelfAttention
from chunkformer.ops.zoo_reference import factorized_self_attention_reference
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
    seed: int

    def module(self) -> FactorizedSelfAttention:
        module = build(lambda: FactorizedSelfAttention(self.heads.dim, self.heads.num_heads), self.seed)
        randomize_(list(module.parameters()), self.seed + 7)
        return module.eval()

    def input(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return randn(self.shape, self.seed + 1, dtype=dtype)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    spec = draw(heads())
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4)), spec.dim)
    return Case(spec, shape, draw(SEEDS))


@FEW
@given(case=cases())
def test_matches_reference(case: Case) -> None:
    module = case.module().double()
    x = case.input(torch.float64)
    torch.testing.assert_close(
        module(x), factorized_self_attention_reference(module, x), atol=1e-10, rtol=1e-10
    )


@FEW
@given(case=cases(), data=st.data())
def test_permuting_frames_and_positions_permutes_the_output(case: Case, data: st.DataObject) -> None:
    # No position information inside the layer: permuting frames, or every frame's tokens alike, commutes.
    module, x = case.module(), case.input()
    frames = torch.tensor(data.draw(st.permutations(range(case.shape[1]))))
    tokens = torch.tensor(data.draw(st.permutations(range(case.shape[2]))))
    out = module(x)
    torch.testing.assert_close(
        module(x[:, frames][:, :, tokens]), out[:, frames][:, :, tokens], atol=1e-5, rtol=1e-5
    )


@FEW
@given(case=cases(), data=st.data())
def test_spatial_step_alone_keeps_frames_apart(case: Case, data: st.DataObject) -> None:
    # Without the temporal branch (zero output projection) the block is per-frame spatial attention.
    module, x = case.module(), case.input()
    torch.nn.init.zeros_(module.temporal_attn.proj.weight)
    torch.nn.init.zeros_(module.temporal_attn.proj.bias)
    frame = data.draw(st.integers(0, case.shape[1] - 1))
    changed = x.clone()
    changed[:, frame] += 1.0
    others = [t for t in range(case.shape[1]) if t != frame]
    torch.testing.assert_close(module(changed)[:, others], module(x)[:, others], atol=1e-6, rtol=0)


@settings(max_examples=10, deadline=None)
@given(case=cases())
def test_every_backend_matches_math(case: Case) -> None:
    assert "math" in assert_backends_agree_with_math(case.module(), [case.input()])


@settings(max_examples=2, deadline=None)
@given(seed=SEEDS)
def test_gradcheck_input_and_parameters(seed: int) -> None:
    case = Case(Heads(4, 2), (1, 2, 3, 4), seed)
    gradcheck_module(case.module(), [case.input(torch.float64)])


@settings(max_examples=5, deadline=None)
@given(case=cases())
def test_gradient_reaches_every_parameter(case: Case) -> None:
    module = case.module()
    assert_gradients_reach_all_parameters(module, module(case.input()), case.seed + 3)


def test_runs_on_meta_device() -> None:
    with torch.device("meta"):
        out = FactorizedSelfAttention(8, 2)(torch.empty(2, 3, 5, 8))
    assert out.device.type == "meta" and out.shape == (2, 3, 5, 8)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = Case(Heads(8, 2), (2, 3, 5, 8), 0).module()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = randn((2, 3, 5, 8), 1)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(shape=wrong_rank_shapes(ranks=[4], channels=4))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=rf"FactorizedSelfAttention expects input of shape \(B, T, N, C\), got {shape_message(shape)}",
    ):
        FactorizedSelfAttention(4, 2)(torch.zeros(shape))


def test_wrong_channels_raises() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, N, C\) with C=4, got \(1, 2, 3, 5\)"):
        FactorizedSelfAttention(4, 2)(torch.zeros(1, 2, 3, 5))


@settings(max_examples=10, deadline=None)
@given(spec=bad_heads())
def test_dim_not_divisible_by_heads_raises(spec: Heads) -> None:
    with pytest.raises(ValueError, match=rf"FactorizedSelfAttention: dim \({spec.dim}\) must be divisible"):
        FactorizedSelfAttention(spec.dim, spec.num_heads)
