"""Direction-sensitive data given as a list: with ``--data.flip-label-map``, a flipped training clip takes
the mirrored class; without it the flip keeps the label, and the log says so and how to change it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from chunkformer.data import motion_classes
from chunkformer.engine import DistContext, TrainConfig, train, train_dataset, video_lists
from tests.engine.tiny_run import tiny_config


def _direction_list_config(tmp_path: Path, out: str, **overrides: object) -> TrainConfig:
    """The tiny motion data read as a user's list: class names from a file, labels by name."""
    train(tiny_config(tmp_path, "generate", **{"optim.epochs": 1, "run.max_steps": 1, "run.overwrite": True}))
    root = Path(tiny_config(tmp_path, "unused").data.data_root)
    names = motion_classes("basic")
    (tmp_path / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    for split in ("train", "val"):
        lines = (root / f"{split}.txt").read_text().splitlines()
        (tmp_path / f"{split}.txt").write_text(
            "".join(f"{line.split()[0]} {names[int(line.split()[1])]}\n" for line in lines)
        )
    settings = {
        "data.kind": "list", "data.train": str(tmp_path / "train.txt"), "data.val": str(tmp_path / "val.txt"),
        "data.classes": str(tmp_path / "classes.txt"), "data.root": str(root),
    }  # fmt: skip
    return tiny_config(tmp_path, out, **{**settings, **overrides})


def test_flipped_clips_take_the_mirrored_class_only_with_a_map(tmp_path: Path) -> None:
    names = motion_classes("basic")
    pairs = sorted({tuple(sorted((n, n.replace("right", "left")))) for n in names if "right" in n})
    (tmp_path / "flips.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    with_map = _direction_list_config(tmp_path, "map", **{"data.flip_label_map": str(tmp_path / "flips.txt")})
    videos, _ = video_lists(with_map, DistContext())
    mapped = train_dataset(with_map, videos)
    plain = train_dataset(
        dataclasses.replace(with_map, data=dataclasses.replace(with_map.data, flip_label_map=None)), videos
    )
    unflipped = train_dataset(
        dataclasses.replace(
            with_map, data=dataclasses.replace(with_map.data, flip_label_map=None, hflip=False)
        ),
        videos,
    )
    flips = 0
    for index in range(len(videos)):
        a, b, c = mapped[index, 1], plain[index, 1], unflipped[index, 1]
        assert torch.equal(a["video"], b["video"])  # the map changes labels, never pixels
        flipped = not torch.equal(a["video"], c["video"])
        if flipped:
            assert torch.equal(a["video"], c["video"].flip(-1))
        flips += flipped
        original = names[videos.records[index].label]
        mirrored = original.replace("right", "@").replace("left", "right").replace("@", "left")
        assert names[a["label"]] == (mirrored if flipped else original)
        assert b["label"] == videos.records[index].label  # without a map, a flip keeps the label
    assert 0 < flips < len(videos)

    train(with_map)
    log = (tmp_path / "map" / "train.log").read_text()
    assert "horizontal flip swapping right_slow <-> left_slow, right_fast <-> left_fast" in log
    train(_direction_list_config(tmp_path, "plain"))
    log = (tmp_path / "plain" / "train.log").read_text()
    assert "horizontal flip keeping labels (if a class depends on left/right" in log


def test_a_map_with_the_flip_off_or_on_motion_data_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flips.txt").write_text("right_slow left_slow\n")
    with pytest.raises(ValueError, match="needs the flip on"):
        train(
            _direction_list_config(
                tmp_path, "off", **{"data.hflip": False, "data.flip_label_map": str(tmp_path / "flips.txt")}
            )
        )
    with pytest.raises(ValueError, match="the motion data has its own map"):
        train(tiny_config(tmp_path, "motion", **{"data.flip_label_map": str(tmp_path / "flips.txt")}))
