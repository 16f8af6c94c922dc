"""Properties of the clip encoder (SCT eq. 8)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chunkformer.layers import Attention, ClipEncoder, PreNormBlock
from tests.layers._strategies import (
    ATOL,
    RTOL,
    SEEDS,
    assert_gradients_reach_all_parameters,
    bad_probabilities,
    build,
    gradcheck_module,
    keep_global_rng,
    layer_norms,
    one_thread,
    plain_attention,
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
    batch: int
    num_frames: int
    in_dim: int
    dim: int
    num_heads: int
    depth: int
    num_classes: int
    seed: int

    def module(self) -> ClipEncoder:
        module = build(
            lambda: ClipEncoder(
                self.in_dim,
                self.num_frames,
                dim=self.dim,
                depth=self.depth,
                num_heads=self.num_heads,
                mlp_dim=2 * self.dim,
                num_classes=self.num_classes,
                head_hidden_dim=3,
            ),
            self.seed,
        )
        # Default cls/pos are ~0.02 and LayerNorms are identities: make each of them matter.
        randomize_([module.cls_token, module.pos_embed, *layer_norms(module)], self.seed + 7)
        return module.eval()

    def input(self) -> torch.Tensor:
        return randn((self.batch, self.num_frames, self.in_dim), self.seed + 1)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    num_heads = draw(st.integers(1, 2))
    return Case(
        batch=draw(st.integers(1, 3)),
        num_frames=draw(st.integers(1, 4)),
        in_dim=draw(st.integers(1, 6)),
        dim=num_heads * draw(st.sampled_from([2, 4])),
        num_heads=num_heads,
        depth=draw(st.integers(1, 2)),
        num_classes=draw(st.integers(0, 4)),
        seed=draw(SEEDS),
    )


def plain_features(module: ClipEncoder, x: torch.Tensor) -> torch.Tensor:
    """Eq. 8 written out: b_0 = [cls; frames E'] + E'_pos, M' pre-norm blocks, LN of the [CLS] row."""
    out = []
    for b in range(x.shape[0]):
        frames = (
            x[b].double() @ module.frame_embed.weight.detach().double().T
            + module.frame_embed.bias.detach().double()
        )
        tokens = (
            torch.cat([module.cls_token.detach().double()[0], frames]) + module.pos_embed.detach().double()[0]
        )
        for block in module.blocks:
            normed = plain_layer_norm(tokens, block.norm1)
            tokens = tokens + plain_attention(normed, normed, normed, block.attn, block.attn.num_heads)
            hidden = plain_layer_norm(tokens, block.norm2) @ block.mlp.fc1.weight.detach().double().T
            hidden = F.gelu(hidden + block.mlp.fc1.bias.detach().double())
            tokens = (
                tokens
                + hidden @ block.mlp.fc2.weight.detach().double().T
                + block.mlp.fc2.bias.detach().double()
            )
        out.append(plain_layer_norm(tokens[0], module.norm))
    return torch.stack(out)


def plain_head(module: ClipEncoder, features: torch.Tensor) -> torch.Tensor:
    """c = MLP(LN(b_M'1)): Linear, GELU, (dropout: identity in eval), Linear."""
    first, last = module.head[0], module.head[3]
    hidden = F.gelu(features @ first.weight.detach().double().T + first.bias.detach().double())
    return hidden @ last.weight.detach().double().T + last.bias.detach().double()


@given(case=cases())
def test_output_shape(case: Case) -> None:
    out = case.module()(case.input())
    assert out.shape == ((case.batch, case.num_classes) if case.num_classes else (case.batch, case.dim))
    assert torch.isfinite(out).all()


@given(case=cases())
def test_matches_plain_eq8(case: Case) -> None:
    module, x = case.module(), case.input()
    features = plain_features(module, x)
    torch.testing.assert_close(module.forward_features(x).double(), features, atol=ATOL, rtol=RTOL)
    expected = plain_head(module, features) if case.num_classes else features
    torch.testing.assert_close(module(x).double(), expected, atol=ATOL, rtol=RTOL)


@given(case=cases())
def test_structure(case: Case) -> None:
    module = case.module()
    assert module.pos_embed.shape == (1, case.num_frames + 1, case.dim)
    assert module.cls_token.shape == (1, 1, case.dim)
    assert len(module.blocks) == case.depth
    for block in module.blocks:
        assert isinstance(block, PreNormBlock) and isinstance(block.attn, Attention)
        assert block.attn.num_heads == case.num_heads
        assert block.mlp.fc1.out_features == 2 * case.dim
    if case.num_classes == 0:
        assert isinstance(module.head, nn.Identity)
        return
    kinds = [type(layer) for layer in module.head]
    assert kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert (module.head[0].in_features, module.head[0].out_features) == (case.dim, 3)
    assert (module.head[3].in_features, module.head[3].out_features) == (3, case.num_classes)


@given(p=st.floats(0.0, 0.9))
def test_dropout_sits_before_the_last_head_layer_only(p: float) -> None:
    module = ClipEncoder(
        4, 2, dim=4, depth=1, num_heads=2, mlp_dim=8, num_classes=3, head_hidden_dim=6, head_drop=p
    )
    dropouts = [m for m in module.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    assert all(m is module.head[2] for m in dropouts)
    assert module.head[2].p == pytest.approx(p)


# dim >= 4: a LayerNorm over 2 features can only output two points, whatever the clip.
@given(case=cases().filter(lambda case: case.dim >= 4))
def test_features_depend_on_the_frames(case: Case) -> None:
    # The [CLS] row reaches the frames only through attention: a different clip must give a different
    # feature (the frame embedding and the blocks are wired in).
    module, x = case.module(), case.input()
    other = randn(x.shape, case.seed + 3)
    assert not torch.allclose(module.forward_features(x), module.forward_features(other), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@given(case=cases(), data=st.data())
def test_wrong_number_of_frames_raises(case: Case, data: st.DataObject) -> None:
    frames = data.draw(st.integers(1, 6).filter(lambda t: t != case.num_frames))
    shape = (case.batch, frames, case.in_dim)
    with pytest.raises(
        ValueError, match=rf"num_frames={case.num_frames}.*T={frames} frames in input {shape_message(shape)}"
    ):
        case.module()(torch.zeros(shape))


@given(shape=wrong_rank_shapes(ranks=[3], channels=5))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=rf"ClipEncoder expects input of shape \(B, T, in_dim\), got {shape_message(shape)}"
    ):
        ClipEncoder(5, 2, dim=4, depth=1, num_heads=2, mlp_dim=4)(torch.zeros(shape))


@given(data=st.data())
def test_wrong_feature_width_raises(data: st.DataObject) -> None:
    shape = data.draw(wrong_channel_shapes(rank=3, channels=5))
    shape = (shape[0], 2, shape[2])  # right T, so only the width is wrong
    with pytest.raises(ValueError, match=rf"\(B, T, in_dim\) with C=5, got {shape_message(shape)}"):
        ClipEncoder(5, 2, dim=4, depth=1, num_heads=2, mlp_dim=4)(torch.zeros(shape))


@given(
    which=st.sampled_from(
        ["in_dim", "num_frames", "dim", "depth", "num_heads", "mlp_dim", "head_hidden_dim"]
    ),
    value=st.one_of(st.integers(-2, 0), st.floats(0.5, 3.0), st.booleans()),
)
def test_non_positive_sizes_raise(which: str, value: object) -> None:
    kwargs: dict[str, object] = {
        "in_dim": 4,
        "num_frames": 2,
        "dim": 4,
        "depth": 1,
        "num_heads": 2,
        "mlp_dim": 4,
    }
    kwargs[which] = value
    # A value of the wrong type is a TypeError, an int below 1 a ValueError.
    error, message = (ValueError, "a positive int") if type(value) is int else (TypeError, "an int, got")
    with pytest.raises(error, match=rf"ClipEncoder: {which} must be {message}"):
        ClipEncoder(**kwargs)  # type: ignore[arg-type]


@given(num_heads=st.integers(2, 5), data=st.data())
def test_dim_not_divisible_by_heads_raises(num_heads: int, data: st.DataObject) -> None:
    dim = data.draw(st.integers(1, 20).filter(lambda d: d % num_heads))
    with pytest.raises(
        ValueError, match=rf"ClipEncoder: dim \({dim}\) must be divisible by num_heads \({num_heads}\)"
    ):
        ClipEncoder(4, 2, dim=dim, depth=1, num_heads=num_heads, mlp_dim=4)


@given(num_classes=st.one_of(st.floats(0.5, 3.0), st.booleans()))
def test_non_int_num_classes_raises_type_error(num_classes: object) -> None:
    with pytest.raises(TypeError, match=r"ClipEncoder: num_classes must be an int, got (float|bool)"):
        ClipEncoder(4, 2, dim=4, depth=1, num_heads=2, mlp_dim=4, num_classes=num_classes)  # type: ignore[arg-type]


@given(num_classes=st.integers(-3, -1))
def test_bad_num_classes_raises(num_classes: int) -> None:
    with pytest.raises(ValueError, match=r"ClipEncoder: num_classes must be an int >= 0"):
        ClipEncoder(
            4,
            2,
            dim=4,
            depth=1,
            num_heads=2,
            mlp_dim=4,
            num_classes=num_classes,  # type: ignore[arg-type]
        )


@given(p=bad_probabilities())
def test_bad_dropout_raises(p: float) -> None:
    with pytest.raises(ValueError, match=r"ClipEncoder: head_drop must be a float in \[0, 1\)"):
        ClipEncoder(4, 2, dim=4, depth=1, num_heads=2, mlp_dim=4, num_classes=2, head_drop=p)


# ----------------------------------------------------------------------------------------------------
# Gradients, meta device, compile
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=2)
@given(seed=SEEDS, num_classes=st.sampled_from([0, 3]))
def test_gradcheck_input_and_parameters(seed: int, num_classes: int) -> None:
    module = build(
        lambda: ClipEncoder(
            3, 2, dim=4, depth=1, num_heads=2, mlp_dim=4, num_classes=num_classes, head_hidden_dim=3
        ),
        seed,
    )
    randomize_([module.cls_token, module.pos_embed, *layer_norms(module)], seed + 7)
    gradcheck_module(module.eval(), [randn((2, 2, 3), seed + 1, dtype=torch.float64)])


@given(case=cases())
def test_gradient_reaches_every_parameter(case: Case) -> None:
    module = case.module()
    x = case.input().requires_grad_(True)
    assert_gradients_reach_all_parameters(module, module(x), case.seed + 2)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("num_classes", [0, 5])
def test_runs_on_meta_device(num_classes: int) -> None:
    with torch.device("meta"):
        module = ClipEncoder(
            6, 3, dim=8, depth=2, num_heads=2, mlp_dim=16, num_classes=num_classes, head_hidden_dim=16
        )
        out = module(torch.empty(2, 3, 6))
    assert out.device.type == "meta"
    assert out.shape == (2, num_classes or 8)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = build(
        lambda: ClipEncoder(6, 3, dim=8, depth=2, num_heads=2, mlp_dim=16, num_classes=5, head_hidden_dim=16),
        0,
    ).eval()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = randn((2, 3, 6), 1)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)
