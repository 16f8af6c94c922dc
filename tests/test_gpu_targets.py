"""``benchmarks/gpu_targets.py`` reads the GPU suite's JSON and says, per target, met or missed by how much.

Checked on hand-made outputs whose verdicts are known: a speedup of 2.5x meets ">= 2x" and one of 1.6x
misses it by 1.25x; memory, the 4-round share, the layer ratio, the compiled model's share and the suite's
seconds likewise; absent files read "not measured". The smoke test checks the table of a real (CPU) run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_targets", ROOT / "benchmarks" / "gpu_targets.py")
assert spec is not None and spec.loader is not None
gpu_targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_targets)


def lsh_row(impl: str, n_hashes: int, fwd_bwd_ms: float, peak_mb: float, share: float = 0.1) -> dict:
    return {
        "impl": impl,
        "length": 16384,
        "n_hashes": n_hashes,
        "forward_s": fwd_bwd_ms / 3e3,
        "fwd_bwd_s": fwd_bwd_ms / 1e3,
        "peak_mb": peak_mb,
        "matmul_share": share,
    }


def write(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    rows = [
        # 1 round: ours 2.5x faster than the faster peer (hf 10 ms), a third of its memory.
        lsh_row("chunkformer-triton", 1, 4.0, 100),
        lsh_row("chunkformer-sdpa", 1, 8.0, 400),
        lsh_row("reformer-pytorch", 1, 12.0, 900),
        lsh_row("hf-reformer", 1, 10.0, 300),
        # 4 rounds: 1.6x faster, 0.6x the memory, 20 % of the peak.
        lsh_row("chunkformer-triton", 4, 25.0, 600, share=0.20),
        lsh_row("reformer-pytorch", 4, 40.0, 1000),
        {"impl": "hf-reformer", "length": 16384, "n_hashes": 4, "failed": "out of memory"},
    ]
    write(tmp_path / "lsh_bf16_16384.json", {"peak_gflops": 1e6, "rows": rows})
    layer = [
        {"kind": "chunk", "n_hashes": None, "dtype": "bf16", "backend": "auto", "fwd_bwd_s": 0.010},
        {"kind": "lsh", "n_hashes": 1, "dtype": "bf16", "backend": "sdpa", "fwd_bwd_s": 0.030},
        {"kind": "lsh", "n_hashes": 1, "dtype": "bf16", "backend": "triton", "fwd_bwd_s": 0.015},
        {"kind": "lsh", "n_hashes": 4, "dtype": "bf16", "backend": "triton", "fwd_bwd_s": 0.050},
        {"kind": "lsh", "n_hashes": 1, "dtype": "fp32", "backend": "triton", "fwd_bwd_s": 9.0},
    ]
    write(tmp_path / "lsh_layer.json", {"peak_gflops": 1e6, "rows": layer})
    model = {"model": "sct_s", "batch": 4, "step_s": 0.5, "matmul_share": 0.36}
    write(tmp_path / "models_compile.json", {"peak_gflops": 1e6, "rows": [model]})
    (tmp_path / "timings.txt").write_text(
        "environment: 4 s of 10 s, exit 0\ntests: 500 s of 70 s, exit 124\n"
    )
    return tmp_path


def verdicts(out: Path) -> dict[str, tuple[str, str]]:
    lines = gpu_targets.targets_table(out).splitlines()[2:]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {target: (measured, verdict) for target, measured, _, verdict in cells}


def test_verdicts_of_known_outputs(out: Path) -> None:
    found = verdicts(out)
    one = "(a) L 16384, 1 round: chunkformer-triton vs hf-reformer, fwd+bwd"
    assert found[one] == ("2.50x faster (4.00 vs 10.00 ms; block path 1.25x)", "met")
    assert found["(a) L 16384, 1 round: peak memory vs hf-reformer"] == ("0.33x (100 vs 300 MB)", "met")
    four = "(a) L 16384, 4 rounds: chunkformer-triton vs reformer-pytorch, fwd+bwd"
    assert found[four] == ("1.60x faster (25.00 vs 40.00 ms)", "missed by 1.25x")
    assert found["(a) L 16384, 4 rounds: peak memory vs reformer-pytorch"][1] == "missed by 1.20x"
    assert found["(a) L 16384, 4 rounds: share of the bf16 matmul peak"] == ("20.0%", "missed by 1.25x")
    assert found["(b) LSH layer (triton), 1 rounds / ChunkAttention, fwd+bwd"] == (
        "1.50x; block path 3.00x",
        "met",
    )
    assert found["(b) LSH layer (triton), 4 rounds / ChunkAttention, fwd+bwd"] == ("5.00x", "missed by 2.50x")
    share = found["SCT-S training step, torch.compile, share of the bf16 peak"]
    assert share == ("36.0% (8.00 clips/s)", "met")
    assert found["the suite's steps"] == ("504 s", "missed by 1.05x")


def test_without_the_peers_ours_is_reported_and_not_judged(tmp_path: Path) -> None:
    rows = [lsh_row("chunkformer-triton", 1, 4.0, 100)]
    rows.append({"impl": "reformer-pytorch", "length": 16384, "n_hashes": 1, "failed": "not installed"})
    write(tmp_path / "lsh_bf16_16384.json", {"peak_gflops": 1e6, "rows": rows})
    found = verdicts(tmp_path)
    row = found["(a) L 16384, 1 round: chunkformer-triton vs the faster Reformer, fwd+bwd"]
    assert row == ("ours 4.00 ms; no Reformer row (failed, or not installed)", "not measured")


def test_missing_outputs_read_not_measured(tmp_path: Path) -> None:
    found = verdicts(tmp_path)
    assert len(found) == 4
    assert all(verdict == "not measured" for _, verdict in found.values())
