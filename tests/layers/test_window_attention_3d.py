"""Properties of Video Swin's 3-D (shifted) window attention."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.layers import WindowAttention3D
from chunkformer.ops.zoo_reference import shifted_window_keys, window_attention_3d_reference
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

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Case:
    heads: Heads
    window: Triple
    shift: Triple
    shape: tuple[int, ...]  # (B, T, H, W, C)
    seed: int

    def module(self, shift: Triple | None = None) -> WindowAttention3D:
        shift = self.shift if shift is None else shift
        module = build(
            lambda: WindowAttention3D(self.heads.dim, self.heads.num_heads, self.window, shift), self.seed
        )
        # A noisy bias table: the default (std 0.02) is too close to zero to catch a misindexed offset.
        randomize_(list(module.parameters()), self.seed + 7)
        return module.eval()

    def input(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return randn(self.shape, self.seed + 1, dtype=dtype)


@st.composite
def cases(draw: st.DrawFn, shifted: bool | None = None) -> Case:
    """Windows of side 1-3, shifts below them, clip sides smaller than, equal to and ragged against them."""
    spec = draw(heads())
    window = tuple(draw(st.integers(1, 3)) for _ in range(3))
    if shifted is False:
        shift = (0, 0, 0)
    else:
        shift = tuple(draw(st.integers(0, w - 1)) for w in window)
    sizes = tuple(draw(st.integers(1, 2 * w + 1)) for w in window)
    return Case(spec, window, shift, (draw(st.integers(1, 2)), *sizes, spec.dim), draw(SEEDS))  # type: ignore[arg-type]


@FEW
@given(case=cases())
def test_matches_reference(case: Case) -> None:
    module = case.module().double()
    x = case.input(torch.float64)
    torch.testing.assert_close(module(x), window_attention_3d_reference(module, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    ("window", "shift", "sizes"),
    [
        # Ragged by one along H and W: 3 rows of padding, rolled by the shift, straddle two windows.
        ((2, 4, 4), (1, 2, 2), (3, 5, 9)),
        # Several whole windows along each axis and a shift on each: interior windows have no mask.
        ((2, 3, 3), (1, 1, 2), (6, 9, 7)),
    ],
)
def test_matches_reference_with_several_windows_per_axis(
    window: Triple, shift: Triple, sizes: Triple
) -> None:
    # The hypothesis cases have at most 3 windows per axis; these cut more, so windows fall into groups of
    # different masks (interior, cut by the shift, holding padding) that the layer batches separately.
    case = Case(Heads(8, 2), window, shift, (2, *sizes, 8), 3)
    module = case.module().double()
    x = case.input(torch.float64)
    torch.testing.assert_close(module(x), window_attention_3d_reference(module, x), atol=1e-10, rtol=1e-10)


def test_video_swin_t_windows_fall_into_four_mask_groups() -> None:
    # 8 x 56 x 56 tokens, (8, 7, 7) windows shifted by (4, 3, 3): one window along T, so no shift there;
    # along H and W the last of 8 windows is cut. 49 windows need no mask, 7 + 7 + 1 share one each.
    module = WindowAttention3D(96, 3, (8, 7, 7), (4, 3, 3))
    groups = module._window_groups((8, 56, 56), (8, 56, 56), (0, 3, 3))
    assert sorted(len(indices) for indices, _ in groups) == [1, 7, 7, 49]
    assert sorted(index for indices, _ in groups for index in indices) == list(range(64))
    assert [masked for indices, masked in groups if len(indices) == 49] == [False]
    # Within a group, every window has the mask of Video Swin's compute_mask (as _allowed builds it).
    allowed = module._allowed((8, 56, 56), (8, 56, 56), (0, 3, 3), torch.device("cpu"))
    for indices, masked in groups:
        assert all(torch.equal(allowed[index], allowed[indices[0]]) for index in indices)
        assert bool(allowed[indices[0]].all()) is not masked


@FEW
@given(case=cases(shifted=False))
def test_without_shift_each_window_alone_gives_the_same_output(case: Case) -> None:
    # Shift zero is plain windows: a window cut out (whole or ragged) and run alone gives its output, so
    # neither neighbours nor the padding of ragged windows reach it. The relative bias is indexed by the true
    # offsets, so a ragged window alone (padded to a full one) sees the same biases.
    module, x = case.module(), case.input()
    out = module(x)
    sizes = case.shape[1:4]
    for corner in itertools.product(*(range(0, n, w) for n, w in zip(sizes, case.window, strict=True))):
        cut = (slice(None), *(slice(c, c + w) for c, w in zip(corner, case.window, strict=True)))
        torch.testing.assert_close(module(x[cut]), out[cut], atol=1e-5, rtol=1e-5)


@FEW
@given(case=cases(), data=st.data())
def test_a_change_reaches_only_the_queries_whose_window_holds_it(case: Case, data: st.DataObject) -> None:
    module, x = case.module(), case.input()
    sizes = case.shape[1:4]
    batch = data.draw(st.integers(0, case.shape[0] - 1))
    token = tuple(data.draw(st.integers(0, n - 1)) for n in sizes)
    changed = x.clone()
    changed[(batch, *token)] += 1.0
    moved = (module(changed) - module(x)).abs().amax(dim=-1) > 1e-6
    expected = torch.zeros(moved.shape, dtype=torch.bool)
    for query in itertools.product(*(range(n) for n in sizes)):
        keys = [key for key, _ in shifted_window_keys(query, sizes, case.window, case.shift)]
        expected[(batch, *query)] = token in keys
    assert (moved == expected).all()


@FEW
@given(case=cases(shifted=False), data=st.data())
def test_shift_equals_rolling_around_plain_windows_when_nothing_wraps(
    case: Case, data: st.DataObject
) -> None:
    # On a clip of whole windows, shifting by s is plain windows on the clip rolled by -s, rolled back, except
    # where the mask splits the wrapped tokens off: compare the queries of windows with no wrapped token.
    sizes = tuple(max(n, 2 * w) // w * w for n, w in zip(case.shape[1:4], case.window, strict=True))
    shift = tuple(data.draw(st.integers(0, w - 1)) for w in case.window)
    shape = (case.shape[0], *sizes, case.heads.dim)
    x = randn(shape, case.seed + 1)
    plain, shifted = case.module(), case.module(shift)
    rolled = plain(x.roll(tuple(-s for s in shift), dims=(1, 2, 3))).roll(shift, dims=(1, 2, 3))
    out = shifted(x)
    # Along each axis, the last window of the rolled clip holds the wrapped tokens: skip it.
    keep = tuple(
        torch.tensor([(p - s) % n < n - w or s == 0 for p in range(n)])
        for n, w, s in zip(sizes, case.window, shift, strict=True)
    )
    mask = keep[0][:, None, None] & keep[1][None, :, None] & keep[2][None, None, :]
    torch.testing.assert_close(out[:, mask], rolled[:, mask], atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(case=cases())
def test_every_backend_matches_math(case: Case) -> None:
    assert "math" in assert_backends_agree_with_math(case.module(), [case.input()])


@settings(max_examples=2, deadline=None)
@given(seed=SEEDS)
def test_gradcheck_with_shift_and_padding(seed: int) -> None:
    # (2, 3, 3) is ragged against the (2, 2, 2) window and the shift is on: mask, bias and padding all
    # take part, and the bias table is one of the parameters checked.
    case = Case(Heads(4, 2), (2, 2, 2), (1, 1, 1), (1, 3, 3, 3, 4), seed)
    gradcheck_module(case.module(), [case.input(torch.float64)])


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 1, 1)])
def test_gradient_reaches_every_parameter(shift: Triple) -> None:
    case = Case(Heads(4, 2), (2, 2, 2), shift, (2, 3, 4, 3, 4), 0)
    module = case.module()
    assert_gradients_reach_all_parameters(module, module(case.input()), case.seed + 3)


# (3, 5, 4) in (2, 2, 3) windows: 12 windows in 8 mask groups, one attention call per group; (4, 4, 6): 8
# windows, each its own mask, in one call with the windows folded into the heads.
PATHS = pytest.mark.parametrize("sizes", [(3, 5, 4), (4, 4, 6)])


@PATHS
@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 1, 1)])
def test_runs_on_meta_device(shift: Triple, sizes: Triple) -> None:
    with torch.device("meta"):
        out = WindowAttention3D(8, 2, (2, 2, 3), shift)(torch.empty(2, *sizes, 8))
    assert out.device.type == "meta" and out.shape == (2, *sizes, 8)


@PATHS
def test_compiles_fullgraph(sizes: Triple) -> None:
    torch._dynamo.reset()
    module = Case(Heads(8, 2), (2, 2, 3), (1, 1, 1), (1, *sizes, 8), 0).module()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    # Shifted and padded: the mask paths, the ones with shape-dependent Python, trace without a graph break.
    x = randn((1, *sizes, 8), 1)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-6, rtol=1e-6)


def test_relative_position_bias_table_has_video_swin_shape() -> None:
    module = WindowAttention3D(8, 2, (2, 7, 7), (1, 3, 3))
    assert module.relative_position_bias_table.shape == (3 * 13 * 13, 2)
    assert set(module.state_dict()) == {
        "qkv.weight",
        "qkv.bias",
        "proj.weight",
        "proj.bias",
        "relative_position_bias_table",
    }


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(shape=wrong_rank_shapes(ranks=[5], channels=4))
def test_wrong_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=rf"WindowAttention3D expects input of shape \(B, T, H, W, C\), got {shape_message(shape)}",
    ):
        WindowAttention3D(4, 2, 2)(torch.zeros(shape))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"window_size": 0}, ValueError, r"window_size must be a positive int or a \(t, h, w\) triple"),
        ({"window_size": (2, 2)}, ValueError, "window_size must be .*, got a tuple of length 2"),
        ({"window_size": 2.0}, TypeError, "window_size must be .*, got float 2.0"),
        ({"window_size": (2, True, 2)}, TypeError, "window_size must be"),
        ({"shift_size": -1}, ValueError, r"shift_size must be a >= 0 int"),
        ({"shift_size": (1, 2, 1)}, ValueError, r"shift_size must be below window_size on every axis"),
        ({"shift_size": "1"}, TypeError, "shift_size must be"),
    ],
)
def test_bad_sizes_raise(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    kwargs = {"window_size": (2, 2, 2), **kwargs}
    with pytest.raises(error, match=f"WindowAttention3D: {message}"):
        WindowAttention3D(4, 2, **kwargs)  # type: ignore[arg-type]
