from __future__ import annotations

from pathlib import Path

import pytest

from chunkformer.data import VideoListError, read_class_folders, read_video_list


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("a.mp4", "b c.mp4", "d.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "classes.txt").write_text("walk\nrun\n")
    return tmp_path


def test_integer_and_named_labels(files: Path) -> None:
    (files / "ints.txt").write_text("# comment\na.mp4 1\n\nb c.mp4 0\n")
    videos = read_video_list(files / "ints.txt")
    assert [(Path(r.path).name, r.label, r.line) for r in videos.records] == [
        ("a.mp4", 1, 2),
        ("b c.mp4", 0, 4),
    ]
    (files / "names.csv").write_text("a.mp4,run\nd.mp4,walk\n")
    named = read_video_list(files / "names.csv", classes=files / "classes.txt")
    assert [r.label for r in named.records] == [1, 0] and named.classes == ["walk", "run"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("missing.mp4 0", "file not found"),
        ("a.mp4 jump", "unknown class"),
        ("a.mp4", "malformed"),
        ("a.mp4 7", "label 7 outside"),
    ],
)
def test_invalid_line_is_an_error_naming_it(files: Path, line: str, reason: str) -> None:
    (files / "list.txt").write_text(f"d.mp4 0\n{line}\n")
    with pytest.raises(VideoListError, match=rf"line 2: {reason}"):
        read_video_list(files / "list.txt", classes=files / "classes.txt")


def test_drop_invalid_counts_and_lists(files: Path) -> None:
    (files / "list.txt").write_text("d.mp4 walk\nmissing.mp4 run\na.mp4 jump\nb c.mp4 run\n")
    videos = read_video_list(files / "list.txt", classes=files / "classes.txt", drop_invalid=True)
    assert len(videos) == 2
    assert [(d.line, d.reason.split(":")[0]) for d in videos.dropped] == [
        (2, "file not found"),
        (3, "unknown class 'jump'"),
    ]


def test_class_folders(tmp_path: Path) -> None:
    for cls, names in {"b": ["1.mp4", "2.avi"], "a": ["x.mkv"]}.items():
        (tmp_path / cls).mkdir()
        for name in names:
            (tmp_path / cls / name).write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    videos = read_class_folders(tmp_path)
    assert videos.classes == ["a", "b"]
    assert sorted((Path(r.path).name, r.label) for r in videos.records) == [
        ("1.mp4", 1),
        ("2.avi", 1),
        ("x.mkv", 0),
    ]
