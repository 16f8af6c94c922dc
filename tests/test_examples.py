"""The runnable examples still run and still learn.

``docs/layers.md`` embeds ``examples/tiny_video_transformer.py`` verbatim, so this test is also what keeps the
documented example from rotting.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_video_transformer.py"


def _load_example() -> ModuleType:
    """Import the example script as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tiny_video_transformer", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load_example()


def test_moving_squares_is_deterministic_and_well_formed(example: ModuleType) -> None:
    clips, labels = example.moving_squares(16, torch.Generator().manual_seed(3), frames=4)
    again, labels_again = example.moving_squares(16, torch.Generator().manual_seed(3), frames=4)
    assert clips.shape == (16, 3, 4, 32, 32)
    assert labels.shape == (16,) and labels.min() >= 0 and labels.max() < len(example.DIRECTIONS)
    torch.testing.assert_close(clips, again)
    assert torch.equal(labels, labels_again)
    with pytest.raises(ValueError, match="do not fit"):
        example.moving_squares(2, torch.Generator(), frames=6)  # the fastest square would leave the frame


@pytest.mark.parametrize("label", range(4))
def test_square_moves_in_the_labelled_direction(example: ModuleType, label: int) -> None:
    """The brightest pixels' centre moves along the labelled direction every frame, and stays in the frame."""
    generator = torch.Generator().manual_seed(label)
    while True:  # draw until we get a clip of this label; labels are uniform, so this ends quickly
        clips, labels = example.moving_squares(8, generator, noise=0.0)
        if (labels == label).any():
            clip = clips[int((labels == label).nonzero()[0])]
            break
    mask = clip.sum(0) > 0  # (T, H, W): noise is off, so only the square is lit
    assert all(mask[t].sum() == 8 * 8 for t in range(mask.shape[0])), "the square left the frame"
    coords = torch.stack([torch.nonzero(mask[t]).float().mean(0) for t in range(mask.shape[0])])
    steps = coords[1:] - coords[:-1]  # (T - 1, 2): (dy, dx) per frame
    expected = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}[label]
    for axis in range(2):
        if expected[axis] == 0:
            assert torch.all(steps[:, axis] == 0)
        else:
            assert torch.all(steps[:, axis] * expected[axis] >= 3)


def test_tiny_video_transformer_learns(example: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    """A short run must clearly beat chance (0.25) on held-out clips and lower the training loss.

    With seed 0 the model leaves chance after about 40 steps, so 150 steps leave a wide margin. When the
    threshold was chosen, 11 of seeds 0-11 reached >= 0.9 held-out accuracy at 150 steps; seed 9 sits at
    chance longer (it needs about 300 steps), which is why the seed is fixed.
    """
    accuracy = example.main(["--steps", "150", "--batch-size", "32", "--seed", "0", "--eval-size", "256"])
    logged = [float(loss) for loss in re.findall(r"loss (\d+\.\d+)", capsys.readouterr().out)]
    assert len(logged) >= 2
    assert logged[-1] < 0.5 * logged[0], f"training loss did not fall: {logged}"
    assert accuracy >= 0.7, f"held-out accuracy {accuracy:.3f} is too close to chance (0.25)"
