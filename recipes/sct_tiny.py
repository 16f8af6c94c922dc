"""``sct_tiny``: a small SCT for the built-in motion data and CI (registered on import).

One stage at width 32 (a local chunk layer, the linear pooling with its LayerNorm, two shifted MSA layers
at width 64 with a per-frame [CLS]) and a one-block clip encoder at width 64: about 0.13M parameters, a few
milliseconds per 8-frame 32 x 32 clip on a CPU core. It has no LSH layer and uses PyTorch's fan-in init
instead of the model's timm init: with either of those it sat at chance on the motion data for hundreds
of steps (see the comment in ``_sct_tiny`` and docs/recipes.md).

Two shifted layers, not one: the frame feature is the [CLS] output of the last shifted layer, and the grid
tokens' outputs of that layer are discarded. With one layer the only reader of the shifted attention is
the [CLS], whose query is the same for every frame and video, so the motion cue reaches the clip encoder
through one fixed pooling pattern; with two, the first layer's tokens, whose queries depend on what they
see, compare frames t and t - 1, and the second layer's [CLS] reads them. Measured on the motion data
(AdamW 1e-3, 4 seeds, 480 steps): one layer left chance after 43-225 steps and reached 73-95 % top-1, two
layers after 77-123 steps and 94-96 % (docs/recipes.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from chunkformer.models import SCTConfig, ShiftedChunkTransformer, StageConfig, list_models, register_model

__all__ = ["sct_tiny", "tiny_config"]


def tiny_config(**fields: Any) -> SCTConfig:
    """The tiny architecture; ``fields`` override SCTConfig fields."""
    stage = StageConfig(
        dim=32, local_depth=1, lsh_depth=0, shifted_depth=2, local_heads=2, lsh_heads=2, shifted_heads=2,
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
