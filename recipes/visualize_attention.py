"""Overlay SCT attention maps (Fig. 3) on the frames of a clip and write PNGs.

For each frame: the last shifted MSA's [CLS] attention over the frame's patch tokens (mean over heads,
upsampled to the frame), and in a last figure the clip encoder [CLS]'s attention over the frames. Runs on
random weights and a synthetic clip (a bright square moving right) when no checkpoint or clip is given.

A trained run and a video: ``--run DIR`` takes the model from the run's weights (``model.safetensors``, else
its newest checkpoint; the model and its class names are recorded there) and the clip settings from its
``config.json``; ``--video FILE`` is decoded with them (the middle clip, centre crop), and the figures'
titles give the predicted class. Needs matplotlib (``pip install 'chunkformer[viz]'``) and, for
``--video``, PyAV (``chunkformer[video]``).

Usage::

    python recipes/visualize_attention.py --out attention/                        # random weights
    python recipes/visualize_attention.py --run runs/motion --video clip.mp4 --out attention/
    python recipes/visualize_attention.py --model sct_s --checkpoint sct_s.safetensors --clip clip.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from chunkformer.models import create_model, read_model_spec


def synthetic_clip(frames: int, size: int) -> torch.Tensor:
    """(1, 3, T, size, size): a bright square moving right over a dark background, in [0, 1]."""
    clip = torch.full((1, 3, frames, size, size), 0.1)
    side = size // 4
    for t in range(frames):
        left = (t * size // (2 * max(frames, 1))) % (size - side)
        clip[0, :, t, size // 3 : size // 3 + side, left : left + side] = 0.9
    return clip


def run_weights(run: Path) -> Path:
    """The weights of a training run folder: ``model.safetensors``, else its newest ``ckpt-*.pt``."""
    if (run / "model.safetensors").is_file():
        return run / "model.safetensors"
    checkpoints = sorted(run.glob("ckpt-*.pt"))
    if not checkpoints:
        raise SystemExit(f"--run {run}: no model.safetensors and no ckpt-*.pt there")
    return checkpoints[-1]


def video_clip(path: str, settings: dict, num_frames: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The middle clip of ``path`` with the run's sampling, resized and centre-cropped: the model input
    (normalised) and the same frames in [0, 1] for display, each (1, 3, T, crop, crop)."""
    from chunkformer.data import ClipSampler, EvalTransform, decode_frames, probe_video

    info = probe_video(path)
    fps = settings.get("frame_rate") if settings.get("resample") else None
    sampler = ClipSampler(
        num_frames,
        settings.get("frame_stride", 1),
        fps=fps,
        short_videos=settings.get("short_videos", "clamp"),
    )
    views = sampler.view_indices(info.num_frames, 3, info.fps)
    frames = decode_frames(path, views[len(views) // 2])
    transform = EvalTransform(crop, 1)
    clip = transform(frames)[0][None]
    mean = torch.tensor(transform.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(transform.std).view(1, 3, 1, 1, 1)
    return clip, (clip * std + mean).clamp(0, 1)


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
    parser.add_argument("--model", default="sct_s", help="the model to build when no --run or recorded model")
    parser.add_argument("--checkpoint", default=None, help="weights for --model (random when omitted)")
    parser.add_argument("--run", default=None, help="a training run folder: its weights and clip settings")
    parser.add_argument("--video", default=None, help="a video file, decoded with the run's clip settings")
    parser.add_argument(
        "--clip", default=None, help="a torch file holding a (3, T, H, W) or (1, 3, T, H, W) clip in [0, 1]"
    )
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--out", default="attention_maps")
    args = parser.parse_args(argv)

    plt = _pyplot()
    settings: dict = {}
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if args.run:
        run = Path(args.run)
        checkpoint = run_weights(run)
        if (run / "config.json").is_file():
            settings = json.loads((run / "config.json").read_text())["data"]
    spec = read_model_spec(checkpoint) if checkpoint else None
    frames = spec.num_frames if spec else settings.get("num_frames", args.frames)
    size = spec.overrides.get("img_size", args.img_size) if spec else settings.get("crop_size", args.img_size)
    if args.video:
        clip, shown = video_clip(args.video, settings, frames, size)
    elif args.clip:
        clip = torch.load(args.clip, weights_only=True)
        clip = clip[None] if clip.dim() == 4 else clip
        shown = clip
    else:
        clip = shown = synthetic_clip(frames, size)
    frames = clip.shape[2]
    torch.manual_seed(0)
    if spec is not None:
        model = create_model(checkpoint_path=checkpoint).eval()
    else:
        model = create_model(args.model, num_frames=frames, checkpoint_path=checkpoint).eval()
    with torch.no_grad():
        maps = model.forward_attention_maps(clip)
        logits = model(clip)
    names = getattr(getattr(model, "model_spec", None), "class_names", None)
    best = int(logits[0].argmax())
    prediction = f"predicted: {names[best] if names else best} ({logits[0].softmax(-1)[best]:.0%})"
    print(prediction)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    height, width = clip.shape[-2:]
    # Drop the [CLS] key (index 0), average heads, lay the weights on the token grid, upsample to the frame.
    patches = maps.frame[0, :, :, 1:].mean(dim=1).reshape(frames, 1, *maps.grid)
    overlay = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    for t in range(frames):
        figure, axis = plt.subplots(figsize=(4, 4))
        axis.imshow(shown[0, :, t].permute(1, 2, 0).clamp(0, 1).numpy())
        axis.imshow(overlay[t].numpy(), cmap="jet", alpha=0.5)
        axis.set_title(f"frame {t}: [CLS] attention over patches\n{prediction}", fontsize=9)
        axis.axis("off")
        figure.savefig(out / f"frame_{t:02d}.png", bbox_inches="tight")
        plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 2.5))
    axis.bar(range(frames), maps.clip[0, :, 1:].mean(dim=0).numpy())
    axis.set_xlabel("frame")
    axis.set_ylabel("attention (mean over heads)")
    axis.set_title(f"clip encoder [CLS] attention over frames; {prediction}")
    figure.savefig(out / "clip.png", bbox_inches="tight")
    plt.close(figure)
    print(f"wrote {frames + 1} PNGs to {out}/")


if __name__ == "__main__":
    main()
