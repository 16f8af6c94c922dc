"""A video transformer of 3-D neighbourhood attention (NATTEN semantics, Hassani et al., CVPR 2023), and its
registered small preset.

NAT itself is an image model (hierarchical, with overlapping convolutional tokenizers); this is the plainest
video model around ``NeighborhoodAttention3D``, for comparing the attention pattern with the other zoo
models on equal terms: a 3-D patch embedding (strided Conv3d, then LayerNorm, as Video Swin's), an isotropic
stack of pre-norm blocks whose token mixer is ``NeighborhoodAttention3D``, a final LayerNorm, the mean over
all tokens and a Linear head. Like NATTEN's current layers it has no position bias by default (the clamped
windows see the clip borders); ``rel_pos_bias=True`` gives every block NATTEN's learned relative position
bias, as NAT uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from chunkformer.layers import NeighborhoodAttention3D, PreNormBlock
from chunkformer.layers._checks import check_int_tuple
from chunkformer.models.registry import register_model
from chunkformer.models.video_classifier import (
    VideoClassifier,
    build_preset,
    drop_path_rates,
    fan_in_init,
    vit_init,
)

__all__ = ["NATConfig", "NeighborhoodVideoTransformer", "nat_tiny"]

_AXES = "(t, h, w) triple"


@dataclass(frozen=True)
class NATConfig:
    """The neighbourhood-attention video transformer as data (defaults: ``nat_tiny``'s).

    Args:
        patch_size: (t, h, w) of the 3-D patches, one token each.
        in_chans: input channels.
        dim: token width.
        depth: number of blocks.
        num_heads: heads of each block.
        kernel_size: (t, h, w) neighbourhood of each query; odd along non-causal axes.
        dilation: (t, h, w) spacing of the neighbours.
        is_causal_time: make the neighbourhood end at the query's frame (a causal video model).
        rel_pos_bias: NATTEN's learned relative position bias in every block (not with ``is_causal_time``).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout after the patch embedding, in the MLPs and after the attention projections.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block; earlier blocks get linearly less.
        head_drop_rate: dropout before the head.
    """

    patch_size: tuple[int, int, int] = (2, 4, 4)
    in_chans: int = 3
    dim: int = 48
    depth: int = 3
    num_heads: int = 4
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    dilation: tuple[int, int, int] = (1, 1, 1)
    is_causal_time: bool = False
    rel_pos_bias: bool = False
    mlp_ratio: float = 1.5
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_drop_rate: float = 0.0

    def __post_init__(self) -> None:
        # Lists from a JSON checkpoint spec or a YAML file become the tuples the layers expect.
        for name in ("patch_size", "kernel_size", "dilation"):
            value = check_int_tuple(getattr(self, name), 3, name, "NATConfig", axes=_AXES)
            object.__setattr__(self, name, value)


class NeighborhoodVideoTransformer(VideoClassifier):
    """Isotropic 3-D neighbourhood attention over a clip's patch tokens, mean pooled.

    Any clip size works (no absolute position embedding): T, H and W are zero-padded at their ends to whole
    patches. ``NeighborhoodAttention3D`` is tiled (see its docstring): each query pays for its tile's key
    box, a few times the kernel, not for all L tokens of the clip.

    Args:
        config: the architecture.
        num_classes: classes of the head; 0 returns the clip feature (B, config.dim).
        num_frames: the clip length the model is meant for (any T works).
        img_size: the frame side the model is meant for (any H and W work).

    Shape:
        - x: (B, C, T, H, W) -> (B, num_classes), or (B, config.dim) with ``num_classes=0``
    """

    def __init__(
        self, config: NATConfig, num_classes: int = 8, num_frames: int = 8, img_size: int = 32
    ) -> None:
        if not isinstance(config, NATConfig):
            raise TypeError(
                f"NeighborhoodVideoTransformer: config must be a NATConfig, got {type(config).__name__}"
            )
        super().__init__(num_classes, num_frames, img_size, config.head_drop_rate)
        self.config = config
        self.patch_embed = nn.Conv3d(config.in_chans, config.dim, config.patch_size, stride=config.patch_size)
        self.patch_norm = nn.LayerNorm(config.dim)
        self.pos_drop = nn.Dropout(config.drop_rate)
        is_causal = (config.is_causal_time, False, False)
        self.blocks = nn.ModuleList(
            PreNormBlock(
                config.dim,
                NeighborhoodAttention3D(
                    config.dim,
                    config.num_heads,
                    config.kernel_size,
                    dilation=config.dilation,
                    is_causal=is_causal,
                    qkv_bias=config.qkv_bias,
                    rel_pos_bias=config.rel_pos_bias,
                    attn_drop=config.attn_drop_rate,
                    proj_drop=config.drop_rate,
                ),
                mlp_ratio=config.mlp_ratio,
                proj_drop=config.drop_rate,
                drop_path=rate,
            )
            for rate in drop_path_rates(config.drop_path_rate, config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        self._init_head(config.dim)
        self.apply(vit_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the last block's normalised tokens.

        Shape:
            - x: (B, C, T, H, W) -> (B, config.dim)
        """
        self._check_clip(x, self.config.in_chans, fixed_frames=False)
        pads = [-n % p for n, p in zip(x.shape[2:], self.config.patch_size, strict=True)]
        # F.pad pads from the last axis backwards: W, H, T, each at its end.
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        tokens = self.pos_drop(self.patch_norm(rearrange(self.patch_embed(x), "b c t h w -> b t h w c")))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).mean(dim=(1, 2, 3))


@register_model
def nat_tiny(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> NeighborhoodVideoTransformer:
    """A small neighbourhood-attention video model for the motion data (8 frames of 32 x 32): patch
    (2, 4, 4), so a 4 x 8 x 8 token grid, dim 48, 3 blocks, 4 heads, kernel (3, 3, 3), MLP 1.5x (1.11x
    ``sct_tiny``'s MACs), PyTorch's fan-in init for the Linear layers (as ``sct_tiny``). ``overrides``:
    ``img_size`` (32) or ``NATConfig`` fields.

    Two-frame patches: a (2, 4, 4) patch puts each token's local motion into its features, as the
    tubelets of Video Swin and ViViT do. With one-frame (1, 4, 4) patches the model stays near chance on
    the hard motion data (chance 6.25 %; 11.3 and 13.3 % at 8 epochs, 13.3 % at 20, lr 4e-3), and NATTEN's
    relative position bias (``rel_pos_bias=True``), which tells the attention where in its window a key
    lies, did not change that (10.2 and 10.2 % at 8 epochs, 11.3 % at 20)."""
    model = build_preset(NeighborhoodVideoTransformer, NATConfig(), num_classes, num_frames, overrides, 32)
    fan_in_init(model)
    return model
