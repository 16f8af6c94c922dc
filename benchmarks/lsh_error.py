"""LSH attention error against exact attention over many seeds: chunkformer, reformer-pytorch, HF Reformer.

The same setting as ``benchmarks/lsh_attention.py`` (batch 1, 4 heads, head dim 64, bucket 64, shared QK,
clustered inputs: tokens near 16 centres, values = the inputs, as HF's layer needs), but instead of one draw
it repeats every cell over ``--seeds`` seeds. Seed s draws the inputs and the hash rotations (our
``generator``; the peers draw theirs from the global RNG, seeded with s just before the call), so each seed
is a paired comparison of the three implementations on the same inputs.

Reports, per (L, n_hashes) and implementation, the mean and standard deviation of the relative Frobenius
error, and for each peer the paired difference to ours and on how many seeds ours was not worse.

Usage::

    python benchmarks/lsh_error.py --lengths 1024 4096 --hashes 1 2 4 --seeds 10 --markdown-out out.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, write_outputs  # noqa: E402
from lsh_attention import BUCKET, _build, _clustered_inputs  # noqa: E402

PEERS = ("reformer-pytorch", "hf-reformer")


def _errors(length: int, n_hashes: int, seed: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from chunkformer.ops import lsh_attention

    qk, _ = _clustered_inputs(length, seed=seed)
    with torch.no_grad():
        keys = F.normalize(qk, dim=-1)
        exact = F.scaled_dot_product_attention(qk, keys, qk, attn_mask=~torch.eye(length, dtype=torch.bool))
        generator = torch.Generator().manual_seed(seed)
        outputs = {
            "chunkformer": lsh_attention(
                qk, None, qk, bucket_size=BUCKET, n_hashes=n_hashes, shared_qk=True, generator=generator
            )
        }
        for peer in PEERS:
            run = _build(peer, n_hashes, length)
            torch.manual_seed(seed)
            outputs[peer] = run(qk, qk)
    return {name: float((out - exact).norm() / exact.norm()) for name, out in outputs.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--hashes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for length in args.lengths:
        for n_hashes in args.hashes:
            per_seed = [_errors(length, n_hashes, seed) for seed in range(args.seeds)]
            rows.append({"length": length, "n_hashes": n_hashes, "per_seed": per_seed})
            print(rows[-1], file=sys.stderr, flush=True)

    lines = [
        f"Machine: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; "
        f"{args.seeds} seeds per cell",
        f"Command: `python benchmarks/lsh_error.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| L | n_hashes | chunkformer | reformer-pytorch | hf-reformer | ours - reformer-pytorch (paired) | "
        "ours - hf-reformer (paired) | seeds where ours <= each peer |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def mean_std(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ± {spread:.4f}"

    for row in rows:
        by_impl = {name: [errors[name] for errors in row["per_seed"]] for name in ("chunkformer", *PEERS)}
        ours = by_impl["chunkformer"]
        paired = {peer: [a - b for a, b in zip(ours, by_impl[peer], strict=True)] for peer in PEERS}
        wins = " / ".join(f"{sum(d <= 0 for d in paired[peer])}/{len(ours)}" for peer in PEERS)
        lines.append(
            f"| {row['length']} | {row['n_hashes']} | {mean_std(ours)} | "
            f"{mean_std(by_impl['reformer-pytorch'])} | "
            f"{mean_std(by_impl['hf-reformer'])} | {mean_std(paired['reformer-pytorch'])} | "
            f"{mean_std(paired['hf-reformer'])} | {wins} |"
        )
    write_outputs("\n".join(lines), args.markdown_out, args.json_out, {"rows": rows})


if __name__ == "__main__":
    main()
