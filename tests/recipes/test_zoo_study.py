"""recipes/zoo_study.py end to end: the quick study over the zoo's tiny models, its results and resumption."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from chunkformer.engine.zoo_study import ZooStudyConfig, summarize
from tests.recipes.scripts import load_recipe

zoo_study = load_recipe("zoo_study")


def test_quick_study_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "study"
    models = ["sct_tiny", "video_swin_tiny"]
    summary = zoo_study.main(["--quick", "--out-dir", str(out), "--models", *models])
    assert [row["model"] for row in summary] == models
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(row["model"], row["seed"]) for row in rows] == [("sct_tiny", 0), ("video_swin_tiny", 0)]
    # The hard data by default: 16 classes x 1 validation video.
    assert all(row["num_videos"] == 16 and 0.0 <= row["top1"] <= 1.0 for row in rows)
    assert all(row["clips_per_s"] > 0 for row in rows)
    for row in summary:
        assert row["params"] > 0 and row["macs"] > 0 and math.isnan(row["top1_std"])  # one seed: no spread
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + 2 and "`video_swin_tiny`" in table and "(1.00x)" in table
    assert (out / "results.png").stat().st_size > 1000
    # Finished runs are read back, not rerun.
    stamp = (out / "sct_tiny" / "seed0" / "steps.csv").stat().st_mtime_ns
    zoo_study.main(["--quick", "--out-dir", str(out), "--models", "sct_tiny"])
    assert (out / "sct_tiny" / "seed0" / "steps.csv").stat().st_mtime_ns == stamp
    assert len((out / "runs.jsonl").read_text().splitlines()) == 2


def test_summary_is_over_seeds_per_model() -> None:
    rows = [
        {"model": "sct_tiny", "seed": 0, "top1": 0.5, "clips_per_s": 10.0, "seconds": 1.0},
        {"model": "sct_tiny", "seed": 1, "top1": 0.7, "clips_per_s": 20.0, "seconds": 3.0},
    ]
    (row,) = summarize(rows, ("sct_tiny", "nat_tiny"))  # a model without runs is left out
    assert row["top1_mean"] == pytest.approx(0.6) and row["top1_std"] == pytest.approx(0.1414, abs=1e-4)
    assert row["clips_per_s"] == pytest.approx(15.0) and row["seconds"] == pytest.approx(2.0)
    assert row["per_seed"] == [0.5, 0.7]


def test_unknown_model_is_an_error_naming_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown models.*registered:.*sct_tiny"):
        ZooStudyConfig(models=("sct_tiny", "swin"))
