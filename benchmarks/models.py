"""SCT-S/M/L and a ViT-B/16 frame encoder (Table 4's comparison): time, peak memory and matmul share per clip.

Every (model, precision) cell runs in a fresh subprocess, so peak memory is that cell's own (growth of the
resident memory over its value once the model and input exist, sampled every 0.5 ms; see
``benchmarks/lsh_attention.py``). Batch 1 (one clip), CPU.

* ``forward``: eval mode, ``torch.no_grad``; ``fwd+bwd``: train mode (fresh LSH rotations each call), loss
  ``logits.sum()``. ``bf16`` runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
* Matmul share: all MACs (``python -m chunkformer.models.stats`` convention: Linear layers, attention
  matmuls and LSH hashing, counted on the meta device at this clip size and hash count) x 2 FLOPs, x 3
  for fwd+bwd, divided by the time and by this machine's fp32 GEMM peak measured in the same run.
* ``vit_b16_sct``: patch 16 Linear embedding + 12 pre-norm 768-wide MSA blocks (our ``Attention`` via
  ``ChunkAttention`` with one 14 x 14 chunk per 224 frame), then the same shifted MSA and clip encoder.

Usage::

    python benchmarks/models.py --frames 8 --img-size 224 --repeats 3 --markdown-out models.md
    python benchmarks/models.py --frames 2 --img-size 64 --repeats 1        # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import PeakRSS, cpu_name, matmul_peak_gflops, write_outputs

MODELS = ("sct_s", "sct_m", "sct_l", "vit_b16_sct")
PRECISIONS = ("fp32", "bf16")


def _cell(name: str, precision: str, frames: int, img_size: int, repeats: int, threads: int) -> dict:
    import contextlib

    import torch

    from chunkformer.models import create_model
    from chunkformer.models.stats import count

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, num_classes=400, num_frames=frames)
    clip = torch.randn(1, 3, frames, img_size, img_size)
    macs = count(name, frames=frames, img_size=img_size, n_hashes=model.config.lsh_n_hashes).all_macs

    def autocast():
        if precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            model(clip)

    def forward_backward() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = model(clip).float().sum()
        loss.backward()

    with PeakRSS() as memory:
        forward_backward()
    peak_mb = memory.peak_mb
    times = {"forward": [], "fwd_bwd": []}
    for _ in range(repeats):
        for label, run in (("forward", forward), ("fwd_bwd", forward_backward)):
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {
        "model": name,
        "precision": precision,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gmacs": macs / 1e9,
        "forward_s": statistics.median(times["forward"]),
        "fwd_bwd_s": statistics.median(times["fwd_bwd"]),
        "peak_mb": peak_mb,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.cell:
        name, precision = args.cell.split(":")
        print(json.dumps(_cell(name, precision, args.frames, args.img_size, args.repeats, args.threads)))
        return

    import torch

    peak = matmul_peak_gflops(args.threads)
    rows = []
    for name in args.models:
        for precision in args.precisions:
            command = [
                sys.executable,
                __file__,
                "--cell",
                f"{name}:{precision}",
                "--frames",
                str(args.frames),
                "--img-size",
                str(args.img_size),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["?"])[-1]
                    rows.append({"model": name, "precision": precision, "failed": last[:160]})
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                rows.append({"model": name, "precision": precision, "failed": f"timeout {args.timeout}s"})
            print(rows[-1], file=sys.stderr, flush=True)

    lines = [
        f"Machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; "
        f"fp32 GEMM peak measured {peak:.1f} GFLOP/s. One clip 1 x 3 x {args.frames} x {args.img_size} x "
        f"{args.img_size}.",
        f"Command: `python benchmarks/models.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| model | precision | params | all GMACs | forward (s) | fwd+bwd (s) | peak MB (fwd+bwd) "
        "| share of fp32 peak (fwd / fwd+bwd) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['model']} | {row['precision']} | failed: {row['failed']} | | | | | |")
            continue
        flops = 2 * row["gmacs"] * 1e9
        share_fwd = flops / row["forward_s"] / (peak * 1e9)
        share_both = 3 * flops / row["fwd_bwd_s"] / (peak * 1e9)
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['params_m']:.2f}M | {row['gmacs']:.1f} | "
            f"{row['forward_s']:.3f} | {row['fwd_bwd_s']:.3f} | {row['peak_mb']:.0f} | "
            f"{share_fwd:.0%} / {share_both:.0%} |"
        )
    write_outputs("\n".join(lines), args.markdown_out, args.json_out, {"peak_gflops": peak, "rows": rows})


if __name__ == "__main__":
    main()
