"""Clip transforms in plain torch: random resized crop, flip, short-side resize, spatial crops, normalisation.

Every transform takes and returns a float clip of shape (C, T, H, W); randomness comes from an explicit
``torch.Generator`` so a sample's augmentation is a function of its seed (which makes resumed and
distributed runs see the same clips as an uninterrupted single-process run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "EvalTransform",
    "TrainTransform",
    "center_crop",
    "normalize",
    "random_resized_crop",
    "resize",
    "resize_short_side",
    "spatial_crops",
    "to_float_clip",
]

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def to_float_clip(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames to a float clip in [0, 1].

    Shape:
        - frames: (T, H, W, C) uint8 -> (C, T, H, W) float32
    """
    return frames.permute(3, 0, 1, 2).float().div_(255.0)


def resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of every frame (antialiased when shrinking).

    Shape:
        - clip: (C, T, H, W) -> (C, T, height, width)
    """
    if clip.shape[-2:] == (height, width):
        return clip
    # interpolate treats dim 0 as batch and dim 1 as channels: frames as the batch keeps them independent.
    # Contiguous, because the antialiased kernel is about 1.5x slower on a strided view (same values).
    frames = clip.permute(1, 0, 2, 3).contiguous()
    out = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.permute(1, 0, 2, 3)


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size``, keeping the aspect ratio.

    Shape:
        - clip: (C, T, H, W) -> (C, T, H', W') with min(H', W') = size
    """
    height, width = clip.shape[-2:]
    if height <= width:
        return resize(clip, size, max(size, round(width * size / height)))
    return resize(clip, max(size, round(height * size / width)), size)


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window.

    Shape:
        - clip: (C, T, H, W) with H, W >= size -> (C, T, size, size)
    """
    return spatial_crops(clip, size, 1)[0]


def spatial_crops(clip: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """``num_crops`` square crops evenly spaced along the longer side, centred on the shorter one
    (3 crops: left/centre/right or top/centre/bottom, the usual 3-crop test).

    Shape:
        - clip: (C, T, H, W) with H, W >= size -> num_crops x (C, T, size, size)
    """
    height, width = clip.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"spatial_crops: frames {height}x{width} are smaller than the crop {size}")
    crops = []
    for k in range(num_crops):
        fraction = 0.5 if num_crops == 1 else k / (num_crops - 1)
        if width >= height:
            top, left = (height - size) // 2, round((width - size) * fraction)
        else:
            top, left = round((height - size) * fraction), (width - size) // 2
        crops.append(clip[..., top : top + size, left : left + size])
    return crops


def random_resized_crop(
    clip: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Inception-style crop: a window of random area fraction ``scale`` and aspect ``ratio`` (log-uniform),
    the same for every frame, resized to ``size`` x ``size``. Falls back to the central square after 10
    rejected draws, as torchvision does.

    Shape:
        - clip: (C, T, H, W) -> (C, T, size, size)
    """
    return resize(_random_window(clip, generator, scale, ratio), size, size)


def _random_window(
    clip: torch.Tensor, generator: torch.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """The window of ``random_resized_crop``, before resizing (a view of ``clip``, any dtype)."""
    height, width = clip.shape[-2:]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(4, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(draws[2] * (height - crop_h + 1))
            left = int(draws[3] * (width - crop_w + 1))
            return clip[..., top : top + crop_h, left : left + crop_w]
    return center_crop(clip, min(height, width))


def normalize(clip: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``.

    Shape:
        - clip: (C, T, H, W) -> (C, T, H, W)
    """
    mean_t = torch.tensor(mean, dtype=clip.dtype).view(-1, 1, 1, 1)
    std_t = torch.tensor(std, dtype=clip.dtype).view(-1, 1, 1, 1)
    return (clip - mean_t) / std_t


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation: random resized crop (scale jitter) and an optional horizontal flip.

    Args:
        crop_size: output side.
        scale: area fraction range of the crop.
        ratio: aspect ratio range of the crop.
        hflip: flip with probability 0.5. Datasets whose labels depend on left/right (e.g. the synthetic
            motion data) either disable it or pass ``flip_label_map`` to the dataset.
        mean: normalisation mean.
        std: normalisation std.
    """

    crop_size: int
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
        """Augment one clip.

        Returns:
            the clip and whether it was flipped.

        Shape:
            - frames: (T, H, W, C) uint8 -> (C, T, crop_size, crop_size) float32
        """
        # random_resized_crop(to_float_clip(frames), ...), with the window cut from the uint8 frames first so
        # that only the window is converted to float (the same values, less work).
        window = _random_window(frames.permute(3, 0, 1, 2), generator, self.scale, self.ratio)
        clip = resize(window.float().div_(255.0), self.crop_size, self.crop_size)
        # Always draw, so the generator's stream does not depend on the flag.
        flipped = bool(torch.rand((), generator=generator) < 0.5) and self.hflip
        if flipped:
            clip = clip.flip(-1)
        return normalize(clip, self.mean, self.std), flipped


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation views: resize the short side to ``crop_size``, then ``num_crops`` spatial crops.

    Args:
        crop_size: output side (and the short side after resizing).
        num_crops: spatial crops per temporal view (1: centre, 3: the usual 3-crop test).
        mean: normalisation mean.
        std: normalisation std.
    """

    crop_size: int
    num_crops: int = 3
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD

    def __call__(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """The spatial crops of one temporal view.

        Shape:
            - frames: (T, H, W, C) uint8 -> num_crops x (C, T, crop_size, crop_size) float32
        """
        clip = normalize(resize_short_side(to_float_clip(frames), self.crop_size), self.mean, self.std)
        return spatial_crops(clip, self.crop_size, self.num_crops)
