"""The official Kinetics-400/600/700 annotation CSVs, matched to the clips a downloader wrote.

An annotation file has a header naming its columns, normally ``label,youtube_id,time_start,time_end,split``.
Columns are found by name: Kinetics-700-2020 and some test files lack ``label`` or ``split``, some files
add others (``is_cc``), and labels with commas are quoted (``"passing American football (in game)"``).
``split`` is not used: each official file holds one split.

Each row is one clip; the common downloaders name it ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4``
(any of ``VIDEO_EXTENSIONS`` is accepted, and so is a bare
``<youtube_id>.<ext>``). The clips are looked up anywhere under ``root``: flat, in class folders
(``<root>/<label>/``, or the label with spaces replaced by underscores), or in split folders above those.
Clips that were never downloaded (YouTube videos disappear) are errors naming them, or with
``drop_invalid=True`` are dropped and listed with the reason ``not downloaded``.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

from chunkformer.data.video_list import (
    VIDEO_EXTENSIONS,
    DroppedLine,
    VideoList,
    VideoListError,
    VideoRecord,
    _class_names,
    _fail_or_drop,
    _no_videos,
    _root_hint,
)

__all__ = ["KINETICS_COLUMNS", "is_kinetics_header", "kinetics_clip_name", "read_kinetics_csv"]

KINETICS_COLUMNS: tuple[str, ...] = ("label", "youtube_id", "time_start", "time_end", "split")
"""The columns of the official annotation files, in their order (``label`` and ``split`` may be absent)."""
_REQUIRED = ("youtube_id", "time_start", "time_end")


def is_kinetics_header(fields: list[str]) -> bool:
    """Whether a CSV row is a Kinetics annotation header (it names youtube_id, time_start and time_end)."""
    return all(name in _column_names(fields) for name in _REQUIRED)


def _column_names(fields: list[str]) -> list[str]:
    # A byte-order mark (files saved on Windows) would otherwise hide the first column, usually `label`.
    return [field.strip().lstrip("\ufeff").strip().lower() for field in fields]


def kinetics_clip_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """The downloaders' file stem of a clip: ``<youtube_id>_<time_start:06d>_<time_end:06d>``."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


