"""recipes/train_kinetics.py: presets and overrides from the command line."""

from __future__ import annotations

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
