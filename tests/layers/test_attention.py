"""Properties of the base multi-head self-attention layer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import Attention
from tests.layers._strategies import (
    ATOL,
    RTOL,
    SEEDS,
    Heads,
    assert_gradients_reach_all_parameters,
    bad_heads,
    bad_probabilities,
    build,
    gradcheck_module,
    heads,
    keep_global_rng,
    one_thread,
    plain_attention,
    randn,
    shape_message,
    wrong_channel_shapes,
    wrong_rank_shapes,
)

# One intra-op thread for tiny tensors; incidental draws from the global RNG stay inside each test.
pytestmark = pytest.mark.usefixtures(one_thread.__name__, keep_global_rng.__name__)


def reference(module: Attention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain MSA, one sequence of the batch at a time; ``mask`` is (B, heads, N, N) when given."""
    return torch.stack(
        [
            plain_attention(x[b], x[b], x[b], module, module.num_heads, None if mask is None else mask[b])
            for b in range(x.shape[0])
        ]
    )


@given(spec=heads(), batch=st.integers(1, 3), tokens=st.integers(1, 6), qkv_bias=st.booleans(), seed=SEEDS)
def test_matches_plain_multi_head_attention(
    spec: Heads, batch: int, tokens: int, qkv_bias: bool, seed: int
) -> None:
    module = build(lambda: Attention(spec.dim, spec.num_heads, qkv_bias=qkv_bias), seed)
    x = randn((batch, tokens, spec.dim), seed + 1)
    out = module(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), reference(module, x), atol=ATOL, rtol=RTOL)


@st.composite
def masks(draw: st.DrawFn, batch: int, num_heads: int, tokens: int) -> torch.Tensor:
    """A bool or float mask in one of the broadcastable layouts; every query keeps its own key so no row
    is empty (an all-masked row has no softmax to compare against)."""
    seed = draw(SEEDS)
    layout = draw(st.sampled_from(["full", "per_batch", "per_head", "shared"]))
    shape = {
        "full": (batch, num_heads, tokens, tokens),
        "per_batch": (batch, 1, tokens, tokens),
        "per_head": (1, num_heads, tokens, tokens),
        "shared": (tokens, tokens),
    }[layout]
    noise = randn(shape, seed)
    if draw(st.booleans()):
        return (noise > 0) | torch.eye(tokens, dtype=torch.bool)
    return noise * 2.0


@given(data=st.data(), spec=heads(), batch=st.integers(1, 2), tokens=st.integers(1, 5), seed=SEEDS)
def test_attn_mask_passes_through(
    data: st.DataObject, spec: Heads, batch: int, tokens: int, seed: int
) -> None:
    module = build(lambda: Attention(spec.dim, spec.num_heads), seed)
    x = randn((batch, tokens, spec.dim), seed + 1)
    mask = data.draw(masks(batch, spec.num_heads, tokens))
    full_mask = mask.expand(batch, spec.num_heads, tokens, tokens)
    torch.testing.assert_close(
        module(x, attn_mask=mask).double(), reference(module, x, full_mask), atol=ATOL, rtol=RTOL
    )


@given(spec=heads(), seed=SEEDS)
def test_mask_changes_the_result(spec: Heads, seed: int) -> None:
    # Guards against the mask being accepted but dropped on the way to the kernel.
    module = build(lambda: Attention(spec.dim, spec.num_heads), seed)
    x = randn((1, 4, spec.dim), seed + 1)
    only_self = torch.eye(4, dtype=torch.bool)
    masked = module(x, attn_mask=only_self)
    assert not torch.allclose(masked, module(x), atol=1e-6)
    # Attending only to itself, each token's output is proj(v_i): the mask really reached the softmax.
    dim = spec.dim
    v = x @ module.qkv.weight[2 * dim :].T + module.qkv.bias[2 * dim :]
    torch.testing.assert_close(masked, module.proj(v), atol=ATOL, rtol=RTOL)