def _seconds(text: str) -> int | None:
    """A whole non-negative number of seconds (``14`` or ``14.0``), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value >= 0 and value.is_integer() else None


def _index_videos(root: Path) -> dict[str, list[Path]]:
    """Video files under ``root`` (any depth) by file stem: one walk instead of a stat per row and layout."""
    found: dict[str, list[Path]] = defaultdict(list)
    for folder, _, files in os.walk(root):
        for name in files:
            stem, extension = os.path.splitext(name)
            if extension.lower() in VIDEO_EXTENSIONS:
                found[stem].append(Path(folder, name))
    for paths in found.values():
        paths.sort()
    return found


def _folder_matches(folder: str, label: str) -> bool:
    return folder in (label, label.replace(" ", "_"))


def read_kinetics_csv(
    path: str | Path,
    root: str | Path | None = None,
    classes: list[str] | str | Path | None = None,
    drop_invalid: bool = False,
    check_files: bool = True,
) -> VideoList:
    """Read an official Kinetics annotation CSV and find each clip under ``root``.

    Args:
        path: the annotation file (``train.csv``, ``validate.csv``, ...).
        root: the folder holding the clips, searched at any depth (default: the CSV's directory).
        classes: class names in index order, or a classes file (default: the sorted unique labels of the
            file; pass the training file's classes when reading a validation file, so both share indices).
        drop_invalid: drop bad rows and clips never downloaded (listed in ``dropped``) instead of raising.
        check_files: find each clip on disk. Without it nothing is searched, paths are the flat
            ``<root>/<youtube_id>_<start>_<end>.mp4`` and the file needs a ``label`` column.

    Without a ``label`` column, a clip's label is its class folder's name (or, with ``classes``, the
    class whose name or underscored name the folder has).

    Raises:
        VideoListError: no header, a header without youtube_id/time_start/time_end, or (unless
            ``drop_invalid``) rows naming each bad one and each clip not found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Kinetics annotation file not found: {path}")
    base = Path(root) if root is not None else path.parent
    lines = [
        (number, raw.strip())
        for number, raw in enumerate(path.read_text().splitlines(), start=1)
        if raw.strip() and not raw.strip().startswith("#")
    ]
    if not lines:
        raise VideoListError(
            f"{path}: empty (expected a header {','.join(KINETICS_COLUMNS)} and one row per clip)"
        )
    header = _column_names(next(csv.reader([lines[0][1]])))
    if not is_kinetics_header(header):
        raise VideoListError(
            f"{path}: line {lines[0][0]} is not a Kinetics header: expected the columns "
            f"{','.join(KINETICS_COLUMNS)} (label and split may be absent), got {lines[0][1]!r}"
        )
    column = {name: i for i, name in enumerate(header)}
    has_label = "label" in column
    if not has_label and not check_files:
        raise VideoListError(
            f"{path}: no label column, and without check_files the class folders are not searched"
        )

    # Rows first: the classes are the file's labels (all rows, downloaded or not, so the label space is the
    # dataset's), and the files are searched only once the rows are known to be well formed.
    rows: list[tuple[int, str, str | None, str]] = []  # line, text, label, clip stem
    problems: list[DroppedLine] = []
    for number, text in lines[1:]:
        fields = next(csv.reader([text]))
        if len(fields) != len(header):
            reason = f"malformed row: {len(fields)} fields, the header has {len(header)}"
            problems.append(DroppedLine(number, text, reason))
            continue
        youtube_id = fields[column["youtube_id"]].strip()
        start, end = _seconds(fields[column["time_start"]]), _seconds(fields[column["time_end"]])
        label = fields[column["label"]].strip() if has_label else None
        if not youtube_id or start is None or end is None or label == "":
            reason = "malformed row (expected a label, a youtube_id and whole time_start/time_end)"
            problems.append(DroppedLine(number, text, reason))
            continue
        rows.append((number, text, label, kinetics_clip_name(youtube_id, start, end)))

    # Find the clips (one walk of root), then label them.
    index = _index_videos(base) if check_files else {}
    found: list[tuple[int, str, str | None, Path]] = []
    missing = 0
    for number, text, label, stem in rows:
        if not check_files:
            found.append((number, text, label, base / f"{stem}.mp4"))
            continue
        candidates = index.get(stem) or index.get(stem.rsplit("_", 2)[0], [])
        if label is not None and len(candidates) > 1:
            # The same clip in several folders (a re-download, another split): the label's folder wins.
            candidates = [p for p in candidates if _folder_matches(p.parent.name, label)] or candidates
        if not candidates:
            reason = f"not downloaded: no {stem}.mp4 (or another video extension) under {base}"
            problems.append(DroppedLine(number, text, reason))
            missing += 1
        elif len(candidates) > 1:
            shown = ", ".join(str(p) for p in candidates[:3])
            problems.append(DroppedLine(number, text, f"clip found {len(candidates)} times: {shown}"))
        else:
            found.append((number, text, label, candidates[0]))

    names = _class_names(classes)
    if names is None and has_label:
        names = sorted({label for _, _, label, _ in rows if label is not None})
    elif names is None:
        names = sorted({video.parent.name for _, _, _, video in found if video.parent != base})
    index_of = {name: i for i, name in enumerate(names)}
    # Class folders: downloaders name them after the label, some with spaces replaced by underscores.
    folder_class = {**{name.replace(" ", "_"): i for i, name in enumerate(names)}, **index_of}
    records: list[VideoRecord] = []
    for number, text, label, video in found:
        if label is not None:
            if label in index_of:
                records.append(VideoRecord(str(video), index_of[label], number))
            else:
                problems.append(DroppedLine(number, text, f"unknown class {label!r}"))
        elif video.parent != base and video.parent.name in folder_class:
            records.append(VideoRecord(str(video), folder_class[video.parent.name], number))
        else:
            where = "its folder is not a class" if video.parent != base else "it is not in a class folder"
            problems.append(DroppedLine(number, text, f"no label column, and {where}: {video}"))
    problems.sort(key=lambda problem: problem.line)
    hint = _root_hint(len(records), missing, base)
    _fail_or_drop(problems, path, drop_invalid, hint)
    if not records:
        raise _no_videos(path, problems, hint)
    return VideoList(records, names, problems, str(path), "kinetics_csv")
