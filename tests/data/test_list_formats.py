"""The list formats users already have: ``path label`` lists (whitespace or comma, any extension), the
official Kinetics annotation CSVs, UCF101 and HMDB51 split files, and format detection. Files are written in
their published formats; the videos are 1-byte stand-ins (reading a list only checks that they exist)."""

from __future__ import annotations

import csv
import io
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkformer.data import (
    VideoListError,
    detect_list_format,
    kinetics_clip_name,
    read_videos,
)
from chunkformer.data.video_list import VIDEO_EXTENSIONS


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _names(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[list[str]]:
    """Distinct names without leading or trailing spaces (a list line is stripped)."""
    name = (
        st.text(alphabet, min_size=1, max_size=12)
        .map(str.strip)
        .filter(lambda s: s and not s.startswith("#"))
    )
    return st.lists(name, min_size=min_size, max_size=max_size, unique=True)


# --- path label lists ---------------------------------------------------------------------------------------

PATH_CHARS = string.ascii_letters + string.digits + " ,_-()"


@given(
    names=_names(PATH_CHARS, 1, 6),
    data=st.data(),
    suffix=st.sampled_from([".txt", ".csv", ".lst", ""]),
)
def test_list_lines_split_on_whitespace_or_comma_whatever_the_extension(
    names: list[str], data: st.DataObject, suffix: str
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        expected, lines = [], []
        for i, name in enumerate(names):
            relative = f"d {i},x/{name}.mp4"  # folders with a space and a comma too
            _touch(base / relative)
            label = data.draw(st.integers(0, 9))
            separator = data.draw(st.sampled_from([" ", "\t", ",", ", ", "  "]))
            lines.append(f"{relative}{separator}{label}")
            expected.append((str(base / relative), label))
        (base / f"list{suffix}").write_text("# videos\n\n" + "\n".join(lines) + "\n")
        videos = read_videos(base / f"list{suffix}")
        assert videos.format == "list"
        assert [(r.path, r.label) for r in videos.records] == expected
        assert videos.classes == [str(i) for i in range(1 + max(label for _, label in expected))]


@given(classes=_names(string.ascii_letters + " ()'-", 1, 5), data=st.data())
def test_named_labels_with_spaces_after_a_comma(classes: list[str], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "classes.txt").write_text("\n".join(classes) + "\n")
        picks = data.draw(st.lists(st.sampled_from(classes), min_size=1, max_size=6))
        lines = []
        for i, name in enumerate(picks):
            _touch(base / f"v {i}.mp4")
            # A name without spaces may follow whitespace too; one with spaces needs the comma.
            separator = data.draw(st.sampled_from([",", " "])) if " " not in name else ","
            lines.append(f"v {i}.mp4{separator}{name}")
        (base / "list.txt").write_text("\n".join(lines))
        videos = read_videos(base / "list.txt", classes=base / "classes.txt")
        assert [r.label for r in videos.records] == [classes.index(name) for name in picks]
        assert videos.classes == classes


def test_pyslowfast_space_separated_csv(tmp_path: Path) -> None:
    # PySlowFast's Kinetics train.csv: absolute paths, one space, integer labels, no header.
    videos = [_touch(tmp_path / "k400" / "train" / name) for name in ("abc_000001_000011.mp4", "my clip.mp4")]
    (tmp_path / "train.csv").write_text(f"{videos[0]} 12\n{videos[1]} 3\n")
    read = read_videos(tmp_path / "train.csv")
    assert read.format == "list"
    assert [(r.path, r.label, r.line) for r in read.records] == [
        (str(videos[0]), 12, 1),
        (str(videos[1]), 3, 2),
    ]
    assert read.num_classes == 13


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("a.mp4", "b c.mp4", "d.mp4"):
        _touch(tmp_path / name)
    (tmp_path / "classes.txt").write_text("walk\nrun\n")
    return tmp_path


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("missing.mp4,0", "file not found"),
        ("a.mp4,jump", "unknown class 'jump'"),
        ("a.mp4 jump", "unknown class 'jump'"),
        ("a.mp4", "malformed line"),
        ("a.mp4,7", "label 7 outside"),
        ("a.mp4 -1", "label -1 outside"),
    ],
)
def test_list_validation_is_kept(files: Path, line: str, reason: str) -> None:
    (files / "list.csv").write_text(f"d.mp4 walk\n{line}\n")
    with pytest.raises(VideoListError, match=rf"line 2: {reason}"):
        read_videos(files / "list.csv", classes=files / "classes.txt")
    dropped = read_videos(files / "list.csv", classes=files / "classes.txt", drop_invalid=True)
    assert [r.line for r in dropped.records] == [1] and [d.line for d in dropped.dropped] == [2]


