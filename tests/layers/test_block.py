"""Properties of the pre-norm residual block, its MLP and stochastic depth."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

from chunkformer.layers import Attention, ChunkAttention, DropPath, Mlp, PreNormBlock, drop_path
from tests.layers._strategies import (
    ATOL,
    RTOL,
    SEEDS,
    Heads,
    assert_gradients_reach_all_parameters,
    bad_probabilities,
    build,
    gradcheck_module,
    heads,
    keep_global_rng,
    layer_norms,
    one_thread,
    plain_layer_norm,
    randn,
    randomize_,
    shape_message,
)

# One intra-op thread for tiny tensors; incidental draws from the global RNG stay inside each test.
pytestmark = pytest.mark.usefixtures(one_thread.__name__, keep_global_rng.__name__)


def make_block(
    spec: Heads, seed: int, attn: Callable[[], nn.Module] | None = None, **kwargs: Any
) -> PreNormBlock:
    """A block whose attention (``attn()``, default MSA) is built under the same seeded init."""
    make_attn = attn or (lambda: Attention(spec.dim, spec.num_heads))
    block = build(lambda: PreNormBlock(spec.dim, make_attn(), **kwargs), seed)
    # LayerNorms start as identities; random affines make swapped or skipped norms visible.
    randomize_(layer_norms(block), seed + 7)
    return block


def plain_mlp(mlp: Mlp, x: torch.Tensor, act: Any = F.gelu) -> torch.Tensor:
    """fc2(act(fc1(x))) with the module's weights, in float64 (dropout is identity in eval)."""
    hidden = act(x.double() @ mlp.fc1.weight.detach().double().T + mlp.fc1.bias.detach().double())
    return hidden @ mlp.fc2.weight.detach().double().T + mlp.fc2.bias.detach().double()


def by_hand(block: PreNormBlock, x: torch.Tensor, **attn_kwargs: Any) -> torch.Tensor:
    """x + attn(LN1(x)), then + MLP(LN2(.)): eqs. 2, 7 and 8 written out."""
    normed = plain_layer_norm(x, block.norm1).to(x.dtype)
    h = x.double() + block.attn(normed, **attn_kwargs).double()
    return h + plain_mlp(block.mlp, plain_layer_norm(h, block.norm2))


# ----------------------------------------------------------------------------------------------------
# PreNormBlock
# ----------------------------------------------------------------------------------------------------


@given(
    spec=heads(),
    batch=st.integers(1, 2),
    tokens=st.integers(1, 5),
    mlp_ratio=st.sampled_from([0.5, 1.0, 2.0]),
    seed=SEEDS,
)
def test_block_equals_residual_formula(
    spec: Heads, batch: int, tokens: int, mlp_ratio: float, seed: int
) -> None:
    block = make_block(spec, seed, mlp_ratio=mlp_ratio).eval()
    x = randn((batch, tokens, spec.dim), seed + 1)
    out = block(x)
    assert out.shape == x.shape
    assert block.mlp.fc1.out_features == max(1, round(spec.dim * mlp_ratio))
    torch.testing.assert_close(out.double(), by_hand(block, x), atol=ATOL, rtol=RTOL)


@given(spec=heads(), seed=SEEDS, chunk=st.integers(1, 3))
def test_block_wraps_any_layout(spec: Heads, seed: int, chunk: int) -> None:
    # The block is layout-agnostic: with chunk attention it maps (B, H, W, C) grids.
    block = make_block(spec, seed, attn=lambda: ChunkAttention(spec.dim, spec.num_heads, chunk)).eval()
    x = randn((2, 3, 4, spec.dim), seed + 1)
    torch.testing.assert_close(block(x).double(), by_hand(block, x), atol=ATOL, rtol=RTOL)


