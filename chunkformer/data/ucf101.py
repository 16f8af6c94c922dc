"""UCF101's official split files (``ucfTrainTestlist/``), read as published.

- ``classInd.txt``: ``1 ApplyEyeMakeup`` lines, 1-based class indices.
- ``trainlist0N.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``, the label 1-based (checked
  against the class folder of the path).
- ``testlist0N.txt``: paths only; the label is the class folder, looked up in ``classInd.txt``.

Videos are at ``<root>/<path>`` (``root`` is the extracted ``UCF-101/`` folder). Folder names are matched
to class names without regard to case: the published files mix ``HandstandPushups`` and
``HandStandPushups``. The files have CRLF line ends, which are read like LF.
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

__all__ = ["UCF101_SPLIT_FILE", "find_ucf101_class_index", "read_ucf101_class_index", "read_ucf101_split"]

UCF101_SPLIT_FILE = re.compile(r"^(train|test)list0*(\d+)\.txt$", re.IGNORECASE)
"""Names of the split files: ``trainlist01.txt`` ... ``testlist03.txt`` (groups: subset, split number)."""


def find_ucf101_class_index(folder: str | Path) -> Path | None:
    """``classInd.txt`` in ``folder`` (any case), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for entry in folder.iterdir():
        if entry.name.lower() == "classind.txt" and entry.is_file():
            return entry
    return None


def read_ucf101_class_index(path: str | Path) -> list[str]:
    """Class names in label order from ``classInd.txt`` (``1 ApplyEyeMakeup`` lines, indices 1..N).

    Raises:
        VideoListError: a malformed line, or indices that are not 1..N each once.
    """
    path = Path(path)
    by_index: dict[int, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise VideoListError(
                f"{path}: line {number}: expected '<index> <class name>', got {raw.strip()!r}"
            )
        index = int(fields[0])
        if index in by_index:
            raise VideoListError(f"{path}: line {number}: index {index} is listed twice")
        by_index[index] = fields[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise VideoListError(
            f"{path}: class indices must be 1..{len(by_index)}, each once; got {sorted(by_index)}"
        )
    if not by_index:
        raise VideoListError(f"{path}: no classes")
    return [by_index[i] for i in range(1, len(by_index) + 1)]


def _split_file(path: Path, split: int | None, subset: Literal["train", "test"] | None) -> tuple[Path, Path]:
    """The split file to read and the classInd.txt beside it."""
    if path.is_dir():
        if subset not in ("train", "test"):
            raise ValueError(
                f"{path} is a UCF101 splits folder: pass subset='train' or 'test' to pick "
                f"trainlist0N.txt or testlist0N.txt, got {subset!r}"
            )
        number = 1 if split is None else split
        matches = [(entry, UCF101_SPLIT_FILE.match(entry.name)) for entry in sorted(path.iterdir())]
        wanted = (subset, number)
        candidates = [entry for entry, m in matches if m and (m[1].lower(), int(m[2])) == wanted]
        if not candidates:
            raise FileNotFoundError(f"{path}: no {subset}list{number:02d}.txt (split {number})")
        chosen = candidates[0]
    elif path.is_file():
        chosen = path
        match = UCF101_SPLIT_FILE.match(path.name)
        if split is not None and match and int(match[2]) != split:
            raise ValueError(f"{path} is a file of split {int(match[2])}, but split={split} was asked for")
    else:
        raise FileNotFoundError(f"UCF101 split file or folder not found: {path}")
    class_index = find_ucf101_class_index(chosen.parent)
    if class_index is None:
        raise FileNotFoundError(
            f"{chosen}: UCF101 split files need classInd.txt beside them, in {chosen.parent}"
        )
    return chosen, class_index


def read_ucf101_split(
    path: str | Path,
    split: int | None = None,
    subset: Literal["train", "test"] | None = None,
    root: str | Path | None = None,
    classes: list[str] | str | Path | None = None,
    drop_invalid: bool = False,
    check_files: bool = True,
) -> VideoList:
    """Read a UCF101 ``trainlist0N.txt`` or ``testlist0N.txt`` (``classInd.txt`` beside it).

    Args:
        path: a split file, or the ``ucfTrainTestlist/`` folder (then ``split`` and ``subset`` pick the file).
        split: split number 1-3 (default 1 for a folder; for a file, an error when it names another split).
        subset: ``train`` or ``test``, needed for a folder; a file says which it is.
        root: the ``UCF-101/`` folder (default: the folder holding ``path``).
        classes: class names in index order, or a classes file (default: ``classInd.txt``'s order).
        drop_invalid: drop bad lines (listed in ``dropped``) instead of raising.
        check_files: check that each video file exists.

    A line with a trailing integer is a train line (1-based label); any other line is a test line (a path).

    Raises:
        VideoListError: naming every invalid line, unless ``drop_invalid``.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    chosen, class_index = _split_file(path, split, subset)
    published = read_ucf101_class_index(class_index)
    names = _class_names(classes) or published
    index_of = {name.lower(): i for i, name in enumerate(names)}
    records: list[VideoRecord] = []
    problems: list[DroppedLine] = []
    missing = 0
    for number, raw in enumerate(chosen.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.rsplit(None, 1)
        # A trailing integer makes a train line (path, 1-based label); a test line is the path alone.
        train_line = len(fields) == 2 and fields[1].isdigit()
        video, label_text = (fields[0], fields[1]) if train_line else (text, None)
        parts = video.replace("\\", "/").split("/")
        folder = parts[0] if len(parts) > 1 else None
        if label_text is not None:
            label = int(label_text)
            if not 1 <= label <= len(published):
                reason = f"label {label} outside [1, {len(published)}] (UCF101 labels are 1-based)"
                problems.append(DroppedLine(number, text, reason))
                continue
            name = published[label - 1]
            if folder is not None and folder.lower() != name.lower():
                reason = f"label {label} is {name!r}, but the class folder is {folder!r}"
                problems.append(DroppedLine(number, text, reason))
                continue
        elif folder is None:
            reason = "malformed line (expected '<class>/<video> [label]': the class folder names the class)"
            problems.append(DroppedLine(number, text, reason))
            continue
        else:
            name = folder
        if name.lower() not in index_of:
            problems.append(DroppedLine(number, text, f"unknown class {name!r}"))
            continue
        full = video if os.path.isabs(video) else str(base / video)
        if check_files and not os.path.isfile(full):
            problems.append(DroppedLine(number, text, f"file not found: {full}"))
            missing += 1
            continue
        records.append(VideoRecord(full, index_of[name.lower()], number))
    hint = _root_hint(len(records), missing, base)
    _fail_or_drop(problems, chosen, drop_invalid, hint)
    if not records:
        raise _no_videos(chosen, problems, hint)
    return VideoList(records, names, problems, str(chosen), "ucf101")
