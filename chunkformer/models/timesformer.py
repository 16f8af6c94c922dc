"""TimeSformer (Bertasius et al., ICML 2021) with divided space-time attention, and its registered presets.

The architecture of facebookresearch/TimeSformer (``timesformer/models/vit.py``,
``attention_type='divided_space_time'``): a ViT whose blocks are ``DividedSpaceTimeAttention`` followed by
the MLP, one class token, a spatial position embedding shared by all frames (its first row is the class
token's) and a temporal embedding added to the patch tokens, the class token's final LayerNorm output
classified by a Linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers import DividedSpaceTimeAttention, Mlp
from chunkformer.models.registry import register_model
from chunkformer.models.video_classifier import (
    VideoClassifier,
    build_preset,
    drop_path_rates,
    fan_in_init,
    vit_init,
)

__all__ = ["TimeSformer", "TimeSformerBlock", "TimeSformerConfig", "timesformer_base", "timesformer_tiny"]


@dataclass(frozen=True)
class TimeSformerConfig:
    """The TimeSformer architecture as data (defaults: TimeSformer-Base, a ViT-B/16).

    Args:
        patch_size: side of the square patches (16).
        in_chans: input channels.
        dim: token width (768).
        depth: number of blocks (12).
        num_heads: heads of both the temporal and the spatial attention (12).
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (4).
        qkv_bias: bias in the qkv projections (TimeSformer: True).
        drop_rate: dropout after the embeddings, in the MLPs and after the attention projections.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block; earlier blocks get linearly less.
        head_drop_rate: dropout before the head.
    """

    patch_size: int = 16
    in_chans: int = 3
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_drop_rate: float = 0.0


class TimeSformerBlock(DividedSpaceTimeAttention):
    """TimeSformer's block: divided space-time attention, then ``x + drop_path(mlp(norm2(x)))`` over the
    class token and the patch tokens.

    A subclass rather than a wrapper, so the parameter names are TimeSformer's (``blocks.i.temporal_attn``,
    ``blocks.i.attn``, ``blocks.i.norm2``, ``blocks.i.mlp``). The MLP runs on the class token and the patch
    tokens as one (B, 1 + T N, C) sequence, so stochastic depth drops both together per sample, as in
    TimeSformer.

    Args:
        dim: token width C.
        num_heads: heads of both attentions; must divide ``dim``.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: bias in the qkv projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the attention projections and in the MLP.
        drop_path: stochastic depth of the three residual branches.

    Shape:
        - x: (B, T, N, C), cls_token: (B, 1, C) -> ((B, T, N, C), (B, 1, C))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, max(1, round(dim * mlp_ratio)), proj_drop=proj_drop)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, cls_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, cls_token = super().forward(x, cls_token)
        batch, frames, tokens, _ = x.shape
        stream = torch.cat([cls_token, rearrange(x, "b t n c -> b (t n) c")], dim=1)
        stream = stream + self.drop_path(self.mlp(self.norm2(stream)))
        return rearrange(stream[:, 1:], "b (t n) c -> b t n c", t=frames), stream[:, :1]


