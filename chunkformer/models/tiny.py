"""The tiny SCT (``sct_tiny``): a small SCT for the built-in motion data, CPU runs and CI.

One stage at width 32 (a local chunk layer, the linear pooling with its LayerNorm, two shifted MSA layers
at width 64 with a per-frame [CLS]) and a one-block clip encoder at width 64: about 0.13M parameters, a few
milliseconds per 8-frame 32 x 32 clip on a CPU core. It has no LSH layer and uses PyTorch's fan-in init
instead of the model's timm init: with either of those it sat at chance on the motion data for hundreds
of steps (docs/recipes.md).

Two shifted layers, not one: the frame feature is the [CLS] output of the last shifted layer, and the grid
tokens' outputs of that layer are discarded. With one layer the only reader of the shifted attention is
the [CLS], whose query is the same for every frame and video, so the motion cue reaches the clip encoder
through one fixed pooling pattern; with two, the first layer's tokens, whose queries depend on what they
see, compare frames t and t - 1, and the second layer's [CLS] reads them (docs/recipes.md has the
measurements).

Shape:
    - input: (B, 3, T, H, W), 32 x 32 frames by default (``img_size``)
    - output: (B, num_classes)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from chunkformer.models.config import SCTConfig, StageConfig
from chunkformer.models.registry import register_model
from chunkformer.models.sct import ShiftedChunkTransformer

__all__ = ["sct_tiny", "sct_tiny_config"]


def sct_tiny_config(**fields: Any) -> SCTConfig:
    """The tiny architecture; ``fields`` override ``SCTConfig`` fields."""
    stage = StageConfig(
        dim=32,
        local_depth=1,
        lsh_depth=0,
        shifted_depth=2,
        local_heads=2,
        lsh_heads=2,
        shifted_heads=2,
        mlp_ratio=2.0,
        pool=True,
    )
    settings: dict[str, Any] = dict(
        stages=(stage,),
        patch_size=4,
        chunk_size=4,
        lsh_bucket_size=16,
        lsh_n_hashes=1,
        pool_norm=True,
        clip_dim=64,
        clip_depth=1,
        clip_heads=4,
        clip_mlp_dim=128,
        head_hidden_dim=64,
    )
    settings.update(fields)
    return SCTConfig(**settings)


@register_model
def sct_tiny(num_classes: int = 8, num_frames: int = 8, **overrides: Any) -> ShiftedChunkTransformer:
    """The tiny SCT; ``overrides`` are ``img_size`` (default 32), ``interpolate_pos`` or config fields."""
    model_kwargs = {key: overrides.pop(key) for key in ("img_size", "interpolate_pos") if key in overrides}
    model_kwargs.setdefault("img_size", 32)
    config = sct_tiny_config(**overrides)
    model = ShiftedChunkTransformer(config, num_classes=num_classes, num_frames=num_frames, **model_kwargs)
    # The timm ViT init (trunc_normal std 0.02) is sized for widths of 384 and up: at widths 32-64 it leaves
    # every attention logit near 0 and training on a plateau; PyTorch's fan-in init gives usable attention.
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    return model
