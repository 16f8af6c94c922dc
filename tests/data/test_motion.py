from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from chunkformer.data import (
    MOTION_CLASSES,
    MOTION_FLIP_LABEL_MAP,
    decode_frames,
    ensure_motion_dataset,
    probe_video,
    read_video_list,
    render_motion_video,
)
from tests.data.conftest import TINY


def test_generated_files_decode_to_the_rendered_frames(motion_root: Path) -> None:
    videos = read_video_list(motion_root / "train.txt", classes=motion_root / "classes.txt")
    assert len(videos) == TINY.train_per_class * len(MOTION_CLASSES)
    record = videos.records[5]
    info = probe_video(record.path)
    assert (info.num_frames, info.height, info.width, info.fps) == (TINY.frames, TINY.size, TINY.size, TINY.fps)
    frames = decode_frames(record.path, [0, 7, 11])
    label, n = record.label, int(Path(record.path).stem)
    rendered = render_motion_video(label, np.random.default_rng([TINY.seed, 0, label, n]), TINY.frames, TINY.size)
    # Lossy codec, so close rather than equal; a wrong frame would differ by the shape's displacement.
    for row, index in enumerate([0, 7, 11]):
        assert np.abs(frames[row].numpy().astype(float) - rendered[index]).mean() < 12


def test_generation_is_deterministic_and_cached(motion_root: Path, tmp_path: Path) -> None:
    again = ensure_motion_dataset(tmp_path / "copy", TINY)
    same = "train/left_fast/0001.mp4"
    # The mp4 header holds a creation time, so compare the decoded frames rather than the bytes.
    assert decode_frames(again / same, list(range(TINY.frames))).equal(decode_frames(motion_root / same, list(range(TINY.frames))))
    stamp = os.stat(again / same).st_mtime_ns
    ensure_motion_dataset(again, TINY)  # cached: nothing rewritten
    assert os.stat(again / same).st_mtime_ns == stamp
    assert json.loads((again / "motion.json").read_text())["seed"] == TINY.seed


def test_single_frames_carry_no_class_information() -> None:
    # With the same random draws, every class renders the same first frame: the label only sets the motion.
    for seed in range(5):
        firsts = [render_motion_video(c, np.random.default_rng(seed), 3, 16)[0] for c in range(len(MOTION_CLASSES))]
        assert all(np.array_equal(firsts[0], other) for other in firsts[1:])
        lasts = [render_motion_video(c, np.random.default_rng(seed), 3, 16)[2] for c in range(len(MOTION_CLASSES))]
        assert not np.array_equal(lasts[0], lasts[1])


def test_flip_map_swaps_left_and_right_only() -> None:
    for label, flipped in enumerate(MOTION_FLIP_LABEL_MAP):
        name, other = MOTION_CLASSES[label], MOTION_CLASSES[flipped]
        expected = name.replace("right", "L").replace("left", "right").replace("L", "left")
        assert other == expected
