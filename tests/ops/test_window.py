"""Property tests for the window helpers in :mod:`chunkformer.ops.window`.

The references cut and mask windows with explicit loops, independently of the einops patterns under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chunkformer.ops import pad_to_multiple, to_pair, window_partition, window_reverse, window_valid_mask

sizes = st.integers(1, 5)


@st.composite
def windowed_grid(draw: st.DrawFn) -> tuple[torch.Tensor, tuple[int, int]]:
    """A (B, H, W, C) grid whose sides are multiples of the drawn window, filled from a drawn seed."""
    window = (draw(sizes), draw(sizes))
    batch, rows, cols, channels = draw(st.integers(1, 3)), draw(sizes), draw(sizes), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    grid = torch.randn(batch, rows * window[0], cols * window[1], channels, generator=g)
    return grid, window


@st.composite
def any_grid(draw: st.DrawFn) -> tuple[torch.Tensor, tuple[int, int]]:
    """A (B, H, W, C) grid of any size, with a window that may or may not divide it."""
    window = (draw(sizes), draw(sizes))
    batch, height, width, channels = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 4)),
    )
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    return torch.randn(batch, height, width, channels, generator=g), window


def reference_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Windows in batch, then row-major window order; tokens inside a window row-major too."""
    wh, ww = window
    batch, height, width, _ = x.shape
    windows = []
    for b in range(batch):
        for top in range(0, height, wh):
            for left in range(0, width, ww):
                tokens = [x[b, top + r, left + c] for r in range(wh) for c in range(ww)]
                windows.append(torch.stack(tokens))
    return torch.stack(windows)


def reference_padding_mask(height: int, width: int, window: tuple[int, int]) -> torch.Tensor:
    wh, ww = window
    n_rows, n_cols = math.ceil(height / wh), math.ceil(width / ww)
    mask = torch.zeros(n_rows * n_cols, wh * ww, dtype=torch.bool)
    for i in range(n_rows):
        for j in range(n_cols):
            for r in range(wh):
                for c in range(ww):
                    mask[i * n_cols + j, r * ww + c] = i * wh + r < height and j * ww + c < width
    return mask


@given(case=windowed_grid())
def test_partition_matches_loop_reference(case: tuple[torch.Tensor, tuple[int, int]]) -> None:
    grid, window = case
    torch.testing.assert_close(
        window_partition(grid, window), reference_partition(grid, window), atol=0, rtol=0
    )


@given(case=windowed_grid())
def test_reverse_inverts_partition(case: tuple[torch.Tensor, tuple[int, int]]) -> None:
    grid, window = case
    _, height, width, _ = grid.shape
    windows = window_partition(grid, window)
    assert windows.shape == (
        grid.shape[0] * (height // window[0]) * (width // window[1]),
        window[0] * window[1],
        grid.shape[3],
    )
    torch.testing.assert_close(window_reverse(windows, window, height, width), grid, atol=0, rtol=0)
    # And the other way round: any windows tensor of the right shape comes back unchanged.
    torch.testing.assert_close(
        window_partition(window_reverse(windows, window, height, width), window), windows, atol=0, rtol=0
    )


@given(case=any_grid())
def test_pad_to_multiple_pads_bottom_right_with_zeros(case: tuple[torch.Tensor, tuple[int, int]]) -> None:
    grid, window = case
    batch, height, width, channels = grid.shape
    before = grid.clone()
    padded = pad_to_multiple(grid, window)
    padded_h, padded_w = math.ceil(height / window[0]) * window[0], math.ceil(width / window[1]) * window[1]
    assert padded.shape == (batch, padded_h, padded_w, channels)
    torch.testing.assert_close(padded[:, :height, :width], grid, atol=0, rtol=0)
    assert (padded[:, height:] == 0).all() and (padded[:, :, width:] == 0).all()
    torch.testing.assert_close(grid, before, atol=0, rtol=0)  # the input is not modified in place
    if (padded_h, padded_w) == (height, width):
        assert padded is grid
    else:
        assert padded is not grid


@given(case=windowed_grid())
def test_pad_to_multiple_returns_the_input_when_it_already_fits(
    case: tuple[torch.Tensor, tuple[int, int]],
) -> None:
    grid, window = case
    assert pad_to_multiple(grid, window) is grid


@given(height=st.integers(1, 12), width=st.integers(1, 12), window=st.tuples(sizes, sizes))
def test_window_valid_mask_matches_loop_reference(height: int, width: int, window: tuple[int, int]) -> None:
    mask = window_valid_mask(height, width, window)
    assert mask.dtype == torch.bool
    torch.testing.assert_close(mask, reference_padding_mask(height, width, window), atol=0, rtol=0)
    assert int(mask.sum()) == height * width


@given(case=any_grid())
def test_window_valid_mask_marks_exactly_the_real_tokens(
    case: tuple[torch.Tensor, tuple[int, int]],
) -> None:
    # Tie the three helpers together: padding a grid of ones and cutting it shows where the real tokens are.
    grid, window = case
    _, height, width, _ = grid.shape
    ones = torch.ones(1, height, width, 1)
    windows = window_partition(pad_to_multiple(ones, window), window)[..., 0]
    torch.testing.assert_close(window_valid_mask(height, width, window), windows.bool(), atol=0, rtol=0)


def test_window_valid_mask_honours_device() -> None:
    mask = window_valid_mask(5, 7, (2, 3), device="meta")
    assert mask.device.type == "meta"
    assert mask.shape == (3 * 3, 6)


@given(value=st.integers(1, 1000))
def test_to_pair_repeats_an_int(value: int) -> None:
    assert to_pair(value) == (value, value)


@given(pair=st.tuples(st.integers(1, 1000), st.integers(1, 1000)), as_list=st.booleans())
def test_to_pair_accepts_pairs(pair: tuple[int, int], as_list: bool) -> None:
    result = to_pair(list(pair) if as_list else pair)
    assert result == pair
    assert type(result) is tuple


@given(
    value=st.one_of(
        st.integers(max_value=0),
        st.tuples(st.integers(max_value=0), st.integers(1, 9)),
        st.tuples(st.integers(1, 9), st.integers(max_value=0)),
        st.lists(st.integers(1, 9), max_size=5).filter(lambda v: len(v) != 2).map(tuple),
        st.lists(st.integers(1, 9), max_size=5).filter(lambda v: len(v) != 2),
    )
)
def test_to_pair_rejects_invalid_values(value: object) -> None:
    with pytest.raises(ValueError, match="window_size"):
        to_pair(value, name="window_size")  # type: ignore[arg-type]


@given(
    value=st.one_of(
        st.booleans(),
        st.tuples(st.booleans(), st.integers(1, 9)),
        st.tuples(st.integers(1, 9), st.booleans()),
        st.floats(allow_nan=False),
        st.tuples(st.floats(1, 9), st.integers(1, 9)),
        st.text(max_size=3),
        st.none(),
    )
)
def test_to_pair_rejects_invalid_types_with_type_error(value: object) -> None:
    with pytest.raises(
        TypeError, match=r"window_size must be a positive int or an \(h, w\) pair of them, got"
    ):
        to_pair(value, name="window_size")  # type: ignore[arg-type]
