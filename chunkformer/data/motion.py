"""A synthetic action dataset that needs no download: real video files of a shape moving across a frame.

The class is the motion: direction (right, left, down, up) x speed (slow, fast), 8 classes. Each video
draws its background, shape (square or disc), size, colour, start position and a static distractor at
random, and the shape wraps around the frame edges, so any single frame is equally likely under every
class: a model must compare frames to beat chance.

Horizontal flip mirrors "right" and "left": the dataset's :data:`MOTION_FLIP_LABEL_MAP` remaps the label of
a flipped clip (right <-> left, same speed), so flip augmentation stays on and labels stay right.

Files are written with PyAV (H.264 in mp4 when libx264 is available, else MPEG-4 part 2), so training reads
them through the same decode path as Kinetics. Generation is deterministic in ``seed``; a finished dataset
is marked by ``motion.json`` holding its parameters and is reused when they match.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MOTION_CLASSES",
    "MOTION_FLIP_LABEL_MAP",
    "MotionDatasetSpec",
    "default_motion_root",
    "ensure_motion_dataset",
    "render_motion_video",
]

_DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
_SPEEDS = {"slow": 1, "fast": 3}  # pixels per frame at 32 x 32; scaled with the frame size
MOTION_CLASSES: tuple[str, ...] = tuple(f"{d}_{s}" for d in _DIRECTIONS for s in _SPEEDS)
"""Class names in label order."""
MOTION_FLIP_LABEL_MAP: list[int] = [
    MOTION_CLASSES.index(name.replace("right", "@").replace("left", "right").replace("@", "left"))
    for name in MOTION_CLASSES
]
"""Label of a horizontally flipped clip, per label: right <-> left, up and down unchanged."""


@dataclass(frozen=True)
class MotionDatasetSpec:
    """Parameters of a generated dataset (all of them are part of the cache key).

    Args:
        train_per_class: training videos per class.
        val_per_class: validation videos per class.
        frames: frames per video.
        size: frame side in pixels (even, for 4:2:0 video).
        fps: frame rate written to the container.
        seed: seed of everything random.
        codec: ``"auto"`` (libx264, else mpeg4), or an FFmpeg encoder name.
    """

    train_per_class: int = 64
    val_per_class: int = 16
    frames: int = 16
    size: int = 32
    fps: int = 8
    seed: int = 0
    codec: str = "auto"
    version: int = 1


def default_motion_root() -> Path:
    """``$CHUNKFORMER_CACHE`` or ``~/.cache/chunkformer``, then ``motion-v1``."""
    base = os.environ.get("CHUNKFORMER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "chunkformer")
    return Path(base) / "motion-v1"


def _shape_mask(size: int, shape: str, side: int, top: float, left: float) -> np.ndarray:
    # Distances on the torus, so a shape crossing an edge reappears on the other side.
    ys = (np.arange(size)[:, None] - top + size / 2) % size - size / 2
    xs = (np.arange(size)[None, :] - left + size / 2) % size - size / 2
    half = side / 2
    if shape == "square":
        return (np.abs(ys) <= half) & (np.abs(xs) <= half)
    return ys**2 + xs**2 <= half**2


def render_motion_video(label: int, rng: np.random.Generator, frames: int = 16, size: int = 32) -> np.ndarray:
    """The frames of one video of class ``label``.

    Shape:
        - return: (frames, size, size, 3) uint8
    """
    direction, speed = MOTION_CLASSES[label].split("_")
    dy, dx = _DIRECTIONS[direction]
    step = _SPEEDS[speed] * size / 32
    background = rng.integers(0, 100, 3)
    colour = rng.integers(150, 256, 3)
    distractor_colour = rng.integers(100, 200, 3)
    shape = ("square", "disc")[int(rng.integers(2))]
    side = float(rng.integers(size // 6, size // 4 + 1))
    top, left = rng.uniform(0, size, 2)
    distractor = _shape_mask(size, ("disc", "square")[int(rng.integers(2))], side * 0.7, *rng.uniform(0, size, 2))
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        image = np.broadcast_to(background, (size, size, 3)).astype(np.float32)
        image[distractor] = distractor_colour
        image[_shape_mask(size, shape, side, top + dy * step * t, left + dx * step * t)] = colour
        image += rng.normal(0, 6, image.shape)
        video[t] = np.clip(image, 0, 255).astype(np.uint8)
    return video


def _pick_codec(codec: str) -> str:
    import av

    if codec != "auto":
        return codec
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _write_video(path: Path, video: np.ndarray, fps: int, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        # Near-lossless and single-threaded: tiny moving shapes survive, and the bytes depend on the seed only.
        stream.options = {"crf": "12", "preset": "veryfast"} if codec == "libx264" else {"qscale": "2"}
        stream.codec_context.thread_count = 1
        for image in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def ensure_motion_dataset(root: str | Path | None = None, spec: MotionDatasetSpec | None = None) -> Path:
    """Generate the dataset under ``root`` unless a finished one with the same ``spec`` is there.

    Writes ``train/<class>/<n>.mp4``, ``val/...``, the lists ``train.txt`` and ``val.txt`` (``path label``)
    and ``classes.txt``. Generation happens in a temporary sibling directory renamed into place at the
    end, so an interrupted run leaves no half dataset behind, and concurrent runs do not collide.

    Returns:
        the dataset directory (``root`` itself).
    """
    spec = spec or MotionDatasetSpec()
    root = Path(root) if root is not None else default_motion_root()
    marker = root / "motion.json"
    wanted = asdict(spec)
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        codec = _pick_codec(spec.codec)
        for split_id, (split, per_class) in enumerate((("train", spec.train_per_class), ("val", spec.val_per_class))):
            lines = []
            for label, name in enumerate(MOTION_CLASSES):
                (work / split / name).mkdir(parents=True)
                for n in range(per_class):
                    rng = np.random.default_rng([spec.seed, split_id, label, n])
                    relative = f"{split}/{name}/{n:04d}.mp4"
                    _write_video(work / relative, render_motion_video(label, rng, spec.frames, spec.size), spec.fps, codec)
                    lines.append(f"{relative} {label}")
            (work / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (work / "classes.txt").write_text("\n".join(MOTION_CLASSES) + "\n")
        (work / "motion.json").write_text(json.dumps(wanted))
        if root.exists():
            # A stale dataset with other parameters: replace it (the marker check above said it differs).
            shutil.rmtree(root)
        os.replace(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return root
