"""LSH attention: chunkformer vs reformer-pytorch vs Hugging Face Reformer vs full SDPA, side by side.

Every (implementation, length, n_hashes) cell runs in a fresh subprocess, so peak memory is that cell's own
(the growth of the process's resident memory, sampled every 0.5 ms, over its value once the inputs
exist) and allocator state does not
leak between cells. All cells: batch 1, 4 heads (``--batch`` / ``--heads`` change both: the GPU suite runs
batch 4, 8 heads), head dim 64, bucket 64, fp32, shared QK (the only mode reformer-pytorch has), non-causal.

What each implementation runs:

* ``chunkformer``: ``chunkformer.ops.lsh_attention(q, None, v, shared_qk=True)``.
* ``reformer-pytorch``: ``reformer_pytorch.LSHAttention`` (the kernel without projections), version 1.4.4.
* ``hf-reformer``: ``transformers``' ``LSHSelfAttention`` (includes its two input projections, whose cost is
  under 1% here).
* ``sdpa-full``: exact attention, one SDPA call over all N tokens (only up to 16K: it is N^2).

FLOP model (the issue's): forward 8 * B * H * n_hashes * L * (2 * bucket) * d, backward twice that. "matmul
share" divides it by the time and by this machine's GEMM peak in the run's dtype (``--peak-dtype`` picks
another: the GPU suite divides fp32 cells by the bf16 peak too), measured in the same run (before and after
the cells; the higher of the two).

Error: on clustered inputs (tokens near 16 centres, where LSH is meant to work) the relative Frobenius
error of each implementation's output against exact shared-QK attention, same n_hashes, up to 4K tokens;
values are the inputs themselves (v = qk), since HF's layer can only attend its own input.

Usage::

    python benchmarks/lsh_attention.py --lengths 1024 4096 16384 65536 --hashes 1 4 --markdown-out out.md \
        --plot-out out.png
    python benchmarks/lsh_attention.py --plot-from out.md --plot-out out.png   # re-plot a saved table

On a GPU: ``--device cuda --dtype bf16 --in-process`` (peak memory then comes from the CUDA allocator's
statistics, and one process serves every cell); ``chunkformer-sdpa`` / ``chunkformer-xformers`` /
``chunkformer-math`` / ``chunkformer-triton`` pin the attention dispatch's backend, ``chunkformer`` leaves
it automatic. The share column then divides by the GPU's GEMM peak in that dtype.
``benchmarks/gpu_suite.sh`` runs it with the CUDA tests.

``--rounds R`` runs every (L, n_hashes) group's cells R times, rotating their order, and reports medians over
the rounds: on a machine whose speed drifts (a shared VM), cells run minutes apart otherwise see different
machines, and the ratios between implementations inherit the drift.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import PeakRSS, cpu_name, matmul_peak_gflops, write_outputs  # noqa: E402

HEAD_DIM, BUCKET = 64, 64
# Batch and heads are options (--batch, --heads); main() sets these before any cell is built.
BATCH, HEADS = 1, 4
# "chunkformer" runs the dispatch's automatic backend; "chunkformer-<backend>" pins one (sdpa, xformers,
# math, triton).
OURS = ("chunkformer", "chunkformer-sdpa", "chunkformer-xformers", "chunkformer-math", "chunkformer-triton")
IMPLEMENTATIONS = (*OURS, "reformer-pytorch", "hf-reformer", "sdpa-full")
# Pinned backends are for comparing kernels (on a GPU): by default ours runs once, on the automatic backend.
DEFAULT_IMPLEMENTATIONS = ("chunkformer", "reformer-pytorch", "hf-reformer", "sdpa-full")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _clustered_inputs(length: int, seed: int, device: str = "cpu", dtype: str = "fp32"):
    import torch

    # Drawn as B * H sequences, so batch 1 draws exactly what the tables of batch-1 runs measured.
    sequences = BATCH * HEADS
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(sequences, 16, HEAD_DIM, generator=generator) * 10
    assign = torch.randint(0, 16, (sequences, length), generator=generator)
    qk = torch.gather(centres, 1, assign[..., None].expand(-1, -1, HEAD_DIM))
    qk = qk + torch.randn(sequences, length, HEAD_DIM, generator=generator)
    v = torch.randn(sequences, length, HEAD_DIM, generator=generator)
    torch_dtype = getattr(torch, DTYPES[dtype])
    shape = (BATCH, HEADS, length, HEAD_DIM)
    return qk.reshape(shape).to(device, torch_dtype), v.reshape(shape).to(device, torch_dtype)


def _build(impl: str, n_hashes: int, length: int, device: str = "cpu", dtype: str = "fp32"):
    """A function (qk, v) -> out of shape (B, H, L, d) for the implementation."""
    import torch
    import torch.nn.functional as F

    if impl in OURS:
        from chunkformer.ops import lsh_attention, use_backend

        backend = impl.partition("-")[2] or None

        def run(qk, v):
            generator = torch.Generator(device=qk.device).manual_seed(0)
            with use_backend(backend):
                return lsh_attention(
                    qk, None, v, bucket_size=BUCKET, n_hashes=n_hashes, shared_qk=True, generator=generator
                )

        return run
    if impl == "reformer-pytorch":
        from reformer_pytorch.reformer_pytorch import LSHAttention

        layer = LSHAttention(bucket_size=BUCKET, n_hashes=n_hashes, causal=False)

        def run(qk, v):
            out, _, _ = layer(qk.flatten(0, 1), v.flatten(0, 1))
            return out.reshape(qk.shape)

        return run
    if impl == "hf-reformer":
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention

        config = ReformerConfig(
            hidden_size=HEADS * HEAD_DIM,
            num_attention_heads=HEADS,
            attention_head_size=HEAD_DIM,
            lsh_attn_chunk_length=BUCKET,
            num_buckets=max(2, length // BUCKET),
            num_hashes=n_hashes,
            lsh_num_chunks_before=1,
            lsh_num_chunks_after=0,
            is_decoder=False,
            lsh_attention_probs_dropout_prob=0.0,
            attn_layers=["lsh"],
        )
        layer = LSHSelfAttention(config).to(device, getattr(torch, DTYPES[dtype]))
        # Identity projections, so the layer attends the given vectors (and the error is comparable).
        with torch.no_grad():
            layer.query_key.weight.copy_(torch.eye(HEADS * HEAD_DIM))
            layer.value.weight.copy_(torch.eye(HEADS * HEAD_DIM))

        def run(qk, v):
            # HF's layer takes one hidden state for both: feed qk, and v through its value projection.
            hidden = qk.transpose(1, 2).flatten(2)
            out = layer(hidden).hidden_states
            return out.reshape(qk.shape[0], length, HEADS, HEAD_DIM).transpose(1, 2)

        return run
    if impl == "sdpa-full":

        def run(qk, v):
            keys = F.normalize(qk, dim=-1)
            mask = ~torch.eye(qk.shape[-2], dtype=torch.bool, device=qk.device)
            return F.scaled_dot_product_attention(qk, keys, v, attn_mask=mask)

        return run
    raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")


class _CudaPeak:
    """Peak CUDA memory allocated inside the block, over what was allocated at entry (the inputs)."""

    def __enter__(self) -> _CudaPeak:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self._baseline = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.cuda.synchronize()
        self.peak_mb = (torch.cuda.max_memory_allocated() - self._baseline) / 2**20


def _cell(
    impl: str,
    length: int,
    n_hashes: int,
    repeats: int,
    threads: int,
    device: str = "cpu",
    dtype: str = "fp32",
) -> dict:
    """Run one cell in this process and return its measurements."""
    import torch

    torch.set_num_threads(threads)
    cuda = device == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    qk, v = _clustered_inputs(length, seed=1, device=device, dtype=dtype)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    run = _build(impl, n_hashes, length, device, dtype)
    with _CudaPeak() if cuda else PeakRSS() as memory:
        run(qk, v).float().sum().backward()
    peak_mb = memory.peak_mb
    forward, both = [], []
    for _ in range(repeats):
        with torch.no_grad():
            start = clock()
            run(qk, v)
            forward.append(clock() - start)
        qk.grad = v.grad = None
        start = clock()
        run(qk, v).float().sum().backward()
        both.append(clock() - start)
    result = {
        "impl": impl,
        "length": length,
        "n_hashes": n_hashes,
        "forward_s": statistics.median(forward),
        "fwd_bwd_s": statistics.median(both),
        "peak_mb": peak_mb,
        "error": None,
    }
    if length <= 4096 and impl != "sdpa-full":
        import torch.nn.functional as F

        with torch.no_grad():
            # HF's layer attends its own input (value = query-key input), so every row uses v = qk.
            values = qk
            approx = run(qk, values).float()
            # Exact attention in float32 on the same (possibly rounded) inputs.
            wide = qk.float()
            keys = F.normalize(wide, dim=-1)
            mask = ~torch.eye(length, dtype=torch.bool, device=qk.device)
            exact = F.scaled_dot_product_attention(wide, keys, wide, attn_mask=mask)
            result["error"] = float((approx - exact).norm() / exact.norm())
    return result


def _flops(length: int, n_hashes: int) -> tuple[float, float]:
    forward = 8 * BATCH * HEADS * n_hashes * length * (2 * BUCKET) * HEAD_DIM
    return forward, 2 * forward


def rows_from_markdown(path: str) -> list[dict]:
    """The measured rows of a table this script wrote (``--markdown-out``, or pasted in a docs page)."""
    rows = []
    for line in open(path).read().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 9 or not cells[0].isdigit() or cells[3].startswith("failed"):
            continue
        rows.append(
            {
                "impl": cells[2],
                "length": int(cells[0]),
                "n_hashes": int(cells[1]),
                "forward_s": float(cells[3]),
                "fwd_bwd_s": float(cells[4]),
                "peak_mb": float(cells[6]),
            }
        )
    return rows


def plot(rows: list[dict], path: str, title: str = "") -> None:
    """Forward+backward time and peak memory against length, one line per implementation and n_hashes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {1: "--", 4: "-"}
    for impl in IMPLEMENTATIONS:
        for n_hashes in sorted({row["n_hashes"] for row in rows}):
            cell = sorted(
                (r for r in rows if r["impl"] == impl and r["n_hashes"] == n_hashes and "failed" not in r),
                key=lambda r: r["length"],
            )
            if not cell:
                continue
            label = impl if impl == "sdpa-full" else f"{impl}, {n_hashes} round{'s' if n_hashes > 1 else ''}"
            lengths = [r["length"] for r in cell]
            style = dict(
                marker="o",
                linestyle=styles.get(n_hashes, ":"),
                label=label,
                color={
                    "chunkformer": "tab:blue",
                    "chunkformer-sdpa": "tab:blue",
                    "chunkformer-xformers": "tab:purple",
                    "chunkformer-math": "tab:cyan",
                    "chunkformer-triton": "tab:red",
                    "reformer-pytorch": "tab:orange",
                    "hf-reformer": "tab:green",
                    "sdpa-full": "tab:gray",
                }[impl],
            )
            time_axes.plot(lengths, [r["fwd_bwd_s"] for r in cell], **style)
            memory_axes.plot(lengths, [r["peak_mb"] for r in cell], **style)
    for axes, ylabel in ((time_axes, "forward + backward (s)"), (memory_axes, "peak memory (MB)")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("sequence length L")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3, which="both")
    time_axes.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _run_cell(impl: str, length: int, n_hashes: int, args: argparse.Namespace) -> dict:
    """One cell in a fresh subprocess; a failure or timeout becomes a row saying so."""
    command = [
        sys.executable,
        __file__,
        "--cell",
        f"{impl}:{length}:{n_hashes}",
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--batch",
        str(args.batch),
        "--heads",
        str(args.heads),
    ]
    if args.in_process:
        try:
            return _cell(impl, length, n_hashes, args.repeats, args.threads, args.device, args.dtype)
        except Exception as error:  # a peer that cannot run this cell (out of memory, unsupported dtype)
            return {
                "impl": impl,
                "length": length,
                "n_hashes": n_hashes,
                "failed": f"{type(error).__name__}: {error}"[:120],
            }
        finally:
            if args.device == "cuda":
                import torch

                torch.cuda.empty_cache()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "length": length, "n_hashes": n_hashes, "failed": f"timeout {args.timeout}s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"impl": impl, "length": length, "n_hashes": n_hashes, "failed": last[:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _combine(runs: list[dict]) -> dict:
    """One row from a cell's rounds: median times and peak memory over the rounds that did not fail."""
    done = [run for run in runs if "failed" not in run]
    if not done:
        return runs[-1]
    row = dict(done[0])
    for key in ("forward_s", "fwd_bwd_s", "peak_mb"):
        row[key] = statistics.median(run[key] for run in done)
    row["rounds"] = len(done)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--hashes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--impls", nargs="+", default=list(DEFAULT_IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every (L, n_hashes) group's cells this many times, rotating their order, and report the "
        "median over rounds (so a slow drift of the machine's speed hits every implementation alike)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--plot-out", default=None, help="also draw time and memory against L (PNG)")
    parser.add_argument(
        "--plot-from", default=None, help="only re-plot the rows of a table this script wrote"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--peak-dtype",
        default=None,
        choices=list(DTYPES),
        help="dtype of the GEMM peak the share column divides by (default: --dtype)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the cells in this process (on CUDA, peak memory comes from the allocator's own statistics, "
        "so a fresh process per cell is not needed; saves the CUDA start-up per cell)",
    )
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global BATCH, HEADS
    BATCH, HEADS = args.batch, args.heads
    peak_dtype = args.peak_dtype or args.dtype

    if args.plot_from:
        if not args.plot_out:
            parser.error("--plot-from needs --plot-out")
        title = (
            f"LSH attention, batch {BATCH}, {HEADS} heads, d {HEAD_DIM}, bucket {BUCKET}, {args.dtype} "
            f"(rows of {args.plot_from})"
        )
        plot(rows_from_markdown(args.plot_from), args.plot_out, title=title)
        return

    if args.cell:
        impl, length, n_hashes = args.cell.split(":")
        print(
            json.dumps(
                _cell(impl, int(length), int(n_hashes), args.repeats, args.threads, args.device, args.dtype)
            )
        )
        return

    import torch

    peak_before = matmul_peak_gflops(args.threads, args.device, DTYPES[peak_dtype])
    rows = []
    for length in args.lengths:
        for n_hashes in args.hashes:
            impls = [
                impl
                for impl in args.impls
                if not (impl == "sdpa-full" and (length > 16384 or n_hashes != args.hashes[0]))
            ]
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for round_index in range(args.rounds):
                shift = round_index % len(impls)
                for impl in impls[shift:] + impls[:shift]:
                    runs[impl].append(_run_cell(impl, length, n_hashes, args))
                    print(runs[impl][-1], file=sys.stderr, flush=True)
            rows.extend(_combine(runs[impl]) for impl in impls)

    # Measured before and after the cells; the shares divide by the higher of the two, so a slow moment of
    # the machine during one measurement cannot inflate them.
    peak_after = matmul_peak_gflops(args.threads, args.device, DTYPES[peak_dtype])
    peak = max(peak_before, peak_after)
    machine = f"{cpu_name()}, {args.threads} threads"
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()} (host {cpu_name()})"
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Machine: {machine}; torch {torch.__version__}; {args.dtype}; batch {BATCH}, {HEADS} heads; "
        f"{peak_dtype} GEMM peak measured {peak_before:.1f} GFLOP/s before the cells and "
        f"{peak_after:.1f} after "
        f"(shares use {peak:.1f})",
        f"Command: `python benchmarks/lsh_attention.py {command}`",
        "",
        "| L | n_hashes | implementation | forward (s) | fwd+bwd (s) | fwd+bwd vs ours | peak MB "
        "| matmul share (fwd+bwd) | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for length in args.lengths:
        for n_hashes in args.hashes:
            cell_rows = [r for r in rows if r["length"] == length and r["n_hashes"] == n_hashes]
            # "vs ours": against the first of our rows (the automatic backend when it ran).
            ours = next((r for r in cell_rows if r["impl"] in OURS and "failed" not in r), None)
            for row in cell_rows:
                if "failed" in row:
                    reason = " ".join(row["failed"].split()).replace(
                        "|", "/"
                    )  # one table cell: no newlines or pipes
                    lines.append(f"| {length} | {n_hashes} | {row['impl']} | failed: {reason} | | | | | |")
                    continue
                forward_flops, backward_flops = _flops(length, n_hashes)
                share = (forward_flops + backward_flops) / row["fwd_bwd_s"] / (peak * 1e9)
                row["matmul_share"] = share  # for benchmarks/gpu_targets.py, from the JSON
                ratio = f"{row['fwd_bwd_s'] / ours['fwd_bwd_s']:.2f}x" if ours else "-"
                share_text = f"{share:.0%}" if row["impl"] != "sdpa-full" else "-"
                error = f"{row['error']:.3f}" if row.get("error") is not None else "-"
                lines.append(
                    f"| {length} | {n_hashes} | {row['impl']} | {row['forward_s']:.3f} | "
                    f"{row['fwd_bwd_s']:.3f} | "
                    f"{ratio} | {row['peak_mb']:.0f} | {share_text} | {error} |"
                )
    write_outputs("\n".join(lines), args.markdown_out, args.json_out, {"peak_gflops": peak, "rows": rows})
    if args.plot_out:
        plot(rows, args.plot_out, title=lines[0])


if __name__ == "__main__":
    main()
