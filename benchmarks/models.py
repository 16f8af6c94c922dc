"""SCT-S/M/L and a ViT-B/16 frame encoder (Table 4's comparison): time, peak memory and matmul share per clip.

Every (model, precision) cell runs in a fresh subprocess, so peak memory is that cell's own (growth of the
resident memory over its value once the model and input exist, sampled every 0.5 ms; see
``benchmarks/lsh_attention.py``). Batch 1 (one clip, ``--batch`` changes it), CPU by default.

* ``forward``: eval mode, ``torch.no_grad``; ``fwd+bwd``: train mode (fresh LSH rotations each call), loss
  ``logits.sum()``. ``bf16`` runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
* Matmul share: all MACs (``python -m chunkformer.models.stats`` convention: Linear layers, attention
  matmuls and LSH hashing, counted on the meta device at this clip size and hash count) x 2 FLOPs, x 3
  for fwd+bwd, divided by the time and by this machine's fp32 GEMM peak measured in the same run.
* ``vit_b16_sct``: patch 16 Linear embedding + 12 pre-norm 768-wide MSA blocks (our ``Attention`` via
  ``ChunkAttention`` with one 14 x 14 chunk per 224 frame), then the same shifted MSA and clip encoder.

``--mode train-step`` times what training does instead: forward + backward + an AdamW step, under autocast
for ``bf16`` (``torch.autocast(device)``), loss cross-entropy on random labels; the table gives the step's
time, clips/s and the share of the bf16 GEMM peak (all MACs x 2 x 3 per clip). ``--device cuda`` takes peak
memory from the CUDA allocator (``--in-process`` then serves every cell from one process), ``--compile``
wraps the model in ``torch.compile`` (its compilation happens in the untimed warm-up step) and
``--grad-checkpointing`` recomputes blocks in backward (``model.set_grad_checkpointing()``).

``--backend`` pins the attention dispatch (``chunkformer.ops.use_backend``) for every cell, in its subprocess
too: ``triton`` runs SCT's LSH layers on the fused Triton kernels (on CUDA; on CPU only under
``TRITON_INTERPRET=1``), ``sdpa`` / ``xformers`` / ``math`` the block path on that kernel. Default: automatic.

Usage::

    python benchmarks/models.py --frames 8 --img-size 224 --repeats 3 --markdown-out models.md
    python benchmarks/models.py --frames 2 --img-size 64 --repeats 1        # smoke test
    python benchmarks/models.py --device cuda --in-process --mode train-step --precisions bf16 --batch 8 \
        --frames 8 --compile                                                  # the GPU suite's table
    python benchmarks/models.py --device cuda --in-process --mode train-step --precisions bf16 --batch 4 \
        --frames 8 --models sct_s --backend triton                           # LSH on the Triton kernels
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import cpu_name, matmul_peak_gflops, peak_mb, write_outputs

MODELS = ("sct_s", "sct_m", "sct_l", "vit_b16_sct")
PRECISIONS = ("fp32", "bf16")


def _train_step_cell(name: str, precision: str, args: argparse.Namespace) -> dict:
    """forward + backward + AdamW step, timed with the device synchronised; peak memory of the first step."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from chunkformer.models import create_model
    from chunkformer.models.stats import count
    from chunkformer.ops import use_backend

    cuda = args.device == "cuda"
    torch.manual_seed(0)
    model = create_model(name, num_classes=400, num_frames=args.frames).to(args.device).train()
    macs = count(
        name, frames=args.frames, img_size=args.img_size, n_hashes=model.config.lsh_n_hashes
    ).all_macs
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if args.compile else model
    clip = torch.randn(args.batch, 3, args.frames, args.img_size, args.img_size, device=args.device)
    labels = torch.randint(0, 400, (args.batch,), device=args.device)

    def autocast():
        if precision == "bf16":
            return torch.autocast(args.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(step_model(clip).float(), labels)
        loss.backward()
        optimizer.step()

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    # The first step compiles (with --compile) and creates the optimizer state: untimed, but its peak is
    # the one training sees (the states exist from then on). Steps run on the pinned backend; the MAC count
    # above ran on the meta device, which the Triton kernels refuse.
    with use_backend(args.backend):
        start = clock()
        peak = peak_mb(step, cuda)
        first_s = clock() - start
        times = []
        for _ in range(args.repeats):
            start = clock()
            step()
            times.append(clock() - start)
    return {
        "model": name,
        "precision": precision,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gmacs": macs / 1e9,
        "first_step_s": first_s,
        "step_s": statistics.median(times),
        "peak_mb": peak,
    }


def _cell(
    name: str, precision: str, frames: int, img_size: int, repeats: int, threads: int, backend: str | None
) -> dict:
    import contextlib

    import torch

    from chunkformer.models import create_model
    from chunkformer.models.stats import count
    from chunkformer.ops import use_backend

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

    # On the pinned backend; the MAC count above ran on the meta device, which the Triton kernels refuse.
    with use_backend(backend):
        peak = peak_mb(forward_backward, cuda=False)
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
        "peak_mb": peak,
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
    parser.add_argument("--mode", default="fwd-bwd", choices=["fwd-bwd", "train-step"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=1, help="clips per step (train-step mode)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train-step mode)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="(train-step mode)")
    parser.add_argument(
        "--in-process", action="store_true", help="run the cells in this process (CUDA: allocator peaks)"
    )
    parser.add_argument(
        "--backend", default=None, help="pin the attention dispatch's backend for every cell (default: auto)"
    )
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "fwd-bwd" and (args.device != "cpu" or args.compile or args.grad_checkpointing):
        parser.error("--device cuda, --compile and --grad-checkpointing need --mode train-step")
    if args.in_process and args.device == "cpu":
        parser.error("--in-process measures peak memory with the CUDA allocator: it needs --device cuda")

    if args.backend is not None:
        from chunkformer.ops import BACKENDS

        if args.backend not in ("auto", *BACKENDS):
            parser.error(f"--backend: expected auto or one of {', '.join(BACKENDS)}, got {args.backend}")

    def run_cell(name: str, precision: str) -> dict:
        if args.mode == "train-step":
            import torch

            torch.set_num_threads(args.threads)
            return _train_step_cell(name, precision, args)
        return _cell(name, precision, args.frames, args.img_size, args.repeats, args.threads, args.backend)

    if args.cell:
        name, precision = args.cell.split(":")
        print(json.dumps(run_cell(name, precision)))
        return

    import torch

    dtype = "bfloat16" if args.mode == "train-step" else "float32"
    peak = matmul_peak_gflops(args.threads, args.device, dtype)
    rows = []
    for name in args.models:
        for precision in args.precisions:
            if args.in_process:
                try:
                    rows.append(run_cell(name, precision))
                except Exception as error:  # out of memory, a compile failure: a row that says so
                    rows.append({"model": name, "precision": precision, "failed": str(error)[:160]})
                finally:
                    torch.cuda.empty_cache()
                print(rows[-1], file=sys.stderr, flush=True)
                continue
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
                "--mode",
                args.mode,
                "--device",
                args.device,
                "--batch",
                str(args.batch),
                *(["--compile"] if args.compile else []),
                *(["--grad-checkpointing"] if args.grad_checkpointing else []),
                *(["--backend", args.backend] if args.backend is not None else []),
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

    if args.mode == "train-step":
        _train_step_table(rows, peak, args, argv)
        return
    lines = [
        f"Machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; "
        f"fp32 GEMM peak measured {peak:.1f} GFLOP/s. One clip 1 x 3 x {args.frames} x {args.img_size} x "
        f"{args.img_size}; attention backend {args.backend or 'auto'}.",
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


def _train_step_table(
    rows: list[dict], peak: float, args: argparse.Namespace, argv: list[str] | None
) -> None:
    import torch

    machine = f"{cpu_name()}, {args.threads} threads"
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()} (host {cpu_name()})"
    variant = ("torch.compile" if args.compile else "eager") + (
        ", gradient checkpointing" if args.grad_checkpointing else ""
    )
    if args.backend is not None:
        variant += f", backend {args.backend}"
    lines = [
        f"Machine: {machine}; torch {torch.__version__}; bf16 GEMM peak measured {peak:.1f} GFLOP/s. "
        f"Training step (forward + backward + AdamW), {variant}, {args.batch} x 3 x {args.frames} x "
        f"{args.img_size} x {args.img_size} clips per step.",
        f"Command: `python benchmarks/models.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| model | precision | variant | frames | params | all GMACs/clip | first step (s) | step (s) "
        "| clips/s | peak MB | share of bf16 peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['model']} | {row['precision']} | {variant} | {args.frames} |"
        if "failed" in row:
            reason = " ".join(row["failed"].split()).replace("|", "/")
            lines.append(f"{head} failed: {reason} | | | | | | |")
            continue
        share = 3 * 2 * row["gmacs"] * 1e9 * args.batch / row["step_s"] / (peak * 1e9)
        row |= {"batch": args.batch, "variant": variant, "matmul_share": share}  # for gpu_targets.py
        lines.append(
            f"{head} {row['params_m']:.2f}M | {row['gmacs']:.1f} | {row['first_step_s']:.2f} | "
            f"{row['step_s']:.3f} | {args.batch / row['step_s']:.2f} | {row['peak_mb']:.0f} | {share:.1%} |"
        )
    write_outputs("\n".join(lines), args.markdown_out, args.json_out, {"peak_gflops": peak, "rows": rows})


if __name__ == "__main__":
    main()
