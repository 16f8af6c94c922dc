"""A tiny training run from each published split-file format, through the command line's
``--data.kind list --data.format ...``: Kinetics annotation CSVs, UCF101 and HMDB51 split files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkformer.data import MotionDatasetSpec, ensure_motion_dataset, kinetics_clip_name
from chunkformer.engine import train
from tests.recipes.scripts import load_recipe

# Two motion classes (right / left) stand in for each dataset's classes: 2 training and 1 validation
# video per class, so one batch of 4 per epoch.
MOTION = ("right_slow", "left_slow")
Videos = dict[str, dict[str, list[Path]]]
Builder = Callable[[Path, Videos], list[str]]


def _motion_videos(root: Path) -> Videos:
    spec = MotionDatasetSpec(train_per_class=2, val_per_class=1, frames=10, size=16, seed=0)
    motion = ensure_motion_dataset(root / "motion", spec)
    return {
        split: {name: sorted((motion / split / name).glob("*.mp4")) for name in MOTION}
        for split in ("train", "val")
    }


def _kinetics(base: Path, videos: Videos) -> list[str]:
    classes = {"right_slow": "passing American football (in game)", "left_slow": "abseiling"}
    for split, name in (("train", "train.csv"), ("val", "validate.csv")):
        rows = ["label,youtube_id,time_start,time_end,split"]
        for motion, files in videos[split].items():
            for i, file in enumerate(files):
                youtube_id = f"{split[:2]}{motion[:3]}{i:06d}"
                rows.append(f'"{classes[motion]}",{youtube_id},{i},{i + 10},{split}')
                # Per-class folders with underscores, the way most downloaders write them.
                target = base / "clips" / split / classes[motion].replace(" ", "_")
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, target / f"{kinetics_clip_name(youtube_id, i, i + 10)}.mp4")
        rows.append(f'"{classes[motion]}",never_downloaded,0,10,{split}')
        (base / name).write_text("\n".join(rows) + "\n")
    return [
        "--data.train",
        str(base / "train.csv"),
        "--data.val",
        str(base / "validate.csv"),
        "--data.root",
        str(base / "clips"),
        "--data.format",
        "kinetics_csv",
        "--data.drop-invalid",
    ]


def _ucf101(base: Path, videos: Videos) -> list[str]:
    classes = {"right_slow": "ApplyEyeMakeup", "left_slow": "Basketball"}
    lists = base / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 Basketball\r\n")
    train, test = [], []
    for split, lines in (("train", train), ("val", test)):
        for label, (motion, files) in enumerate(videos[split].items(), start=1):
            for i, file in enumerate(files):
                relative = (
                    f"{classes[motion]}/v_{classes[motion]}_g{i + (8 if split == 'train' else 1):02d}_c01.avi"
                )
                (base / "UCF-101" / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(
                    file, base / "UCF-101" / relative
                )  # an .avi name holding mp4 data: PyAV probes content
                lines.append(f"{relative} {label}" if split == "train" else relative)
    (lists / "trainlist02.txt").write_bytes("".join(f"{line}\r\n" for line in train).encode())
    (lists / "testlist02.txt").write_bytes("".join(f"{line}\r\n" for line in test).encode())
    return [
        "--data.train",
        str(lists),
        "--data.val",
        str(lists),
        "--data.split",
        "2",
        "--data.root",
        str(base / "UCF-101"),
        "--data.format",
        "ucf101",
    ]


def _hmdb51(base: Path, videos: Videos) -> list[str]:
    classes = {"right_slow": "brush_hair", "left_slow": "cartwheel"}
    splits = base / "testTrainMulti_7030_splits"
    splits.mkdir()
    for motion, name in classes.items():
        lines = []
        for split, mark in (("train", 1), ("val", 2)):
            for i, file in enumerate(videos[split][motion]):
                video = f"#{i}_{name}_{split}_f_nm_np1_fr_med_{i}.avi"
                (base / "hmdb51" / name).mkdir(parents=True, exist_ok=True)
                shutil.copy(file, base / "hmdb51" / name / video)
                lines.append(f"{video} {mark} ")
        lines.append(f"unused_{name}.avi 0 ")
        (splits / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
        (splits / f"{name}_test_split2.txt").write_text(lines[0].replace(" 1 ", " 2 ") + "\n")
    # format auto: the splits folder is recognised.
    return ["--data.train", str(splits), "--data.val", str(splits), "--data.root", str(base / "hmdb51")]


@pytest.mark.parametrize("make", [_kinetics, _ucf101, _hmdb51], ids=["kinetics_csv", "ucf101", "hmdb51"])
def test_training_runs_from_published_split_files(tmp_path: Path, make: Builder) -> None:
    videos = _motion_videos(tmp_path)
    (tmp_path / "data").mkdir()
    flags = make(tmp_path / "data", videos)
    config = load_recipe("train_kinetics").parse(
        [
            "--data.kind",
            "list",
            *flags,
            "--data.num-frames",
            "4",
            "--data.crop-size",
            "16",
            "--data.num-workers",
            "0",
            "--data.temporal-views",
            "1",
            "--data.spatial-crops",
            "1",
            "--optim.epochs",
            "2",
            "--optim.batch-size",
            "4",
            "--run.threads",
            "1",
            "--run.out-dir",
            str(tmp_path / "run"),
        ]
    )
    result = train(config)
    assert len(result.step_losses) == 2  # 4 training videos, batch 4, 2 epochs
    assert (
        result.metrics is not None and result.metrics.num_videos == 2 and len(result.metrics.per_class) == 2
    )
    log = (tmp_path / "run" / "train.log").read_text()
    assert "2 classes, 4 train / 2 val videos" in log
    if make is _kinetics:
        assert "not downloaded" in log and "1 invalid lines dropped" in log
