"""Overlay SCT attention maps (Fig. 3) on the frames of a clip and write PNGs.

For each frame: the last shifted MSA's [CLS] attention over the frame's patch tokens (mean over heads,
upsampled to the frame), and in a last figure the clip encoder [CLS]'s attention over the frames. Runs on
random weights and a synthetic clip (a bright square moving right) when no checkpoint or clip is given.

Needs matplotlib: ``pip install 'chunkformer[viz]'``.

Usage::

    python recipes/visualize_attention.py --out attention/                        # random weights
    python recipes/visualize_attention.py --model sct_s --checkpoint sct_s.safetensors --clip clip.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from chunkformer.models import create_model


def synthetic_clip(frames: int, size: int) -> torch.Tensor:
    """(1, 3, T, size, size): a bright square moving right over a dark background, in [0, 1]."""
    clip = torch.full((1, 3, frames, size, size), 0.1)
    side = size // 4
    for t in range(frames):
        left = (t * size // (2 * max(frames, 1))) % (size - side)
        clip[0, :, t, size // 3 : size // 3 + side, left : left + side] = 0.9
    return clip


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("this recipe needs matplotlib: pip install 'chunkformer[viz]'") from error
    return plt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sct_s")
    parser.add_argument("--checkpoint", default=None, help="weights for --model (random when omitted)")
    parser.add_argument(
        "--clip", default=None, help="a torch file holding a (3, T, H, W) or (1, 3, T, H, W) clip in [0, 1]"
    )
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--out", default="attention_maps")
    args = parser.parse_args(argv)

    plt = _pyplot()
    if args.clip:
        clip = torch.load(args.clip, weights_only=True)
        clip = clip[None] if clip.dim() == 4 else clip
    else:
        clip = synthetic_clip(args.frames, args.img_size)
    frames = clip.shape[2]
    torch.manual_seed(0)
    model = create_model(args.model, num_frames=frames, checkpoint_path=args.checkpoint).eval()
    with torch.no_grad():
        maps = model.forward_attention_maps(clip)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    height, width = clip.shape[-2:]
    # Drop the [CLS] key (index 0), average heads, lay the weights on the token grid, upsample to the frame.
    patches = maps.frame[0, :, :, 1:].mean(dim=1).reshape(frames, 1, *maps.grid)
    overlay = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    for t in range(frames):
        figure, axis = plt.subplots(figsize=(4, 4))
        axis.imshow(clip[0, :, t].permute(1, 2, 0).clamp(0, 1).numpy())
        axis.imshow(overlay[t].numpy(), cmap="jet", alpha=0.5)
        axis.set_title(f"frame {t}: [CLS] attention over patches")
        axis.axis("off")
        figure.savefig(out / f"frame_{t:02d}.png", bbox_inches="tight")
        plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 2.5))
    axis.bar(range(frames), maps.clip[0, :, 1:].mean(dim=0).numpy())
    axis.set_xlabel("frame")
    axis.set_ylabel("attention (mean over heads)")
    axis.set_title("clip encoder [CLS] attention over frames")
    figure.savefig(out / "clip.png", bbox_inches="tight")
    plt.close(figure)
    print(f"wrote {frames + 1} PNGs to {out}/")


if __name__ == "__main__":
    main()