@given(spec=heads(), seed=SEEDS)
def test_tokens_are_permutation_equivariant(spec: Heads, seed: int) -> None:
    # No position information inside MSA: permuting tokens permutes outputs.
    module = build(lambda: Attention(spec.dim, spec.num_heads), seed)
    x = randn((2, 5, spec.dim), seed + 1)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(module(x[:, perm]), module(x)[:, perm], atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@given(spec=bad_heads())
def test_dim_not_divisible_by_heads_raises(spec: Heads) -> None:
    with pytest.raises(
        ValueError, match=rf"dim \({spec.dim}\) must be divisible by num_heads \({spec.num_heads}\)"
    ):
        Attention(spec.dim, spec.num_heads)


@given(value=st.integers(-3, 0))
def test_non_positive_dim_or_heads_raises(value: int) -> None:
    with pytest.raises(ValueError, match="dim must be a positive int"):
        Attention(value, 1)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        Attention(4, value)


@given(p=bad_probabilities(), which=st.sampled_from(["attn_drop", "proj_drop"]))
def test_bad_dropout_raises(p: float, which: str) -> None:
    with pytest.raises(ValueError, match=rf"{which} must be a float in \[0, 1\)"):
        Attention(4, 2, **{which: p})


@pytest.mark.parametrize("p", [True, "0.1", None])
@pytest.mark.parametrize("which", ["attn_drop", "proj_drop"])
def test_non_number_dropout_raises_type_error(p: object, which: str) -> None:
    with pytest.raises(
        TypeError, match=rf"Attention: {which} must be a float in \[0, 1\), got {type(p).__name__}"
    ):
        Attention(4, 2, **{which: p})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [2.0, True, "4"])
def test_non_int_dim_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=rf"Attention: dim must be an int, got {type(value).__name__}"):
        Attention(value, 1)  # type: ignore[arg-type]


@given(shape=wrong_rank_shapes(ranks=[3], channels=4))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    module = Attention(4, 2)
    with pytest.raises(
        ValueError, match=r"Attention expects input of shape \(B, N, C\), got " + shape_message(shape)
    ):
        module(torch.zeros(shape))


@given(shape=wrong_channel_shapes(rank=3, channels=4))
def test_wrong_channels_raises(shape: tuple[int, ...]) -> None:
    module = Attention(4, 2)
    with pytest.raises(ValueError, match=r"\(B, N, C\) with C=4, got " + shape_message(shape)):
        module(torch.zeros(shape))


# ----------------------------------------------------------------------------------------------------
# Gradients, meta device, compile
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=3)
@given(seed=SEEDS, use_mask=st.booleans())
def test_gradcheck_input_and_parameters(seed: int, use_mask: bool) -> None:
    module = build(lambda: Attention(4, 2), seed)
    x = randn((2, 3, 4), seed + 1, dtype=torch.float64)
    if use_mask:
        mask = torch.tensor([[True, False, True], [True, True, False], [False, True, True]])
        gradcheck_module(_MaskedAttention(module, mask), [x])
    else:
        gradcheck_module(module, [x])


class _MaskedAttention(torch.nn.Module):
    """Binds a fixed mask so gradcheck only differentiates x and the weights."""

    def __init__(self, attn: Attention, mask: torch.Tensor) -> None:
        super().__init__()
        self.attn = attn
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, attn_mask=self.mask)


@given(spec=heads(), seed=SEEDS)
def test_gradient_reaches_every_parameter(spec: Heads, seed: int) -> None:
    module = build(lambda: Attention(spec.dim, spec.num_heads), seed)
    x = randn((2, 4, spec.dim), seed + 1).requires_grad_(True)
    out = module(x)
    assert_gradients_reach_all_parameters(module, out, seed + 2)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_runs_on_meta_device() -> None:
    with torch.device("meta"):
        module = Attention(8, 2)
        out = module(torch.empty(2, 5, 8), attn_mask=torch.ones(5, 5, dtype=torch.bool))
    assert out.device.type == "meta"
    assert out.shape == (2, 5, 8)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = build(lambda: Attention(8, 2), 0).eval()
    x = randn((2, 5, 8), 1)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)