def test_error_lists_twenty_lines_then_counts(files: Path) -> None:
    (files / "list.txt").write_text("a.mp4 0\n" + "".join(f"gone{i}.mp4 0\n" for i in range(25)))
    with pytest.raises(VideoListError, match=r"25 invalid line\(s\)") as error:
        read_videos(files / "list.txt")
    assert str(error.value).count("file not found") == 20 and "... and 5 more" in str(error.value)


def test_no_file_found_hints_at_root(files: Path) -> None:
    (files / "list.txt").write_text("elsewhere/a.mp4 0\nelsewhere/d.mp4 1\n")
    with pytest.raises(VideoListError, match=r"not one listed video was found under .*--data.root"):
        read_videos(files / "list.txt")
    assert len(read_videos(files / "list.txt", root=files / "elsewhere", check_files=False)) == 2


# --- Kinetics annotation CSVs -------------------------------------------------------------------------------

LABEL_CHARS = string.ascii_lowercase + " ,()'"
YOUTUBE_ID = st.text(string.ascii_letters + string.digits + "_-", min_size=11, max_size=11)
LAYOUTS = ("flat", "class", "underscored", "split/class")


def _kinetics_csv(rows: list[dict[str, str]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # quotes labels that hold commas, like the official files
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[column] for column in columns])
    return out.getvalue()


def _clip_path(root: Path, layout: str, label: str, stem: str, extension: str) -> Path:
    folder = {
        "flat": root,
        "class": root / label,
        "underscored": root / label.replace(" ", "_"),
        "split/class": root / "train" / label,
    }[layout]
    return folder / f"{stem}{extension}"


@given(
    labels=_names(LABEL_CHARS, 1, 4),
    clips=st.lists(
        st.tuples(YOUTUBE_ID, st.integers(0, 999_990)), min_size=1, max_size=8, unique_by=lambda c: c[0]
    ),
    layout=st.sampled_from(LAYOUTS),
    columns=st.permutations(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]),
    drop_split=st.booleans(),
    data=st.data(),
)
def test_kinetics_csv_finds_the_downloaded_clips(
    labels: list[str],
    clips: list[tuple[str, int]],
    layout: str,
    columns: list[str],
    drop_split: bool,
    data: st.DataObject,
) -> None:
    columns = [c for c in columns if not (drop_split and c == "split")]
    rows, expected, missing = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "videos"
        for line, (youtube_id, start) in enumerate(clips, start=2):
            label = data.draw(st.sampled_from(labels))
            rows.append(
                {
                    "label": label,
                    "youtube_id": youtube_id,
                    "time_start": str(start),
                    "time_end": str(start + 10),
                    "split": "train",
                    "is_cc": "0",
                }
            )
            stem = kinetics_clip_name(youtube_id, start, start + 10)
            if data.draw(st.booleans()) or line == 2:  # at least one clip was downloaded
                extension = data.draw(st.sampled_from(VIDEO_EXTENSIONS))
                expected.append((str(_touch(_clip_path(root, layout, label, stem, extension))), label, line))
            else:
                missing.append(line)
        (root.parent / "train.csv").write_text(_kinetics_csv(rows, columns))
        classes = sorted({row["label"] for row in rows})

        videos = read_videos(root.parent / "train.csv", root=root, drop_invalid=True)
        assert videos.format == "kinetics_csv" and videos.classes == classes
        assert [(r.path, videos.classes[r.label], r.line) for r in videos.records] == expected
        assert [d.line for d in videos.dropped] == missing
        assert all(d.reason.startswith("not downloaded") for d in videos.dropped)
        if missing:
            with pytest.raises(VideoListError, match=rf"line {missing[0]}: not downloaded"):
                read_videos(root.parent / "train.csv", root=root)
        else:
            assert len(read_videos(root.parent / "train.csv", root=root)) == len(expected)


