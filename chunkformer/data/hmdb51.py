"""HMDB51's official split files (``testTrainMulti_7030_splits/``), read as published.

The folder holds ``<class>_test_split<N>.txt`` for each class and split N (1-3); each line is
``<video name> <id>`` with id 1 = train, 2 = test, 0 = unused in that split. Videos are at
``<root>/<class>/<video name>``. The classes are the sorted class names of the files.

Video names are taken as written: some start with ``#`` (``#122_Cleaning_Up_The_Beach...``), so no line is
a comment here, unlike in the other formats.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from chunkformer.data.video_list import (
    DroppedLine,
    VideoList,
    VideoListError,
    VideoRecord,
    _class_names,
    _fail_or_drop,
    _no_videos,
    _root_hint,
)

__all__ = ["HMDB51_SPLIT_FILE", "HMDB51_SUBSET_IDS", "hmdb51_split_files", "read_hmdb51_split"]

HMDB51_SPLIT_FILE = re.compile(r"^(.+)_test_split(\d+)\.txt$")
"""Names of the split files: ``<class>_test_split<N>.txt`` (groups: class, split number)."""
HMDB51_SUBSET_IDS: dict[str, str] = {"train": "1", "test": "2"}
"""The id of each subset in the split files (0 marks videos a split does not use)."""


def hmdb51_split_files(folder: str | Path) -> dict[int, dict[str, Path]]:
    """The split files of ``folder``: ``{split number: {class name: file}}`` (empty when there are none)."""
    splits: dict[int, dict[str, Path]] = {}
    for entry in sorted(Path(folder).iterdir()):
        match = HMDB51_SPLIT_FILE.match(entry.name)
        if match and entry.is_file():
            splits.setdefault(int(match[2]), {})[match[1]] = entry
    return splits


def read_hmdb51_split(
    path: str | Path,
    split: int | None = None,
    subset: Literal["train", "test"] | None = None,
    root: str | Path | None = None,
    classes: list[str] | str | Path | None = None,
    drop_invalid: bool = False,
    check_files: bool = True,
) -> VideoList:
    """The train or test videos of one HMDB51 split.

    Args:
        path: the folder of ``<class>_test_split<N>.txt`` files.
        split: split number 1-3 (default 1).
        subset: ``train`` (id 1) or ``test`` (id 2).
        root: the folder of class folders (default: the folder holding ``path``).
        classes: class names in index order, or a classes file (default: the sorted class names of the
            split files).
        drop_invalid: drop bad lines (listed in ``dropped``) instead of raising.
        check_files: check that each video file exists.

    Raises:
        VideoListError: a class without a file for the split, or (unless ``drop_invalid``) naming every
            invalid line.
    """
    path = Path(path)
    if not path.is_dir():
        what = "a file: pass the folder holding it" if path.is_file() else "not found"
        raise FileNotFoundError(f"HMDB51 splits folder {path} is {what}")
    if subset not in HMDB51_SUBSET_IDS:
        raise ValueError(f"HMDB51: pass subset='train' (id 1) or 'test' (id 2), got {subset!r}")
    number = 1 if split is None else split
    base = Path(root) if root is not None else path.parent
    splits = hmdb51_split_files(path)
    if not splits:
        raise VideoListError(f"{path}: no HMDB51 split files (<class>_test_split<N>.txt)")
    every_class = sorted({name for files in splits.values() for name in files})
    files = splits.get(number, {})
    lacking = [name for name in every_class if name not in files]
    if lacking:
        shown = ", ".join(f"{name}_test_split{number}.txt" for name in lacking[:5])
        raise VideoListError(
            f"{path}: split {number} lacks {len(lacking)} of {len(every_class)} class files ({shown}); "
            f"splits present: {sorted(splits)}"
        )
    names = _class_names(classes) or every_class
    index_of = {name: i for i, name in enumerate(names)}
    wanted = HMDB51_SUBSET_IDS[subset]
    records: list[VideoRecord] = []
    problems: list[DroppedLine] = []
    missing = 0
    for name in every_class:
        for line, raw in enumerate(files[name].read_text().splitlines(), start=1):
            text = raw.strip()
            if not text:
                continue
            fields = text.rsplit(None, 1)
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                reason = "malformed line (expected '<video name> <0|1|2>')"
                problems.append(DroppedLine(line, text, reason, files[name].name))
                continue
            if fields[1] != wanted:
                continue
            if name not in index_of:
                problems.append(DroppedLine(line, text, f"unknown class {name!r}", files[name].name))
                continue
            full = str(base / name / fields[0])
            if check_files and not os.path.isfile(full):
                problems.append(DroppedLine(line, text, f"file not found: {full}", files[name].name))
                missing += 1
                continue
            records.append(VideoRecord(full, index_of[name], line))
    hint = _root_hint(len(records), missing, base)
    _fail_or_drop(problems, path, drop_invalid, hint)
    if not records:
        raise _no_videos(path, problems, hint)
    return VideoList(records, names, problems, str(path), "hmdb51")
