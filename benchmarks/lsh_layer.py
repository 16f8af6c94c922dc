"""SCT-S's own LSH layer against a ChunkAttention layer over the same tokens: what one LSH layer costs.

Both layers take the same (1, T, side, side, dim) frame tokens, projections included: ``LSHAttention`` as
SCT-S builds it (separate q, k, v projections, ``shared_qk=False``, one sequence per frame) and
``ChunkAttention`` with 7 x 7 chunks (SCT-S's local layers). Defaults are SCT-S's first stage: 56 x 56 =
3136 tokens per frame, 64 frames per call, dim 96 = 6 heads of 16 channels, bucket 49. ``fwd+bwd`` is train
mode (fresh rotations per call), loss ``out.float().sum()``; ``forward`` is train mode under
``torch.no_grad`` (the same rotation draws). Layers and inputs are cast to the dtype (no autocast), so both
layers run the same precision end to end.

``--backends`` lists the attention dispatch backends the LSH layer runs on, side by side (``use_backend``;
``auto`` is automatic selection: the fused Triton kernels on CUDA once their self-check passed, else the
block path; ``sdpa`` pins the block path; ``triton`` the fused Triton kernels, which on CPU need
``TRITON_INTERPRET=1`` in the environment before the start). The Chunk layer runs once per dtype,
on ``auto``. A backend that refuses the inputs gives a row that says why.

The ratio columns divide the LSH layer's time by the Chunk layer's, from the same run: the issue's target
is <= 2x (fwd+bwd, bf16, on the GPU). Peak memory: the CUDA allocator's peak over the inputs on CUDA, the
growth of resident memory on CPU.

Usage::

    python benchmarks/lsh_layer.py --device cuda --dtypes bf16 fp32 --hashes 1 4 --backends sdpa triton \
        --markdown-out layer.md
    python benchmarks/lsh_layer.py --frames 2 --side 14 --repeats 1        # CPU smoke size
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, matmul_peak_gflops, peak_mb, write_outputs  # noqa: E402

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _layer(kind: str, args: argparse.Namespace, n_hashes: int):
    from chunkformer.layers import ChunkAttention, LSHAttention

    if kind == "chunk":
        return ChunkAttention(args.dim, args.heads, chunk_size=args.chunk)
    # As chunkformer/models/stage.py builds SCT's LSH layers.
    return LSHAttention(
        args.dim, args.heads, bucket_size=args.bucket, n_hashes=n_hashes, shared_qk=False, seed=0
    )


def _cell(kind: str, n_hashes: int, dtype: str, backend: str, args: argparse.Namespace) -> dict:
    import torch

    from chunkformer.ops import use_backend

    cuda = args.device == "cuda"
    torch_dtype = getattr(torch, DTYPES[dtype])
    torch.manual_seed(0)
    layer = _layer(kind, args, n_hashes).to(args.device, torch_dtype).train()
    x = torch.randn(1, args.frames, args.side, args.side, args.dim, device=args.device, dtype=torch_dtype)
    x.requires_grad_(True)

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def both() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).float().sum().backward()

    with use_backend(backend):
        peak = peak_mb(both, cuda)
        forward, backward = [], []
        for _ in range(args.repeats):
            with torch.no_grad():
                start = clock()
                layer(x)
                forward.append(clock() - start)
            start = clock()
            both()
            backward.append(clock() - start)
    return {
        "kind": kind,
        "n_hashes": n_hashes if kind == "lsh" else None,
        "dtype": dtype,
        "backend": backend,
        "forward_s": statistics.median(forward),
        "fwd_bwd_s": statistics.median(backward),
        "peak_mb": peak,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES))
    parser.add_argument("--hashes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--frames", type=int, default=64, help="frames per call (one LSH sequence each)")
    parser.add_argument("--side", type=int, default=56, help="tokens per frame side (56: 3136 tokens)")
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--bucket", type=int, default=49)
    parser.add_argument("--chunk", type=int, default=7)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["auto"],
        help="attention dispatch backends for the LSH layer, side by side: auto (default) or ones of "
        "chunkformer.ops.BACKENDS",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    from chunkformer.ops import BACKENDS

    unknown = [name for name in args.backends if name not in ("auto", *BACKENDS)]
    if unknown:
        parser.error(f"--backends: expected auto or one of {', '.join(BACKENDS)}, got {', '.join(unknown)}")

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for dtype in args.dtypes:
        cells = [("chunk", 0, "auto")]
        cells += [("lsh", n, backend) for backend in args.backends for n in args.hashes]
        for kind, n_hashes, backend in cells:
            try:
                rows.append(_cell(kind, n_hashes, dtype, backend, args))
            except (
                Exception
            ) as error:  # out of memory, an unsupported dtype, a refused backend: a row says so
                rows.append(
                    {
                        "kind": kind,
                        "n_hashes": n_hashes,
                        "dtype": dtype,
                        "backend": backend,
                        "failed": str(error)[:120],
                    }
                )
            finally:
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            print(rows[-1], file=sys.stderr, flush=True)

    machine = f"{cpu_name()}, {args.threads} threads"
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()} (host {cpu_name()})"
    # A context line, not a share column: the layers' FLOPs differ in kind (gathers, hashing), so the ratio
    # between them is the measure; the peak says what the GPU could do in the same run.
    peak = matmul_peak_gflops(args.threads, args.device, "bfloat16")
    tokens = args.side * args.side
    lines = [
        f"Machine: {machine}; torch {torch.__version__}; bf16 GEMM peak measured {peak:.1f} GFLOP/s."
        f" {args.frames} frames of {args.side} x {args.side} = {tokens} tokens, "
        f"dim {args.dim} = {args.heads} heads x {args.dim // args.heads}, bucket {args.bucket}, chunk "
        f"{args.chunk} x {args.chunk}.",
        f"Command: `python benchmarks/lsh_layer.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| dtype | layer | backend | forward (s) | fwd+bwd (s) | peak MB | LSH / Chunk (fwd) "
        "| LSH / Chunk (fwd+bwd) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dtype in args.dtypes:
        chunk = next(
            (r for r in rows if r["dtype"] == dtype and r["kind"] == "chunk" and "failed" not in r), None
        )
        for row in (r for r in rows if r["dtype"] == dtype):
            name = "ChunkAttention" if row["kind"] == "chunk" else f"LSHAttention, {row['n_hashes']} rounds"
            head = f"| {dtype} | {name} | {row['backend']} |"
            if "failed" in row:
                reason = " ".join(row["failed"].split()).replace("|", "/")
                lines.append(f"{head} failed: {reason} | | | | |")
                continue
            ratios = ["-", "-"]
            if chunk and row["kind"] == "lsh":
                ratios = [f"{row[key] / chunk[key]:.2f}x" for key in ("forward_s", "fwd_bwd_s")]
            lines.append(
                f"{head} {row['forward_s']:.4f} | {row['fwd_bwd_s']:.4f} | {row['peak_mb']:.0f} | "
                f"{ratios[0]} | {ratios[1]} |"
            )
    write_outputs("\n".join(lines), args.markdown_out, args.json_out, {"peak_gflops": peak, "rows": rows})


if __name__ == "__main__":
    main()
