"""Where one LSH attention forward+backward spends its time: torch.profiler's table of operators.

Usage::

    python benchmarks/lsh_profile.py --length 65536 --hashes 4 --device cuda --dtype bf16

Inputs as in ``benchmarks/lsh_attention.py`` (batch 1, 4 heads, head dim 64, bucket 64, shared QK). One call
warms up, the next is profiled; the table is sorted by self time on the device (self CPU time on CPU), and
the wall time of the profiled call (profiler overhead included) is printed last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lsh_attention import BUCKET, DTYPES, _clustered_inputs  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--hashes", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--backend", default=None, help="attention dispatch backend (default: automatic)")
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from chunkformer.ops import lsh_attention, use_backend

    qk, v = _clustered_inputs(args.length, seed=1, device=args.device, dtype=args.dtype)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    cuda = args.device == "cuda"

    def step() -> None:
        generator = torch.Generator(device=args.device).manual_seed(0)
        with use_backend(args.backend):
            out = lsh_attention(qk, None, v, bucket_size=BUCKET, n_hashes=args.hashes, shared_qk=True, generator=generator)
        out.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as profiler:
        step()
    wall = time.perf_counter() - start
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=args.rows))
    print(f"profiled forward+backward: {wall * 1e3:.1f} ms wall (L={args.length}, n_hashes={args.hashes}, "
          f"{args.device}, {args.dtype})")


if __name__ == "__main__":
    main()
