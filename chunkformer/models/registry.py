"""Model registry, timm-style: presets register by decorator and are built by name.

This module imports no model module: the package ``chunkformer.models`` imports the preset modules (which
register themselves with ``register_model``), and importing this module runs the package first, so the
registry is complete whichever module a caller imports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


def register_model(factory: Factory) -> Factory:
    """Register ``factory`` under its function name; it must accept ``num_classes``, ``num_frames`` and
    keyword overrides. Registering a name twice is an error (a typo would otherwise shadow a preset)."""
    name = factory.__name__
    if name in _MODELS:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _MODELS[name] = factory
    return factory


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def create_model(
    name: str,
    num_classes: int = 400,
    num_frames: int = 24,
    checkpoint_path: str | Path | None = None,
    checkpoint_filter: str | None = None,
    **overrides: object,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    Args:
        name: a name from ``list_models()``.
        num_classes: classes of the head; 0 makes the model return clip features.
        num_frames: T, the frames per clip the clip position embedding covers.
        checkpoint_path: a ``.safetensors`` file or a ``torch.save`` file (read with ``weights_only=True``);
            see ``chunkformer.models.loading.load_checkpoint`` for the key check.
        checkpoint_filter: ``"frame_encoder"`` loads only the frame encoder (patch embedding and stages)
            and leaves the clip encoder and head freshly initialised.
        overrides: model keyword arguments (``img_size``, ``interpolate_pos``) or fields of the model's
            config (e.g. ``drop_path_rate=0.1``, ``lsh_n_hashes=1``).
    """
    if name not in _MODELS:
        raise ValueError(f"create_model: unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](num_classes=num_classes, num_frames=num_frames, **overrides)
    if checkpoint_path is not None:
        from chunkformer.models.loading import load_checkpoint

        load_checkpoint(model, checkpoint_path, filter=checkpoint_filter)
    elif checkpoint_filter is not None:
        raise ValueError("create_model: checkpoint_filter needs a checkpoint_path")
    return model
