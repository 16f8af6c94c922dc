"""The engine as a library: its parts make the same run as :func:`train`, checkpoints of earlier versions
resume, and the recipe is a plain script over the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chunkformer.engine import (
    DistContext,
    RunLogs,
    TrainState,
    atomic_save,
    build_model,
    end_epoch,
    load_training_state,
    prepare_run,
    train,
    train_one_epoch,
)
from tests.engine.tiny_run import tiny_config

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "train_kinetics.py"


def test_the_parts_make_the_same_run_as_train(tmp_path: Path) -> None:
    whole = train(tiny_config(tmp_path, "whole"))
    config = tiny_config(tmp_path, "parts")
    run = prepare_run(config, DistContext(), torch.device("cpu"))
    state, logs = TrainState(), RunLogs(run.out_dir, run.ctx, resume_step=None)
    metrics = None
    while state.epoch < config.optim.epochs:
        stats, _ = train_one_epoch(run, state, logs)
        metrics, checkpoint = end_epoch(run, state, logs, stats)
    logs.close()
    assert run.step_losses == whole.step_losses and len(run.step_losses) == 8
    assert metrics is not None and whole.metrics is not None and metrics.top1 == whole.metrics.top1
    assert checkpoint is not None and checkpoint.name == "ckpt-00000008.pt"
    weights = load_training_state(checkpoint)["model"]
    expected = load_training_state(whole.checkpoint)["model"]
    assert all(torch.equal(weights[key], value) for key, value in expected.items())


def test_a_checkpoint_of_the_recipe_scripts_resumes(tmp_path: Path) -> None:
    # Before the engine was a package: the motion preset named the recipes' sct_tiny module, scheduler
    # states held no schedule, and checkpoints had no epoch_progress.
    full = train(tiny_config(tmp_path, "full"))
    first = train(tiny_config(tmp_path, "old", **{"run.max_steps": 3}))
    (path,) = Path(first.out_dir).glob("ckpt-*.pt")
    state = load_training_state(path)
    state["scheduler"]["lr_lambdas"] = [None]
    del state["epoch_progress"]
    state["config"]["model"]["import_module"] = "sct_tiny"
    atomic_save(state, path)
    resumed = train(tiny_config(tmp_path, "old", **{"run.resume": True, "model.import_module": "sct_tiny"}))
    assert resumed.step_losses == full.step_losses[3:]
    assert "model.import_module 'sct_tiny' is not needed" in (Path(first.out_dir) / "train.log").read_text()


def test_an_unknown_model_names_the_registered_ones(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "x", **{"model.name": "sct_huge"})
    with pytest.raises(ValueError, match=r"unknown model 'sct_huge'; available: .*sct_tiny"):
        build_model(config, 8)


def test_the_recipe_runs_from_any_directory(tmp_path: Path) -> None:
    # No sys.path edits: the script imports only the installed package.
    env = {**os.environ, "PYTHONPATH": str(RECIPE.parents[1])}
    result = subprocess.run(
        [sys.executable, str(RECIPE), "motion", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "--optim.lr" in result.stdout and "--model.import-module" in result.stdout
