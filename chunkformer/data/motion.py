"""A synthetic action dataset that needs no download: real video files of a shape moving across a frame.

The class is the motion. Each video draws its background, shape (square or disc), size, colour and start
position at random, and the shape wraps around the frame edges, so any single frame is equally likely
under every class: a model must compare frames to beat chance. Two variants:

- ``basic`` (the default run): direction (right, left, down, up) x speed (slow 1, fast 3 pixels per frame
  at 32 x 32), 8 classes, one static distractor.
- ``hard`` (``recipes/ablations.py --data hard``): eight directions (the four diagonals too) x speed
  (slow 1, fast 3), 16 classes; the target is the brightest shape, and a dimmer distractor moves with a
  velocity drawn from the same 16 motions, so the motion of "a shape" says little: a model must follow
  the target from frame to frame. More noise, smaller shapes.

Horizontal flip mirrors "right" and "left": the dataset's ``MOTION_FLIP_LABEL_MAP`` remaps the label of
a flipped clip (right <-> left, same speed), so flip augmentation stays on and labels stay right.

Files are written with PyAV (MPEG-4 part 2 in mp4, near-lossless), so training reads
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
    "MOTION_VARIANTS",
    "MotionDatasetSpec",
    "default_motion_root",
    "ensure_motion_dataset",
    "motion_classes",
    "motion_flip_label_map",
    "render_motion_video",
]

MOTION_VARIANTS: tuple[str, ...] = ("basic", "hard")
_DIRECTIONS = {
    "basic": {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)},
    "hard": {
        "right": (0, 1),
        "left": (0, -1),
        "down": (1, 0),
        "up": (-1, 0),
        "downright": (1, 1),
        "downleft": (1, -1),
        "upright": (-1, 1),
        "upleft": (-1, -1),
    },
}
# Pixels per frame at 32 x 32, scaled with the frame size.
_SPEEDS = {"basic": {"slow": 1, "fast": 3}, "hard": {"slow": 1, "fast": 3}}


def _check_variant(variant: str) -> None:
    if variant not in MOTION_VARIANTS:
        raise ValueError(f"motion variant must be one of {MOTION_VARIANTS}, got {variant!r}")


def motion_classes(variant: str = "basic") -> tuple[str, ...]:
    """Class names in label order: ``<direction>_<speed>``."""
    _check_variant(variant)
    return tuple(f"{d}_{s}" for d in _DIRECTIONS[variant] for s in _SPEEDS[variant])


def motion_flip_label_map(variant: str = "basic") -> list[int]:
    """Label of a horizontally flipped clip, per label: right <-> left, everything else unchanged."""
    classes = motion_classes(variant)
    return [
        classes.index(name.replace("right", "@").replace("left", "right").replace("@", "left"))
        for name in classes
    ]


MOTION_CLASSES: tuple[str, ...] = motion_classes("basic")
"""Class names of the ``basic`` variant in label order."""
MOTION_FLIP_LABEL_MAP: list[int] = motion_flip_label_map("basic")
"""Label of a horizontally flipped ``basic`` clip, per label: right <-> left, up and down unchanged."""


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
        codec: ``"auto"`` (mpeg4), or an FFmpeg encoder name. mpeg4 is the default because its output is
            the same in every process; libx264's was not (measured: the same frames encoded in two
            processes decoded differently, by up to 7 grey levels, in about 1 file in 30), which made
            the dataset differ between generations.
        variant: ``"basic"`` (8 classes) or ``"hard"`` (16 classes, moving distractors); see the module doc.
    """

    train_per_class: int = 64
    val_per_class: int = 16
    frames: int = 16
    size: int = 32
    fps: int = 8
    seed: int = 0
    codec: str = "auto"
    version: int = 2
    variant: str = "basic"

    def __post_init__(self) -> None:
        _check_variant(self.variant)


def default_motion_root(variant: str = "basic") -> Path:
    """``$CHUNKFORMER_CACHE`` or ``~/.cache/chunkformer``, then ``motion-v1`` (``motion-hard-v1`` for
    ``hard``)."""
    _check_variant(variant)
    base = os.environ.get("CHUNKFORMER_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "chunkformer"
    )
    return Path(base) / ("motion-v1" if variant == "basic" else f"motion-{variant}-v1")


def _shape_mask(size: int, shape: str, side: int, top: float, left: float) -> np.ndarray:
    # Distances on the torus, so a shape crossing an edge reappears on the other side.
    ys = (np.arange(size)[:, None] - top + size / 2) % size - size / 2
    xs = (np.arange(size)[None, :] - left + size / 2) % size - size / 2
    half = side / 2
    if shape == "square":
        return (np.abs(ys) <= half) & (np.abs(xs) <= half)
    return ys**2 + xs**2 <= half**2


