"""The GPU suite's targets, checked from its outputs: one table that says, per target, what was measured,
what the goal is, and whether it was met (and by how much it missed).

Targets (bf16, forward+backward, side by side in one run; ``docs/benchmarks.md``, "The GPU suite"):

* (a) LSH attention at every length the suite ran (16K and 64K on a GPU): at least 2x faster than the faster
  of reformer-pytorch and HF's Reformer, with at most 0.5x that peer's peak memory; at 4 rounds, at least
  25 % of the bf16 matmul peak (the benchmark's FLOP model). Ours is the row of the implementation automatic
  selection runs in bf16 on CUDA, ``chunkformer-triton`` (else ``chunkformer``); the block path's
  ``chunkformer-sdpa`` row is reported beside it.
* (b) SCT-S's LSH layer at most 2x a ``ChunkAttention`` layer over the same tokens, per round count, on the
  Triton kernels (the block path reported beside it).
* SCT-S's training step under ``torch.compile``: at least 30 % of the bf16 matmul peak.
* The suite: at most 480 s of steps (``timings.txt``).

A target whose measurement is missing (a failed or skipped step, the smoke mode's files) reads "not
measured". Usage::

    python benchmarks/gpu_targets.py OUT [--markdown-out OUT/targets.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SPEEDUP, MEMORY, LSH_SHARE, LAYER_RATIO, MODEL_SHARE, SUITE_S = 2.0, 0.5, 0.25, 2.0, 0.30, 480
PEERS = ("reformer-pytorch", "hf-reformer")
OURS = ("chunkformer-triton", "chunkformer")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _measured(rows: list[dict]) -> list[dict]:
    return [row for row in rows if "failed" not in row and row.get("fwd_bwd_s")]


def _verdict(value: float, goal: float, at_least: bool) -> str:
    met = value >= goal if at_least else value <= goal
    if met:
        return "met"
    return f"missed by {goal / value:.2f}x" if at_least else f"missed by {value / goal:.2f}x"


def lsh_rows(out: Path) -> list[tuple[str, str, str, str]]:
    """(target, measured, goal, verdict) rows of (a), from every ``lsh_bf16_<L>.json`` in ``out``."""
    files = sorted(out.glob("lsh_bf16_*.json"), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    if not files:
        return [("(a) LSH vs the faster Reformer", "not measured", f">= {SPEEDUP:g}x", "not measured")]
    rows = []
    for path in files:
        measured = _measured(json.loads(path.read_text())["rows"])
        for key in sorted({(row["length"], row["n_hashes"]) for row in measured}):
            cell = [row for row in measured if (row["length"], row["n_hashes"]) == key]
            where = f"L {key[0]}, {key[1]} round{'s' if key[1] > 1 else ''}"
            ours = next((row for impl in OURS for row in cell if row["impl"] == impl), None)
            peers = [row for row in cell if row["impl"] in PEERS]
            block = next((row for row in cell if row["impl"] == "chunkformer-sdpa"), None)
            if ours is None:
                rows.append((f"(a) {where}", "not measured", f">= {SPEEDUP:g}x", "not measured"))
                continue
            if not peers:
                rows.append(
                    (
                        f"(a) {where}: {ours['impl']} vs the faster Reformer, fwd+bwd",
                        f"ours {ours['fwd_bwd_s'] * 1e3:.2f} ms; no Reformer row (failed, or not installed)",
                        f">= {SPEEDUP:g}x",
                        "not measured",
                    )
                )
                continue
            peer = min(peers, key=lambda row: row["fwd_bwd_s"])
            speedup = peer["fwd_bwd_s"] / ours["fwd_bwd_s"]
            times = f"{ours['fwd_bwd_s'] * 1e3:.2f} vs {peer['fwd_bwd_s'] * 1e3:.2f} ms"
            beside = f"; block path {peer['fwd_bwd_s'] / block['fwd_bwd_s']:.2f}x" if block else ""
            rows.append(
                (
                    f"(a) {where}: {ours['impl']} vs {peer['impl']}, fwd+bwd",
                    f"{speedup:.2f}x faster ({times}{beside})",
                    f">= {SPEEDUP:g}x",
                    _verdict(speedup, SPEEDUP, at_least=True),
                )
            )
            memory = ours["peak_mb"] / max(peer["peak_mb"], 1e-9)
            rows.append(
                (
                    f"(a) {where}: peak memory vs {peer['impl']}",
                    f"{memory:.2f}x ({ours['peak_mb']:.0f} vs {peer['peak_mb']:.0f} MB)",
                    f"<= {MEMORY:g}x",
                    _verdict(memory, MEMORY, at_least=False),
                )
            )
            if key[1] == 4 and "matmul_share" in ours:
                share = ours["matmul_share"]
                rows.append(
                    (
                        f"(a) {where}: share of the bf16 matmul peak",
                        f"{share:.1%}",
                        f">= {LSH_SHARE:.0%}",
                        _verdict(share, LSH_SHARE, at_least=True),
                    )
                )
    return rows


def layer_rows(out: Path) -> list[tuple[str, str, str, str]]:
    """(b): the LSH layer on the Triton kernels over a ChunkAttention layer, bf16, per round count."""
    payload = _load(out / "lsh_layer.json")
    goal = f"<= {LAYER_RATIO:g}x"
    if payload is None:
        return [("(b) LSH layer / ChunkAttention", "not measured", goal, "not measured")]
    measured = [row for row in _measured(payload["rows"]) if row["dtype"] == "bf16"]
    chunk = next((row for row in measured if row["kind"] == "chunk"), None)
    rounds = sorted({row["n_hashes"] for row in measured if row["kind"] == "lsh"})
    if chunk is None or not rounds:
        return [("(b) LSH layer / ChunkAttention", "not measured", goal, "not measured")]
    rows = []
    for n_hashes in rounds:
        lsh = {
            row["backend"]: row for row in measured if row["kind"] == "lsh" and row["n_hashes"] == n_hashes
        }
        ours = lsh.get("triton") or lsh.get("auto")
        if ours is None:
            rows.append((f"(b) {n_hashes} rounds", "not measured", goal, "not measured"))
            continue
        ratio = ours["fwd_bwd_s"] / chunk["fwd_bwd_s"]
        block = lsh.get("sdpa")
        beside = f"; block path {block['fwd_bwd_s'] / chunk['fwd_bwd_s']:.2f}x" if block else ""
        rows.append(
            (
                f"(b) LSH layer ({ours['backend']}), {n_hashes} rounds / ChunkAttention, fwd+bwd",
                f"{ratio:.2f}x{beside}",
                goal,
                _verdict(ratio, LAYER_RATIO, at_least=False),
            )
        )
    return rows


def model_rows(out: Path) -> list[tuple[str, str, str, str]]:
    """SCT-S's training step under torch.compile: share of the bf16 peak."""
    payload = _load(out / "models_compile.json")
    goal = f">= {MODEL_SHARE:.0%}"
    row = None
    if payload is not None:
        row = next((r for r in payload["rows"] if r.get("model") == "sct_s" and "matmul_share" in r), None)
    if row is None:
        return [
            (
                "SCT-S training step, torch.compile, share of the bf16 peak",
                "not measured",
                goal,
                "not measured",
            )
        ]
    share = row["matmul_share"]
    return [
        (
            "SCT-S training step, torch.compile, share of the bf16 peak",
            f"{share:.1%} ({row['batch'] / row['step_s']:.2f} clips/s)",
            goal,
            _verdict(share, MODEL_SHARE, at_least=True),
        )
    ]


def suite_rows(out: Path) -> list[tuple[str, str, str, str]]:
    """The steps' seconds from ``timings.txt`` (wheels and figures are outside them)."""
    path = out / "timings.txt"
    seconds = (
        [int(m.group(1)) for m in re.finditer(r": (\d+) s of \d+ s", path.read_text())]
        if path.is_file()
        else []
    )
    if not seconds:
        return [("the suite's steps", "not measured", f"<= {SUITE_S} s", "not measured")]
    total = sum(seconds)
    return [("the suite's steps", f"{total} s", f"<= {SUITE_S} s", _verdict(total, SUITE_S, at_least=False))]


def targets_table(out: Path) -> str:
    rows = lsh_rows(out) + layer_rows(out) + model_rows(out) + suite_rows(out)
    lines = ["| target | measured | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the GPU suite's output folder")
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args(argv)
    table = targets_table(args.out)
    print(table)
    if args.markdown_out is not None:
        args.markdown_out.write_text(table + "\n")


if __name__ == "__main__":
    main()