def test_kinetics_quoted_labels_flat_and_per_class(tmp_path: Path) -> None:
    text = (
        "label,youtube_id,time_start,time_end,split\n"
        '"passing American football (in game)",--6bJUbfpnQ,17,27,train\n'
        "abseiling,0347ZoDXyP0,14,24,train\n"
        '"passing American football (not in game)",-0DlbbWjTOg,0,10,train\n'
    )
    (tmp_path / "train.csv").write_text(text)
    flat = tmp_path / "flat"
    _touch(flat / "--6bJUbfpnQ_000017_000027.mp4")
    _touch(flat / "0347ZoDXyP0_000014_000024.mkv")
    _touch(flat / "-0DlbbWjTOg.mp4")  # a downloader that names clips by youtube id alone
    videos = read_videos(tmp_path / "train.csv", root=flat)
    assert videos.classes == [
        "abseiling",
        "passing American football (in game)",
        "passing American football (not in game)",
    ]
    assert [(Path(r.path).name, r.label) for r in videos.records] == [
        ("--6bJUbfpnQ_000017_000027.mp4", 1),
        ("0347ZoDXyP0_000014_000024.mkv", 0),
        ("-0DlbbWjTOg.mp4", 2),
    ]
    per_class = tmp_path / "per_class"
    _touch(per_class / "passing_American_football_(in_game)" / "--6bJUbfpnQ_000017_000027.mp4")
    _touch(per_class / "abseiling" / "0347ZoDXyP0_000014_000024.mp4")
    videos = read_videos(tmp_path / "train.csv", format="kinetics_csv", root=per_class, drop_invalid=True)
    assert [r.label for r in videos.records] == [1, 0] and len(videos.classes) == 3
    assert [(d.line, d.reason.split(":")[0]) for d in videos.dropped] == [(4, "not downloaded")]
    assert "-0DlbbWjTOg_000000_000010.mp4" in videos.dropped[0].reason


def test_kinetics_without_label_column_takes_the_class_folder(tmp_path: Path) -> None:
    # Kinetics-700-2020 test files: youtube_id,time_start,time_end (no label, no split).
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end\nAAAAAAAAAAA,1,11\nBBBBBBBBBBB,2,12\n")
    _touch(tmp_path / "v" / "playing_poker" / "AAAAAAAAAAA_000001_000011.mp4")
    _touch(tmp_path / "v" / "abseiling" / "BBBBBBBBBBB_000002_000012.mp4")
    videos = read_videos(tmp_path / "test.csv", root=tmp_path / "v")
    assert videos.classes == ["abseiling", "playing_poker"] and [r.label for r in videos.records] == [1, 0]
    named = read_videos(
        tmp_path / "test.csv", root=tmp_path / "v", classes=["abseiling", "juggling", "playing poker"]
    )
    assert [r.label for r in named.records] == [2, 0]
    _touch(tmp_path / "flat" / "AAAAAAAAAAA_000001_000011.mp4")
    with pytest.raises(VideoListError, match="no label column, and it is not in a class folder"):
        read_videos(tmp_path / "test.csv", root=tmp_path / "flat", classes=["abseiling"])


def test_kinetics_validation_file_shares_the_training_classes(tmp_path: Path) -> None:
    header = "\ufefflabel,youtube_id,time_start,time_end,split\n"  # with a byte-order mark
    (tmp_path / "train.csv").write_text(header + "b,AAAAAAAAAAA,0,10,train\nc,BBBBBBBBBBB,0,10,train\n")
    (tmp_path / "validate.csv").write_text(header + "c,CCCCCCCCCCC,0,10,val\n")
    for clip in ("AAAAAAAAAAA", "BBBBBBBBBBB", "CCCCCCCCCCC"):
        _touch(tmp_path / f"{clip}_000000_000010.mp4")
    train = read_videos(tmp_path / "train.csv")
    alone = read_videos(tmp_path / "validate.csv")
    shared = read_videos(tmp_path / "validate.csv", same_classes_as=train)
    assert alone.classes == ["c"] and alone.records[0].label == 0
    assert shared.classes == ["b", "c"] and shared.records[0].label == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "label,id,start,end\nabseiling,AAAAAAAAAAA,0,10\n",
            "not a Kinetics header: expected the columns label,youtube_id",
        ),
        ("abseiling,AAAAAAAAAAA,0,10,train\n", "line 1 is not a Kinetics header"),
        (
            "label,youtube_id,time_start,time_end,split\nabseiling,AAAAAAAAAAA,0,train\n",
            "line 2: malformed row: 4 fields",
        ),
        (
            "label,youtube_id,time_start,time_end,split\nabseiling,AAAAAAAAAAA,x,10,train\n",
            "line 2: malformed row",
        ),
        ("label,youtube_id,time_start,time_end\n,AAAAAAAAAAA,0,10\n", "line 2: malformed row"),
        ("\n\n", "empty"),
    ],
)
def test_kinetics_bad_input(tmp_path: Path, text: str, match: str) -> None:
    _touch(tmp_path / "AAAAAAAAAAA_000000_000010.mp4")
    (tmp_path / "k.csv").write_text(text)
    with pytest.raises(VideoListError, match=match):
        read_videos(tmp_path / "k.csv", format="kinetics_csv")


