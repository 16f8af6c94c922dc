"""Parameters and multiply-accumulates of every registered model, next to the paper's Table 3.

Run ``python -m chunkformer.models.stats`` (``--help`` for options). Everything is counted on the meta
device, so no memory is spent and no weights exist.

Conventions (``docs/models.md``): "linear MACs" are the paper's: the MACs counted inside ``nn.Linear``
modules (their aten mm / addmm; attributed by module because LSH hashing also lowers to aten.mm);
"all MACs" are everything FlopCounterMode counts: Linear layers, attention matmuls (bmm; SDPA on meta
decomposes into bmm) and LSH hashing, as fvcore counts. MACs = FLOPs / 2. One view: 1 x 3 x 24 x 224 x 224.

LSH on meta: ``chunkformer.ops.lsh_attention`` takes its matmul path on meta (the CPU flash kernel,
which ``FlopCounterMode`` has no formula for, is used only on CPU tensors), so its block attention is
counted; the script also computes it analytically (2 x G x rounds x blocks x bucket x keys x d MACs) and
reports both, so a future kernel the counter misses shows up as a mismatch.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from chunkformer.layers import LSHAttention
from chunkformer.models.registry import create_model, list_models

# Table 3: (parameters in M, GFLOPs = linear-layer GMACs per view).
PAPER: dict[str, tuple[float, float]] = {
    "sct_s": (18.72, 88.18),
    "sct_m": (33.48, 162.90),
    "sct_l": (59.89, 342.58),
}


@dataclass(frozen=True)
class ModelStats:
    name: str
    params: int
    linear_macs: float
    all_macs: float
    lsh_attention_macs_counted: float
    lsh_attention_macs_analytic: float


def _lsh_attention_macs(layer: LSHAttention, groups: int, seq_len: int) -> float:
    """MACs of LSH block attention (q k^T and weights v) for ``groups`` sequences of ``seq_len`` tokens."""
    blocks = math.ceil(seq_len / layer.bucket_size)
    keys = layer.bucket_size * (2 if blocks > 1 else 1)  # a query block sees its block and the previous one
    return 2.0 * groups * layer.n_hashes * blocks * layer.bucket_size * keys * layer.head_dim


def count(
    name: str, frames: int = 24, img_size: int = 224, n_hashes: int = 1, **overrides: Any
) -> ModelStats:
    """Parameters and MACs of ``name`` for one (1, 3, frames, img_size, img_size) clip, on meta."""
    with torch.device("meta"):
        model = create_model(name, num_frames=frames, lsh_n_hashes=n_hashes, **overrides).eval()
        clip = torch.empty(1, model.config.in_chans, frames, img_size, img_size)
    analytic = 0.0
    lsh_modules: dict[str, nn.Module] = {}

    def on_lsh(module: LSHAttention, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal analytic
        x = args[0]
        seq_len = x.shape[-2] if x.dim() == 3 else x.shape[-3] * x.shape[-2]
        analytic += _lsh_attention_macs(
            module, x.numel() // (seq_len * module.dim) * module.num_heads, seq_len
        )

    handles = []
    for module_name, module in model.named_modules():
        if isinstance(module, LSHAttention):
            lsh_modules[module_name] = module
            handles.append(module.register_forward_hook(on_lsh))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(clip)
    for handle in handles:
        handle.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def flops_of(module_name: str) -> float:
        # FlopCounterMode keys modules by their path under the root; a parent's count includes its children.
        return float(sum(counts.get(f"{root}.{module_name}", {}).values()))

    # Linear MACs by module, not by aten op: other matmuls (e.g. LSH hashing, x @ rotations) can lower to
    # aten.mm too, and the paper's convention is the Linear layers only.
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    linear = sum(flops_of(name) for name in linear_names)
    # Everything inside the LSH layers but their Linear layers: block attention, hashing, round merge.
    lsh_other = sum(
        flops_of(name)
        - sum(flops_of(f"{name}.{child}") for child, m in module.named_children() if isinstance(m, nn.Linear))
        for name, module in lsh_modules.items()
    )
    return ModelStats(
        name=name,
        params=sum(p.numel() for p in model.parameters()),
        linear_macs=linear / 2,
        all_macs=sum(counts["Global"].values()) / 2,
        lsh_attention_macs_counted=lsh_other / 2,
        lsh_attention_macs_analytic=analytic,
    )


def _relative(ours: float, paper: float) -> str:
    return f"{(ours - paper) / paper:+.1%}"


def markdown_table(rows: list[ModelStats], frames: int, img_size: int, n_hashes: int) -> str:
    lines = [
        f"One view 1 x 3 x {frames} x {img_size} x {img_size}; LSH bucket 49, {n_hashes} hash round(s); "
        "FlopCounterMode on the meta device, MACs = FLOPs / 2.",
        "",
        "| model | params | paper | diff | linear GMACs | paper GFLOPs | diff | all GMACs "
        "| LSH non-linear GMACs: counted / analytic attention |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = PAPER.get(row.name)
        params = f"{row.params / 1e6:.2f}M"
        lines.append(
            f"| {row.name} | {params} | {f'{paper[0]:.2f}M' if paper else '-'} | "
            f"{_relative(row.params / 1e6, paper[0]) if paper else '-'} | {row.linear_macs / 1e9:.2f} | "
            f"{f'{paper[1]:.2f}' if paper else '-'} | "
            f"{_relative(row.linear_macs / 1e9, paper[1]) if paper else '-'} | "
            f"{row.all_macs / 1e9:.2f} | {row.lsh_attention_macs_counted / 1e9:.2f} / "
            f"{row.lsh_attention_macs_analytic / 1e9:.2f} |"
        )
    lines += [
        "",
        "The LSH column: everything FlopCounterMode counted inside the LSH layers besides their Linear "
        "layers (block attention, hashing matmuls, round merge) / the block attention alone, computed "
        "analytically as 2 x groups x rounds x blocks x bucket x keys x head_dim. The difference is the "
        "hashing (x @ rotations for q and k) and the merge; the analytic count is not added to the totals, "
        "since on meta the attention is counted already.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Parameters and MACs of the registered models.")
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument(
        "--n-hashes",
        type=int,
        default=1,
        help="LSH hash rounds (1, as the table in docs/models.md: rounds change only the attention MACs)",
    )
    args = parser.parse_args(argv)
    names = args.models or list_models()
    rows = [count(name, args.frames, args.img_size, args.n_hashes) for name in names]
    print(markdown_table(rows, args.frames, args.img_size, args.n_hashes))


if __name__ == "__main__":
    main()
