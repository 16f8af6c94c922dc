"""Saving and strictly loading model weights (safetensors or a weights-only torch file)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

FILTERS = ("frame_encoder",)
# Modules outside the frame encoder: left freshly initialised by the "frame_encoder" filter.
_CLIP_PREFIXES = ("clip_encoder.",)
# LSH layers keep their seed and generator states as "extra state", a dict rather than a tensor. In a
# safetensors file the seed goes to the metadata and each generator state to a tensor named
# "<key>.generator_states.<device>". Extra-state keys are optional when loading (foreign files lack them).
_EXTRA_STATE = "_extra_state"
_GENERATOR_STATES = ".generator_states."


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Save ``model``'s state dict: safetensors for a ``.safetensors`` path (LSH seeds in the metadata,
    generator states as uint8 tensors), else ``torch.save`` (readable with ``weights_only=True``)."""
    path = Path(path)
    state = model.state_dict()
    if not _is_safetensors(path):
        torch.save(state, path)
        return
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for key, value in state.items():
        if key.endswith(_EXTRA_STATE):
            metadata[key] = json.dumps({"seed": value["seed"]})
            for device, generator_state in value["generator_states"].items():
                tensors[f"{key}{_GENERATOR_STATES}{device}"] = generator_state
        else:
            tensors[key] = value.contiguous()
    save_file(tensors, str(path), metadata=metadata)


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError as error:
        raise ImportError(
            "loading a .safetensors checkpoint needs safetensors: pip install 'chunkformer[video]'"
        ) from error
    state: dict[str, Any] = dict(load_file(str(path)))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    for key, text in metadata.items():
        if key.endswith(_EXTRA_STATE):
            prefix = f"{key}{_GENERATOR_STATES}"
            devices = [name[len(prefix):] for name in state if name.startswith(prefix)]
            generators = {device: state.pop(prefix + device) for device in devices}
            state[key] = {"seed": int(json.loads(text)["seed"]), "generator_states": generators}
    return state


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state dict in ``path``; a torch file holding ``{"model": ...}`` or ``{"state_dict": ...}`` is
    unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        return _read_safetensors(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _keep(key: str, filter: str | None) -> bool:
    return filter is None or not key.startswith(_CLIP_PREFIXES)


def load_checkpoint(model: nn.Module, path: str | Path, filter: str | None = None) -> None:
    """Load ``path`` into ``model`` with a strict key check.

    Every tensor of the model must be in the checkpoint and every key of the checkpoint must be in the
    model; otherwise a ValueError names the missing and unexpected keys. LSH extra state (seed and
    generator states) is optional, since foreign files lack it.

    Args:
        model: the model to fill.
        path: a ``.safetensors`` file or a ``torch.save`` file.
        filter: ``"frame_encoder"``: load only the keys outside ``clip_encoder.`` (the patch embedding
            and the stages); clip encoder keys in the file are ignored and the model's clip encoder and
            head keep their initialisation, so a frame encoder trained for another T or class count loads.
    """
    if filter is not None and filter not in FILTERS:
        raise ValueError(f"load_checkpoint: unknown filter {filter!r}; expected None or one of {FILTERS}")
    state = {key: value for key, value in read_checkpoint(path).items() if _keep(key, filter)}
    expected = {key for key in model.state_dict() if _keep(key, filter)}
    missing = sorted(key for key in expected - state.keys() if not key.endswith(_EXTRA_STATE))
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match {type(model).__name__}"
            + (f" (filter={filter!r})" if filter else "")
            + f": missing keys {missing}; unexpected keys {unexpected}"
        )
    model.load_state_dict(state, strict=False)