# --- UCF101 -------------------------------------------------------------------------------------------------

UCF_CLASS = st.text(string.ascii_letters, min_size=1, max_size=10).map(str.capitalize)


def _write_ucf101(
    base: Path, classes: list[str], videos: dict[str, list[tuple[str, bool]]], split: int
) -> None:
    """``ucfTrainTestlist/`` as published (CRLF lines) and ``UCF-101/<Class>/<video>`` files."""
    lists = base / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_bytes(
        "".join(f"{i} {name}\r\n" for i, name in enumerate(classes, 1)).encode()
    )
    train = [
        f"{name}/{video} {classes.index(name) + 1}"
        for name in classes
        for video, is_train in videos[name]
        if is_train
    ]
    test = [f"{name}/{video}" for name in classes for video, is_train in videos[name] if not is_train]
    (lists / f"trainlist{split:02d}.txt").write_bytes("".join(f"{line}\r\n" for line in train).encode())
    (lists / f"testlist{split:02d}.txt").write_bytes("".join(f"{line}\r\n" for line in test).encode())
    for name in classes:
        for video, _ in videos[name]:
            _touch(base / "UCF-101" / name / video)


@given(
    classes=st.lists(UCF_CLASS, min_size=1, max_size=5, unique_by=str.lower),
    split=st.integers(1, 3),
    data=st.data(),
)
def test_ucf101_train_and_test_lists_of_a_split(classes: list[str], split: int, data: st.DataObject) -> None:
    videos = {
        name: [
            (f"v_{name}_g{g:02d}_c01.avi", data.draw(st.booleans()))
            for g in range(1, data.draw(st.integers(1, 3)) + 1)
        ]
        for name in classes
    }
    # Both subsets must have a video.
    videos[classes[0]] += [(f"v_{classes[0]}_g90_c01.avi", True), (f"v_{classes[0]}_g91_c01.avi", False)]
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        _write_ucf101(base, classes, videos, split)
        root = base / "UCF-101"
        for subset in ("train", "test"):
            expected = [
                (str(root / name / video), classes.index(name))
                for name in classes
                for video, is_train in videos[name]
                if is_train == (subset == "train")
            ]
            from_file = read_videos(base / "ucfTrainTestlist" / f"{subset}list{split:02d}.txt", root=root)
            from_folder = read_videos(base / "ucfTrainTestlist", split=split, subset=subset, root=root)
            for read in (from_file, from_folder):
                assert read.format == "ucf101" and read.classes == classes
                assert [(r.path, r.label) for r in read.records] == expected


def test_ucf101_published_lines(tmp_path: Path) -> None:
    # Verbatim lines of the published files, HandstandPushups' folder/file case mismatch included.
    classes = ["ApplyEyeMakeup", "HandstandPushups"]
    videos = {
        "ApplyEyeMakeup": [("v_ApplyEyeMakeup_g08_c01.avi", True), ("v_ApplyEyeMakeup_g01_c01.avi", False)],
        "HandstandPushups": [
            ("v_HandStandPushups_g08_c01.avi", True),
            ("v_HandStandPushups_g01_c01.avi", False),
        ],
    }
    _write_ucf101(tmp_path, classes, videos, 1)
    lists = tmp_path / "ucfTrainTestlist"
    assert (
        (lists / "trainlist01.txt")
        .read_bytes()
        .startswith(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n")
    )
    test = read_videos(lists / "testlist01.txt", root=tmp_path / "UCF-101")
    assert [(Path(r.path).name, r.label) for r in test.records] == [
        ("v_ApplyEyeMakeup_g01_c01.avi", 0),
        ("v_HandStandPushups_g01_c01.avi", 1),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2",
            "label 2 is 'Basketball', but the class folder is 'ApplyEyeMakeup'",
        ),
        (
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 0",
            r"label 0 outside \[1, 2\] \(UCF101 labels are 1-based\)",
        ),
        ("Juggling/v_Juggling_g08_c01.avi", "unknown class 'Juggling'"),
        ("v_ApplyEyeMakeup_g08_c01.avi", "malformed line"),
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi 1", "file not found"),
    ],
)
def test_ucf101_invalid_lines(tmp_path: Path, line: str, reason: str) -> None:
    _write_ucf101(
        tmp_path,
        ["ApplyEyeMakeup", "Basketball"],
        {"ApplyEyeMakeup": [("v_ApplyEyeMakeup_g08_c01.avi", True)], "Basketball": []},
        1,
    )
    path = tmp_path / "ucfTrainTestlist" / "trainlist01.txt"
    path.write_text(f"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n{line}\n")
    with pytest.raises(VideoListError, match=rf"line 2: {reason}"):
        read_videos(path, root=tmp_path / "UCF-101")
    assert len(read_videos(path, root=tmp_path / "UCF-101", drop_invalid=True).dropped) == 1


