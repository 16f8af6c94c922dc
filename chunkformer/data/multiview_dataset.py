"""The evaluation dataset: every video as temporal views x spatial crops; unreadable videos are reported,
never replaced."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from chunkformer.data.clip_sampling import ClipSampler, TooFewFramesError
from chunkformer.data.transforms import EvalTransform
from chunkformer.data.video_io import VideoDecodeError, decode_frames, probe_video
from chunkformer.data.video_list import VideoList

__all__ = ["MultiViewDataset", "collate_views"]


class MultiViewDataset(Dataset):
    """``temporal_views`` evenly spaced clips x ``transform.num_crops`` spatial crops per video.

    A video that cannot be read gives a sample with ``"error"`` set and no views; the evaluation leaves it
    out of the metric and reports it (a view is never borrowed from another video).

    Args:
        videos: the validated list.
        sampler: frame indices of a clip.
        transform: the spatial crops.
        temporal_views: clips per video (paper: 4).
        decode_time_limit: seconds the probe and the decode of a video (all its views) may each take before
            it counts as unreadable (a call hung inside FFmpeg is cut off too).
        short_side: shrink decoded frames in FFmpeg so their shorter side is this long before the transform
            (at least ``transform.crop_size``, which the transform then resizes to); frames already smaller
            are kept. None (default) decodes at the source size.

    Shape:
        - sample["views"]: (temporal_views * num_crops, C, T, crop, crop), temporal-major
    """

    def __init__(
        self,
        videos: VideoList,
        sampler: ClipSampler,
        transform: EvalTransform,
        temporal_views: int = 4,
        decode_time_limit: float | None = 10.0,
        short_side: int | None = None,
    ) -> None:
        self.videos = videos
        self.sampler = sampler
        self.transform = transform
        self.temporal_views = temporal_views
        self.decode_time_limit = decode_time_limit
        if short_side is not None and short_side < transform.crop_size:
            # The transform resizes the short side to the crop: decoding smaller only loses detail.
            raise ValueError(
                f"MultiViewDataset: short_side must be at least the crop ({transform.crop_size}) or None, "
                f"got {short_side}"
            )
        self.short_side = short_side

    @property
    def num_views(self) -> int:
        return self.temporal_views * self.transform.num_crops

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.videos.records[index]
        sample: dict[str, Any] = {
            "index": index, "label": record.label, "path": record.path, "error": None, "short": False
        }  # fmt: skip
        try:
            info = probe_video(record.path, self.decode_time_limit)
            try:
                clips = self.sampler.view_indices(info.num_frames, self.temporal_views, info.fps)
                sample["short"] = self.sampler.is_short(info.num_frames, info.fps)
            except TooFewFramesError as error:
                raise VideoDecodeError(record.path, str(error)) from error
            # One decode covering all views: they overlap on short videos, and seeking per view costs more.
            needed = sorted({i for clip in clips for i in clip})
            frames = decode_frames(record.path, needed, self.decode_time_limit, short_side=self.short_side)
            position = {frame: row for row, frame in enumerate(needed)}
            views = [crop for clip in clips for crop in self.transform(frames[[position[i] for i in clip]])]
        except VideoDecodeError as error:
            sample["error"] = error.reason
            return sample
        sample["views"] = torch.stack(views)
        return sample


def collate_views(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable videos; list the unreadable ones as ``(index, path, reason)``.

    Shape:
        - return["views"]: (N, V, C, T, H, W) or None when no video of the batch was readable;
          return["label"], return["index"]: (N,) int64
    """
    good = [s for s in samples if s["error"] is None]
    return {
        "views": torch.stack([s["views"] for s in good]) if good else None,
        "label": torch.tensor([s["label"] for s in good], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in good], dtype=torch.long),
        "failures": [(s["index"], s["path"], s["error"]) for s in samples if s["error"] is not None],
        "short": [s["path"] for s in good if s["short"]],
    }
