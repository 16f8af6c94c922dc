"""Labels of mirrored clips: for classes defined by left and right, a horizontal flip changes the class.

A flip label map file names pairs of classes that a horizontal flip swaps, one pair per line
(``swipe_left swipe_right``; whitespace or a comma between them, ``#`` starts a comment). Classes not
named keep their label when flipped. Names are the list's class names, or integer labels for lists that
use integers.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["read_flip_label_map"]


def read_flip_label_map(path: str | Path, classes: list[str]) -> list[int]:
    """The label of a flipped clip, per label, from the pairs in ``path``.

    Args:
        path: the pairs file (see the module docstring).
        classes: the dataset's class names in label order.

    Returns:
        A permutation of ``range(len(classes))`` that is its own inverse.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line without exactly two names, an unknown class (the line and the known names are
            given), or a class in two pairs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flip label map not found: {path}")
    index = {name: i for i, name in enumerate(classes)}
    mapping = list(range(len(classes)))
    paired: dict[int, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        names = [name for name in re.split(r"[\s,]+", text) if name]
        where = f"{path}:{number}"
        if len(names) != 2:
            raise ValueError(f"{where}: expected two class names that a flip swaps, got {text!r}")
        labels = []
        for name in names:
            if name not in index:
                known = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
                raise ValueError(f"{where}: unknown class {name!r}; the classes are: {known}")
            labels.append(index[name])
        for label in labels:
            if label in paired:
                raise ValueError(
                    f"{where}: class {classes[label]!r} is already paired on line {paired[label]}; "
                    "a flip swaps each class with one other"
                )
            paired[label] = number
        a, b = labels
        mapping[a], mapping[b] = b, a
    return mapping