def test_ucf101_bad_arguments(tmp_path: Path) -> None:
    _write_ucf101(tmp_path, ["A"], {"A": [("v_A_g01_c01.avi", True)]}, 2)
    lists = tmp_path / "ucfTrainTestlist"
    with pytest.raises(ValueError, match="file of split 2, but split=1"):
        read_videos(lists / "trainlist02.txt", split=1)
    with pytest.raises(ValueError, match="subset='train' or 'test'"):
        read_videos(lists, split=2)
    with pytest.raises(FileNotFoundError, match="no trainlist01.txt"):
        read_videos(lists, subset="train")
    (lists / "classInd.txt").write_text("1 A\n3 B\n")
    with pytest.raises(VideoListError, match=r"class indices must be 1..2"):
        read_videos(lists / "trainlist02.txt", root=tmp_path / "UCF-101")
    (lists / "classInd.txt").unlink()
    with pytest.raises(FileNotFoundError, match="need classInd.txt beside them"):
        read_videos(lists / "trainlist02.txt", format="ucf101")


# --- HMDB51 -------------------------------------------------------------------------------------------------

HMDB_CLASS = st.text(string.ascii_lowercase + "_", min_size=1, max_size=10).filter(lambda s: s.strip("_"))
HMDB_VIDEO = st.text(string.ascii_letters + string.digits + "#_-()!&", min_size=1, max_size=16).map(
    lambda s: f"{s}.avi"
)


