"""DDP on CPU: 2 gloo ranks started by torchrun against 1 process with the same global batch.

Tolerance: both runs see the same videos in each optimizer step (the sampler splits the step's global
batch across ranks) and the same clips (each sample is seeded by ``(seed, epoch, index)``), so they
compute the same sums in a different order: the 1-process run averages the loss over 4 clips in one
batch; the 2-rank run (with 2 accumulation micro-batches of 1 clip each) sums micro-batch gradients and
all-reduces the two ranks' gradients, and the matmuls see other batch shapes. Each of those differs by
float32 rounding (~1e-7 relative), and plain SGD (used here: Adam's g / sqrt(v) amplifies the rounding
of near-zero gradients to a full lr-sized step) keeps them at that size: measured 2e-7 on the losses and
6e-8 on the weights after 8 steps. The bounds, 1e-5 for losses and weights, are 50x that and still far
below the 1e-2 the loss moves per step, which a wrong batch split or a missing gradient all-reduce would
show. The multi-view metrics must match exactly (8 videos, sharded across ranks and gathered).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from chunkformer.engine import load_training_state, train
from tests.engine.tiny_run import tiny_config

pytest.importorskip("safetensors")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

_SCRIPT = Path(__file__).resolve().parent / "tiny_run.py"
_SGD = {"optim.optimizer": "sgd", "optim.lr": 0.05}


def _torchrun(
    root: Path, out: str, overrides: dict[str, Any], fault: dict[str, Any] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    spec = {"root": str(root), "out": out, "overrides": overrides, "fault": fault}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(_SCRIPT),
        json.dumps(spec),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(_SCRIPT.parents[2])}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _run_two(root: Path, out: str, overrides: dict[str, Any]) -> dict[str, Any]:
    process = _torchrun(root, out, overrides)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return json.loads((root / out / "result.json").read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict[str, Any]]:
    """The 1-process reference (batch 4) and the 2-rank run (2 ranks x 2 accumulation x 1 clip, with a
    loader worker per rank), both 8 SGD steps."""
    root = tmp_path_factory.mktemp("ddp")
    one = train(tiny_config(root, "one", **_SGD))
    two = _run_two(root, "two", {**_SGD, "optim.accum_steps": 2, "data.num_workers": 1})
    return root, one, two


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(
    runs: tuple[Path, Any, dict[str, Any]],
) -> None:
    from safetensors.torch import load_file

    root, one, two = runs
    assert len(one.step_losses) == len(two["step_losses"]) == 8
    assert two["step_losses"] == pytest.approx(one.step_losses, rel=1e-5, abs=1e-5)
    assert max(one.step_losses) - min(one.step_losses) > 1e-2  # the tolerance is far below the signal
    weights_one, weights_two = (
        load_file(root / "one" / "model.safetensors"),
        load_file(root / "two" / "model.safetensors"),
    )
    assert weights_one.keys() == weights_two.keys()
    assert max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one) < 1e-5
    # Multi-view evaluation is sharded across the ranks and gathered: every video exactly once.
    metrics = two["metrics"]
    assert metrics["num_videos"] == one.metrics.num_videos == 8 and metrics["num_unreadable"] == 0
    assert (metrics["top1"], metrics["top5"], metrics["mean_class"]) == (
        one.metrics.top1,
        one.metrics.top5,
        one.metrics.mean_class,
    )
    assert all(
        a == b or (math.isnan(a) and math.isnan(b))
        for a, b in zip(metrics["per_class"], one.metrics.per_class, strict=True)
    )
    # Only rank 0 writes: one row per step and per epoch, the same columns as the 1-process run.
    steps = _rows(root / "two" / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 9))
    assert [float(r["loss"]) for r in steps] == pytest.approx(two["step_losses"])
    assert [r["val_videos"] for r in _rows(root / "two" / "epochs.csv")] == ["", "8"]
    log = (root / "two" / "train.log").read_text()
    assert "world 2" in log and log.count("done in") == 1
    state = load_training_state(root / "two" / "ckpt-00000008.pt")
    assert len(state["rng"]) == 2  # every rank's RNG state


def test_two_rank_resume_continues_the_same_run(runs: tuple[Path, Any, dict[str, Any]]) -> None:
    root, _, two = runs
    overrides = {**_SGD, "optim.accum_steps": 2, "data.num_workers": 1}
    first = _run_two(root, "split", {**overrides, "run.max_steps": 3})  # stops mid-epoch 1
    assert first["step_losses"] == two["step_losses"][:3]
    resumed = _run_two(root, "split", {**overrides, "run.resume": True})
    assert resumed["step_losses"] == two["step_losses"][3:]
    assert resumed["metrics"] == two["metrics"]


@pytest.mark.parametrize("kind", ["stall", "die"])
def test_a_stalled_or_dead_rank_ends_the_run_with_an_error(tmp_path: Path, kind: str) -> None:
    # Rank 1 stops answering (sleeps 600 s) or exits after 4 samples (step 3 of 8): rank 0 waits in a
    # collective until dist_timeout_s (3 s) runs out, raises, and torchrun stops the run with an error.
    train(tiny_config(tmp_path, "warm", **{"optim.epochs": 1, "run.max_steps": 1}))  # generate the data here
    started = time.monotonic()
    process = _torchrun(
        tmp_path, "run", {"run.dist_timeout_s": 3.0}, fault={"rank": 1, "after": 4, "kind": kind}
    )
    elapsed = time.monotonic() - started
    output = process.stdout + process.stderr
    assert process.returncode != 0, output[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert not (tmp_path / "run" / "model.safetensors").exists()
    if kind == "stall":
        assert "Timed out" in output or "timeout" in output.lower(), output[-3000:]
