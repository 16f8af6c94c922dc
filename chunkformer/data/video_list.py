"""Video lists: Kinetics-style ``path label`` files (PySlowFast convention) and class-per-folder trees,
validated when they are read.

A list file has one video per line: a path (relative to ``root`` unless absolute) and a label, separated
by whitespace or by a comma, whatever the file's extension (PySlowFast's ``train.csv`` is separated by a
space). Paths may contain spaces: the label is the last field. The label is an integer class index, or a
class name when a classes file (one name per line, line order = index) is given. Blank lines and lines
starting with ``#`` are skipped. A missing file, an unknown label or a malformed line is an error naming
the line; with ``drop_invalid=True`` such lines are dropped instead and listed in ``VideoList.dropped``.

The published split files of Kinetics, UCF101 and HMDB51 have readers of their own
(``chunkformer.data.kinetics_csv``, ``chunkformer.data.ucf101``, ``chunkformer.data.hmdb51``);
``chunkformer.data.list_formats.read_videos`` picks one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DroppedLine",
    "VideoList",
    "VideoListError",
    "VideoRecord",
    "read_class_folders",
    "read_classes",
    "read_video_list",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


class VideoListError(ValueError):
    """A video list has invalid lines; the message names each (up to 20)."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a list.

    Attributes:
        path: the file.
        label: class index.
        line: 1-based line in the list file (0 for class-folder trees).
    """

    path: str
    label: int
    line: int = 0


@dataclass(frozen=True)
class DroppedLine:
    """A line left out by ``drop_invalid=True``: where, what it said, and why."""

    line: int
    text: str
    reason: str
    file: str = ""
    """The split file holding the line, when the source is a folder of them (HMDB51)."""


@dataclass
class VideoList:
    """The validated videos of a list and the class names.

    Attributes:
        records: the videos, in file order.
        classes: class names in index order (``str(i)`` names when the list used integers).
        dropped: lines left out with ``drop_invalid=True``.
        source: the list file or folder.
        format: how it was read: ``list``, ``kinetics_csv``, ``ucf101``, ``hmdb51`` or ``folders``.
    """

    records: list[VideoRecord]
    classes: list[str]
    dropped: list[DroppedLine] = field(default_factory=list)
    source: str = ""
    format: str = "list"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)


def read_classes(path: str | Path) -> list[str]:
    """Class names, one per non-empty line; duplicates are an error."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise VideoListError(f"{path}: class {name!r} is listed twice")
        seen.add(name)
    return names


def _class_names(classes: list[str] | str | Path | None) -> list[str] | None:
    """Class names given as a list or as a classes file; None when not given."""
    if isinstance(classes, (str, Path)):
        return read_classes(classes)
    return list(classes) if classes else None


def _fail_or_drop(
    problems: list[DroppedLine], source: str | Path, drop_invalid: bool, hint: str = ""
) -> None:
    """Raise naming up to 20 bad lines (and ``hint``), unless ``drop_invalid``."""
    if problems and not drop_invalid:
        shown = "\n".join(
            f"  {p.file + ' ' if p.file else ''}line {p.line}: {p.reason}: {p.text!r}" for p in problems[:20]
        )
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VideoListError(
            f"{source}: {len(problems)} invalid line(s) (pass drop_invalid=True to drop them):\n"
            f"{shown}{more}{hint}"
        )


def _root_hint(found: int, missing: int, root: str | Path) -> str:
    """A hint for when not one listed video exists: a wrong ``root`` is the usual cause."""
    if found or not missing:
        return ""
    return f"\nnot one listed video was found under {root}: pass root= (--data.root), the videos' folder"


