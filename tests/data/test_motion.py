from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from chunkformer.data import (
    MOTION_CLASSES,
    MOTION_FLIP_LABEL_MAP,
    MOTION_VARIANTS,
    MotionDatasetSpec,
    decode_frames,
    default_motion_root,
    ensure_motion_dataset,
    motion_classes,
    motion_flip_label_map,
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
    assert (info.num_frames, info.height, info.width, info.fps) == (
        TINY.frames,
        TINY.size,
        TINY.size,
        TINY.fps,
    )
    frames = decode_frames(record.path, [0, 7, 11])
    label, n = record.label, int(Path(record.path).stem)
    rendered = render_motion_video(
        label, np.random.default_rng([TINY.seed, 0, label, n]), TINY.frames, TINY.size
    )
    # Lossy codec, so close rather than equal; a wrong frame would differ by the shape's displacement.
    for row, index in enumerate([0, 7, 11]):
        assert np.abs(frames[row].numpy().astype(float) - rendered[index]).mean() < 12


def test_generation_is_deterministic_and_cached(motion_root: Path, tmp_path: Path) -> None:
    again = ensure_motion_dataset(tmp_path / "copy", TINY)
    same = "train/left_fast/0001.mp4"
    # The mp4 header holds a creation time, so compare the decoded frames rather than the bytes.
    assert decode_frames(again / same, list(range(TINY.frames))).equal(
        decode_frames(motion_root / same, list(range(TINY.frames)))
    )
    stamp = os.stat(again / same).st_mtime_ns
    ensure_motion_dataset(again, TINY)  # cached: nothing rewritten
    assert os.stat(again / same).st_mtime_ns == stamp
    assert json.loads((again / "motion.json").read_text())["seed"] == TINY.seed


def test_single_frames_carry_no_class_information() -> None:
    # With the same random draws, every class renders the same first frame: the label only sets the motion.
    for seed in range(5):
        firsts = [
            render_motion_video(c, np.random.default_rng(seed), 3, 16)[0] for c in range(len(MOTION_CLASSES))
        ]
        assert all(np.array_equal(firsts[0], other) for other in firsts[1:])
        lasts = [
            render_motion_video(c, np.random.default_rng(seed), 3, 16)[2] for c in range(len(MOTION_CLASSES))
        ]
        assert not np.array_equal(lasts[0], lasts[1])


def test_flip_map_swaps_left_and_right_only() -> None:
    for label, flipped in enumerate(MOTION_FLIP_LABEL_MAP):
        name, other = MOTION_CLASSES[label], MOTION_CLASSES[flipped]
        expected = name.replace("right", "L").replace("left", "right").replace("L", "left")
        assert other == expected


@pytest.mark.parametrize("variant", MOTION_VARIANTS)
def test_every_variant_hides_the_class_in_single_frames(variant: str) -> None:
    classes = motion_classes(variant)
    for seed in range(3):
        videos = [
            render_motion_video(c, np.random.default_rng(seed), 4, 32, variant) for c in range(len(classes))
        ]
        assert all(np.array_equal(videos[0][0], other[0]) for other in videos[1:])
        assert len({video[3].tobytes() for video in videos}) == len(classes)


def test_hard_variant_has_sixteen_motions_and_moving_distractors() -> None:
    classes = motion_classes("hard")
    assert len(classes) == 16 and len(set(classes)) == 16
    assert motion_flip_label_map("hard")[classes.index("upright_fast")] == classes.index("upleft_fast")
    # The distractors move: with the target's motion fixed, frames still change where the target is not.
    rng = np.random.default_rng(1)
    video = render_motion_video(classes.index("right_slow"), rng, 6, 32, "hard").astype(float)
    dims = video.mean(axis=-1) < 180  # everything but the bright target (and some noise)
    moving = np.abs(video[5] - video[0]).mean(axis=-1)[dims[0] & dims[5]]
    assert (moving > 40).sum() > 10


def test_unknown_variant_and_label_are_errors() -> None:
    with pytest.raises(ValueError, match="variant must be one of"):
        MotionDatasetSpec(variant="easy")
    with pytest.raises(ValueError, match=r"label must be in \[0, 8\)"):
        render_motion_video(8, np.random.default_rng(0))


def test_variant_datasets_are_cached_apart(tmp_path: Path) -> None:
    hard = MotionDatasetSpec(train_per_class=1, val_per_class=1, frames=4, size=16, variant="hard")
    root = ensure_motion_dataset(tmp_path / "hard", hard)
    assert (root / "classes.txt").read_text().split() == list(motion_classes("hard"))
    assert len(read_video_list(root / "train.txt", classes=root / "classes.txt")) == 16
    assert default_motion_root("hard") != default_motion_root()


def test_a_dataset_finished_meanwhile_by_another_run_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chunkformer.data.motion as motion

    spec = MotionDatasetSpec(train_per_class=1, val_per_class=1, frames=4, size=16)
    root = tmp_path / "motion"
    other = root / "train" / "right_slow" / "0000.mp4"
    write = motion._write_video
    seen: list[tuple[int, int]] = []
    started: list[bool] = []

    def write_while_another_run_finishes(*args: object) -> None:
        if not started:
            started.append(True)
            ensure_motion_dataset(root, spec)  # the "other run", done before this one's first file
            seen.append((other.stat().st_ino, other.stat().st_mtime_ns))
        write(*args)

    monkeypatch.setattr(motion, "_write_video", write_while_another_run_finishes)
    assert ensure_motion_dataset(root, spec) == root
    # The other run's files were not deleted and replaced under its feet, and no temporary directory is left.
    assert seen == [(other.stat().st_ino, other.stat().st_mtime_ns)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["motion"]


def test_generation_is_the_same_in_another_process(tmp_path: Path) -> None:
    # Encoders can differ between processes (libx264 did, for about 1 file in 30): generate in two fresh
    # interpreters and compare every decoded frame.
    import subprocess
    import sys

    script = (
        "import sys; from chunkformer.data import MotionDatasetSpec, ensure_motion_dataset;"
        "ensure_motion_dataset(sys.argv[1], "
        "MotionDatasetSpec(train_per_class=4, val_per_class=1, frames=16, size=32))"
    )
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        subprocess.run([sys.executable, "-c", script, str(root)], check=True)
    videos = read_video_list(roots[0] / "train.txt").records
    assert len(videos) == 32
    for record in videos:
        relative = Path(record.path).relative_to(roots[0])
        assert decode_frames(record.path, list(range(16))).equal(
            decode_frames(roots[1] / relative, list(range(16)))
        ), relative
