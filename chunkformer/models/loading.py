"""Saving and strictly loading model weights (safetensors or a weights-only torch file)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chunkformer.layers import LSHAttention
from chunkformer.layers.lsh_attention import LEGACY_EXTRA_STATE_KEY, is_rng_state_key, upgrade_legacy_state

FILTERS = ("frame_encoder",)
# Modules outside the frame encoder: left freshly initialised by the "frame_encoder" filter.
_CLIP_PREFIXES = ("clip_encoder.",)
# Safetensors files written before state dicts held tensors only: each LSH seed in the metadata, under
# "<layer>._extra_state", and each generator state in a tensor "<that key>.generator_states.<device>".
_LEGACY_GENERATOR_STATES = ".generator_states."


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Save ``model``'s state dict: safetensors for a ``.safetensors`` path, else ``torch.save`` (readable
    with ``weights_only=True``). The state dict holds tensors only, LSH seeds and generator states included
    (see ``LSHAttention``)."""
    path = Path(path)
    state = model.state_dict()
    if not _is_safetensors(path):
        torch.save(state, path)
        return
    from safetensors.torch import save_file

    not_tensors = sorted(f"{key} ({type(v).__name__})" for key, v in state.items() if not torch.is_tensor(v))
    if not_tensors:
        raise TypeError(f"save_checkpoint: safetensors holds tensors only; {path} would get {not_tensors}")
    # "format": "pt" as safetensors.torch.save_model writes it (Hugging Face loaders check it).
    save_file({key: value.contiguous() for key, value in state.items()}, str(path), metadata={"format": "pt"})


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
        if key == LEGACY_EXTRA_STATE_KEY or key.endswith("." + LEGACY_EXTRA_STATE_KEY):
            prefix = key + _LEGACY_GENERATOR_STATES
            try:
                seed = json.loads(text)["seed"]
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(
                    f"checkpoint {path}: metadata {key!r} should be an old-format LSH seed like "
                    f"'{{\"seed\": 123}}', got {text[:100]!r}"
                ) from error
            devices = [name[len(prefix) :] for name in state if name.startswith(prefix)]
            generators = {device: state.pop(prefix + device) for device in devices}
            # The legacy dict, which read_checkpoint turns into the current entries as for a torch file.
            state[key] = {"seed": seed, "generator_states": generators}
    return state


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state dict in ``path``; a torch file holding ``{"model": ...}`` or ``{"state_dict": ...}`` is
    unwrapped. LSH seeds and generator states of files written before state dicts held tensors only (a dict
    ``_extra_state`` per layer, or safetensors metadata) come back in the current tensor entries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        state: Mapping[str, Any] = _read_safetensors(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("model", "state_dict"):
            if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]
        if not isinstance(state, Mapping):
            raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    try:
        return upgrade_legacy_state(state)
    except ValueError as error:
        raise ValueError(f"checkpoint {path}: {error}") from error


def _keep(key: str, filter: str | None) -> bool:
    return filter is None or not key.startswith(_CLIP_PREFIXES)


def _rng_state_keys(model: nn.Module) -> Callable[[str], bool]:
    """Whether a key names the seed or a generator state of one of ``model``'s LSH layers."""
    lsh_layers = [name for name, module in model.named_modules() if isinstance(module, LSHAttention)]
    prefixes = [f"{name}." if name else "" for name in lsh_layers]

    def is_rng(key: str) -> bool:
        return any(key.startswith(prefix) and is_rng_state_key(key[len(prefix) :]) for prefix in prefixes)

    return is_rng


def load_checkpoint(model: nn.Module, path: str | Path, filter: str | None = None) -> None:
    """Load ``path`` into ``model`` with a strict key check.

    Every tensor of the model must be in the checkpoint and every key of the checkpoint must be in the
    model; otherwise a ValueError names the missing and unexpected keys. The LSH layers' seeds and generator
    states are optional, since foreign files lack them: a layer without them in the file keeps its own.

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
    is_rng = _rng_state_keys(model)
    expected = {key for key in model.state_dict() if _keep(key, filter)}
    missing = sorted(key for key in expected - state.keys() if not is_rng(key))
    # Generator states exist only for devices a layer has trained on, so they need not be in the model yet.
    unexpected = sorted(key for key in state.keys() - expected if not is_rng(key))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match {type(model).__name__}"
            + (f" (filter={filter!r})" if filter else "")
            + f": missing keys {missing}; unexpected keys {unexpected}"
        )
    model.load_state_dict(state, strict=False)
