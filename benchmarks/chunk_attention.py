"""ChunkAttention against the same work with windows cut beforehand, and against full attention.

Three ways to compute attention over the 56 x 56 token grid of SCT's first stage (C = 96, 4 heads, chunk 7,
T = 8 frames, batch 1, fp32):

* ``ours``: ``chunkformer.layers.ChunkAttention`` on (B, T, 56, 56, C): pad (not needed here), cut windows,
  qkv projection, one attention call, merge, output projection.
* ``(a) windows cut beforehand``: the same qkv projection, one SDPA call and output projection, on a tensor
  already shaped (B * T * 64, 49, C): everything ours does except cutting and merging windows. The lower bound
  for ours.
* ``(b) full attention``: the same projections around one SDPA call over all 3136 tokens of each frame.

Forward and forward+backward, interleaved repeats after warm-up, medians. Targets: ours within 1.3x of (a) and
at least 10x faster than (b).

Usage::

    python benchmarks/chunk_attention.py --repeats 10 --markdown-out result.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import cpu_name, write_outputs
from einops import rearrange

from chunkformer.layers import ChunkAttention


def _projected_sdpa(layer: ChunkAttention, tokens: torch.Tensor) -> torch.Tensor:
    """qkv projection, SDPA, output projection on (batch, N, C) sequences: ``layer``'s weights."""
    q, k, v = rearrange(layer.qkv(tokens), "b n (three h d) -> three b h n d", three=3, h=layer.num_heads)
    out = F.scaled_dot_product_attention(q, k, v)
    return layer.proj(rearrange(out, "b h n d -> b n (h d)"))


def _time(fn: Callable[[], torch.Tensor], backward: bool) -> float:
    start = time.perf_counter()
    out = fn()
    if backward:
        out.sum().backward()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--grid", type=int, default=56, help="tokens per side of a frame")
    parser.add_argument("--skip-full", action="store_true", help="leave out (b), the slow full attention")
    parser.add_argument("--markdown-out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    dim, heads, chunk = 96, 4, 7
    torch.manual_seed(0)
    layer = ChunkAttention(dim, heads, chunk_size=chunk)
    grid = torch.randn(1, args.frames, args.grid, args.grid, dim, requires_grad=True)
    windows = rearrange(
        grid.detach(), "b t (nh wh) (nw ww) c -> (b t nh nw) (wh ww) c", wh=chunk, ww=chunk
    ).requires_grad_(True)
    frames = rearrange(grid.detach(), "b t h w c -> (b t) (h w) c").requires_grad_(True)

    cases: dict[str, Callable[[], torch.Tensor]] = {
        "ours: ChunkAttention": lambda: layer(grid),
        "(a) windows cut beforehand": lambda: _projected_sdpa(layer, windows),
    }
    if not args.skip_full:
        cases["(b) full attention per frame"] = lambda: _projected_sdpa(layer, frames)

    with torch.no_grad():
        torch.testing.assert_close(
            cases["ours: ChunkAttention"]().flatten(),
            rearrange(
                _projected_sdpa(layer, windows),
                "(b t nh nw) (wh ww) c -> (b t nh wh nw ww c)",
                b=1,
                t=args.frames,
                nh=args.grid // chunk,
                wh=chunk,
                ww=chunk,
            ),
        )

    timings: dict[tuple[str, bool], list[float]] = {(name, b): [] for name in cases for b in (False, True)}
    for round_index in range(args.warmup + args.repeats):
        for name, fn in cases.items():  # interleaved, so drifts in machine load hit every case alike
            for backward in (False, True):
                layer.zero_grad(set_to_none=True)
                if backward:
                    elapsed = _time(fn, True)
                else:
                    with torch.no_grad():
                        elapsed = _time(fn, False)
                if round_index >= args.warmup:
                    timings[(name, backward)].append(elapsed)

    ours_fwd = statistics.median(timings[("ours: ChunkAttention", False)])
    ours_both = statistics.median(timings[("ours: ChunkAttention", True)])
    command = "python benchmarks/chunk_attention.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; "
        f"{args.frames} frames of {args.grid}x{args.grid} tokens, C={dim}, {heads} heads, chunk {chunk}, "
        "fp32; "
        f"median of {args.repeats} after {args.warmup} warm-up rounds",
        f"Command: `{command.strip()}`",
        "",
        "| case | forward (ms) | fwd+bwd (ms) | forward / ours | fwd+bwd / ours |",
        "|---|---|---|---|---|",
    ]
    for name in cases:
        forward = statistics.median(timings[(name, False)])
        both = statistics.median(timings[(name, True)])
        lines.append(
            f"| {name} | {forward * 1e3:.1f} | {both * 1e3:.1f} | {forward / ours_fwd:.2f}x | "
            f"{both / ours_both:.2f}x |"
        )
    table = "\n".join(lines)
    write_outputs(table, args.markdown_out, None, None)
    return table


if __name__ == "__main__":
    main()
