"""Training skips unreadable videos, and stops with the files named once more than
``data.max_unreadable_fraction`` of the videos tried in an epoch were unreadable, not before."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkformer.data import MotionDatasetSpec, ensure_motion_dataset, read_video_list
from chunkformer.engine import train
from tests.engine.tiny_run import tiny_config


def _run_with_broken_videos(tmp_path: Path, broken: int, out: str):
    """A tiny run over 40 good motion videos plus ``broken`` files that are not videos, with at most a
    fifth of the videos tried allowed to be unreadable."""
    spec = MotionDatasetSpec(train_per_class=5, val_per_class=1, frames=10, size=16, seed=0)
    root = tmp_path / "motion"
    ensure_motion_dataset(root, spec)
    good = read_video_list(root / "train.txt", classes=str(root / "classes.txt"))
    lines = [f"{record.path} {record.label}" for record in good.records]
    for index in range(broken):
        path = tmp_path / "broken" / f"{index:02d}.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\x00not a video\x00" * 64)
        lines.append(f"{path} {index % 8}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    config = tiny_config(tmp_path, out, **{"optim.epochs": 1, "data.max_unreadable_fraction": 0.2})
    config.data.kind, config.data.format = "list", "list"
    config.data.train, config.data.val = str(tmp_path / "train.txt"), str(root / "val.txt")
    config.data.classes = str(root / "classes.txt")
    return train(config)


def test_a_few_unreadable_videos_are_skipped(tmp_path: Path) -> None:
    # 2 of 42 files broken: about 5 % of the videos tried, under the 20 % limit.
    result = _run_with_broken_videos(tmp_path, broken=2, out="few")
    assert result.metrics is not None and len(result.step_losses) == 42 // 4
    log = (tmp_path / "few" / "train.log").read_text()
    assert "unreadable video skipped" in log and "broken/" in log


def test_many_unreadable_videos_stop_the_run_with_the_files_named(tmp_path: Path) -> None:
    # 30 of 70 files broken: about 40 % of the videos tried, over the 20 % limit.
    with pytest.raises(
        RuntimeError, match=r"videos tried this epoch were unreadable \(more than 20%\).*broken/\d\d\.mp4"
    ):
        _run_with_broken_videos(tmp_path, broken=30, out="many")
