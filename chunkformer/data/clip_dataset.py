"""The training dataset: one randomly placed, augmented clip per video, skipping unreadable videos.

A sample's randomness (clip start, crop, flip, and the replacement drawn for an unreadable video) comes
from a generator seeded by ``(seed, epoch, index)``, not from the worker's RNG, so the clips of a step do
not depend on the number of workers, the number of ranks, or whether the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from chunkformer.data.clip_sampling import ClipSampler, TooFewFramesError
from chunkformer.data.transforms import TrainTransform
from chunkformer.data.video_io import VideoDecodeError, VideoInfo, decode_frames, probe_video
from chunkformer.data.video_list import VideoList

__all__ = ["ClipDataset", "SampleFailure", "TooManyUnreadableError", "collate_clips", "sample_seed"]


class TooManyUnreadableError(RuntimeError):
    """Most videos tried could not be read: the data, not a few files, is broken."""


@dataclass(frozen=True)
class SampleFailure:
    """An unreadable video met while building a sample."""

    index: int
    path: str
    reason: str


def sample_seed(seed: int, epoch: int, index: int, attempt: int = 0) -> int:
    """A 63-bit seed for one sample draw; distinct inputs give unrelated seeds (splitmix64 mixing)."""
    value = (
        seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + attempt
    ) & (2**64 - 1)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        value = ((value ^ (value >> shift)) * mult) & (2**64 - 1)
    return (value ^ (value >> 31)) & (2**63 - 1)


class ClipDataset(Dataset):
    """Training clips from a ``VideoList``.

    Indexing takes ``(index, epoch)`` (what ``ResumableSampler`` yields) or a
    plain ``index`` (epoch 0). An unreadable video (see ``chunkformer.data.video_io``) is replaced by
    another video drawn from the sample's generator, and reported in the sample's ``failures``; after
    ``max_attempts`` unreadable videos in a row the sample raises ``TooManyUnreadableError``.

    Args:
        videos: the validated list.
        sampler: frame indices of a clip.
        transform: augmentation.
        seed: base seed of all sample randomness.
        flip_label_map: label of a flipped clip, per label (for data whose classes mirror, e.g. motion to
            the left vs right); None keeps labels.
        decode_time_limit: seconds the probe and the decode of a video may each take before it counts as
            unreadable (a call hung inside FFmpeg is cut off too; see ``chunkformer.data.video_io``).
        max_attempts: videos tried per sample before giving up.
        short_side: shrink decoded frames in FFmpeg so their shorter side is this long before the transform
            (e.g. 256 for a 224 crop: much less work than converting and cropping full-size frames); frames
            already smaller are kept. None (default) decodes at the source size. See
            ``decode_frames``.

    Shape:
        - sample["video"]: (C, T, crop, crop) float32; sample["label"]: int
    """

    def __init__(
        self,
        videos: VideoList,
        sampler: ClipSampler,
        transform: TrainTransform,
        seed: int = 0,
        flip_label_map: list[int] | None = None,
        decode_time_limit: float | None = 10.0,
        max_attempts: int = 10,
        short_side: int | None = None,
    ) -> None:
        self.videos = videos
        self.sampler = sampler
        self.transform = transform
        self.seed = seed
        if flip_label_map is not None and sorted(flip_label_map) != list(range(videos.num_classes)):
            raise ValueError("ClipDataset: flip_label_map must be a permutation of the class indices")
        self.flip_label_map = flip_label_map
        self.decode_time_limit = decode_time_limit
        self.max_attempts = max_attempts
        if short_side is not None and short_side < 1:
            raise ValueError(
                f"ClipDataset: short_side must be a positive number of pixels or None, got {short_side}"
            )
        self.short_side = short_side
        self._info: dict[int, VideoInfo] = {}  # per worker: probing costs a file open

    def __len__(self) -> int:
        return len(self.videos)

    def _load(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int, bool]:
        record = self.videos.records[index]
        info = self._info.get(index)
        if info is None:
            info = self._info[index] = probe_video(record.path, self.decode_time_limit)
        try:
            indices = self.sampler.train_indices(info.num_frames, generator, info.fps)
        except TooFewFramesError as error:
            raise VideoDecodeError(record.path, str(error)) from error
        frames = decode_frames(record.path, indices, self.decode_time_limit, short_side=self.short_side)
        clip, flipped = self.transform(frames, generator)
        label = record.label
        if flipped and self.flip_label_map is not None:
            label = self.flip_label_map[label]
        return clip, label, self.sampler.is_short(info.num_frames, info.fps)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, int) else (int(key[0]), int(key[1]))
        failures: list[SampleFailure] = []
        current = index
        for attempt in range(self.max_attempts):
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index, attempt))
            try:
                clip, label, short = self._load(current, generator)
            except VideoDecodeError as error:
                failures.append(SampleFailure(current, self.videos.records[current].path, error.reason))
                current = int(torch.randint(len(self), (), generator=generator))
                continue
            path = self.videos.records[current].path
            return {"video": clip, "label": label, "index": current, "failures": failures, "short": short,
                    "path": path}  # fmt: skip
        names = "; ".join(f"{f.path} ({f.reason})" for f in failures)
        raise TooManyUnreadableError(
            f"{self.max_attempts} unreadable videos in a row while building sample {index}: {names}. "
            "Most of the data seems unreadable: check the list and the files."
        )


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack clips and labels; gather the failures of all samples and the paths of the short videos
    (whose clips ran past their end, see ``ClipSampler.short_videos``).

    Shape:
        - return["video"]: (B, C, T, H, W); return["label"]: (B,) int64
    """
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "failures": [f for s in samples for f in s["failures"]],
        "short": [s["path"] for s in samples if s.get("short")],
    }
