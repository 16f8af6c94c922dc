"""Which frames of a video make a clip: a random start for training, evenly spaced views for evaluation.

A clip is ``num_frames`` frames ``stride`` source frames apart, so it spans
``(num_frames - 1) * stride + 1`` source frames. When ``fps`` is given, the stride is counted at that
frame rate (Table 2's "frame rate") and converted to source frames with the video's own rate, so videos
stored at different rates give clips of the same duration; without it the stride is in source frames.
A video shorter than the span (even one with fewer frames than a clip) still gives clips, as
``short_videos`` says: ``clamp`` keeps its frames in order and repeats the last one (PySlowFast's
clamping), ``loop`` starts over from its first frame (mmaction2's ``out_of_bound_opt="loop"``). Only a video
without frames is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["ClipSampler", "TooFewFramesError"]


class TooFewFramesError(ValueError):
    """The video has no frames to sample a clip from."""


@dataclass(frozen=True)
class ClipSampler:
    """Frame indices of training clips and evaluation views.

    Args:
        num_frames: T, frames per clip.
        stride: distance between consecutive clip frames, in frames at ``fps`` (or source frames).
        fps: the frame rate the stride is counted at; None counts it in source frames.
        short_videos: frames of a clip that fall after a video's end: ``clamp`` to the last frame (default)
            or ``loop`` back to the first.
    """

    num_frames: int
    stride: int = 1
    fps: float | None = None
    short_videos: Literal["clamp", "loop"] = "clamp"

    def __post_init__(self) -> None:
        for name in ("num_frames", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ClipSampler: {name} must be an int, got {type(value).__name__} {value!r}")
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(
                f"ClipSampler: num_frames and stride must be >= 1, got {self.num_frames}, {self.stride}"
            )
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"ClipSampler: fps must be positive or None, got {self.fps}")
        if self.short_videos not in ("clamp", "loop"):
            raise ValueError(
                f"ClipSampler: short_videos must be 'clamp' or 'loop', got {self.short_videos!r}"
            )

    def source_step(self, video_fps: float) -> float:
        """The stride in source frames of a video at ``video_fps``."""
        if self.fps is None or video_fps <= 0:
            return float(self.stride)
        return self.stride * video_fps / self.fps

    def span(self, video_fps: float = 0.0) -> float:
        """Source frames covered by one clip, from its first frame to just after its last."""
        return (self.num_frames - 1) * self.source_step(video_fps) + 1

    def is_short(self, num_video_frames: int, video_fps: float = 0.0) -> bool:
        """Whether a clip runs past the video's end (its frames are then clamped or looped)."""
        return self.span(video_fps) > num_video_frames

    def _indices(self, start: float, num_video_frames: int, video_fps: float) -> list[int]:
        step = self.source_step(video_fps)
        positions = [int(start + i * step) for i in range(self.num_frames)]
        if self.short_videos == "loop":
            return [p % num_video_frames for p in positions]
        return [min(p, num_video_frames - 1) for p in positions]

    def _check(self, num_video_frames: int) -> None:
        if num_video_frames < 1:
            raise TooFewFramesError(
                f"the video has no frames (clips of {self.num_frames} frames, stride {self.stride})"
            )

    def max_start(self, num_video_frames: int, video_fps: float = 0.0) -> float:
        """The last start index whose clip fits in the video (0 when the clip is longer than the video)."""
        return max(num_video_frames - self.span(video_fps), 0.0)

    def train_indices(
        self, num_video_frames: int, generator: torch.Generator, video_fps: float = 0.0
    ) -> list[int]:
        """A clip at a start drawn uniformly from ``[0, max_start]`` with ``generator``."""
        self._check(num_video_frames)
        start = float(torch.rand((), generator=generator)) * self.max_start(num_video_frames, video_fps)
        return self._indices(start, num_video_frames, video_fps)

    def view_indices(self, num_video_frames: int, num_views: int, video_fps: float = 0.0) -> list[list[int]]:
        """``num_views`` clips with starts evenly spaced over ``[0, max_start]`` (one view: the middle).

        Returns:
            a list of ``num_views`` index lists of length ``num_frames``.
        """
        self._check(num_video_frames)
        if num_views < 1:
            raise ValueError(f"view_indices: num_views must be >= 1, got {num_views}")
        last = self.max_start(num_video_frames, video_fps)
        starts = [last / 2] if num_views == 1 else [last * v / (num_views - 1) for v in range(num_views)]
        return [self._indices(start, num_video_frames, video_fps) for start in starts]
