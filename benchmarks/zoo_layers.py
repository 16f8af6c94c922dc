"""Every attention layer of the library side by side on one video token grid: forward and forward+backward.

The layers (C = 96, 3 heads, fp32, batch 1 on the CPU) on 8 frames of 56 x 56 tokens, the grid of a video
model's first stage at 224 x 224 with patch 4:

* ``ChunkAttention`` (SCT): 7 x 7 windows per frame.
* ``ShiftedAttention`` (SCT): per-frame attention over all 3136 tokens, keys from frame t - 1.
* ``LSHAttention`` (SCT's image LSH attention): one sequence per frame, bucket 64, 4 hashes.
* ``DividedSpaceTimeAttention`` (TimeSformer): temporal attention (8 tokens), then spatial (3136).
* ``FactorizedSelfAttention`` (ViViT model 3): spatial (3136), then temporal (8).
* ``WindowAttention3D`` (Video Swin-T): 8 x 7 x 7 windows, shifted by (4, 3, 3) (Video Swin's shifted
  block; one window along time, so only the spatial shift applies).
* ``WindowAttention3D, no shift``: the same windows unshifted (Video Swin's other block).
* ``NeighborhoodAttention3D`` (NAT): a 3 x 7 x 7 neighbourhood per query, through the tiled kernel
  (``chunkformer.ops.neighborhood_attention``, default tiles: each tile of queries attends to the key box
  covering its queries' windows). ``--rel-pos-bias`` adds a row with NATTEN's relative position bias on
  (``rel_pos_bias=True``), timed in the same rounds.

Each layer's input shape is its own (B, T, H, W, C) or (B, T, N, C) view of the same tokens. The layers are
timed in interleaved rounds after warm-up (every layer once per round), and the medians reported, so a drift
of the machine's speed hits every layer alike. Peak memory is measured in a pass of its own after the
timing (one forward+backward per layer) on CUDA only: the allocator's peak over what was allocated before
(on the CPU, resident memory freed by the timing rounds is reused, so its growth says nothing). On CUDA
(``--device cuda``) layers and inputs are cast to ``--dtype`` (no autocast) and ``--batch`` clips fill the
GPU (the GPU suite runs bf16, batch 8). A layer that fails (out of memory, a dtype a kernel lacks) gets a
row saying why. ``--smoke`` runs a tiny grid (2 x 14 x 14) in a second.

Usage::

    python benchmarks/zoo_layers.py --threads 1 --repeats 5 --markdown-out zoo_layers.md
    python benchmarks/zoo_layers.py --device cuda --dtype bf16 --batch 8 --markdown-out zoo_layers.md
    python benchmarks/zoo_layers.py --smoke
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from _common import cpu_name, write_outputs
from torch import nn

from chunkformer.layers import (
    ChunkAttention,
    DividedSpaceTimeAttention,
    FactorizedSelfAttention,
    LSHAttention,
    NeighborhoodAttention3D,
    ShiftedAttention,
    WindowAttention3D,
)


def _layers(
    dim: int, heads: int, frames: int, grid: int, rel_pos_bias: bool = False
) -> dict[str, tuple[nn.Module, str, str]]:
    """name -> (layer, input layout, what it attends to)."""
    tokens = grid * grid
    chunk = min(7, grid)
    window = (min(8, frames), chunk, chunk)
    # Odd sides (NATTEN centres the window on the query); at most the grid along each axis.
    kernel = (3 if frames >= 3 else 1, chunk, chunk)
    layers = {
        "ChunkAttention": (
            ChunkAttention(dim, heads, chunk_size=chunk),
            "thw",
            f"{chunk}x{chunk} window of its frame",
        ),
        "ShiftedAttention": (
            ShiftedAttention(dim, heads, shift=1),
            "tn",
            f"all {tokens} tokens of frame t-1",
        ),
        "LSHAttention": (
            LSHAttention(dim, heads, bucket_size=64, n_hashes=4, seed=0),
            "thw",
            "its LSH buckets in its frame (bucket 64, 4 hashes)",
        ),
        "DividedSpaceTimeAttention": (
            DividedSpaceTimeAttention(dim, heads),
            "tn",
            f"{frames} tokens at its position, then {tokens} of its frame",
        ),
        "FactorizedSelfAttention": (
            FactorizedSelfAttention(dim, heads),
            "tn",
            f"{tokens} tokens of its frame, then {frames} at its position",
        ),
        "WindowAttention3D": (
            WindowAttention3D(dim, heads, window_size=window, shift_size=tuple(w // 2 for w in window)),
            "thw",
            f"{'x'.join(map(str, window))} shifted window",
        ),
        # The same windows unshifted: what the shift's roll and mask add.
        "WindowAttention3D, no shift": (
            WindowAttention3D(dim, heads, window_size=window, shift_size=0),
            "thw",
            f"{'x'.join(map(str, window))} window",
        ),
        "NeighborhoodAttention3D": (
            NeighborhoodAttention3D(dim, heads, kernel_size=kernel),
            "thw",
            f"{'x'.join(map(str, kernel))} neighbourhood",
        ),
    }
    if rel_pos_bias:
        layers["NeighborhoodAttention3D, rpb"] = (
            NeighborhoodAttention3D(dim, heads, kernel_size=kernel, rel_pos_bias=True),
            "thw",
            f"{'x'.join(map(str, kernel))} neighbourhood, relative position bias",
        )
    return layers


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], torch.Tensor], backward: bool, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    if backward:
        out.float().sum().backward()
    _sync(device)
    return time.perf_counter() - start


def _peak_mb(layer: nn.Module, x: torch.Tensor, device: str) -> float:
    """CUDA allocator peak of one forward+backward beyond what was allocated before (inputs and weights
    excluded); NaN on the CPU, where resident memory freed by the timing rounds is reused and hides it."""
    if device != "cuda":
        return math.nan
    x = x.detach().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    layer(x).float().sum().backward()
    torch.cuda.synchronize()
    layer.zero_grad(set_to_none=True)
    return (torch.cuda.max_memory_allocated() - baseline) / 2**20


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--grid", type=int, default=56, help="tokens per side of a frame")
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="clips per call")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--smoke", action="store_true", help="tiny grid (2 x 14 x 14), one repeat")
    parser.add_argument(
        "--rel-pos-bias", action="store_true", help="add NeighborhoodAttention3D with rel_pos_bias=True"
    )
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.frames, args.grid, args.repeats, args.warmup = 2, 14, 1, 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = args.device, DTYPES[args.dtype]

    layers = _layers(args.dim, args.heads, args.frames, args.grid, args.rel_pos_bias)
    clip = torch.randn(args.batch, args.frames, args.grid, args.grid, args.dim).to(device, dtype)
    inputs = {"thw": clip, "tn": clip.flatten(2, 3)}
    for layer, _, _ in layers.values():
        # Training mode, as in a training step (LSH draws fresh rotations each call).
        layer.to(device, dtype).train()

    failed: dict[str, str] = {}
    results: dict[str, dict[str, list[float]]] = {name: {"fwd": [], "bwd": []} for name in layers}
    for round_ in range(args.warmup + args.repeats):
        for name, (layer, layout, _) in layers.items():
            if name in failed:
                continue
            x = inputs[layout]
            try:
                with torch.no_grad():
                    forward = _time(lambda layer=layer, x=x: layer(x), False, device)
                x_grad = x.detach().requires_grad_()
                both = _time(lambda layer=layer, x_grad=x_grad: layer(x_grad), True, device)
            except (RuntimeError, NotImplementedError) as error:  # out of memory, a dtype without a kernel
                failed[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            finally:
                layer.zero_grad(set_to_none=True)
            if round_ >= args.warmup:
                results[name]["fwd"].append(forward)
                results[name]["bwd"].append(both)
    peaks = {
        name: _peak_mb(layer, inputs[layout], device)
        for name, (layer, layout, _) in layers.items()
        if name not in failed
    }

    if "ChunkAttention" in failed:
        raise SystemExit(f"ChunkAttention, the baseline of every ratio, {failed['ChunkAttention']}")
    base = {key: statistics.median(results["ChunkAttention"][key]) for key in ("fwd", "bwd")}
    machine = (
        f"{torch.cuda.get_device_name()} (host {cpu_name()})"
        if device == "cuda"
        else f"{cpu_name()}, {args.threads} thread(s)"
    )
    memory = "CUDA allocator peak" if device == "cuda" else "CUDA only"
    header = (
        f"Machine: {machine}; torch {torch.__version__}; batch {args.batch}, "
        f"{args.frames} frames of {args.grid}x{args.grid} tokens, C={args.dim}, {args.heads} heads, "
        f"{args.dtype}, training mode; median of {args.repeats} interleaved rounds after {args.warmup} "
        f"warm-up; peak MB: {memory} of one forward+backward\n"
        f"Command: `python benchmarks/zoo_layers.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
    )
    lines = [
        "| layer | one query attends to | forward (ms) | fwd+bwd (ms) | peak MB | forward / ChunkAttention "
        "| fwd+bwd / ChunkAttention |",
        "|---|---|---|---|---|---|---|",
    ]
    payload = []
    for name, (_, _, sees) in layers.items():
        if name in failed:
            lines.append(f"| `{name}` | {sees} | {failed[name]} | | | | |")
            payload.append({"layer": name, "failed": failed[name]})
            continue
        fwd, bwd = (statistics.median(results[name][key]) for key in ("fwd", "bwd"))
        lines.append(
            f"| `{name}` | {sees} | {1e3 * fwd:.1f} | {1e3 * bwd:.1f} | "
            f"{'-' if math.isnan(peaks[name]) else f'{peaks[name]:.0f}'} | "
            f"{fwd / base['fwd']:.2f}x | {bwd / base['bwd']:.2f}x |"
        )
        payload.append(
            {
                "layer": name,
                "forward_s": results[name]["fwd"],
                "fwd_bwd_s": results[name]["bwd"],
                "peak_mb": peaks[name],
            }
        )
    table = header + "\n" + "\n".join(lines)
    write_outputs(table, args.markdown_out, args.json_out, payload)
    return table


if __name__ == "__main__":
    main()
