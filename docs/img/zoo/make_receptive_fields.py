"""Draw, for each attention layer, which input tokens one query's output depends on: measured, not drawn.

Each layer (random weights, C = 12, 3 heads) gets a random clip of 4 frames x 8 x 8 tokens; the sum of one
query token's output is backpropagated to the input, and the picture shows |d out / d x| summed over
channels for every input token (log scale over four decades; grey: exactly zero, the token cannot affect
the query). The frames are side by side and the query is outlined in red. So each picture comes from the
layer's own forward pass (its windows, shifts, masks and padding), and a layer that mixes in two steps
shows everything its two steps reach together (the second step's reach dimmer).

Usage (from the repository root; writes docs/img/zoo/<layer>.png)::

    python docs/img/zoo/make_receptive_fields.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
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

FRAMES, SIDE, DIM, HEADS = 4, 8, 12, 3
# Near the top-left corner of frame 2, so the border cases show (Swin's shifted-window mask, NATTEN's
# clamped window) and earlier and later frames are both visible.
QUERY = (2, 1, 2)


def layers() -> dict[str, tuple[nn.Module, str, str]]:
    """name -> (layer, input layout, caption)."""
    return {
        "ChunkAttention": (
            ChunkAttention(DIM, HEADS, chunk_size=4),
            "thw",
            "chunk 4: its 4x4 window, own frame",
        ),
        "ShiftedAttention": (
            ShiftedAttention(DIM, HEADS, shift=1),
            "tn",
            "shift 1: queries and values of frame t, keys of frame t-1",
        ),
        "LSHAttention": (
            LSHAttention(DIM, HEADS, bucket_size=8, n_hashes=2, seed=0).eval(),
            "thw",
            "bucket 8, 2 hashes, 3 heads: the tokens any head hashed with it, own frame (input-dependent)",
        ),
        "DividedSpaceTimeAttention": (
            DividedSpaceTimeAttention(DIM, HEADS),
            "tn",
            "temporal, then spatial: its column and frame, through them the whole clip",
        ),
        "FactorizedSelfAttention": (
            FactorizedSelfAttention(DIM, HEADS),
            "tn",
            "spatial, then temporal: its frame and column, through them the whole clip",
        ),
        "WindowAttention3D": (
            WindowAttention3D(DIM, HEADS, window_size=(2, 4, 4), shift_size=(1, 2, 2)),
            "thw",
            "window 2x4x4 shifted by (1, 2, 2): the cyclic-shift mask cuts its window",
        ),
        "NeighborhoodAttention3D": (
            NeighborhoodAttention3D(DIM, HEADS, kernel_size=(3, 5, 5)),
            "thw",
            "kernel 3x5x5: centred, clamped at the border",
        ),
    }


def dependence(layer: nn.Module, layout: str) -> torch.Tensor:
    """|d out[query] / d x| summed over channels, as a (T, H, W) map."""
    torch.manual_seed(0)
    x = torch.randn(1, FRAMES, SIDE, SIDE, DIM, dtype=torch.float64)
    layer = layer.double()
    x.requires_grad_()
    t, h, w = QUERY
    if layout == "tn":
        out = layer(x.flatten(2, 3))[0, t, h * SIDE + w]
    else:
        out = layer(x)[0, t, h, w]
    out.sum().backward()
    assert x.grad is not None
    return x.grad[0].abs().sum(-1)


def draw(name: str, caption: str, grad: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    values = grad.numpy()
    reached = values > 0
    # Four decades: smaller (two-step) dependences get the lowest colour instead of stretching the scale.
    norm = LogNorm(vmin=max(values[reached].min(), values.max() * 1e-4), vmax=values.max(), clip=True)
    # Masked tokens (exactly zero: cannot affect the query) in grey.
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    figure, panels = plt.subplots(1, FRAMES, figsize=(2.1 * FRAMES + 0.8, 2.6))
    for t, axes in enumerate(panels):
        axes.imshow(np.ma.masked_where(~reached[t], values[t]), norm=norm, cmap=cmap, interpolation="nearest")
        axes.set_title(f"frame {t}", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
        if t == QUERY[0]:
            _, h, w = QUERY
            axes.add_patch(Rectangle((w - 0.5, h - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    figure.colorbar(mappable, ax=list(panels), fraction=0.02, pad=0.02, label="|d out / d x|")
    figure.suptitle(
        f"{name}: {caption}  ({int(reached.sum())} of {reached.size} tokens reach the query)", fontsize=9
    )
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Write one PNG per layer; returns how many tokens reach the query in each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reached = {}
    for name, (layer, layout, caption) in layers().items():
        grad = dependence(layer, layout)
        reached[name] = int((grad > 0).sum())
        draw(name, caption, grad, out / f"{name}.png")
        print(f"{name}: {reached[name]} of {grad.numel()} tokens reach the query -> {out / name}.png")
    return reached


if __name__ == "__main__":
    main()
