"""recipes/zoo_study.py end to end: the quick study over the zoo's tiny models, its results and resumption."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from chunkformer.engine.zoo_study import ZooStudyConfig, best_lr, load_runs, summarize
from chunkformer.models import create_model
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


def test_tuning_picks_each_models_rate_on_its_own_seed_then_runs_the_seeds_at_it(tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = ["--quick", "--out-dir", str(out), "--models", "sct_tiny", "--tune-lrs", "1e-3", "2e-3"]
    (summary,) = zoo_study.main(args)
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    tuning = [row for row in rows if row["phase"] == "tune"]
    assert sorted((row["seed"], row["lr"]) for row in tuning) == [(1000, 1e-3), (1000, 2e-3)]
    assert (out / "tune" / "sct_tiny" / "lr0.002" / "seed1000" / "epochs.csv").is_file()
    chosen = best_lr(rows, "sct_tiny", (1e-3, 2e-3), 1000)
    (reported,) = [row for row in rows if row["phase"] == "eval"]
    assert reported["seed"] == 0 and reported["lr"] == chosen == summary["lr"]
    assert f"| {chosen:g} |" in (out / "results.md").read_text().split("Learning rates")[1]


def test_best_lr_ranks_by_top1_then_validation_loss_then_rate() -> None:
    def row(lr: float, top1: float, nll: float) -> dict[str, object]:
        return {"model": "m", "seed": 7, "lr": lr, "top1": top1, "nll": nll}

    assert best_lr([row(1.0, 0.5, 1.0), row(2.0, 0.9, 3.0)], "m", (1.0, 2.0), 7) == 2.0
    assert best_lr([row(1.0, 0.9, 1.0), row(2.0, 0.9, 0.5)], "m", (1.0, 2.0), 7) == 2.0
    assert best_lr([row(1.0, 0.9, math.nan), row(2.0, 0.9, 0.5)], "m", (1.0, 2.0), 7) == 2.0
    assert best_lr([row(1.0, 0.9, 0.5), row(2.0, 0.9, 0.5)], "m", (1.0, 2.0), 7) == 1.0
    assert best_lr([row(1.0, 0.9, 0.5)], "m", (1.0, 2.0), 7) is None  # 2.0 has not run
    assert best_lr([row(1.0, 0.9, 0.5), row(2.0, 1.0, 0.1)], "m", (1.0, 2.0), 8) is None  # other seed


def test_tuning_seed_must_not_be_a_reported_seed() -> None:
    with pytest.raises(ValueError, match="tune_seed must not be a reported seed"):
        ZooStudyConfig(seeds=3, tune_lrs=(1e-3,), tune_seed=2)
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        ZooStudyConfig(tune_lrs=(1e-3, 0.0))


def test_runs_of_a_model_whose_definition_changed_are_not_reused(tmp_path: Path) -> None:
    study = ZooStudyConfig(models=("sct_tiny",), out_dir=str(tmp_path), epochs=12)
    settings = {"data": "hard", "epochs": 12, "train_per_class": 64, "val_per_class": 16}
    row = {"model": "sct_tiny", "seed": 0, "lr": 1e-3, "top1": 0.5, **settings}
    params = sum(p.numel() for p in create_model("sct_tiny", num_classes=16, num_frames=8).parameters())
    lines = [{**row, "params": params + 1}, {**row, "seed": 1, "params": params}]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [run["seed"] for run in load_runs(study)] == [1]
