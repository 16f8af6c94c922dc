"""The Shifted Chunk Transformer (Zha et al., NeurIPS 2021) and its registered presets.

The presets follow the reading of ``docs/models.md`` (the "paper reading"): local chunk attention only in
stage 1, LSH -> pooling -> shifted MSA in every stage, channels doubling at each pooling, every attention
layer in its own pre-norm block with an MLP, and a [CLS] of its own for each shifted-MSA stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chunkformer.layers import ChunkPatchEmbed, ClipEncoder
from chunkformer.models.attention_maps import AttentionMaps, capture_attention_maps
from chunkformer.models.checkpointing import checkpoint_block
from chunkformer.models.config import SCTConfig, StageConfig
from chunkformer.models.registry import register_model
from chunkformer.models.stage import SCTStage
from chunkformer.models.video_classifier import build_preset

__all__ = ["SCTConfig", "ShiftedChunkTransformer", "StageConfig", "sct_config"]


def _init_weights(module: nn.Module) -> None:
    """timm ViT init: trunc_normal(0.02) Linear weights, zero biases, LayerNorm ones/zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _drop_path_rates(rate: float, blocks: int) -> list[float]:
    # Plain Python, not torch.linspace: the model must also build on the meta device.
    return [rate * index / max(blocks - 1, 1) for index in range(blocks)]


