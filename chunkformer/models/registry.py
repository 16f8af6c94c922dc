"""Model registry, timm-style: presets register by decorator and are built by name.

This module imports no model module: the package ``chunkformer.models`` imports the preset modules (which
register themselves with ``register_model``), and importing this module runs the package first, so the
registry is complete whichever module a caller imports.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from chunkformer.models.spec import ModelSpec, read_model_spec

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


def list_models(pattern: str = "") -> list[str]:
    """Names of the registered models, sorted; with ``pattern``, those matching it (shell-style wildcards,
    as timm's ``list_models("vit_*")``)."""
    return sorted(name for name in _MODELS if not pattern or fnmatch.fnmatchcase(name, pattern))


def create_model(
    name: str | None = None,
    num_classes: int | None = None,
    num_frames: int | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_filter: str | None = None,
    pretrained: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    The model gets a ``model_spec`` attribute (``ModelSpec``: name, build arguments, class names) that
    ``save_checkpoint`` records, so that ``create_model(checkpoint_path=path)`` rebuilds it from the file.

    Args:
        name: a name from ``list_models()``; None takes the one ``checkpoint_path`` records.
        num_classes: classes of the head; 0 makes the model return clip features. None: the checkpoint's
            (when the name comes from it), else 400.
        num_frames: T, the frames per clip the clip position embedding covers. None: the checkpoint's
            (when the name comes from it), else 24.
        checkpoint_path: a ``.safetensors`` file or a ``torch.save`` file (read with ``weights_only=True``);
            see ``chunkformer.models.loading.load_checkpoint`` for the key check.
        checkpoint_filter: ``"frame_encoder"`` loads only the frame encoder (patch embedding and stages)
            and leaves the clip encoder and head freshly initialised.
        pretrained: refused: chunkformer ships no pretrained weights (load a file with ``checkpoint_path``).
        overrides: model keyword arguments (``img_size``, ``interpolate_pos``) or fields of the model's
            config (e.g. ``drop_path_rate=0.1``, ``lsh_n_hashes=1``); with the name from the checkpoint,
            they replace the recorded ones.

    Raises:
        ValueError: unknown name, ``pretrained=True``, or no name and a checkpoint that records none.
    """
    if pretrained:
        raise ValueError(
            "create_model: pretrained=True: chunkformer ships no pretrained weights; train a model "
            "(recipes/train_kinetics.py writes model.safetensors) and load it with "
            "create_model(checkpoint_path='.../model.safetensors')"
        )
    recorded: ModelSpec | None = None
    if name is None:
        if checkpoint_path is None:
            raise TypeError("create_model: give a model name, or a checkpoint_path whose file records one")
        recorded = read_model_spec(checkpoint_path)
        if recorded is None:
            raise ValueError(
                f"create_model: {checkpoint_path} does not record which model it holds (a plain state dict, "
                "or a file not written by chunkformer's save_checkpoint): pass the model name and its "
                "arguments, e.g. create_model('sct_s', num_classes=400, checkpoint_path=...)"
            )
        name = recorded.name
        num_classes = recorded.num_classes if num_classes is None else num_classes
        num_frames = recorded.num_frames if num_frames is None else num_frames
        overrides = {**recorded.overrides, **overrides}
    num_classes = 400 if num_classes is None else num_classes
    num_frames = 24 if num_frames is None else num_frames
    if name not in _MODELS:
        raise ValueError(f"create_model: unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](num_classes=num_classes, num_frames=num_frames, **overrides)
    class_names = recorded.class_names if recorded and recorded.num_classes == num_classes else None
    model.model_spec = ModelSpec(name, num_classes, num_frames, dict(overrides), class_names)
    if checkpoint_path is not None:
        from chunkformer.models.loading import load_checkpoint

        load_checkpoint(model, checkpoint_path, filter=checkpoint_filter)
    elif checkpoint_filter is not None:
        raise ValueError("create_model: checkpoint_filter needs a checkpoint_path")
    return model
