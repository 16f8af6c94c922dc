"""A tiny SCT config shared by the model tests: every layer kind, two poolings, runs in milliseconds."""

from __future__ import annotations

from typing import Any

from chunkformer.models import SCTConfig, ShiftedChunkTransformer, StageConfig

SIZE_MULTIPLE = 8  # patch 2 x 2^2 poolings


def tiny_config(**fields: Any) -> SCTConfig:
    heads = {"local_heads": 2, "lsh_heads": 2, "shifted_heads": 2}
    stages = (
        StageConfig(dim=8, local_depth=1, lsh_depth=1, shifted_depth=1, pool=True, mlp_ratio=2.0, **heads),
        StageConfig(dim=16, lsh_depth=1, shifted_depth=1, pool=True, mlp_ratio=2.0, **heads),
    )
    settings: dict[str, Any] = dict(
        stages=stages,
        patch_size=2,
        chunk_size=2,
        lsh_bucket_size=4,
        lsh_n_hashes=2,
        clip_dim=16,
        clip_depth=1,
        clip_heads=2,
        clip_mlp_dim=32,
        head_hidden_dim=16,
    )
    settings.update(fields)
    return SCTConfig(**settings)


def tiny_model(num_classes: int = 3, num_frames: int = 2, **fields: Any) -> ShiftedChunkTransformer:
    return ShiftedChunkTransformer(
        tiny_config(**fields), num_classes=num_classes, num_frames=num_frames, img_size=16
    )
