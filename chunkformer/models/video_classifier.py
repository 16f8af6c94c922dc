"""What the attention zoo's models share: the clip checks, a linear head with timm's classifier API, the
weight inits, and building a registered preset from a config dataclass and keyword overrides.

The zoo's models (TimeSformer, ViViT, Video Swin, neighbourhood attention) are the baselines SCT is compared
against; each family lives in its own module and subclasses ``VideoClassifier`` here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
from torch import nn

from chunkformer.layers._checks import check_int, check_positive_int, check_probability

__all__ = ["VideoClassifier", "build_preset", "drop_path_rates", "fan_in_init", "vit_init"]

Model = TypeVar("Model", bound="VideoClassifier")

# Keyword arguments of every zoo model's constructor besides the config (the rest of a preset's overrides
# are config fields).
MODEL_KWARGS = ("img_size",)


def vit_init(module: nn.Module) -> None:
    """timm's ViT init, which TimeSformer, ViViT and Video Swin all use: trunc_normal(0.02) Linear weights,
    zero biases, LayerNorm ones / zeros. Convolutions keep PyTorch's init, as in those codebases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def fan_in_init(model: nn.Module) -> None:
    """PyTorch's fan-in init for every Linear layer (what the tiny variants use, as ``sct_tiny``): at widths
    of 32-64, trunc_normal(0.02) leaves every attention logit near 0 and training on a plateau."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """timm's linear stochastic-depth rule: block i of n gets ``rate * i / (n - 1)``."""
    # Plain Python, not torch.linspace: the models must also build on the meta device.
    return [rate * index / max(blocks - 1, 1) for index in range(blocks)]


class VideoClassifier(nn.Module):
    """Base of the zoo's models: a clip encoder (``forward_features``, in the subclass) and a linear head.

    Subclasses build their encoder, then call ``_init_head(num_features)``. The head is timm's: dropout
    (``head_drop_rate``), then one Linear; ``num_classes=0`` makes it the identity, so the model returns
    the clip feature.

    Args:
        num_classes: classes of the head; 0 returns the clip feature (B, num_features).
        num_frames: T, the frames per clip the model is built for.
        img_size: the frame side the model is built for.
        head_drop_rate: dropout before the head's Linear.

    Shape:
        - x: (B, C, T, H, W) -> (B, num_classes), or (B, num_features) when ``num_classes=0``
    """

    num_features: int

    def __init__(self, num_classes: int, num_frames: int, img_size: int, head_drop_rate: float) -> None:
        super().__init__()
        owner = type(self).__name__
        if check_int(num_classes, "num_classes", owner) < 0:
            raise ValueError(f"{owner}: num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.num_frames = check_positive_int(num_frames, "num_frames", owner)
        self.img_size = check_positive_int(img_size, "img_size", owner)
        self.head_drop = nn.Dropout(check_probability(head_drop_rate, "head_drop_rate", owner))

    def _init_head(self, num_features: int) -> None:
        self.num_features = num_features
        self.head = self._make_head(self.num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def _check_clip(self, x: torch.Tensor, in_chans: int, fixed_frames: bool) -> None:
        """TypeError for a non-tensor, ValueError for another rank, channel count or (``fixed_frames``:
        the model has a position embedding per frame) another clip length than ``num_frames``."""
        owner = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{owner} expects a torch.Tensor of shape (B, C, T, H, W), got {type(x).__name__}"
            )
        if x.dim() != 5 or x.shape[1] != in_chans:
            raise ValueError(
                f"{owner} expects input of shape (B, C, T, H, W) with C={in_chans}, got {tuple(x.shape)}"
            )
        if fixed_frames and x.shape[2] != self.num_frames:
            raise ValueError(
                f"{owner} was built for num_frames={self.num_frames} but got T={x.shape[2]} (input "
                f"{tuple(x.shape)}); build it with num_frames={x.shape[2]}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's ``get_classifier``)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` classes (0: the model returns clip features), on the model's
        device and dtype; ``model_spec`` follows (its class names no longer apply)."""
        owner = f"{type(self).__name__}.reset_classifier"
        if check_int(num_classes, "num_classes", owner) < 0:
            raise ValueError(f"{owner}: num_classes must be >= 0, got {num_classes}")
        reference = next(self.parameters())
        head = self._make_head(num_classes)
        if num_classes:
            vit_init(head)
        self.head = head.to(device=reference.device, dtype=reference.dtype)
        self.num_classes = num_classes
        spec = getattr(self, "model_spec", None)
        if spec is not None:
            self.model_spec = dataclasses.replace(spec, num_classes=num_classes, class_names=None)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_preset(
    model_cls: type[Model],
    config: Any,
    num_classes: int,
    num_frames: int,
    overrides: dict[str, Any],
    img_size: int,
    model_kwargs: tuple[str, ...] = MODEL_KWARGS,
) -> Model:
    """``model_cls(config with overrides, ...)``: ``overrides`` are ``model_kwargs`` (arguments of
    ``model_cls``; ``img_size`` defaults to ``img_size``) or fields of the config dataclass; a TypeError
    lists both for any other name."""
    overrides = dict(overrides)
    given = {key: overrides.pop(key) for key in model_kwargs if key in overrides}
    given.setdefault("img_size", img_size)
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"unknown override(s) {unknown}: expected model arguments {list(model_kwargs)} or "
            f"{type(config).__name__} fields {sorted(fields)}"
        )
    config = dataclasses.replace(config, **overrides)
    return model_cls(config, num_classes=num_classes, num_frames=num_frames, **given)
