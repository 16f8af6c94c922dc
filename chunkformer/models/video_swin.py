"""Video Swin Transformer (Liu et al., CVPR 2022) and its registered presets.

The architecture of SwinTransformer/Video-Swin-Transformer (``mmaction/models/backbones/swin_transformer.py``
with its I3D head): a 3-D patch embedding (strided Conv3d, then LayerNorm), stages of pre-norm blocks whose
token mixer is ``WindowAttention3D`` (shifted by half a window in every other block), a 2 x 2 spatial patch
merging between stages (``LinearPooling`` with its LayerNorm: 4C -> 2C, no bias), a final LayerNorm, the
mean over all tokens and a Linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from chunkformer.layers import LinearPooling, PreNormBlock, WindowAttention3D
from chunkformer.layers._checks import check_int_tuple
from chunkformer.models.registry import register_model
from chunkformer.models.video_classifier import (
    VideoClassifier,
    build_preset,
    drop_path_rates,
    fan_in_init,
    vit_init,
)

__all__ = ["VideoSwinConfig", "VideoSwinStage", "VideoSwinTransformer", "video_swin_t", "video_swin_tiny"]

_AXES = "(t, h, w) triple"


@dataclass(frozen=True)
class VideoSwinConfig:
    """The Video Swin architecture as data (defaults: Video Swin-T).

    Args:
        patch_size: (t, h, w) of the 3-D patches, one token each ((2, 4, 4)).
        in_chans: input channels.
        embed_dim: width of the first stage (96); each patch merging doubles it.
        depths: blocks per stage ((2, 2, 6, 2)).
        num_heads: heads per stage ((3, 6, 12, 24)).
        window_size: (t, h, w) attention window ((8, 7, 7)); odd blocks shift it by half.
        mlp_ratio: MLP hidden width as a multiple of the stage's width (4).
        qkv_bias: bias in the qkv projections.
        patch_norm: LayerNorm after the patch embedding (Video Swin-T: True).
        drop_rate: dropout after the patch embedding, in the MLPs and after the attention projections.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block; earlier blocks get linearly less.
        head_drop_rate: dropout before the head (Video Swin's I3D head: 0.5 in its training configs).
    """

    patch_size: tuple[int, int, int] = (2, 4, 4)
    in_chans: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_norm: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_drop_rate: float = 0.0

    def __post_init__(self) -> None:
        # Lists from a JSON checkpoint spec or a YAML file become the tuples the model expects.
        owner = "VideoSwinConfig"
        for name in ("patch_size", "window_size"):
            object.__setattr__(self, name, check_int_tuple(getattr(self, name), 3, name, owner, axes=_AXES))
        for name in ("depths", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not value:
                raise TypeError(f"{owner}: {name} must be a non-empty tuple of ints, got {value!r}")
            object.__setattr__(self, name, check_int_tuple(value, len(value), name, owner))
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"{owner}: depths and num_heads must give one value per stage, got {len(self.depths)} "
                f"depths {self.depths} and {len(self.num_heads)} num_heads {self.num_heads}"
            )

    @property
    def num_features(self) -> int:
        """Width of the last stage (the clip feature)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


class VideoSwinStage(nn.Module):
    """One Video Swin stage: ``depth`` pre-norm blocks of ``WindowAttention3D``, the odd ones shifted by half
    a window, then (``downsample``) a 2 x 2 patch merging to twice the width.

    Args:
        dim: token width of the stage.
        depth: number of blocks.
        num_heads: heads of each block.
        window_size: (t, h, w) window.
        config: the model's config (MLP ratio, bias, dropout rates).
        drop_path: stochastic depth of each block.
        downsample: end with a patch merging (all stages but the last).

    Shape:
        - x: (B, T, H, W, C) -> (B, T, H, W, C), or (B, T, ceil(H / 2), ceil(W / 2), 2C) with ``downsample``
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: tuple[int, int, int],
        config: VideoSwinConfig,
        drop_path: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        shift = tuple(w // 2 for w in window_size)
        self.blocks = nn.ModuleList(
            PreNormBlock(
                dim,
                WindowAttention3D(
                    dim,
                    num_heads,
                    window_size,
                    shift_size=shift if index % 2 else 0,
                    qkv_bias=config.qkv_bias,
                    attn_drop=config.attn_drop_rate,
                    proj_drop=config.drop_rate,
                ),
                mlp_ratio=config.mlp_ratio,
                proj_drop=config.drop_rate,
                drop_path=drop_path[index],
            )
            for index in range(depth)
        )
        # Video Swin's PatchMerging is a LinearPooling with its LayerNorm (the 2 x 2 cell's four tokens are
        # concatenated in another order, which only matters when loading Video Swin's weights).
        self.downsample = LinearPooling(dim, 2 * dim, norm_layer=nn.LayerNorm) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class VideoSwinTransformer(VideoClassifier):
    """Video Swin: 3-D patch embedding, hierarchical stages of (shifted) 3-D window attention, mean pooling.

    There is no absolute position embedding (the relative position bias inside each window is the only
    position signal), so any clip size works: T, H and W are zero-padded at their ends to whole patches (as
    Video Swin's patch embedding does) and ``WindowAttention3D`` pads to whole windows and masks the
    padding. Unlike Video Swin, a window larger than the clip along an axis keeps its size (the missing
    tokens are masked) rather than shrinking to the clip, so short clips pay for full windows.

    Args:
        config: the architecture.
        num_classes: classes of the head; 0 returns the clip feature (B, config.num_features).
        num_frames: the clip length the model is meant for (any T works).
        img_size: the frame side the model is meant for (any H and W work).

    Shape:
        - x: (B, C, T, H, W) -> (B, num_classes), or (B, config.num_features) with ``num_classes=0``
    """

    def __init__(
        self, config: VideoSwinConfig, num_classes: int = 400, num_frames: int = 32, img_size: int = 224
    ) -> None:
        if not isinstance(config, VideoSwinConfig):
            raise TypeError(
                f"VideoSwinTransformer: config must be a VideoSwinConfig, got {type(config).__name__}"
            )
        super().__init__(num_classes, num_frames, img_size, config.head_drop_rate)
        self.config = config
        self.patch_embed = nn.Conv3d(
            config.in_chans, config.embed_dim, config.patch_size, stride=config.patch_size
        )
        self.patch_norm = nn.LayerNorm(config.embed_dim) if config.patch_norm else nn.Identity()
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = iter(drop_path_rates(config.drop_path_rate, sum(config.depths)))
        stages = len(config.depths)
        self.layers = nn.ModuleList(
            VideoSwinStage(
                config.embed_dim * 2**index,
                depth,
                heads,
                config.window_size,
                config,
                [next(rates) for _ in range(depth)],
                downsample=index < stages - 1,
            )
            for index, (depth, heads) in enumerate(zip(config.depths, config.num_heads, strict=True))
        )
        self.norm = nn.LayerNorm(config.num_features)
        self._init_head(config.num_features)
        self.apply(vit_init)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens after the final LayerNorm.

        Shape:
            - x: (B, C, T, H, W) -> (B, T', H', W', config.num_features), with T' = ceil(T / pt) and H', W'
              the patch grid halved (rounding up) at each merging
        """
        self._check_clip(x, self.config.in_chans, fixed_frames=False)
        pads = [-n % p for n, p in zip(x.shape[2:], self.config.patch_size, strict=True)]
        # F.pad pads from the last axis backwards: W, H, T, each at its end.
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        tokens = self.pos_drop(self.patch_norm(rearrange(self.patch_embed(x), "b c t h w -> b t h w c")))
        for stage in self.layers:
            tokens = stage(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the last stage's normalised tokens.

        Shape:
            - x: (B, C, T, H, W) -> (B, config.num_features)
        """
        return self.forward_tokens(x).mean(dim=(1, 2, 3))


@register_model
def video_swin_t(num_classes: int = 400, num_frames: int = 32, **overrides: Any) -> VideoSwinTransformer:
    """Video Swin-T (32 x 224 x 224 in the paper): patch (2, 4, 4), embed 96, depths (2, 2, 6, 2), heads
    (3, 6, 12, 24), window (8, 7, 7), MLP 4x. ``overrides``: ``img_size`` (224) or ``VideoSwinConfig``
    fields."""
    return build_preset(VideoSwinTransformer, VideoSwinConfig(), num_classes, num_frames, overrides, 224)


@register_model
def video_swin_tiny(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> VideoSwinTransformer:
    """A small Video Swin for the motion data (8 frames of 32 x 32): patch (2, 4, 4), embed 40, depths
    (2, 2), heads (2, 4), window (2, 4, 4) (so a 4 x 8 x 8 token grid holds 2 x 2 x 2 windows, and the
    merged 4 x 4 x 4 grid 2 x 1 x 1), MLP 2x (1.03x ``sct_tiny``'s MACs), PyTorch's fan-in init for the
    Linear layers (as ``sct_tiny``)."""
    config = VideoSwinConfig(
        embed_dim=40, depths=(2, 2), num_heads=(2, 4), window_size=(2, 4, 4), mlp_ratio=2.0
    )
    model = build_preset(VideoSwinTransformer, config, num_classes, num_frames, overrides, 32)
    fan_in_init(model)
    return model
