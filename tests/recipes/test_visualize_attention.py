"""recipes/visualize_attention.py on a trained run and a video: the model, its class names and the clip
settings come from the run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkformer.engine import train
from tests.engine.tiny_run import tiny_config
from tests.recipes.scripts import load_recipe


def test_a_run_and_a_video_give_overlays_titled_with_the_prediction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    config = tiny_config(tmp_path, "run")
    train(config)
    capsys.readouterr()
    video = sorted((Path(config.data.data_root)).rglob("*.mp4"))[0]
    out = tmp_path / "maps"
    load_recipe("visualize_attention").main(
        ["--run", str(tmp_path / "run"), "--video", str(video), "--out", str(out)]
    )
    printed = capsys.readouterr().out
    classes = (tmp_path / "run" / "classes.txt").read_text().split()
    assert any(f"predicted: {name} (" in printed for name in classes)
    # 4 frames, as the run was trained with (the recipe's default is 8).
    expected = ["clip.png", *(f"frame_{t:02d}.png" for t in range(4))]
    assert sorted(p.name for p in out.glob("*.png")) == expected


def test_a_run_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no model.safetensors and no ckpt"):
        load_recipe("visualize_attention").main(["--run", str(tmp_path / "empty")])
