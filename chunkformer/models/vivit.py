"""ViViT's factorised encoder (model 2; Arnab et al., ICCV 2021) and its registered presets.

The architecture of google-research/scenic (``projects/vivit``, ``attention_config.type =
'factorized_encoder'``): a tubelet embedding (a strided 3-D convolution), a spatial ViT encoder run on each
temporal index with its own class token, then a temporal encoder over those class tokens with a class token
of its own, whose final LayerNorm output is classified by a Linear head. Both encoders are pre-norm ViT
blocks (``PreNormBlock`` over ``Attention``) with learned position embeddings that include the class
token's row, and end with a LayerNorm, as scenic's ``Encoder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from chunkformer.layers import Attention, PreNormBlock
from chunkformer.layers._checks import check_int_tuple
from chunkformer.models.registry import register_model
from chunkformer.models.video_classifier import (
    VideoClassifier,
    build_preset,
    drop_path_rates,
    fan_in_init,
    vit_init,
)

_AXES = "(t, h, w) triple"

__all__ = ["ViViTConfig", "ViViTFactorisedEncoder", "vivit_b_fe", "vivit_tiny"]


@dataclass(frozen=True)
class ViViTConfig:
    """The ViViT factorised encoder as data (defaults: ViViT-B/16x2 FE).

    Args:
        tubelet_size: (t, h, w) of the tubelets, one token each ((2, 16, 16)).
        in_chans: input channels.
        dim: token width of both encoders (768).
        spatial_depth: blocks of the spatial encoder (12, a ViT-B).
        temporal_depth: blocks of the temporal encoder (4: scenic's
            ``configs/kinetics400/vivit_base_factorised_encoder.py`` sets
            ``temporal_transformer.num_layers = 4``).
        num_heads: heads of every block (12).
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (4: scenic's mlp_dim 3072).
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout after the position embeddings, in the MLPs and after the attention projections.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block; earlier blocks (spatial, then temporal) get
            linearly less.
        head_drop_rate: dropout before the head.
    """

    tubelet_size: tuple[int, int, int] = (2, 16, 16)
    in_chans: int = 3
    dim: int = 768
    spatial_depth: int = 12
    temporal_depth: int = 4
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_drop_rate: float = 0.0

    def __post_init__(self) -> None:
        # A list from a JSON checkpoint spec or a YAML file becomes the tuple the model expects.
        tubelet = check_int_tuple(self.tubelet_size, 3, "tubelet_size", "ViViTConfig", axes=_AXES)
        object.__setattr__(self, "tubelet_size", tubelet)


def _blocks(config: ViViTConfig, rates: list[float]) -> nn.ModuleList:
    return nn.ModuleList(
        PreNormBlock(
            config.dim,
            Attention(config.dim, config.num_heads, config.qkv_bias, config.attn_drop_rate, config.drop_rate),
            mlp_ratio=config.mlp_ratio,
            proj_drop=config.drop_rate,
            drop_path=rate,
        )
        for rate in rates
    )


class ViViTFactorisedEncoder(VideoClassifier):
    """ViViT model 2: a spatial encoder per temporal index, then a temporal encoder over their class tokens.

    A clip whose length is not a multiple of the tubelet's t is zero-padded at its end (as a 'SAME'
    convolution would pad it): a 1-frame clip works with t = 2. The temporal position embedding has
    ``ceil(num_frames / t)`` rows (plus the class token's), and a clip must give that many tubelets:
    ``ceil(T / t) = ceil(num_frames / t)``.

    Args:
        config: the architecture.
        num_classes: classes of the head; 0 returns the clip feature (B, config.dim).
        num_frames: T; the temporal encoder covers ``ceil(num_frames / tubelet_size[0])`` indices.
        img_size: frame side; clips must be img_size x img_size (the spatial position embedding's grid).

    Shape:
        - x: (B, C, num_frames, img_size, img_size) -> (B, num_classes), or (B, config.dim) with
          ``num_classes=0``
    """

    def __init__(
        self, config: ViViTConfig, num_classes: int = 400, num_frames: int = 32, img_size: int = 224
    ) -> None:
        if not isinstance(config, ViViTConfig):
            raise TypeError(
                f"ViViTFactorisedEncoder: config must be a ViViTConfig, got {type(config).__name__}"
            )
        super().__init__(num_classes, num_frames, img_size, config.head_drop_rate)
        tt, th, tw = config.tubelet_size
        if img_size % th or img_size % tw:
            raise ValueError(
                f"ViViTFactorisedEncoder: img_size must be a multiple of the tubelet's (h, w) = "
                f"({th}, {tw}), got {img_size}"
            )
        self.config = config
        dim = config.dim
        self.grid = (img_size // th, img_size // tw)
        self.temporal_tokens = -(-num_frames // tt)
        self.patch_embed = nn.Conv3d(config.in_chans, dim, config.tubelet_size, stride=config.tubelet_size)
        self.spatial_cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.spatial_pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.temporal_pos_embed = nn.Parameter(torch.zeros(1, 1 + self.temporal_tokens, dim))
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = drop_path_rates(config.drop_path_rate, config.spatial_depth + config.temporal_depth)
        self.spatial_blocks = _blocks(config, rates[: config.spatial_depth])
        self.spatial_norm = nn.LayerNorm(dim)
        self.temporal_blocks = _blocks(config, rates[config.spatial_depth :])
        self.temporal_norm = nn.LayerNorm(dim)
        self._init_head(dim)
        for parameter in (
            self.spatial_cls_token,
            self.spatial_pos_embed,
            self.temporal_cls_token,
            self.temporal_pos_embed,
        ):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.apply(vit_init)

    def forward_frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial encoder's class token for every temporal index (after its LayerNorm).

        Shape:
            - x: (B, C, T, img_size, img_size) -> (B, ceil(T / tubelet_size[0]), config.dim)
        """
        self._check_clip(x, self.config.in_chans, fixed_frames=False)
        tt = self.config.tubelet_size[0]
        tubelets = -(-x.shape[2] // tt)
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size) or tubelets != self.temporal_tokens:
            raise ValueError(
                f"ViViTFactorisedEncoder was built for clips of {self.num_frames} frames (padded to "
                f"{self.temporal_tokens} tubelets of {tt}) of {self.img_size} x {self.img_size}, got input "
                f"{tuple(x.shape)}; build it with num_frames=T and img_size=H"
            )
        # Zero frames at the end up to whole tubelets ('SAME' padding along time).
        x = F.pad(x, (0, 0, 0, 0, 0, -x.shape[2] % tt))
        batch = x.shape[0]
        tokens = rearrange(self.patch_embed(x), "b c t h w -> (b t) (h w) c")
        cls = self.spatial_cls_token.expand(tokens.shape[0], -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.spatial_pos_embed)
        for block in self.spatial_blocks:
            tokens = block(tokens)
        return rearrange(self.spatial_norm(tokens[:, 0]), "(b t) c -> b t c", b=batch)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The temporal encoder's class token after its LayerNorm.

        Shape:
            - x: (B, C, T, img_size, img_size) -> (B, config.dim)
        """
        frames = self.forward_frame_features(x)
        cls = self.temporal_cls_token.expand(frames.shape[0], -1, -1)
        tokens = self.pos_drop(torch.cat([cls, frames], dim=1) + self.temporal_pos_embed)
        for block in self.temporal_blocks:
            tokens = block(tokens)
        return self.temporal_norm(tokens[:, 0])


@register_model
def vivit_b_fe(num_classes: int = 400, num_frames: int = 32, **overrides: Any) -> ViViTFactorisedEncoder:
    """ViViT-B/16x2 factorised encoder (model 2) at 32 x 224 x 224: 2 x 16 x 16 tubelets, a 12-block ViT-B
    spatial encoder, a 4-block temporal encoder (scenic's K400 config), dim 768, 12 heads, MLP 3072.
    ``overrides``: ``img_size`` (224) or ``ViViTConfig`` fields."""
    return build_preset(ViViTFactorisedEncoder, ViViTConfig(), num_classes, num_frames, overrides, 224)


@register_model
def vivit_tiny(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> ViViTFactorisedEncoder:
    """A small ViViT factorised encoder for the motion data (8 frames of 32 x 32): 2 x 4 x 4 tubelets,
    dim 56, 2 spatial and 1 temporal blocks, 4 heads, MLP 2x (1.12x ``sct_tiny``'s MACs), PyTorch's
    fan-in init for the Linear layers (as ``sct_tiny``)."""
    config = ViViTConfig(
        tubelet_size=(2, 4, 4), dim=56, spatial_depth=2, temporal_depth=1, num_heads=4, mlp_ratio=2.0
    )
    model = build_preset(ViViTFactorisedEncoder, config, num_classes, num_frames, overrides, 32)
    fan_in_init(model)
    return model
