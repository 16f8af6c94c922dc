from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chunkformer.data import (
    ClipDataset,
    ClipSampler,
    EvalTransform,
    MultiViewDataset,
    TooManyUnreadableError,
    TrainTransform,
    VideoList,
    VideoRecord,
    collate_clips,
    collate_views,
    read_video_list,
)


def _write_odd_size(path: Path, width: int, height: int) -> None:
    """A lossless video whose sides are odd or tiny (4:4:4, so no even-size requirement)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        for frame in range(12):
            image = np.full((height, width, 3), 20 * frame, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for index in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


ODD_SIZES = {"odd_17x11.mkv": (17, 11), "tiny_3x2.mkv": (3, 2), "tall_9x41.mkv": (9, 41)}
UNREADABLE = {"empty.mp4", "random.mp4", "text.mp4", "deleted.mp4", "audio_only.m4a"}


@pytest.fixture
def corpus(motion_root: Path, tmp_path: Path) -> VideoList:
    good = read_video_list(motion_root / "train.txt").records[:4]
    source = Path(good[0].path).read_bytes()
    bad = {
        "empty.mp4": b"",
        "truncated.mp4": source[: len(source) // 3],
        "random.mp4": bytes(range(256)) * 20,
        "text.mp4": b"this is not a video\n" * 10,
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    shutil.copy(good[1].path, tmp_path / "wrong_extension.avi")
    _write_audio_only(tmp_path / "audio_only.m4a")
    for name, (width, height) in ODD_SIZES.items():
        _write_odd_size(tmp_path / name, width, height)
    records = (
        list(good)
        + [VideoRecord(str(tmp_path / n), 0) for n in bad]
        + [
            VideoRecord(str(tmp_path / "wrong_extension.avi"), good[1].label),
            VideoRecord(str(tmp_path / "deleted.mp4"), 0),
            VideoRecord(str(tmp_path / "audio_only.m4a"), 0),
        ]
        + [VideoRecord(str(tmp_path / name), 0) for name in ODD_SIZES]
    )
    return VideoList(records, [str(i) for i in range(8)])


def test_training_skips_unreadable_videos_and_names_them(corpus: VideoList) -> None:
    dataset = ClipDataset(corpus, ClipSampler(4, 2), TrainTransform(16), seed=0, max_attempts=30)
    failures = []
    for index in range(len(corpus)):
        sample = dataset[(index, 0)]
        assert sample["video"].shape == (3, 4, 16, 16)
        assert Path(corpus.records[sample["index"]].path).name not in UNREADABLE
        failures += sample["failures"]
        if Path(corpus.records[index].path).name in ODD_SIZES:
            assert sample["index"] == index  # odd and tiny frame sizes are read and resized, not skipped
    named = {Path(f.path).name for f in failures}
    assert UNREADABLE <= named
    assert "no video stream" in next(f.reason for f in failures if f.path.endswith("audio_only.m4a"))
    assert "wrong_extension.avi" not in named  # the container is probed, not the extension
    assert not set(ODD_SIZES) & named


def test_videos_shorter_than_a_clip_are_clamped_not_dropped(corpus: VideoList) -> None:
    # 40-frame clips from videos of a few frames: the clip repeats the video's last frame.
    dataset = ClipDataset(corpus, ClipSampler(40, 1), TrainTransform(16), max_attempts=30)
    sample = dataset[(0, 0)]
    assert sample["short"] and sample["video"].shape == (3, 40, 16, 16)
    assert torch.equal(sample["video"][:, -1], sample["video"][:, -2])
    assert collate_clips([sample])["short"] == [corpus.records[sample["index"]].path]


def test_a_list_of_only_unreadable_videos_stops(corpus: VideoList) -> None:
    broken = VideoList([r for r in corpus.records if Path(r.path).name in UNREADABLE], corpus.classes)
    dataset = ClipDataset(broken, ClipSampler(4, 1), TrainTransform(16), max_attempts=3)
    with pytest.raises(TooManyUnreadableError, match="3 unreadable videos in a row"):
        dataset[(0, 0)]


def test_evaluation_never_substitutes(corpus: VideoList) -> None:
    dataset = MultiViewDataset(corpus, ClipSampler(4, 2), EvalTransform(16, 3), temporal_views=2)
    batch = collate_views([dataset[i] for i in range(len(corpus))])
    assert batch["views"].shape[:2] == (len(batch["index"]), 6)  # 2 temporal x 3 spatial views
    failed = {Path(path).name for _, path, _ in batch["failures"]}
    assert UNREADABLE <= failed and not set(ODD_SIZES) & failed
    kept = [Path(corpus.records[i].path).name for i in batch["index"].tolist()]
    assert not set(kept) & failed and len(kept) + len(failed) == len(corpus)
