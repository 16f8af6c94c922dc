"""Flip label maps: the pairs file's parser, and a flipped training clip's label going through the map."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkformer.data import read_flip_label_map

CLASSES = ["swipe_left", "swipe_right", "wave", "turn_left", "turn_right"]


def test_pairs_swap_and_other_classes_keep_their_label(tmp_path: Path) -> None:
    path = tmp_path / "flips.txt"
    path.write_text("# pairs a flip swaps\nswipe_left swipe_right\n\nturn_right,turn_left  # either order\n")
    mapping = read_flip_label_map(path, CLASSES)
    assert mapping == [1, 0, 2, 4, 3]
    assert [mapping[m] for m in mapping] == list(range(len(CLASSES)))  # its own inverse


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("swipe_left\n", r"flips.txt:1: expected two class names"),
        ("swipe_left swipe_right wave\n", r"flips.txt:1: expected two class names"),
        ("wave\nswipe_left swipe_up\n", r"flips.txt:1: expected two"),
        ("swipe_left swipe_up\n", r"flips.txt:1: unknown class 'swipe_up'; the classes are: swipe_left, "),
        (
            "swipe_left swipe_right\nswipe_right wave\n",
            r"flips.txt:2: class 'swipe_right' is already paired on line 1",
        ),
    ],
)
def test_bad_files_name_the_line_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "flips.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_flip_label_map(path, CLASSES)
    with pytest.raises(FileNotFoundError, match="flip label map not found"):
        read_flip_label_map(tmp_path / "missing.txt", CLASSES)
