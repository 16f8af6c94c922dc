from __future__ import annotations

import pytest
import torch

from chunkformer.data import ClipSampler, TooFewFramesError


def test_train_clip_arithmetic() -> None:
    sampler = ClipSampler(num_frames=4, stride=3)
    assert sampler.span() == 10
    for seed in range(20):
        indices = sampler.train_indices(30, torch.Generator().manual_seed(seed))
        assert [b - a for a, b in zip(indices, indices[1:])] == [3, 3, 3]
        assert 0 <= indices[0] <= 20 and indices[-1] <= 29


def test_start_is_random_and_seeded() -> None:
    sampler = ClipSampler(4, 2)
    starts = {sampler.train_indices(100, torch.Generator().manual_seed(s))[0] for s in range(30)}
    assert len(starts) > 10
    first = sampler.train_indices(100, torch.Generator().manual_seed(7))
    assert sampler.train_indices(100, torch.Generator().manual_seed(7)) == first


def test_views_are_evenly_spaced_and_cover_the_video() -> None:
    views = ClipSampler(4, 2).view_indices(27, 4)
    assert [v[0] for v in views] == [0, 6, 13, 20]  # max start 27 - 7 = 20, in thirds
    assert views[-1][-1] == 26
    assert ClipSampler(4, 2).view_indices(27, 1) == [[10, 12, 14, 16]]  # the middle start, 20 / 2


def test_short_video_clamps_and_too_short_video_raises() -> None:
    assert ClipSampler(4, 5).view_indices(6, 2) == [[0, 5, 5, 5]] * 2
    with pytest.raises(TooFewFramesError):
        ClipSampler(8, 1).train_indices(5, torch.Generator())


def test_stride_counted_at_a_frame_rate() -> None:
    # Table 2 reading with resampling: stride 2 at 5 fps is 10 source frames of a 25 fps video.
    sampler = ClipSampler(3, 2, fps=5)
    assert sampler.view_indices(100, 1, video_fps=25.0)[0][1] - sampler.view_indices(100, 1, video_fps=25.0)[0][0] == 10
