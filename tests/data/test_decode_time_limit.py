"""The per-call decode time limit cuts off a call that hangs inside FFmpeg, in the caller and in loaders.

A hang is simulated where FFmpeg would hang on a stalled network or FUSE read: ``av.open`` for the chosen
files blocks in a real syscall (``select`` on an empty pipe, the GIL released, as in PyAV's calls into
FFmpeg). A limit that is only checked between frames in Python would wait here for the whole hang; the
simulated hang ends after ``_SAFETY_S`` so that a broken limit fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import select
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from chunkformer.data import (
    ClipDataset,
    ClipSampler,
    EvalTransform,
    MultiViewDataset,
    TrainTransform,
    VideoDecodeError,
    VideoList,
    VideoRecord,
    collate_clips,
    collate_views,
    decode_frames,
    probe_video,
    read_video_list,
)

av = pytest.importorskip("av")

_SAFETY_S = 20.0


@pytest.fixture
def hang(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Add a file name to the returned set and opening it blocks in a syscall until teardown (at most
    ``_SAFETY_S``, also in forked loader workers, so a broken limit fails the test instead of hanging)."""
    names: set[str] = set()
    read_end, write_end = os.pipe()
    real_open = av.open

    def open_that_hangs(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(str(path)).name in names:
            select.select([read_end], [], [], _SAFETY_S)  # blocks (GIL released) until the pipe closes
            raise OSError("the simulated hang ended")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(av, "open", open_that_hangs)
    try:
        yield names
    finally:
        os.close(write_end)  # wakes the abandoned threads of this process
        os.close(read_end)


@pytest.fixture
def videos(motion_root: Path, tmp_path: Path) -> VideoList:
    good = read_video_list(motion_root / "train.txt").records[:4]
    shutil.copy(good[0].path, tmp_path / "hangs.mp4")  # a valid video: only the simulated hang is wrong
    shutil.copy(good[1].path, tmp_path / "hangs_too.mp4")
    records = list(good) + [VideoRecord(str(tmp_path / "hangs.mp4"), good[0].label)]
    return VideoList(records, [str(i) for i in range(8)])


def test_a_call_hung_inside_ffmpeg_is_cut_off(videos: VideoList, hang: set[str], tmp_path: Path) -> None:
    good = videos.records[0].path
    # The thread path returns exactly what a direct call returns, and passes errors through.
    assert torch.equal(decode_frames(good, [3, 0, 3], time_limit=5.0), decode_frames(good, [3, 0, 3]))
    assert probe_video(good, time_limit=5.0) == probe_video(good)
    with pytest.raises(VideoDecodeError, match="file not found"):
        decode_frames(tmp_path / "missing.mp4", [0], time_limit=5.0)

    hang.update({"hangs.mp4", "hangs_too.mp4"})
    started = time.monotonic()
    with pytest.raises(VideoDecodeError, match=r"decode took longer than the 0.3s limit"):
        decode_frames(tmp_path / "hangs.mp4", [0, 1], time_limit=0.3)
    with pytest.raises(VideoDecodeError, match=r"probe took longer than the 0.3s limit"):
        probe_video(tmp_path / "hangs_too.mp4", time_limit=0.3)
    assert time.monotonic() - started < 5.0
    # While the first call is still stuck, the file fails at once and no second thread is started.
    threads = threading.active_count()
    started = time.monotonic()
    with pytest.raises(VideoDecodeError, match="still stuck"):
        decode_frames(tmp_path / "hangs.mp4", [0], time_limit=0.3)
    assert time.monotonic() - started < 0.2 and threading.active_count() == threads


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_hung_video_is_skipped_in_training_without_hanging_the_loader(
    videos: VideoList, hang: set[str], num_workers: int
) -> None:
    hang.add("hangs.mp4")
    hung = len(videos) - 1
    dataset = ClipDataset(videos, ClipSampler(4, 2), TrainTransform(16), seed=0, decode_time_limit=0.5)
    loader = DataLoader(
        dataset,
        batch_size=len(videos),
        sampler=[(i, 0) for i in range(len(videos))],
        num_workers=num_workers,
        collate_fn=collate_clips,
    )
    started = time.monotonic()
    (batch,) = list(loader)
    assert time.monotonic() - started < 10.0
    assert batch["video"].shape == (len(videos), 3, 4, 16, 16)  # the sample was replaced, the batch is full
    assert hung not in batch["index"].tolist()
    reasons = [f.reason for f in batch["failures"] if f.index == hung]
    assert reasons and all("longer than the 0.5s limit" in r for r in reasons)
    assert {f.index for f in batch["failures"]} == {hung}


def test_a_hung_video_is_reported_in_evaluation_not_replaced(videos: VideoList, hang: set[str]) -> None:
    hang.add("hangs.mp4")
    dataset = MultiViewDataset(
        videos, ClipSampler(4, 2), EvalTransform(16, 1), temporal_views=2, decode_time_limit=0.5
    )
    loader = DataLoader(dataset, batch_size=len(videos), collate_fn=collate_views)
    started = time.monotonic()
    (batch,) = list(loader)
    assert time.monotonic() - started < 10.0
    assert batch["index"].tolist() == list(range(len(videos) - 1))
    ((index, path, reason),) = batch["failures"]
    assert index == len(videos) - 1 and Path(path).name == "hangs.mp4" and "limit" in reason
