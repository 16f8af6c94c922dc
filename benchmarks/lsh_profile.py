"""Where one LSH attention forward+backward spends its time: torch.profiler's table of operators, or the
wall time of its phases.

Usage::

    python benchmarks/lsh_profile.py --length 65536 --hashes 4 --device cuda --dtype bf16
    python benchmarks/lsh_profile.py --length 16384 --phases --steps 4
    python benchmarks/lsh_profile.py --length 16384 --head-dim 8 --shapes

Inputs as in ``benchmarks/lsh_attention.py`` (batch 1, 4 heads, head dim 64, bucket 64, shared QK; with
``--head-dim d`` their first d coordinates). One call warms up, the next is profiled; the table is sorted by
self time on the device (self CPU time on CPU), and the wall time of the profiled call (profiler overhead
included) is printed last. ``--shapes`` lists operators per input shape.

``--phases`` (CPU) times the phases instead, by wrapping the functions that run them in place: hashing,
layout, masks, gathers, block kernels and the gradient scatter; ``other`` is the rest (merge of the rounds,
normalisation, allocation, Python). Means over ``--steps`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lsh_attention import BUCKET, DTYPES, _clustered_inputs  # noqa: E402

# (module, attribute, phase): the functions each phase runs in, wrapped in place by --phases.
PHASES = (
    ("chunkformer.ops.lsh_kernel", "hash_buckets", "hashing (rotation matmul, argmax)"),
    ("chunkformer.ops.lsh_kernel", "sorted_layout", "layout (sort, block numbers)"),
    ("chunkformer.ops.lsh_kernel", "bucket_aligned_layout", "layout (sort, block numbers)"),
    ("chunkformer.ops.lsh", "LSHLayout.keep", "masks: pairs seen in earlier rounds"),
    ("chunkformer.ops.lsh_rounds", "logit_bias", "masks: 0 / -inf bias"),
    ("chunkformer.ops.lsh_rounds", "block_forward", "block kernels (forward)"),
    ("chunkformer.ops.lsh_rounds", "block_backward", "block kernels (backward)"),
    ("chunkformer.ops.lsh_rounds", "gather_rows", "gathers (rows)"),
    ("chunkformer.ops.lsh_gather", "gather_rows", "gathers (rows)"),
    ("chunkformer.ops.lsh_gather", "gather_windows", "gathers (key windows)"),
    ("chunkformer.ops.lsh_rounds", "add_rows", "gradient scatter (index_add_)"),
)


def _wrap_phases(totals: dict[str, float]) -> None:
    for module_name, attribute, phase in PHASES:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        function = getattr(owner, name)

        def timed(*args, _function=function, _phase=phase, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                totals[_phase] = totals.get(_phase, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--hashes", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=None, help="use the inputs' first d coordinates")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--backend", default=None, help="attention dispatch backend (default: automatic)")
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    parser.add_argument("--shapes", action="store_true", help="list operators per input shape")
    parser.add_argument("--phases", action="store_true", help="time the phases (CPU) instead of profiling")
    parser.add_argument("--steps", type=int, default=3, help="calls averaged by --phases")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.phases and args.device != "cpu":
        parser.error("--phases times CPU work with wall clocks; on CUDA use the profiler table")

    import torch
    from torch.profiler import ProfilerActivity, profile

    from chunkformer.ops import lsh_attention, use_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    qk, v = _clustered_inputs(args.length, seed=1, device=args.device, dtype=args.dtype)
    if args.head_dim is not None:
        qk, v = qk[..., : args.head_dim].contiguous(), v[..., : args.head_dim].contiguous()
    qk.requires_grad_(True)
    v.requires_grad_(True)
    cuda = args.device == "cuda"

    def step() -> None:
        qk.grad = v.grad = None
        generator = torch.Generator(device=args.device).manual_seed(0)
        with use_backend(args.backend):
            out = lsh_attention(
                qk, None, v, bucket_size=BUCKET, n_hashes=args.hashes, shared_qk=True, generator=generator
            )
        out.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()

    head_dim = qk.shape[-1]
    what = f"L={args.length}, n_hashes={args.hashes}, head dim {head_dim}, {args.device}, {args.dtype}"
    if args.phases:
        totals: dict[str, float] = {}
        _wrap_phases(totals)
        step()
        totals.clear()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        total = (time.perf_counter() - start) / args.steps
        threads = torch.get_num_threads()
        print(f"forward+backward {total:.3f} s (mean of {args.steps}; {what}, {threads} threads)")
        print("| phase | time | share |\n|---|---|---|")
        for phase, seconds in sorted(totals.items(), key=lambda item: -item[1]):
            print(f"| {phase} | {seconds / args.steps * 1e3:.0f} ms | {seconds / args.steps / total:.0%} |")
        other = total - sum(totals.values()) / args.steps
        other_phases = "other (merge, normalisation, allocation, Python)"
        print(f"| {other_phases} | {other * 1e3:.0f} ms | {other / total:.0%} |")
        return

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities, record_shapes=args.shapes) as profiler:
        step()
    wall = time.perf_counter() - start
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    averages = profiler.key_averages(group_by_input_shape=args.shapes)
    print(averages.table(sort_by=sort_by, row_limit=args.rows))
    print(f"profiled forward+backward: {wall * 1e3:.1f} ms wall ({what})")


if __name__ == "__main__":
    main()
