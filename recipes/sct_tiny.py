"""``sct_tiny``: a small SCT for the built-in motion data and CI (registered on import).

One stage at width 32 (a local chunk layer, the linear pooling with its LayerNorm, one shifted MSA at
width 64 with a per-frame [CLS]) and a one-block clip encoder at width 64: about 0.1M parameters, a few
milliseconds per 8-frame 32 x 32 clip on a CPU core. It has no LSH layer and uses PyTorch's fan-in init
instead of the model's timm init: with either of those it sat at chance on the motion data for hundreds
of steps (see the comment in ``_sct_tiny`` and docs/recipes.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from chunkformer.models import SCTConfig, ShiftedChunkTransformer, StageConfig, list_models, register_model

__all__ = ["sct_tiny", "tiny_config"]


def tiny_config(**fields: Any) -> SCTConfig:
    """The tiny architecture; ``fields`` override SCTConfig fields."""
    stage = StageConfig(
        dim=32, local_depth=1, lsh_depth=0, shifted_depth=1, local_heads=2, lsh_heads=2, shifted_heads=2,
        mlp_ratio=2.0, pool=True,
    )
    settings: dict[str, Any] = dict(
        stages=(stage,), patch_size=4, chunk_size=4, lsh_bucket_size=16, lsh_n_hashes=1, pool_norm=True,
        clip_dim=64, clip_depth=1, clip_heads=4, clip_mlp_dim=128, head_hidden_dim=64,
    )
    settings.update(fields)
    return SCTConfig(**settings)


def _sct_tiny(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> ShiftedChunkTransformer:
    model_kwargs = {key: overrides.pop(key) for key in ("img_size", "interpolate_pos") if key in overrides}
    model_kwargs.setdefault("img_size", 32)
    model = ShiftedChunkTransformer(tiny_config(**overrides), num_classes=num_classes, num_frames=num_frames, **model_kwargs)
    # The model's timm ViT init (trunc_normal std 0.02 on every Linear) is sized for widths of 384 and up. At
    # widths 32-64 it leaves every attention logit near 0: all attention is uniform, each frame's [CLS]
    # is a position-blind average of its tokens, and the gradients of q and k scale with each other's tiny
    # weights, so training sits on a plateau at chance. PyTorch's fan-in init (std ~ 1/sqrt(3 fan_in),
    # 0.07-0.1 here) gives usable attention from the start.
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    return model


_sct_tiny.__name__ = "sct_tiny"
# Importing this file twice (as a script module and as a test import) must not register the name twice.
sct_tiny = _sct_tiny if "sct_tiny" in list_models() else register_model(_sct_tiny)
