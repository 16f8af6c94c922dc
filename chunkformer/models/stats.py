"""Parameters and multiply-accumulates of every registered model, next to their papers' figures.

Run ``python -m chunkformer.models.stats`` (``--help`` for options). Everything is counted on the meta
device, so no memory is spent and no weights exist.

Conventions (``docs/models.md``): "linear MACs" are SCT's paper's: the MACs counted inside ``nn.Linear``
modules (their aten mm / addmm; attributed by module because LSH hashing also lowers to aten.mm);
"all MACs" are everything FlopCounterMode counts: Linear layers, convolutions, attention matmuls (bmm; SDPA
on meta decomposes into bmm) and LSH hashing, as fvcore counts, which is how TimeSformer and Video Swin
count their "FLOPs". MACs = FLOPs / 2. One view: 1 x 3 x T x H x W, by default each model's paper's view
(SCT: 24 x 224 x 224; TimeSformer: 8 x 224 x 224; ViViT and Video Swin: 32 x 224 x 224).

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
from chunkformer.models.video_classifier import VideoClassifier


@dataclass(frozen=True)
class PaperFigures:
    """What a model's paper states for it, per view.

    Attributes:
        params_m: parameters in millions.
        gflops: "GFLOPs" per view as the paper counts them (each of these papers counts a multiply-add as
            one FLOP, so they compare with our GMACs).
        counts: which of our counts the paper's convention matches: "linear" (only nn.Linear layers) or
            "all" (fvcore's: every matmul and convolution).
        frames: T of the paper's view.
        img_size: H = W of the paper's view.
    """

    params_m: float
    gflops: float
    counts: str
    frames: int
    img_size: int


PAPER: dict[str, PaperFigures] = {
    # SCT (Zha et al., NeurIPS 2021), Table 3: GFLOPs are linear-layer GMACs per 24 x 224 x 224 view.
    "sct_s": PaperFigures(18.72, 88.18, "linear", 24, 224),
    "sct_m": PaperFigures(33.48, 162.90, "linear", 24, 224),
    "sct_l": PaperFigures(59.89, 342.58, "linear", 24, 224),
    # TimeSformer (Bertasius et al., ICML 2021), Table 1, divided space-time: 121.4M parameters and 0.59
    # TFLOPs for its test of 3 views (1 clip x 3 crops) of 8 x 224 x 224, i.e. 196.7 G per view.
    "timesformer_base": PaperFigures(121.4, 590.0 / 3, "all", 8, 224),
    # Video Swin (Liu et al., CVPR 2022), Table 1, Swin-T: 28.2M parameters, 88 GFLOPs per 32 x 224 x 224
    # view (x 4 x 3 views).
    "video_swin_t": PaperFigures(28.2, 88.0, "all", 32, 224),
}
# (frames, img_size) to count other models at: ViViT's FE at its paper's view (scenic's K400 config; no
# figure of this model is checked here), the zoo's tiny models at the motion data's 8 x 32 x 32.
VIEWS: dict[str, tuple[int, int]] = {
    "vivit_b_fe": (32, 224),
    **{name: (8, 32) for name in ("timesformer_tiny", "vivit_tiny", "video_swin_tiny", "nat_tiny")},
}


def paper_view(name: str) -> tuple[int, int]:
    """(frames, img_size) to count ``name`` at: its paper's view, its own (``VIEWS``), else SCT's
    24 x 224 x 224 (``sct_tiny`` included, as the table in docs/models.md)."""
    if name in PAPER:
        return PAPER[name].frames, PAPER[name].img_size
    return VIEWS.get(name, (24, 224))


@dataclass(frozen=True)
class ModelStats:
    name: str
    params: int
    linear_macs: float
    all_macs: float
    lsh_attention_macs_counted: float
    lsh_attention_macs_analytic: float
    frames: int = 24
    img_size: int = 224


def _lsh_attention_macs(layer: LSHAttention, groups: int, seq_len: int) -> float:
    """MACs of LSH block attention (q k^T and weights v) for ``groups`` sequences of ``seq_len`` tokens."""
    blocks = math.ceil(seq_len / layer.bucket_size)
    keys = layer.bucket_size * (2 if blocks > 1 else 1)  # a query block sees its block and the previous one
    return 2.0 * groups * layer.n_hashes * blocks * layer.bucket_size * keys * layer.head_dim


def count(
    name: str, frames: int = 24, img_size: int = 224, n_hashes: int = 1, **overrides: Any
) -> ModelStats:
    """Parameters and MACs of ``name`` for one (1, 3, frames, img_size, img_size) clip, on meta.
    ``n_hashes`` sets the LSH rounds of models that have LSH layers (SCT's)."""
    with torch.device("meta"):
        # Rebuilt (on meta: a fraction of a second) with what the first build shows the model takes: LSH
        # rounds for SCT's configs, img_size for the zoo's models (a position embedding fixes the frame size
        # of some of them).
        model = create_model(name, num_frames=frames, **overrides)
        if hasattr(model.config, "lsh_n_hashes"):
            overrides = {"lsh_n_hashes": n_hashes, **overrides}
        if isinstance(model, VideoClassifier) and model.img_size != img_size:
            overrides = {"img_size": img_size, **overrides}
        model = create_model(name, num_frames=frames, **overrides).eval()
        clip = torch.empty(1, model.config.in_chans, frames, img_size, img_size)
    analytic = 0.0
    lsh_modules: dict[str, nn.Module] = {}

    def on_lsh(module: LSHAttention, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal analytic
        x = args[0]
        seq_len = module.sequence_length(x)
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
        frames=frames,
        img_size=img_size,
    )


def _relative(ours: float, paper: float) -> str:
    return f"{(ours - paper) / paper:+.1%}"


def markdown_table(
    rows: list[ModelStats], frames: int | None = None, img_size: int | None = None, n_hashes: int = 1
) -> str:
    """The rows as a markdown table, each model's MACs beside its paper's figure in the paper's own
    convention (``PaperFigures.counts``: the paper GFLOPs' diff is against linear or all GMACs).
    ``frames`` and ``img_size`` name a view shared by every row for the header (default: the rows')."""
    views = {(row.frames, row.img_size) for row in rows}
    if frames is not None and img_size is not None:
        views = {(frames, img_size)}
    if len(views) == 1:
        (t, size) = views.pop()
        view = f"One view 1 x 3 x {t} x {size} x {size}"
    else:
        view = "One view 1 x 3 x T x H x W per model (the view column)"
    lines = [
        f"{view}; LSH bucket 49, {n_hashes} hash round(s); FlopCounterMode on the meta device, "
        "MACs = FLOPs / 2.",
        "",
        "| model | params | paper | diff | linear GMACs | paper GFLOPs | diff | all GMACs "
        "| LSH non-linear GMACs: counted / analytic attention | view |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = PAPER.get(row.name)
        params = f"{row.params / 1e6:.2f}M"
        if paper is None:
            paper_params = params_diff = paper_macs = macs_diff = "-"
        else:
            ours = row.linear_macs if paper.counts == "linear" else row.all_macs
            paper_params = f"{paper.params_m:.2f}M"
            params_diff = _relative(row.params / 1e6, paper.params_m)
            paper_macs = f"{paper.gflops:.2f} ({paper.counts})"
            macs_diff = _relative(ours / 1e9, paper.gflops)
        lines.append(
            f"| {row.name} | {params} | {paper_params} | {params_diff} | {row.linear_macs / 1e9:.2f} | "
            f"{paper_macs} | {macs_diff} | {row.all_macs / 1e9:.2f} | "
            f"{row.lsh_attention_macs_counted / 1e9:.2f} / {row.lsh_attention_macs_analytic / 1e9:.2f} | "
            f"{row.frames} x {row.img_size}² |"
        )
    lines += [
        "",
        "Paper GFLOPs: (linear) compares with our linear GMACs (SCT's Table 3 counts only the Linear "
        "layers), (all) with all GMACs (fvcore's count, as TimeSformer and Video Swin report theirs).",
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
    parser.add_argument("--frames", type=int, default=None, help="default: each model's paper view")
    parser.add_argument("--img-size", type=int, default=None, help="default: each model's paper view")
    parser.add_argument(
        "--n-hashes",
        type=int,
        default=1,
        help="LSH hash rounds (1, as the table in docs/models.md: rounds change only the attention MACs)",
    )
    args = parser.parse_args(argv)
    names = args.models or list_models()
    rows = []
    for name in names:
        frames, img_size = paper_view(name)
        frames = frames if args.frames is None else args.frames
        img_size = img_size if args.img_size is None else args.img_size
        rows.append(count(name, frames, img_size, args.n_hashes))
    print(markdown_table(rows, n_hashes=args.n_hashes))


if __name__ == "__main__":
    main()
