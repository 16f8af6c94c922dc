"""``sct_tiny``: a small SCT for the built-in motion data and CI (registered on import).

One stage at width 32 (a local chunk layer, an LSH layer, the linear pooling, a shifted MSA at width 64)
and a one-block clip encoder at width 64: every SCT layer kind, about 0.15M parameters, a few
milliseconds per 8-frame 32 x 32 clip on a CPU core.
"""

from __future__ import annotations

from typing import Any

from chunkformer.models import SCTConfig, ShiftedChunkTransformer, StageConfig, list_models, register_model

__all__ = ["sct_tiny", "tiny_config"]


def tiny_config(**fields: Any) -> SCTConfig:
    """The tiny architecture; ``fields`` override SCTConfig fields."""
    stage = StageConfig(
        dim=32, local_depth=1, lsh_depth=1, shifted_depth=2, local_heads=2, lsh_heads=2, shifted_heads=4,
        mlp_ratio=2.0, pool=True,
    )
    settings: dict[str, Any] = dict(
        stages=(stage,), patch_size=4, chunk_size=4, lsh_bucket_size=16, lsh_n_hashes=1,
        clip_dim=64, clip_depth=1, clip_heads=4, clip_mlp_dim=128, head_hidden_dim=64,
    )
    settings.update(fields)
    return SCTConfig(**settings)


def _sct_tiny(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> ShiftedChunkTransformer:
    model_kwargs = {key: overrides.pop(key) for key in ("img_size", "interpolate_pos") if key in overrides}
    model_kwargs.setdefault("img_size", 32)
    return ShiftedChunkTransformer(tiny_config(**overrides), num_classes=num_classes, num_frames=num_frames, **model_kwargs)


_sct_tiny.__name__ = "sct_tiny"
# Importing this file twice (as a script module and as a test import) must not register the name twice.
sct_tiny = _sct_tiny if "sct_tiny" in list_models() else register_model(_sct_tiny)
