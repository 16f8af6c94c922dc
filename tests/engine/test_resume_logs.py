"""A run interrupted anywhere and resumed ends with the same weights, optimizer state, best checkpoint and
logs as an uninterrupted one (wall-clock columns aside)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import chunkformer.engine.loop as loop
from chunkformer.engine import load_training_state, train
from tests.engine.tiny_run import tiny_config

# Columns that measure time, which no two runs share.
WALL_CLOCK = {"data_wait_share", "clips_per_s", "seconds"}


def _config(tmp_path: Path, out: str, **run: object):
    # Evaluation after every epoch and a checkpoint every 3 steps (epochs are 4 steps), so runs can stop
    # mid-epoch, at an epoch end and in an evaluation, and always have a checkpoint to resume from.
    overrides = {"run.eval_every": 1, "run.save_every_steps": 3, "run.keep_last": 10, "optim.epochs": 3}
    return tiny_config(tmp_path, out, **overrides, **{f"run.{name}": value for name, value in run.items()})


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(file)]


def _final_state(out: Path) -> dict:
    return load_training_state(max(out.glob("ckpt-*.pt")))


def _assert_same_run(out: Path, reference: Path) -> None:
    for name in ("epochs.csv", "steps.csv"):
        assert _rows(out / name) == _rows(reference / name), f"{name} differs"
    got, want = _final_state(out), _final_state(reference)
    assert got["step"] == want["step"]
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), f"weight {key} differs"
    for (key, state), (_, expected) in zip(
        got["optimizer"]["state"].items(), want["optimizer"]["state"].items(), strict=True
    ):
        for name, tensor in expected.items():
            assert torch.equal(state[name], tensor), f"optimizer state {key}.{name} differs"
    best, best_want = load_training_state(out / "best.pt"), load_training_state(reference / "best.pt")
    assert best["step"] == best_want["step"]
    assert all(torch.equal(best["model"][k], v) for k, v in best_want["model"].items()), "best.pt differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    return train(_config(root, "full")).out_dir


@pytest.mark.parametrize(
    "stop_at", [2, 5, 4, 8], ids=["mid-epoch-1", "mid-epoch-2", "epoch-end-1", "epoch-end-2"]
)
def test_resumed_at_a_step_gives_the_same_run(tmp_path: Path, uninterrupted: Path, stop_at: int) -> None:
    first = train(_config(tmp_path, "split", max_steps=stop_at))
    assert first.step_losses and len(first.step_losses) == stop_at
    train(_config(tmp_path, "split", resume=True))
    _assert_same_run(tmp_path / "split", uninterrupted)


def test_killed_during_evaluation_resumes_to_the_same_run(
    tmp_path: Path, uninterrupted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop.evaluate
    calls = [0]

    def dies_in_the_second_evaluation(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt("killed during evaluation")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", dies_in_the_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "split"))
    # Killed at the end of epoch 2 (step 8): its steps were logged, its checkpoint not written.
    assert int(_rows(tmp_path / "split" / "steps.csv")[-1]["step"]) == 8
    monkeypatch.setattr(loop, "evaluate", real)
    train(_config(tmp_path, "split", resume=True))
    _assert_same_run(tmp_path / "split", uninterrupted)
