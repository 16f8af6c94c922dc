from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkformer.data import ClipSampler, TooFewFramesError


def test_train_clip_arithmetic() -> None:
    sampler = ClipSampler(num_frames=4, stride=3)
    assert sampler.span() == 10
    for seed in range(20):
        indices = sampler.train_indices(30, torch.Generator().manual_seed(seed))
        assert [b - a for a, b in zip(indices, indices[1:], strict=False)] == [3, 3, 3]
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


def test_short_video_clamps_by_default() -> None:
    assert ClipSampler(4, 5).view_indices(6, 2) == [[0, 5, 5, 5]] * 2
    # Fewer frames than a clip (16-frame videos, 24-frame clips) still give clips.
    assert ClipSampler(24, 1).train_indices(16, torch.Generator()) == [*range(16), *[15] * 8]
    assert ClipSampler(5, 2, short_videos="loop").view_indices(4, 1) == [[0, 2, 0, 2, 0]]


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(1, 40), num_frames=st.integers(1, 16), stride=st.integers(1, 5),
    views=st.integers(1, 4), policy=st.sampled_from(["clamp", "loop"]), seed=st.integers(0, 2**31),
)  # fmt: skip
def test_short_videos_policy(
    frames: int, num_frames: int, stride: int, views: int, policy: str, seed: int
) -> None:
    sampler = ClipSampler(num_frames, stride, short_videos=policy)  # type: ignore[arg-type]
    clips = [
        *sampler.view_indices(frames, views),
        sampler.train_indices(frames, torch.Generator().manual_seed(seed)),
    ]
    span = (num_frames - 1) * stride + 1
    assert sampler.is_short(frames) == (span > frames)
    for clip in clips:
        assert len(clip) == num_frames and all(0 <= i < frames for i in clip)
        if span > frames:
            # The clip starts at the first frame and runs past the end: clamped or wrapped.
            wanted = [
                min(i * stride, frames - 1) if policy == "clamp" else (i * stride) % frames
                for i in range(num_frames)
            ]
            assert clip == wanted
        else:
            assert clip == list(range(clip[0], clip[0] + span, stride))


def test_a_video_without_frames_names_the_clip_settings() -> None:
    with pytest.raises(TooFewFramesError, match=r"no frames \(clips of 8 frames, stride 2\)"):
        ClipSampler(8, 2).train_indices(0, torch.Generator())
    with pytest.raises(ValueError, match="short_videos must be 'clamp' or 'loop', got 'pad'"):
        ClipSampler(8, short_videos="pad")  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value"), [("num_frames", 8.0), ("stride", True), ("num_frames", "8")])
def test_non_int_sizes_are_type_errors(field: str, value: object) -> None:
    kwargs = {"num_frames": 8, "stride": 1, field: value}
    with pytest.raises(TypeError, match=rf"ClipSampler: {field} must be an int, got {type(value).__name__}"):
        ClipSampler(**kwargs)  # type: ignore[arg-type]


def test_stride_counted_at_a_frame_rate() -> None:
    # Table 2 reading with resampling: stride 2 at 5 fps is 10 source frames of a 25 fps video.
    sampler = ClipSampler(3, 2, fps=5)
    assert (
        sampler.view_indices(100, 1, video_fps=25.0)[0][1]
        - sampler.view_indices(100, 1, video_fps=25.0)[0][0]
        == 10
    )
