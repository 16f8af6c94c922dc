"""The code blocks of docs/zoo.md run, so the page's examples cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "zoo.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index: int) -> None:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(index)
        exec(compile(BLOCKS[index], f"docs/zoo.md block {index}", "exec"), {})


def test_receptive_field_pictures_match_the_layers(tmp_path: Path) -> None:
    """The page's pictures come from docs/img/zoo/make_receptive_fields.py: the tokens it finds reaching the
    query are the ones each layer's definition gives (the counts the page's table states)."""
    pytest.importorskip("matplotlib")
    import importlib.util

    script = PAGE.parent / "img" / "zoo" / "make_receptive_fields.py"
    spec = importlib.util.spec_from_file_location("make_receptive_fields", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reached = module.main(["--out-dir", str(tmp_path)])
    assert {name: count for name, count in reached.items() if name != "LSHAttention"} == {
        "ChunkAttention": 4 * 4,
        "ShiftedAttention": 2 * 8 * 8,  # its frame and the previous one
        "DividedSpaceTimeAttention": 4 * 8 * 8,
        "FactorizedSelfAttention": 4 * 8 * 8,
        "WindowAttention3D": 16,  # the masked part of a 2 x 4 x 4 window
        "NeighborhoodAttention3D": 3 * 5 * 5,
    }
    assert 0 < reached["LSHAttention"] <= 8 * 8  # its own frame only
    assert len(list(tmp_path.glob("*.png"))) == len(reached)
