"""One entry point for every video-list format: ``path label`` lists, Kinetics annotation CSVs, UCF101 and
HMDB51 split files, with the format detected from the files when that is unambiguous.

Detection (``format="auto"``) looks at names and the first lines only, never at the videos:

- a folder holding ``classInd.txt`` and ``trainlist0N.txt``/``testlist0N.txt``: ``ucf101``;
- a folder holding ``<class>_test_split<N>.txt`` files: ``hmdb51``;
- a file named ``trainlist0N.txt``/``testlist0N.txt`` with ``classInd.txt`` beside it: ``ucf101``;
- a file whose first line is a header naming youtube_id, time_start and time_end: ``kinetics_csv``;
- a file whose first lines hold a path and a label: ``list``.

Anything else (a folder with both or neither kind of split files, a UCF101-named file without
``classInd.txt``, whose 1-based labels a plain list would shift by one, a file of bare paths) is an error
naming the formats and how to choose one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal, get_args

from chunkformer.data.hmdb51 import HMDB51_SPLIT_FILE, read_hmdb51_split
from chunkformer.data.kinetics_csv import is_kinetics_header, read_kinetics_csv
from chunkformer.data.ucf101 import UCF101_SPLIT_FILE, find_ucf101_class_index, read_ucf101_split
from chunkformer.data.video_list import VideoList, VideoListError, _split_path_label, read_video_list

__all__ = ["LIST_FORMATS", "ListFormat", "detect_list_format", "read_videos"]

ListFormat = Literal["auto", "list", "kinetics_csv", "ucf101", "hmdb51"]
"""A format name for ``read_videos``."""
LIST_FORMATS: tuple[str, ...] = get_args(ListFormat)
"""The values ``format`` accepts: ``auto`` and the four formats, in that order."""
_CHOOSE = (
    "pass format= one of 'list' (path label lines), 'kinetics_csv' (official Kinetics annotations), "
    "'ucf101' (trainlist0N/testlist0N.txt with classInd.txt), "
    "'hmdb51' (a folder of <class>_test_split<N>.txt) "
    "(--data.format on the command line)"
)
# Lines looked at to tell a `path label` list from a file of bare paths.
_SNIFF_LINES = 20


def _ambiguous(path: Path, why: str) -> VideoListError:
    return VideoListError(f"{path}: cannot tell the list format: {why}; {_CHOOSE}")


def detect_list_format(path: str | Path) -> str:
    """The format of ``path`` (one of ``LIST_FORMATS`` but ``auto``), from names and first lines.

    Raises:
        FileNotFoundError: no such file or folder.
        VideoListError: the format is ambiguous or unknown (the message says how to choose).
    """
    path = Path(path)
    if path.is_dir():
        names = [entry.name for entry in path.iterdir()]
        ucf = find_ucf101_class_index(path) is not None and any(UCF101_SPLIT_FILE.match(n) for n in names)
        hmdb = any(HMDB51_SPLIT_FILE.match(n) for n in names)
        if ucf and hmdb:
            raise _ambiguous(
                path,
                "the folder holds both UCF101 (classInd.txt, trainlist0N.txt) and HMDB51 "
                "(<class>_test_split<N>.txt) split files",
            )
        if ucf or hmdb:
            return "ucf101" if ucf else "hmdb51"
        raise _ambiguous(
            path,
            "the folder holds neither UCF101 nor HMDB51 split files (for "
            "<root>/<class>/<video> trees without lists, use --data.kind folders)",
        )
    if not path.is_file():
        raise FileNotFoundError(f"video list not found: {path}")
    if UCF101_SPLIT_FILE.match(path.name):
        if find_ucf101_class_index(path.parent) is not None:
            return "ucf101"
        raise _ambiguous(
            path,
            "it is named like a UCF101 split file but there is no classInd.txt beside it "
            "(read as a plain list, its 1-based labels would be off by one)",
        )
    if HMDB51_SPLIT_FILE.match(path.name):
        raise _ambiguous(
            path, f"it is named like an HMDB51 split file: pass the folder holding it, {path.parent}"
        )
    lines = []
    with path.open() as file:
        for raw in file:
            text = raw.strip()
            if text and not text.startswith("#"):
                lines.append(text)
                if len(lines) == _SNIFF_LINES:
                    break
    if not lines:
        raise VideoListError(f"{path}: no lines (blank lines and # comments aside)")
    if is_kinetics_header(next(csv.reader([lines[0]]))):
        return "kinetics_csv"
    # One line with a path and a label makes it a list; its other lines are validated when it is read.
    if any(_split_path_label(text, {}) is not None for text in lines):
        return "list"
    raise _ambiguous(path, f"its first lines hold one field each (paths without labels?), e.g. {lines[0]!r}")


def read_videos(
    path: str | Path,
    format: ListFormat = "auto",
    split: int | None = None,
    subset: Literal["train", "test"] | None = None,
    root: str | Path | None = None,
    classes: list[str] | str | Path | None = None,
    same_classes_as: VideoList | None = None,
    drop_invalid: bool = False,
    check_files: bool = True,
) -> VideoList:
    """Read and validate a video list in any supported format.

    Args:
        path: a ``path label`` list, a Kinetics annotation CSV, a UCF101 split file or ``ucfTrainTestlist/``
            folder, or an HMDB51 splits folder.
        format: one of ``LIST_FORMATS``; ``auto`` detects it (see ``detect_list_format``).
        split: UCF101/HMDB51 split number 1-3 (default 1; a UCF101 file names its own). Other formats
            have no splits: passing one is an error.
        subset: UCF101 folder / HMDB51: ``train`` or ``test``. A UCF101 file says which it is; the other
            formats ignore it.
        root: the folder videos are found in (default: the folder holding ``path``).
        classes: class names in index order, or a classes file (one name per line). Default per format:
            integers or a classes file (``list``), the file's sorted labels (``kinetics_csv``),
            ``classInd.txt`` (``ucf101``), the split files' class names (``hmdb51``).
        same_classes_as: a list read before, typically the training list. When ``classes`` is not given and
            the format takes its classes from the file's own labels (``kinetics_csv``), its classes are used,
            so a validation file that lacks a class still indexes like the training file.
        drop_invalid: drop invalid lines and missing videos (listed in ``dropped``) instead of raising.
        check_files: check that each video file exists (Kinetics: find it).

    Raises:
        VideoListError: an ambiguous format, or invalid lines (unless ``drop_invalid``), naming each.
        ValueError: an unknown format, or a split or subset a format cannot use.
    """
    if format not in LIST_FORMATS:
        raise ValueError(f"unknown list format {format!r}; expected one of {', '.join(LIST_FORMATS)}")
    chosen = detect_list_format(path) if format == "auto" else format
    if split is not None and chosen not in ("ucf101", "hmdb51"):
        raise ValueError(
            f"split={split} applies to UCF101 and HMDB51 split files; {path} is read as {chosen!r}"
        )
    if split is not None and split < 1:
        raise ValueError(f"split must be a split number (1-3 for UCF101 and HMDB51), got {split}")
    common = {"root": root, "drop_invalid": drop_invalid, "check_files": check_files}
    if chosen == "list":
        return read_video_list(path, classes=classes, **common)
    if chosen == "kinetics_csv":
        if classes is None and same_classes_as is not None:
            classes = list(same_classes_as.classes)
        return read_kinetics_csv(path, classes=classes, **common)
    reader = read_ucf101_split if chosen == "ucf101" else read_hmdb51_split
    return reader(path, split=split, subset=subset, classes=classes, **common)
