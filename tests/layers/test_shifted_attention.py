"""Properties of shifted multi-head self-attention (SCT eqs. 6-7): keys from frame t - shift."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import Attention, ShiftedAttention
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


@dataclass(frozen=True)
class Case:
    heads: Heads
    shape: tuple[int, int, int, int]  # (B, T, N, C)
    seed: int

    @property
    def frames(self) -> int:
        return self.shape[1]

    def module(self, shift: int) -> ShiftedAttention:
        # Same seed, same weights, whatever the shift: lets tests compare shifts with each other.
        return build(lambda: ShiftedAttention(self.heads.dim, self.heads.num_heads, shift=shift), self.seed)

    def input(self) -> torch.Tensor:
        return randn(self.shape, self.seed + 1)


@st.composite
def cases(draw: st.DrawFn, min_frames: int = 1, min_tokens: int = 1) -> Case:
    spec = draw(heads())
    shape = (
        draw(st.integers(1, 2)),
        draw(st.integers(min_frames, 4)),
        draw(st.integers(min_tokens, 4)),
        spec.dim,
    )
    return Case(spec, shape, draw(SEEDS))


def reference(module: ShiftedAttention, x: torch.Tensor, shift: int) -> torch.Tensor:
    """Frame by frame: Q and V from frame t, K from frame t of ``torch.roll(x, shift, dims=1)``."""
    rolled = torch.roll(x, shift, dims=1)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            out[b, t] = plain_attention(x[b, t], rolled[b, t], x[b, t], module, module.num_heads)
    return out


@given(case=cases(), data=st.data())
def test_matches_rolled_key_reference(case: Case, data: st.DataObject) -> None:
    shift = data.draw(st.integers(-2 * case.frames, 2 * case.frames))
    module, x = case.module(shift), case.input()
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), reference(module, x, shift), atol=ATOL, rtol=RTOL)


@given(case=cases(min_frames=2))
def test_negative_shift_takes_keys_from_the_next_frame(case: Case) -> None:
    module, x = case.module(-1), case.input()
    expected = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(case.frames):
            following = (t + 1) % case.frames
            expected[b, t] = plain_attention(x[b, t], x[b, following], x[b, t], module, module.num_heads)
    torch.testing.assert_close(module(x).double(), expected, atol=ATOL, rtol=RTOL)


@given(case=cases())
def test_zero_shift_is_per_frame_msa(case: Case) -> None:
    shifted, x = case.module(0), case.input()
    base = build(lambda: Attention(case.heads.dim, case.heads.num_heads), case.seed + 3)
    base.load_state_dict(shifted.state_dict())
    expected = torch.stack([base(x[:, t]) for t in range(case.frames)], dim=1)
    torch.testing.assert_close(shifted(x), expected, atol=ATOL, rtol=RTOL)


@given(case=cases(), data=st.data())
def test_shift_is_cyclic_in_the_number_of_frames(case: Case, data: st.DataObject) -> None:
    shift = data.draw(st.integers(-case.frames, case.frames))
    wraps = data.draw(st.integers(-2, 2))
    x = case.input()
    torch.testing.assert_close(
        case.module(shift + wraps * case.frames)(x), case.module(shift)(x), atol=ATOL, rtol=RTOL
    )
    # In particular shift = T is plain per-frame attention.
    torch.testing.assert_close(case.module(case.frames)(x), case.module(0)(x), atol=ATOL, rtol=RTOL)


# Two tokens at least: with one token the softmax is 1 and keys cannot matter.
@given(case=cases(min_frames=2, min_tokens=2), data=st.data())
def test_a_frame_only_influences_itself_and_the_frame_that_takes_its_keys(
    case: Case, data: st.DataObject
) -> None:
    shift = data.draw(st.integers(-case.frames, case.frames))
    source = data.draw(st.integers(0, case.frames - 1))
    module, x = case.module(shift), case.input()
    changed = x.clone()
    changed[:, source] += randn(changed[:, source].shape, case.seed + 2) + 1.0
    delta = (module(changed) - module(x)).abs().flatten(2).amax(dim=-1)  # (B, T)
    # Frame source feeds its own queries/values and the keys of frame source + shift.
    affected = {source, (source + shift) % case.frames}
    for t in range(case.frames):
        if t in affected:
            assert (delta[:, t] > 1e-6).all(), f"frame {t} ignored a change in frame {source} (shift={shift})"
        else:
            assert (delta[:, t] <= 1e-6).all(), f"frame {t} depends on frame {source} (shift={shift})"


@given(case=cases(min_frames=2))
def test_keys_not_values_come_from_the_other_frame(case: Case) -> None:
    # With one token per frame the softmax is 1 whatever the key: the output must then be blind to the
    # shifted frame. A layer that shifted the values (or queries and values) would not be.
    spec = case.heads
    module = build(lambda: ShiftedAttention(spec.dim, spec.num_heads, shift=1), case.seed)
    x = randn((case.shape[0], case.frames, 1, spec.dim), case.seed + 1)
    changed = x.clone()
    changed[:, 0] += 1.0
    delta = (module(changed) - module(x)).abs().flatten(2).amax(dim=-1)
    assert (delta[:, 1:] <= 1e-6).all()
    assert (delta[:, 0] > 1e-6).all()


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@given(shift=st.one_of(st.floats(-3, 3), st.booleans(), st.text(max_size=2), st.none()))
def test_non_int_shift_raises(shift: object) -> None:
    with pytest.raises(TypeError, match="ShiftedAttention: shift must be an int, got"):
        ShiftedAttention(4, 2, shift=shift)  # type: ignore[arg-type]


@given(spec=bad_heads())
def test_dim_not_divisible_by_heads_raises(spec: Heads) -> None:
    with pytest.raises(
        ValueError, match=rf"ShiftedAttention: dim \({spec.dim}\) must be divisible by num_heads"
    ):
        ShiftedAttention(spec.dim, spec.num_heads)


@given(p=bad_probabilities(), which=st.sampled_from(["attn_drop", "proj_drop"]))
def test_bad_dropout_raises(p: float, which: str) -> None:
    with pytest.raises(ValueError, match=rf"ShiftedAttention: {which} must be a float in \[0, 1\)"):
        ShiftedAttention(4, 2, **{which: p})


@given(shape=wrong_rank_shapes(ranks=[4], channels=4))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=rf"ShiftedAttention expects input of shape \(B, T, N, C\), got {shape_message(shape)}",
    ):
        ShiftedAttention(4, 2)(torch.zeros(shape))


@given(shape=wrong_channel_shapes(rank=4, channels=4))
def test_wrong_channels_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"\(B, T, N, C\) with C=4, got {shape_message(shape)}"):
        ShiftedAttention(4, 2)(torch.zeros(shape))


# ----------------------------------------------------------------------------------------------------
# Gradients, meta device, compile
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=2)
@given(seed=SEEDS, shift=st.sampled_from([1, -1, 2]))
def test_gradcheck_input_and_parameters(seed: int, shift: int) -> None:
    module = build(lambda: ShiftedAttention(4, 2, shift=shift), seed)
    gradcheck_module(module, [randn((1, 3, 2, 4), seed + 1, dtype=torch.float64)])


@given(case=cases(min_frames=2))
def test_gradient_reaches_every_parameter(case: Case) -> None:
    module = case.module(1)
    x = case.input().requires_grad_(True)
    assert_gradients_reach_all_parameters(module, module(x), case.seed + 2)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_runs_on_meta_device() -> None:
    with torch.device("meta"):
        module = ShiftedAttention(8, 2, shift=1)
        out = module(torch.empty(2, 3, 5, 8))
    assert out.device.type == "meta"
    assert out.shape == (2, 3, 5, 8)


def test_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    module = build(lambda: ShiftedAttention(8, 2, shift=1), 0).eval()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for seed, shape in enumerate([(2, 3, 5, 8), (1, 4, 3, 8)]):
        x = randn(shape, seed + 1)
        torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)
