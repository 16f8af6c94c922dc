"""One frame-encoder stage of SCT: local chunk layers, LSH layers, linear pooling, shifted MSA with [CLS]."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers import (
    ChunkAttention,
    LinearPooling,
    LSHAttention,
    PreNormBlock,
    ShiftedAttention,
)
from chunkformer.models.config import SCTConfig, StageConfig

BlockRunner = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _call(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block(x)


class SCTStage(nn.Module):
    """Local chunk blocks -> LSH blocks -> linear pooling -> [CLS] + shifted MSA blocks (see
    ``StageConfig``).

    The stage's [CLS] is prepended to every frame before its shifted MSA layers and split off after them,
    so later stages see the token grid only and each shifted-MSA stage has a [CLS] of its own.

    Args:
        stage: the stage's layers.
        config: model-wide settings (chunk size, LSH bucket and rounds, shift, dropout).
        drop_path: stochastic depth rate of each block, ``stage.depth`` values in block order.
        lsh_seeds: the rotation seed of each LSH layer, ``stage.lsh_depth`` values.

    Shape:
        - x: (B, T, H, W, dim) -> grid (B, T, H', W', out_dim) and [CLS] (B, T, out_dim), or None when the
          stage has no shifted MSA; H' = ceil(H / 2) when the stage pools, else H.
    """

    def __init__(
        self, stage: StageConfig, config: SCTConfig, drop_path: Sequence[float], lsh_seeds: Sequence[int]
    ) -> None:
        super().__init__()
        if len(drop_path) != stage.depth or len(lsh_seeds) != stage.lsh_depth:
            raise ValueError(
                f"SCTStage: expected {stage.depth} drop-path rates and {stage.lsh_depth} LSH seeds, "
                f"got {len(drop_path)} and {len(lsh_seeds)}"
            )
        rates = iter(drop_path)

        def block(width: int, attn: nn.Module) -> PreNormBlock:
            return PreNormBlock(
                width, attn, mlp_ratio=stage.mlp_ratio, proj_drop=config.drop_rate, drop_path=next(rates)
            )

        drops = {"attn_drop": config.attn_drop_rate, "proj_drop": config.drop_rate}
        self.local_blocks = nn.ModuleList(
            block(
                stage.dim,
                ChunkAttention(
                    stage.dim,
                    stage.local_heads,
                    chunk_size=config.chunk_size,
                    qkv_bias=config.qkv_bias,
                    **drops,
                ),
            )
            for _ in range(stage.local_depth)
        )
        # shared_qk=False: separate q, k, v projections (a 3D-wide qkv) like every other attention layer, the
        # reading whose parameter and MAC counts docs/models.md tabulates against the paper's Table 3.
        self.lsh_blocks = nn.ModuleList(
            block(
                stage.dim,
                LSHAttention(
                    stage.dim,
                    stage.lsh_heads,
                    bucket_size=config.lsh_bucket_size,
                    n_hashes=config.lsh_n_hashes,
                    shared_qk=False,
                    qkv_bias=config.lsh_qkv_bias,
                    seed=seed,
                    **drops,
                ),
            )
            for seed in lsh_seeds
        )
        self.pool: nn.Module = nn.Identity()
        if stage.pool:
            self.pool = LinearPooling(
                stage.dim, stage.out_dim, norm_layer=nn.LayerNorm if config.pool_norm else None
            )
        width = stage.out_dim
        self.cls_token: nn.Parameter | None = None
        if stage.shifted_depth:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 1, width))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.shifted_blocks = nn.ModuleList(
            block(
                width,
                ShiftedAttention(
                    width, stage.shifted_heads, shift=config.shift, qkv_bias=config.qkv_bias, **drops
                ),
            )
            for _ in range(stage.shifted_depth)
        )

    def forward(
        self, x: torch.Tensor, run_block: BlockRunner = _call
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the stage; ``run_block(block, x)`` calls each block (the model passes a checkpointing one)."""
        for layer in (*self.local_blocks, *self.lsh_blocks):
            x = run_block(layer, x)
        x = self.pool(x)
        if self.cls_token is None:
            return x, None
        batch, frames, height, width, channels = x.shape
        tokens = rearrange(x, "b t h w c -> b t (h w) c")
        tokens = torch.cat([self.cls_token.expand(batch, frames, 1, channels), tokens], dim=2)
        for layer in self.shifted_blocks:
            tokens = run_block(layer, tokens)
        grid = rearrange(tokens[:, :, 1:], "b t (h w) c -> b t h w c", h=height, w=width)
        return grid, tokens[:, :, 0]
