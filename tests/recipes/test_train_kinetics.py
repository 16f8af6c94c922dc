"""recipes/train_kinetics.py: presets and overrides from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recipes.scripts import load_recipe

parse = load_recipe("train_kinetics").parse


def test_cli_presets_and_overrides() -> None:
    config = parse(["k400", "--optim.lr", "0.05", "--model.name", "sct_m"])
    assert (config.data.frame_rate, config.data.frame_stride, config.optim.warmup_epochs) == (5, 10, 2)
    assert config.optim.lr == 0.05 and config.global_batch() == 16  # section 4: SCT-M batch 16
    assert parse(["hmdb51"]).optim.label_smoothing == 0 and parse(["mit"]).model.dropout == 0.2
    assert parse([]).model.name == "sct_tiny"
    with pytest.raises(SystemExit):
        parse(["k400", "--optim.lr", "fast"])


def test_eval_only_writes_beside_the_checkpoint_not_into_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chunkformer.engine import train
    from tests.engine.tiny_run import tiny_config

    result = train(tiny_config(tmp_path, "run"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = tiny_config(tmp_path, "unused").data
    load_recipe("train_kinetics").main(
        ["--run.eval-only", "--run.checkpoint", str(result.weights), "--run.threads", "1",
         "--data.data-root", str(data.data_root), "--data.motion-train-per-class", "2",
         "--data.motion-val-per-class", "1", "--data.motion-frames", "10", "--data.motion-size", "16",
         "--data.num-workers", "0"]
    )  # fmt: skip
    assert list(work.iterdir()) == []
    assert (tmp_path / "run" / "predictions-model.csv").is_file()
    assert "eval " in (tmp_path / "run" / "train.log").read_text()


def test_help_shows_the_default_preset_and_folder_video_types(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    assert "(default: motion)" in text and "(required)" not in text
    with pytest.raises(SystemExit):
        parse(["motion", "--help"])
    assert ".avi" in capsys.readouterr().out.replace("\n", " ")