def render_motion_video(
    label: int, rng: np.random.Generator, frames: int = 16, size: int = 32, variant: str = "basic"
) -> np.ndarray:
    """The frames of one video of class ``label`` (of ``motion_classes(variant)``).

    Shape:
        - return: (frames, size, size, 3) uint8
    """
    classes = motion_classes(variant)
    if not 0 <= label < len(classes):
        raise ValueError(f"label must be in [0, {len(classes)}) for the {variant!r} variant, got {label}")
    directions, speeds = _DIRECTIONS[variant], _SPEEDS[variant]
    direction, speed = classes[label].split("_")
    scale = size / 32

    def velocity(direction: str, speed: str) -> tuple[float, float]:
        dy, dx = directions[direction]
        return dy * speeds[speed] * scale, dx * speeds[speed] * scale

    hard = variant == "hard"
    background = rng.integers(0, 70 if hard else 100, 3)
    colour = rng.integers(200 if hard else 150, 256, 3)
    # The basic variant keeps its original order of draws, so its videos are those of earlier releases.
    static_colour = None if hard else rng.integers(100, 200, 3)
    shape = ("square", "disc")[int(rng.integers(2))]
    side = float(rng.integers(size // 6, (size // 5 if hard else size // 4) + 1))
    top, left = rng.uniform(0, size, 2)
    # One distractor, drawn before the target (which stays on top): static (basic), or moving with one of
    # the class motions (hard).
    if hard:
        d_shape = ("square", "disc")[int(rng.integers(2))]
        d_side = float(rng.integers(size // 6, size // 5 + 1))
        d_top, d_left = rng.uniform(0, size, 2)
        d_dy, d_dx = velocity(*classes[int(rng.integers(len(classes)))].split("_"))
        d_colour = rng.integers(90, 170, 3)

        def distractor(t: int) -> tuple[np.ndarray, np.ndarray]:
            return _shape_mask(size, d_shape, d_side, d_top + d_dy * t, d_left + d_dx * t), d_colour
    else:
        static = _shape_mask(
            size, ("disc", "square")[int(rng.integers(2))], side * 0.7, *rng.uniform(0, size, 2)
        )

        def distractor(t: int) -> tuple[np.ndarray, np.ndarray]:
            return static, static_colour

    dy, dx = velocity(direction, speed)
    noise = 10 if hard else 6
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        image = np.broadcast_to(background, (size, size, 3)).astype(np.float32)
        distractor_mask, distractor_colour = distractor(t)
        image[distractor_mask] = distractor_colour
        image[_shape_mask(size, shape, side, top + dy * t, left + dx * t)] = colour
        image += rng.normal(0, noise, image.shape)
        video[t] = np.clip(image, 0, 255).astype(np.uint8)
    return video


def _pick_codec(codec: str) -> str:
    # FFmpeg's native mpeg4 encoder is in every build, and its output does not vary between processes.
    return "mpeg4" if codec == "auto" else codec


def _write_video(path: Path, video: np.ndarray, fps: int, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        # Near-lossless and single-threaded: tiny moving shapes survive, and the bytes depend on the seed
        # only.
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
        for split_id, (split, per_class) in enumerate(
            (("train", spec.train_per_class), ("val", spec.val_per_class))
        ):
            lines = []
            for label, name in enumerate(motion_classes(spec.variant)):
                (work / split / name).mkdir(parents=True)
                for n in range(per_class):
                    rng = np.random.default_rng([spec.seed, split_id, label, n])
                    relative = f"{split}/{name}/{n:04d}.mp4"
                    _write_video(
                        work / relative,
                        render_motion_video(label, rng, spec.frames, spec.size, spec.variant),
                        spec.fps,
                        codec,
                    )
                    lines.append(f"{relative} {label}")
            (work / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (work / "classes.txt").write_text("\n".join(motion_classes(spec.variant)) + "\n")
        (work / "motion.json").write_text(json.dumps(wanted))
        if marker.is_file() and json.loads(marker.read_text()) == wanted:
            # Another process generated the same dataset meanwhile and may be reading it: keep theirs.
            shutil.rmtree(work)
            return root
        if root.exists():
            # A stale dataset with other parameters: replace it (the marker check above said it differs).
            shutil.rmtree(root)
        os.replace(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return root
