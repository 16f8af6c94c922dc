from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chunkformer.data import (
    ClipDataset,
    ClipSampler,
    EvalTransform,
    MultiViewDataset,
    TooManyUnreadableError,
    TrainTransform,
    VideoList,
    VideoRecord,
    collate_views,
    read_video_list,
)


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
    records = list(good) + [VideoRecord(str(tmp_path / n), 0) for n in bad] + [
        VideoRecord(str(tmp_path / "wrong_extension.avi"), good[1].label),
        VideoRecord(str(tmp_path / "deleted.mp4"), 0),
    ]
    return VideoList(records, [str(i) for i in range(8)])


def test_training_skips_unreadable_videos_and_names_them(corpus: VideoList) -> None:
    dataset = ClipDataset(corpus, ClipSampler(4, 2), TrainTransform(16), seed=0, max_attempts=30)
    failures = []
    for index in range(len(corpus)):
        sample = dataset[(index, 0)]
        assert sample["video"].shape == (3, 4, 16, 16)
        assert Path(corpus.records[sample["index"]].path).name not in {"empty.mp4", "random.mp4", "text.mp4", "deleted.mp4"}
        failures += sample["failures"]
    named = {Path(f.path).name for f in failures}
    assert {"empty.mp4", "random.mp4", "text.mp4", "deleted.mp4"} <= named
    assert "wrong_extension.avi" not in named  # the container is probed, not the extension


def test_too_few_frames_is_unreadable_in_training(corpus: VideoList) -> None:
    dataset = ClipDataset(corpus, ClipSampler(40, 1), TrainTransform(16), max_attempts=3)
    with pytest.raises(TooManyUnreadableError, match="unreadable videos in a row"):
        dataset[(0, 0)]


def test_evaluation_never_substitutes(corpus: VideoList) -> None:
    dataset = MultiViewDataset(corpus, ClipSampler(4, 2), EvalTransform(16, 3), temporal_views=2)
    batch = collate_views([dataset[i] for i in range(len(corpus))])
    assert batch["views"].shape[:2] == (len(batch["index"]), 6)  # 2 temporal x 3 spatial views
    failed = {Path(path).name for _, path, _ in batch["failures"]}
    assert {"empty.mp4", "random.mp4", "text.mp4", "deleted.mp4"} <= failed
    kept = [Path(corpus.records[i].path).name for i in batch["index"].tolist()]
    assert not set(kept) & failed and len(kept) + len(failed) == len(corpus)
