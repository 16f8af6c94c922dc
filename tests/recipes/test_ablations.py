"""recipes/ablations.py end to end: the quick study, its results and its resumption."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.recipes.scripts import load_recipe

ablations = load_recipe("ablations")


def test_quick_study_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "study"
    summary = ablations.main(
        [
            "--quick",
            "--jobs",
            "2",
            "--out-dir",
            str(out),
            "--variants",
            "reference",
            "standard_msa",
            "vit_patch8",
        ]
    )
    assert [row["variant"] for row in summary] == ["reference", "standard_msa", "vit_patch8"]
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((row["variant"], row["seed"]) for row in rows) == [
        ("reference", 0),
        ("standard_msa", 0),
        ("vit_patch8", 0),
    ]
    assert all(row["num_videos"] == 8 and 0.0 <= row["top1"] <= 1.0 for row in rows)  # 8 classes x 1 video
    for row in summary:
        assert row["params"] > 0 and row["macs"] > 0 and math.isnan(row["top1_std"])  # one seed: no spread
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + 3 and "`vit_patch8`" in table
    assert (out / "results.png").stat().st_size > 1000
    # Finished runs are read back, not rerun: the log of a run is not rewritten.
    stamp = (out / "reference" / "seed0" / "steps.csv").stat().st_mtime_ns
    ablations.main(["--quick", "--out-dir", str(out), "--variants", "reference"])
    assert (out / "reference" / "seed0" / "steps.csv").stat().st_mtime_ns == stamp
    assert len((out / "runs.jsonl").read_text().splitlines()) == 3
    # Runs with other settings are not reused: another learning rate trains again, and its summary holds
    # only its own runs.
    (again,) = ablations.main(["--quick", "--out-dir", str(out), "--variants", "reference", "--lr", "5e-4"])
    assert (out / "reference" / "seed0" / "steps.csv").stat().st_mtime_ns != stamp
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == [1e-3, 1e-3, 1e-3, 5e-4]
    assert again["per_seed"] == [rows[-1]["top1"]]


def test_quick_study_on_the_hard_data(tmp_path: Path) -> None:
    (row,) = ablations.main(
        ["--quick", "--jobs", "1", "--data", "hard", "--out-dir", str(tmp_path), "--variants", "reference"]
    )
    assert row["variant"] == "reference"
    (run,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert run["num_videos"] == 16  # 16 classes x 1 video
    assert (tmp_path / "data" / "hard-2-1-seed0" / "classes.txt").read_text().split()[-1] == "upleft_fast"