@example(spec=Heads(dim=2, num_heads=1), seed=6466, tokens=2)  # the degenerate case: both clips' tokens equal
@given(spec=heads(), seed=SEEDS, tokens=st.integers(2, 5))
def test_block_forwards_kwargs_to_attention(spec: Heads, seed: int, tokens: int) -> None:
    block = make_block(spec, seed).eval()
    x = randn((2, tokens, spec.dim), seed + 1)
    # At dim 2 LayerNorm maps every token to +-(1, -1): when all tokens of both clips land on the same
    # vector, every token attends to equal values and no mask can change the output.
    normed = block.norm1(x).detach()
    assume(not torch.allclose(normed, normed[:, :1].expand_as(normed), atol=1e-3))
    only_self = torch.eye(tokens, dtype=torch.bool)
    masked = block(x, attn_mask=only_self)
    torch.testing.assert_close(masked.double(), by_hand(block, x, attn_mask=only_self), atol=ATOL, rtol=RTOL)
    assert not torch.allclose(masked, block(x), atol=1e-6), "the mask did not reach the attention layer"


class _Recorder(nn.Module):
    """A token mixer that records the keyword arguments it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls.append(kwargs)
        return 2.0 * x


@given(kwargs=st.dictionaries(st.sampled_from(["attn_mask", "padding", "flag"]), st.integers(), max_size=3))
def test_block_passes_every_kwarg_unchanged(kwargs: dict[str, int]) -> None:
    recorder = _Recorder()
    block = build(lambda: PreNormBlock(4, recorder), 0)
    block(torch.zeros(1, 2, 4), **kwargs)
    assert recorder.calls == [kwargs]


@given(spec=heads(), seed=SEEDS, p=st.floats(0.2, 0.8))
def test_block_drop_path_drops_whole_branches_per_sample(spec: Heads, seed: int, p: float) -> None:
    block = make_block(spec, seed, drop_path=p).train()
    x = randn((16, 3, spec.dim), seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = block(x)
    block.eval()
    attn_branch = block.attn(block.norm1(x))
    scale = 1.0 / (1.0 - p)
    for b in range(x.shape[0]):
        # Each residual branch of a sample is either dropped or kept and rescaled: 4 possible outputs.
        candidates = []
        for keep_attn in (0.0, scale):
            h = x[b] + keep_attn * attn_branch[b]
            mlp_branch = block.mlp(block.norm2(h))
            candidates += [h, h + scale * mlp_branch]
        assert any(torch.allclose(out[b], c, atol=1e-5, rtol=1e-5) for c in candidates), f"sample {b}"


@given(spec=heads(), seed=SEEDS, p=st.floats(0.1, 0.9))
def test_block_drop_path_is_identity_in_eval(spec: Heads, seed: int, p: float) -> None:
    block = make_block(spec, seed, drop_path=p).eval()
    plain = make_block(spec, seed).eval()
    x = randn((3, 2, spec.dim), seed + 1)
    torch.testing.assert_close(block(x), plain(x), atol=0, rtol=0)


def test_block_errors() -> None:
    with pytest.raises(TypeError, match="PreNormBlock: attn must be an nn.Module"):
        PreNormBlock(4, lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PreNormBlock: dim must be a positive int"):
        PreNormBlock(0, nn.Identity())


@given(ratio=st.one_of(st.floats(-4.0, 0.0), st.just(float("nan"))))
def test_block_non_positive_mlp_ratio_raises(ratio: float) -> None:
    with pytest.raises(ValueError, match="PreNormBlock: mlp_ratio must be > 0"):
        PreNormBlock(4, nn.Identity(), mlp_ratio=ratio)


@given(p=bad_probabilities())
def test_block_bad_probabilities_raise(p: float) -> None:
    with pytest.raises(ValueError, match=r"PreNormBlock: drop_path must be a float in \[0, 1\)"):
        PreNormBlock(4, nn.Identity(), drop_path=p)
    with pytest.raises(ValueError, match=r"Mlp: proj_drop must be a float in \[0, 1\)"):
        PreNormBlock(4, nn.Identity(), proj_drop=p)


@settings(max_examples=2)
@given(seed=SEEDS)
def test_block_gradcheck_input_and_parameters(seed: int) -> None:
    block = make_block(Heads(dim=4, num_heads=2), seed, mlp_ratio=1.0)
    gradcheck_module(block.eval(), [randn((1, 3, 4), seed + 1, dtype=torch.float64)])


@given(spec=heads(), seed=SEEDS)
def test_block_gradient_reaches_every_parameter(spec: Heads, seed: int) -> None:
    block = make_block(spec, seed)
    x = randn((2, 3, spec.dim), seed + 1).requires_grad_(True)
    assert_gradients_reach_all_parameters(block, block(x), seed + 2)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_block_runs_on_meta_device() -> None:
    with torch.device("meta"):
        block = PreNormBlock(8, ChunkAttention(8, 2, 3), drop_path=0.5)
        out = block(torch.empty(2, 5, 4, 8))  # training mode: drop path draws its mask on meta too
    assert out.device.type == "meta"
    assert out.shape == (2, 5, 4, 8)


def test_block_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    block = make_block(Heads(dim=8, num_heads=2), 0, drop_path=0.3).eval()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = randn((2, 5, 8), 1)
    mask = torch.eye(5, dtype=torch.bool) | (randn((5, 5), 2) > 0)
    torch.testing.assert_close(compiled(x), block(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled(x, attn_mask=mask), block(x, attn_mask=mask), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Mlp
# ----------------------------------------------------------------------------------------------------


@given(
    in_features=st.integers(1, 6),
    hidden=st.one_of(st.none(), st.integers(1, 6)),
    out=st.one_of(st.none(), st.integers(1, 6)),
    leading=st.lists(st.integers(1, 3), max_size=3),
    seed=SEEDS,
)
def test_mlp_shapes_and_formula(
    in_features: int, hidden: int | None, out: int | None, leading: list[int], seed: int
) -> None:
    mlp = build(lambda: Mlp(in_features, hidden, out), seed).eval()
    assert mlp.fc1.out_features == (hidden or in_features)
    assert mlp.fc2.out_features == (out or in_features)
    x = randn((*leading, in_features), seed + 1)
    y = mlp(x)
    assert y.shape == (*leading, out or in_features)
    torch.testing.assert_close(y.double(), plain_mlp(mlp, x), atol=ATOL, rtol=RTOL)


@given(seed=SEEDS)
def test_mlp_uses_the_given_activation(seed: int) -> None:
    mlp = build(lambda: Mlp(4, 8, act_layer=nn.ReLU), seed).eval()
    x = randn((3, 4), seed + 1)
    torch.testing.assert_close(mlp(x).double(), plain_mlp(mlp, x, act=F.relu), atol=ATOL, rtol=RTOL)


@given(which=st.sampled_from(["in_features", "hidden_features", "out_features"]), value=st.integers(-3, 0))
def test_mlp_non_positive_sizes_raise(which: str, value: int) -> None:
    kwargs: dict[str, int] = {"in_features": 4, which: value}
    with pytest.raises(ValueError, match=rf"Mlp: {which} must be a positive int, got {value}"):
        Mlp(**kwargs)


@given(p=bad_probabilities())
def test_mlp_bad_dropout_raises(p: float) -> None:
    with pytest.raises(ValueError, match=r"Mlp: proj_drop must be a float in \[0, 1\)"):
        Mlp(4, proj_drop=p)


@given(width=st.integers(1, 9).filter(lambda w: w != 4), leading=st.lists(st.integers(1, 3), max_size=3))
def test_mlp_wrong_width_raises(width: int, leading: list[int]) -> None:
    shape = (*leading, width)
    with pytest.raises(
        ValueError, match=rf"Mlp expects input of shape \(\*, 4\), got {shape_message(shape)}"
    ):
        Mlp(4)(torch.zeros(shape))


def test_mlp_runs_on_meta_device() -> None:
    with torch.device("meta"):
        out = Mlp(4, 8, 6)(torch.empty(2, 3, 4))
    assert out.device.type == "meta" and out.shape == (2, 3, 6)


# ----------------------------------------------------------------------------------------------------
# DropPath
# ----------------------------------------------------------------------------------------------------


@given(p=st.floats(0.0, 0.99), seed=SEEDS)
def test_drop_path_is_identity_in_eval(p: float, seed: int) -> None:
    x = randn((4, 3, 2), seed)
    assert torch.equal(DropPath(p).eval()(x), x)
    assert torch.equal(drop_path(x, p, training=False), x)


@given(seed=SEEDS)
def test_drop_path_zero_is_identity_in_training(seed: int) -> None:
    x = randn((4, 3, 2), seed)
    assert torch.equal(DropPath(0.0).train()(x), x)


@given(p=st.floats(0.05, 0.95), seed=SEEDS, trailing=st.lists(st.integers(1, 3), max_size=3))
def test_drop_path_zeroes_or_rescales_whole_samples(p: float, seed: int, trailing: list[int]) -> None:
    x = randn((32, *trailing), seed) + 5.0  # away from 0, so "zeroed" is unambiguous
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = DropPath(p).train()(x)
    for b in range(x.shape[0]):
        dropped = torch.equal(out[b], torch.zeros_like(out[b]))
        kept = torch.allclose(out[b], x[b] / (1.0 - p), atol=1e-6, rtol=1e-6)
        assert dropped or kept, f"sample {b} was neither dropped nor rescaled as a whole"


@settings(max_examples=5)
@given(p=st.floats(0.05, 0.9), seed=SEEDS)
def test_drop_path_preserves_the_expected_value(p: float, seed: int) -> None:
    samples = 20_000
    x = torch.ones(samples, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = DropPath(p).train()(x)
    keep = 1.0 - p
    kept_fraction = (out[:, 0] != 0).double().mean().item()
    # 6 standard deviations: a fixed-seed check that still fails for a wrong keep rate or rescaling.
    assert abs(kept_fraction - keep) < 6 * math.sqrt(keep * p / samples)
    assert abs(out.double().mean().item() - 1.0) < 6 * math.sqrt(p / keep / samples)


def test_drop_path_leaves_the_global_rng_alone_when_identity() -> None:
    # Eval and p=0 must not consume random numbers: that would shift every later draw in a run.
    state = torch.random.get_rng_state()
    x = torch.ones(3, 2)
    DropPath(0.5).eval()(x)
    DropPath(0.0).train()(x)
    assert torch.equal(torch.random.get_rng_state(), state)


@given(p=bad_probabilities())
def test_drop_path_bad_probability_raises(p: float) -> None:
    with pytest.raises(ValueError, match=r"DropPath: drop_prob must be a float in \[0, 1\)"):
        DropPath(p)
    # The functional form must refuse too: p = 1 would otherwise divide by zero and return NaN.
    with pytest.raises(ValueError, match=r"drop_prob must be a float in \[0, 1\)"):
        drop_path(torch.ones(2, 3), p, training=True)


@settings(max_examples=2)
@given(seed=SEEDS)
def test_drop_path_gradcheck(seed: int) -> None:
    # The mask is drawn inside the forward: reseed on every call so all evaluations see the same mask.
    class Seeded(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return drop_path(x, 0.5, training=True)

    gradcheck_module(Seeded(), [randn((6, 2), seed + 1, dtype=torch.float64)])


def test_mlp_and_drop_path_compile_fullgraph() -> None:
    torch._dynamo.reset()
    mlp = build(lambda: Mlp(4, 8, 6), 0).eval()
    x = randn((2, 3, 4), 1)
    compiled_mlp = torch.compile(mlp, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled_mlp(x), mlp(x), atol=1e-6, rtol=1e-6)

    # Training mode: the per-sample mask must be drawn inside the graph, not frozen at trace time.
    compiled_drop = torch.compile(DropPath(0.5).train(), fullgraph=True, backend="aot_eager")
    x = randn((64, 3), 2) + 5.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first, second = compiled_drop(x), compiled_drop(x)
    for out in (first, second):
        kept = (out != 0).all(dim=-1)
        dropped = (out == 0).all(dim=-1)
        assert (kept | dropped).all()
        torch.testing.assert_close(out[kept], 2.0 * x[kept])
        assert kept.any() and dropped.any()
    assert not torch.equal(first, second), "two calls drew the same mask"