def _no_videos(source: str | Path, problems: list[DroppedLine], hint: str = "") -> VideoListError:
    dropped = f" ({len(problems)} lines dropped)" if problems else ""
    return VideoListError(f"{source}: no valid videos{dropped}{hint}")


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _split_path_label(text: str, names: dict[str, int]) -> tuple[str, str] | None:
    """``(path, label)`` of a list line, or None when it has one field.

    The separator is decided per line: the last comma when what follows it is a label (an integer or a
    known class name), else the last whitespace. So ``b c.mp4,0``, ``a.mp4 0`` and ``x,y/a.mp4 0`` all
    split right, and a class name with spaces works after a comma.
    """
    candidates = []
    if "," in text:
        head, tail = (part.strip() for part in text.rsplit(",", 1))
        if head and tail:
            candidates.append((head, tail))
    fields = text.rsplit(None, 1)
    if len(fields) == 2:
        candidates.append((fields[0].strip(), fields[1].strip()))
    for head, tail in candidates:
        if _is_integer(tail) or tail in names:
            return head, tail
    # No candidate holds a valid label: report the one whose label is a single token ("a.mp4,jump" says
    # unknown class 'jump', not malformed).
    for head, tail in candidates:
        if not any(c.isspace() for c in tail):
            return head, tail
    return candidates[-1] if candidates else None


def read_video_list(
    path: str | Path,
    root: str | Path | None = None,
    classes: list[str] | str | Path | None = None,
    num_classes: int | None = None,
    drop_invalid: bool = False,
    check_files: bool = True,
) -> VideoList:
    """Read and validate a ``path label`` list.

    Args:
        path: the list file: ``path label`` lines separated by whitespace or a comma (decided per line,
            whatever the extension).
        root: directory relative paths are resolved against (default: the list's directory).
        classes: class names, or a classes file; needed when labels are names.
        num_classes: upper bound for integer labels (default: ``len(classes)`` when given, else
            1 + the largest label).
        drop_invalid: drop bad lines (recorded in ``dropped``) instead of raising.
        check_files: check that each video file exists.

    Raises:
        VideoListError: naming every invalid line, unless ``drop_invalid``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video list not found: {path}")
    base = Path(root) if root is not None else path.parent
    names = _class_names(classes)
    index_of = {name: i for i, name in enumerate(names)} if names else {}
    limit = num_classes if num_classes is not None else (len(names) if names else None)
    records: list[VideoRecord] = []
    problems: list[DroppedLine] = []
    missing = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields = _split_path_label(text, index_of)
        if fields is None:
            problems.append(DroppedLine(number, text, "malformed line (expected 'path label')"))
            continue
        video, label_text = fields
        if _is_integer(label_text):
            label = int(label_text)
            if label < 0 or (limit is not None and label >= limit):
                problems.append(DroppedLine(number, text, f"label {label} outside [0, {limit})"))
                continue
        elif label_text in index_of:
            label = index_of[label_text]
        else:
            reason = (
                f"unknown class {label_text!r}"
                if names
                else f"label {label_text!r} is not an integer (pass a classes file)"
            )
            problems.append(DroppedLine(number, text, reason))
            continue
        full = video if os.path.isabs(video) else str(base / video)
        if check_files and not os.path.isfile(full):
            problems.append(DroppedLine(number, text, f"file not found: {full}"))
            missing += 1
            continue
        records.append(VideoRecord(full, label, number))
    hint = _root_hint(len(records), missing, base)
    _fail_or_drop(problems, path, drop_invalid, hint)
    if not records:
        raise _no_videos(path, problems, hint)
    if names is None:
        count = limit if limit is not None else 1 + max(r.label for r in records)
        names = [str(i) for i in range(count)]
    return VideoList(records, names, problems, str(path), "list")


def read_class_folders(
    root: str | Path, classes: list[str] | None = None, extensions: tuple[str, ...] = VIDEO_EXTENSIONS
) -> VideoList:
    """Videos under ``root/<class name>/`` (any depth), classes in sorted folder order unless given.

    Raises:
        VideoListError: no class folders, an unknown folder when ``classes`` is given, or no videos.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"class folder root not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise VideoListError(f"{root}: no class folders")
    names = list(classes) if classes is not None else folders
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise VideoListError(f"{root}: folders {unknown} are not in the given classes")
    records = [
        VideoRecord(str(file), label)
        for label, name in enumerate(names)
        if (root / name).is_dir()
        for file in sorted((root / name).rglob("*"))
        if file.is_file() and file.suffix.lower() in extensions
    ]
    if not records:
        raise VideoListError(f"{root}: no video files with extensions {extensions}")
    return VideoList(records, names, [], str(root), "folders")