class TimeSformer(VideoClassifier):
    """TimeSformer with divided space-time attention.

    Frames are cut into ``patch_size`` patches (a strided Conv2d, as ViT), the spatial position embedding
    (one row for the class token, then one per patch of an ``img_size`` frame, shared by all frames) and
    the temporal embedding (one row per frame, zero at init) are added, and ``depth`` ``TimeSformerBlock``
    run; the class token's LayerNorm output is the clip feature. Weights are initialised as TimeSformer:
    timm's ViT init, then ``temporal_fc`` zeroed in every block but the first, so that each later block
    starts as its image (spatial-only) block; until ``temporal_fc`` has moved, the temporal attention
    behind it gets a zero gradient.

    Args:
        config: the architecture.
        num_classes: classes of the head; 0 returns the clip feature (B, config.dim).
        num_frames: T, the rows of the temporal embedding; clips must have this many frames.
        img_size: frame side; clips must be img_size x img_size (the position embedding's grid).

    Shape:
        - x: (B, C, num_frames, img_size, img_size) -> (B, num_classes), or (B, config.dim) with
          ``num_classes=0``
    """

    def __init__(
        self, config: TimeSformerConfig, num_classes: int = 400, num_frames: int = 8, img_size: int = 224
    ) -> None:
        if not isinstance(config, TimeSformerConfig):
            raise TypeError(f"TimeSformer: config must be a TimeSformerConfig, got {type(config).__name__}")
        super().__init__(num_classes, num_frames, img_size, config.head_drop_rate)
        if img_size % config.patch_size:
            raise ValueError(
                f"TimeSformer: img_size must be a multiple of patch_size={config.patch_size}, got {img_size}"
            )
        self.config = config
        dim = config.dim
        self.grid = img_size // config.patch_size
        self.patch_embed = nn.Conv2d(config.in_chans, dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        self.pos_drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(
            TimeSformerBlock(
                dim,
                config.num_heads,
                config.mlp_ratio,
                config.qkv_bias,
                config.attn_drop_rate,
                config.drop_rate,
                rate,
            )
            for rate in drop_path_rates(config.drop_path_rate, config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self._init_head(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(vit_init)
        self.zero_temporal_fc()

    def zero_temporal_fc(self) -> None:
        """Zero ``temporal_fc`` in every block but the first, as TimeSformer's init does (so a model loaded
        with image weights starts as the image model)."""
        for block in list(self.blocks)[1:]:
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token's final LayerNorm output.

        Shape:
            - x: (B, C, num_frames, img_size, img_size) -> (B, config.dim)
        """
        self._check_clip(x, self.config.in_chans, fixed_frames=True)
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"TimeSformer was built for {self.img_size} x {self.img_size} frames (its position embedding "
                f"covers a {self.grid} x {self.grid} patch grid), got input {tuple(x.shape)}; build it with "
                "img_size=H"
            )
        batch = x.shape[0]
        patches = self.patch_embed(rearrange(x, "b c t h w -> (b t) c h w"))
        tokens = rearrange(patches, "(b t) c h w -> b t (h w) c", b=batch)
        # Spatial rows after the class token's, shared by every frame; one temporal row per frame.
        tokens = tokens + self.pos_embed[:, 1:] + self.time_embed[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        tokens, cls = self.pos_drop(tokens), self.pos_drop(cls)
        for block in self.blocks:
            tokens, cls = block(tokens, cls)
        return self.norm(cls[:, 0])


def _build(
    config: TimeSformerConfig, num_classes: int, num_frames: int, overrides: dict[str, Any], img_size: int
) -> TimeSformer:
    return build_preset(TimeSformer, config, num_classes, num_frames, overrides, img_size)


@register_model
def timesformer_base(num_classes: int = 400, num_frames: int = 8, **overrides: Any) -> TimeSformer:
    """TimeSformer-Base (divided space-time, ViT-B/16 at 8 x 224 x 224): dim 768, 12 blocks, 12 heads,
    MLP 4x; 121.57M parameters at 400 classes (the paper: 121.4M). ``overrides``: ``img_size`` (224) or
    ``TimeSformerConfig`` fields."""
    return _build(TimeSformerConfig(), num_classes, num_frames, overrides, 224)


@register_model
def timesformer_tiny(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> TimeSformer:
    """A small TimeSformer for the motion data (8 frames of 32 x 32): 4 x 4 patches, dim 32, 2 blocks,
    2 heads, MLP 2x (1.18x ``sct_tiny``'s MACs), PyTorch's fan-in init for the Linear layers (as
    ``sct_tiny``), ``temporal_fc`` of the second block zeroed as TimeSformer does."""
    model = _build(
        TimeSformerConfig(patch_size=4, dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
        num_classes,
        num_frames,
        overrides,
        32,
    )
    fan_in_init(model)
    model.zero_temporal_fc()
    return model