@given(
    classes=st.lists(HMDB_CLASS, min_size=1, max_size=4, unique=True),
    split=st.integers(1, 3),
    data=st.data(),
)
def test_hmdb51_train_and_test_of_a_split(classes: list[str], split: int, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        splits = base / "testTrainMulti_7030_splits"
        splits.mkdir()
        expected: dict[str, list[tuple[str, int]]] = {"1": [], "2": []}
        for label, name in enumerate(sorted(classes)):
            names = data.draw(st.lists(HMDB_VIDEO, min_size=1, max_size=4, unique=True))
            for number in (1, 2, 3):
                ids = [data.draw(st.sampled_from("012")) for _ in names]
                if number == split:
                    ids[0] = "1" if label else "2"  # both subsets have a video
                    if label == 0 and len(classes) == 1:
                        names, ids = [*names, "extra.avi"], [*ids, "1"]
                    for video, mark in zip(names, ids, strict=True):
                        if mark != "0":
                            expected[mark].append((str(base / "videos" / name / video), label))
                # The published lines end with a space.
                lines = "".join(f"{video} {mark} \n" for video, mark in zip(names, ids, strict=True))
                (splits / f"{name}_test_split{number}.txt").write_text(lines)
            for video in names:
                _touch(base / "videos" / name / video)
        for subset, mark in (("train", "1"), ("test", "2")):
            read = read_videos(splits, split=split, subset=subset, root=base / "videos")
            assert read.format == "hmdb51" and read.classes == sorted(classes)
            assert [(r.path, r.label) for r in read.records] == expected[mark]


def test_hmdb51_bad_input(tmp_path: Path) -> None:
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("#122_Cleaning.avi 1\nApril_09_brush_hair.avi 2\n")
    (splits / "cartwheel_test_split1.txt").write_text("Bodenturnen.avi 1\nbad line 7\n")
    (splits / "cartwheel_test_split2.txt").write_text("Bodenturnen.avi 2\n")
    _touch(tmp_path / "brush_hair" / "#122_Cleaning.avi")
    _touch(tmp_path / "cartwheel" / "Bodenturnen.avi")
    with pytest.raises(VideoListError, match=r"cartwheel_test_split1.txt line 2: malformed line"):
        read_videos(splits, subset="train")
    read = read_videos(splits, subset="train", drop_invalid=True)  # default root: the folder above splits/
    assert [Path(r.path).name for r in read.records] == ["#122_Cleaning.avi", "Bodenturnen.avi"]
    assert read.dropped[0].file == "cartwheel_test_split1.txt"
    with pytest.raises(
        VideoListError, match=r"split 2 lacks 1 of 2 class files \(brush_hair_test_split2.txt\)"
    ):
        read_videos(splits, split=2, subset="test")
    with pytest.raises(ValueError, match="subset='train' \\(id 1\\) or 'test'"):
        read_videos(splits, format="hmdb51")
    with pytest.raises(FileNotFoundError, match="is a file: pass the folder holding it"):
        read_videos(splits / "cartwheel_test_split1.txt", format="hmdb51", subset="train")


# --- detection ----------------------------------------------------------------------------------------------


def test_auto_detects_each_format(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("a.mp4 0\n")
    (tmp_path / "kinetics.csv").write_text("# K400\nlabel,youtube_id,time_start,time_end,split\n")
    (tmp_path / "Kinetics700.csv").write_text("\ufeffYouTube_ID,Time_Start,Time_End\n")
    ucf = tmp_path / "ucfTrainTestlist"
    ucf.mkdir()
    (ucf / "classInd.txt").write_text("1 A\n")
    (ucf / "testlist01.txt").write_text("A/v_A_g01_c01.avi\n")
    hmdb = tmp_path / "hmdb_splits"
    hmdb.mkdir()
    (hmdb / "kiss_test_split1.txt").write_text("x.avi 1\n")
    found = {
        p.name: detect_list_format(p)
        for p in (
            tmp_path / "list.csv",
            tmp_path / "kinetics.csv",
            tmp_path / "Kinetics700.csv",
            ucf,
            ucf / "testlist01.txt",
            hmdb,
        )
    }
    assert found == {
        "list.csv": "list",
        "kinetics.csv": "kinetics_csv",
        "Kinetics700.csv": "kinetics_csv",
        "ucfTrainTestlist": "ucf101",
        "testlist01.txt": "ucf101",
        "hmdb_splits": "hmdb51",
    }


def test_auto_refuses_what_it_cannot_tell(tmp_path: Path) -> None:
    choose = r"pass format= one of 'list'.*'kinetics_csv'.*'ucf101'.*'hmdb51'.*--data.format"
    (tmp_path / "trainlist01.txt").write_text("A/v_A_g01_c01.avi 1\n")
    with pytest.raises(
        VideoListError, match=rf"named like a UCF101 split file but there is no classInd.txt.*{choose}"
    ):
        read_videos(tmp_path / "trainlist01.txt")
    _touch(tmp_path / "A" / "v_A_g01_c01.avi")
    # Chosen explicitly, the same file reads as a plain list (label 1 of 0-based classes).
    assert read_videos(tmp_path / "trainlist01.txt", format="list").records[0].label == 1
    (tmp_path / "paths.txt").write_text("A/v_A_g01_c01.avi\nA/v_A_g02_c01.avi\n")
    with pytest.raises(VideoListError, match=rf"one field each \(paths without labels\?\).*{choose}"):
        read_videos(tmp_path / "paths.txt")
    both = tmp_path / "both"
    both.mkdir()
    (both / "classInd.txt").write_text("1 A\n")
    (both / "trainlist01.txt").write_text("A/x.avi 1\n")
    (both / "kiss_test_split1.txt").write_text("x.avi 1\n")
    with pytest.raises(VideoListError, match=rf"both UCF101 .* and HMDB51 .*{choose}"):
        read_videos(both)
    with pytest.raises(VideoListError, match=r"neither UCF101 nor HMDB51 .*--data.kind folders"):
        read_videos(tmp_path / "A")
    with pytest.raises(VideoListError, match=r"named like an HMDB51 split file: pass the folder holding it"):
        read_videos(both / "kiss_test_split1.txt")
    with pytest.raises(FileNotFoundError):
        read_videos(tmp_path / "nowhere.csv")


def test_bad_arguments(files: Path) -> None:
    (files / "list.txt").write_text("a.mp4 0\n")
    with pytest.raises(ValueError, match="unknown list format 'ucf'; expected one of auto, list"):
        read_videos(files / "list.txt", format="ucf")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="split=2 applies to UCF101 and HMDB51 split files; .* read as 'list'"
    ):
        read_videos(files / "list.txt", split=2)
    assert len(read_videos(files / "list.txt", subset="test")) == 1  # formats without subsets ignore it
