"""``benchmarks/gpu_suite.sh OUT --smoke`` runs every step of the GPU suite on the CPU at toy sizes, so that
the suite cannot rot between GPU runs: each step must finish and write its table (about 100 s on 2 cores)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The recipe step needs the recipe's modules, the figures matplotlib, the steps bash and coreutils' timeout.
for module in ("av", "tyro", "tensorboard", "tqdm", "safetensors", "matplotlib"):
    pytest.importorskip(module)
if not shutil.which("bash") or not shutil.which("timeout"):
    pytest.skip("the suite is a bash script using coreutils' timeout", allow_module_level=True)

NUMBER = r"\d+(\.\d+)?"
# Measured rows of each table (not "failed:" rows), by file.
ROWS = [
    ("lsh_bf16.md", rf"\| 256 \| 1 \| chunkformer-sdpa \| {NUMBER} \|"),
    ("lsh_fp32.md", rf"\| 256 \| 2 \| chunkformer-triton \| {NUMBER} \|"),
    ("lsh_layer.md", rf"\| bf16 \| LSHAttention, 2 rounds \| sdpa \| {NUMBER} \|.*x \|"),
    ("lsh_layer.md", rf"\| fp32 \| LSHAttention, 2 rounds \| triton \| {NUMBER} \|.*x \|"),
    ("zoo_layers.md", rf"\| `NeighborhoodAttention3D` \| 1x7x7 neighbourhood \| {NUMBER} \| {NUMBER} \|"),
    (
        "zoo_layers.md",
        rf"\| `NeighborhoodAttention3D, rpb` \| 1x7x7 neighbourhood, relative position bias \| {NUMBER} \|",
    ),
    ("models_eager.md", rf"\| sct_tiny \| bf16 \| eager \| 2 \| {NUMBER}M \|"),
    ("models_checkpointing.md", r"\| sct_tiny \| bf16 \| eager, gradient checkpointing \| 2 \| \d"),
    ("models_triton.md", rf"\| sct_s \| bf16 \| eager, backend triton \| 1 \| {NUMBER}M \|"),
    # 8 steps, resumed from the checkpoint the kill left (the kill lands once step 2 is logged; on a busy
    # machine a few steps later), and the losses after it equal the uninterrupted run's.
    ("recipe_resume.md", r"\| bf16 \| 8 \| [1-7] \| [1-7] \| 0 \|"),
    # The targets, from the steps' JSON (toy sizes: the verdicts mean nothing, the rows must be there).
    (
        "targets.md",
        # Against the faster Reformer where the bench extra is installed; our time either way.
        rf"\| \(a\) L 256, 2 rounds: chunkformer-triton vs [^|]*, fwd\+bwd \| [^|]*{NUMBER} ms",
    ),
    (
        "targets.md",
        rf"\| \(b\) LSH layer \(triton\), 2 rounds / ChunkAttention, fwd\+bwd \| {NUMBER}x; block",
    ),
    ("targets.md", r"\| the suite's steps \| \d+ s \| <= 480 s \| met \|"),
]


def test_gpu_suite_smoke_mode_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name, row in ROWS:
        text = (out / name).read_text()
        assert re.search(row, text), f"{name} has no row matching {row!r}:\n{text}"
    for figure in ("lsh_bf16.png", "lsh_fp32.png"):
        assert (out / figure).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "## recipe_resume" in summary and "skipped" in summary
    timings = (out / "timings.txt").read_text()
    assert "exit 0" in timings and "exit 1" not in timings