class ShiftedChunkTransformer(nn.Module):
    """Frame encoder (tiny-patch embedding, then the config's stages) followed by the clip encoder.

    Each frame's feature is the output of its [CLS] in the last stage's shifted MSA (eq. 8's
    ``a'_{t1}``); the clip encoder embeds the T frame features, adds its [CLS] and position embedding,
    and classifies.

    Args:
        config: the architecture.
        num_classes: classes of the head; 0 returns the clip feature (B, clip_dim).
        num_frames: T, the frames the clip position embedding covers.
        img_size: the frame size the model is meant for (used by tools for default inputs; any H and W
            that are multiples of ``config.size_multiple`` work).
        interpolate_pos: accept clips of any length, linearly interpolating the clip position embedding
            when T differs from ``num_frames``; otherwise such clips are an error.

    Shape:
        - x: (B, C, T, H, W) -> (B, num_classes), or (B, clip_dim) when ``num_classes=0``;
          H and W multiples of ``config.size_multiple`` (patch_size x 2^poolings).
    """

    def __init__(
        self,
        config: SCTConfig,
        num_classes: int = 400,
        num_frames: int = 24,
        img_size: int = 224,
        interpolate_pos: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(config, SCTConfig):
            raise TypeError(
                f"ShiftedChunkTransformer: config must be an SCTConfig, got {type(config).__name__}"
            )
        self.config = config
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.img_size = img_size
        self.interpolate_pos = bool(interpolate_pos)
        self.grad_checkpointing = False
        self._check_frame_size(img_size, img_size, "img_size")

        self.patch_embed = ChunkPatchEmbed(
            config.patch_size, config.in_chans, config.stages[0].dim, config.chunk_size
        )
        rates = iter(_drop_path_rates(config.drop_path_rate, config.depth))
        stages = []
        for stage in config.stages:
            # Seeds drawn explicitly on the CPU: LSHAttention's own draw calls .item(), which fails on meta.
            seeds = [int(torch.randint(0, 2**62, (), device="cpu")) for _ in range(stage.lsh_depth)]
            stages.append(SCTStage(stage, config, [next(rates) for _ in range(stage.depth)], seeds))
        self.stages = nn.ModuleList(stages)
        self.clip_encoder = ClipEncoder(
            config.frame_dim,
            num_frames,
            dim=config.clip_dim,
            depth=config.clip_depth,
            num_heads=config.clip_heads,
            mlp_dim=config.clip_mlp_dim,
            num_classes=num_classes,
            head_hidden_dim=config.head_hidden_dim,
            head_drop=config.head_drop_rate,
        )
        self.apply(_init_weights)

    @property
    def shifted_blocks(self) -> list[nn.Module]:
        """All shifted-MSA blocks, in order (the last one's [CLS] gives the frame features)."""
        return [block for stage in self.stages for block in stage.shifted_blocks]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each frame-encoder block in the backward instead of keeping its activations.

        Non-reentrant ``torch.utils.checkpoint``; the LSH generator states are saved in the forward and
        restored for the recomputation, so gradients equal those without checkpointing, also in training
        mode (where LSH draws fresh rotations every call).
        """
        self.grad_checkpointing = bool(enable)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_block(block, x)
        return block(x)

    def _check_frame_size(self, height: int, width: int, what: str) -> None:
        multiple = self.config.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(
                f"ShiftedChunkTransformer: {what} H and W must be multiples of {multiple} (patch_size "
                f"{self.config.patch_size} x 2^{self.config.num_poolings} poolings), "
                f"got H={height}, W={width}"
            )

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                "ShiftedChunkTransformer expects a torch.Tensor of shape (B, C, T, H, W), "
                f"got {type(x).__name__}"
            )
        if x.dim() != 5:
            raise ValueError(
                f"ShiftedChunkTransformer expects input of shape (B, C, T, H, W), got {tuple(x.shape)}"
            )
        self._check_frame_size(x.shape[-2], x.shape[-1], "input")
        frames = x.shape[2]
        if frames != self.num_frames and not self.interpolate_pos:
            raise ValueError(
                f"ShiftedChunkTransformer was built for num_frames={self.num_frames} but got T={frames} "
                f"(input {tuple(x.shape)}); build it with num_frames={frames} or pass interpolate_pos=True "
                "to interpolate the clip position embedding"
            )

    def forward_frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame features: the last stage's [CLS] outputs.

        Shape:
            - x: (B, C, T, H, W) -> (B, T, config.frame_dim)
        """
        self._check_input(x)
        tokens = self.patch_embed(x)
        cls = None
        for stage in self.stages:
            tokens, cls = stage(tokens, self._run_block)
        assert cls is not None  # SCTConfig guarantees a shifted MSA in the last stage
        return cls

    def _clip_pos_embed(self, frames: int) -> torch.Tensor:
        """The clip position embedding for ``frames`` frames: [CLS] row kept, frame rows linearly
        interpolated (align_corners=False, as timm resizes position embeddings)."""
        pos = self.clip_encoder.pos_embed
        frame_rows = F.interpolate(
            pos[:, 1:].transpose(1, 2), size=frames, mode="linear", align_corners=False
        )
        return torch.cat([pos[:, :1], frame_rows.transpose(1, 2)], dim=1)

    def _clip_features(self, frame_features: torch.Tensor) -> torch.Tensor:
        encoder = self.clip_encoder
        frames = frame_features.shape[1]
        if frames == encoder.num_frames:
            return encoder.forward_features(frame_features)
        # ClipEncoder checks T against its position embedding; with another T, run its parts here.
        tokens = encoder.frame_embed(frame_features)
        cls = encoder.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self._clip_pos_embed(frames)
        for block in encoder.blocks:
            tokens = block(tokens)
        return encoder.norm(tokens[:, 0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised clip [CLS] feature, before the head.

        Shape:
            - x: (B, C, T, H, W) -> (B, config.clip_dim)
        """
        return self._clip_features(self.forward_frame_features(x))

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's ``get_classifier``)."""
        return self.clip_encoder.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` classes (0: the model returns clip features), e.g. to fine-tune
        Kinetics weights on UCF101; ``model_spec`` follows (its class names no longer apply)."""
        self.clip_encoder.reset_classifier(num_classes)
        self.num_classes = num_classes
        spec = getattr(self, "model_spec", None)
        if spec is not None:
            self.model_spec = dataclasses.replace(spec, num_classes=num_classes, class_names=None)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.clip_encoder.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """A forward pass that also returns the attention maps of Fig. 3 (see
        ``chunkformer.models.attention_maps.capture_attention_maps``)."""
        return capture_attention_maps(self, x)


# --- presets (Table 3) --------------------------------------------------------------------------------------

_MODEL_KWARGS = ("img_size", "interpolate_pos")


def sct_config(
    dim: int,
    local_depth: int,
    heads: tuple[int, int, int, int],
    local_in_every_stage: bool = False,
    **fields: Any,
) -> SCTConfig:
    """The paper reading's config for embedding size ``dim`` (Table 3's D), ``local_depth`` (M) and
    ``heads`` = [local, LSH, shifted, clip]: three stages, D -> 2D -> 4D, each LSH -> pooling -> shifted
    MSA, with the M local chunk layers in stage 1 only (or in every stage with ``local_in_every_stage``)."""
    local, lsh, shifted, clip = heads
    stages = tuple(
        StageConfig(
            dim=dim * 2**index,
            local_depth=local_depth if index == 0 or local_in_every_stage else 0,
            lsh_depth=1,
            shifted_depth=1,
            local_heads=local,
            lsh_heads=lsh,
            shifted_heads=shifted,
            mlp_ratio=4.0,
            pool=True,
        )
        for index in range(3)
    )
    return SCTConfig(stages=stages, clip_heads=clip, **fields)


def _build(
    config: SCTConfig, num_classes: int, num_frames: int, overrides: dict[str, Any]
) -> ShiftedChunkTransformer:
    return build_preset(
        ShiftedChunkTransformer,
        config,
        num_classes,
        num_frames,
        overrides,
        img_size=224,
        model_kwargs=_MODEL_KWARGS,
    )


@register_model
def sct_s(num_classes: int = 400, num_frames: int = 24, **overrides: Any) -> ShiftedChunkTransformer:
    """SCT-S: D 96, MLP 4D, M 4, heads [4 6 8 8], D' 192, clip MLP 768 (Table 3)."""
    return _build(sct_config(96, 4, (4, 6, 8, 8)), num_classes, num_frames, overrides)


@register_model
def sct_m(num_classes: int = 400, num_frames: int = 24, **overrides: Any) -> ShiftedChunkTransformer:
    """SCT-M: D 128, MLP 4D, M 6, heads [4 8 8 8], D' 192, clip MLP 768 (Table 3)."""
    return _build(sct_config(128, 6, (4, 8, 8, 8)), num_classes, num_frames, overrides)


@register_model
def sct_l(num_classes: int = 400, num_frames: int = 24, **overrides: Any) -> ShiftedChunkTransformer:
    """SCT-L: D 192, MLP 4D, M 4, heads [4 6 8 8], D' 192, clip MLP 768 (Table 3)."""
    return _build(sct_config(192, 4, (4, 6, 8, 8)), num_classes, num_frames, overrides)


@register_model
def sct_s_local_every_stage(
    num_classes: int = 400, num_frames: int = 24, **overrides: Any
) -> ShiftedChunkTransformer:
    """Another reading of SCT-S (not the default): M local chunk layers in every stage, not just the first."""
    return _build(
        sct_config(96, 4, (4, 6, 8, 8), local_in_every_stage=True), num_classes, num_frames, overrides
    )


@register_model
def vit_b16_sct(num_classes: int = 400, num_frames: int = 24, **overrides: Any) -> ShiftedChunkTransformer:
    """Table 4's comparison: a ViT-B/16 frame encoder (patch 16 Linear embedding, 12 blocks of 768-wide
    12-head MSA) followed by the same shifted MSA and clip encoder as SCT.

    The ViT blocks are local chunk layers with chunk_size 14: at 224 x 224 the 14 x 14 patch grid is a
    single chunk, so each is full attention over the frame, and the 196-row chunk position embedding is
    ViT's. (At other sizes the frame is cut into 14 x 14 windows.)
    """
    stage = StageConfig(
        dim=768, local_depth=12, shifted_depth=1, local_heads=12, shifted_heads=12, mlp_ratio=4.0
    )
    config = SCTConfig(stages=(stage,), patch_size=16, chunk_size=14, clip_heads=8)
    return _build(config, num_classes, num_frames, overrides)
