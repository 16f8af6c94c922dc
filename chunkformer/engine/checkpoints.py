"""Training checkpoints: atomic writes, the last k and the best kept, and every RNG state as plain data.

Checkpoints are ``torch.save`` dicts of tensors and plain Python values only, so they load with
``torch.load(weights_only=True)``. RNG states are converted to tensors and lists for that reason. A
training checkpoint (``ckpt-<step>.pt``, ``best.pt``) holds ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``step``, ``epoch``, ``step_in_epoch``, ``best``, ``rng`` (one entry per rank),
``epoch_progress``, ``config`` and ``model_spec``; it loads with ``create_model(checkpoint_path=...)``,
which rebuilds the model from ``model_spec``.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_save",
    "capture_rng",
    "list_checkpoints",
    "load_training_state",
    "read_run_config",
    "restore_rng",
    "save_training_checkpoint",
]

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, flush + fsync, then ``os.replace``.

    A crash at any point leaves either the old file or the new one at ``path``, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    # The rename itself is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(directory: str | Path) -> list[Path]:
    """``ckpt-<step>.pt`` files in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_training_checkpoint(
    state: dict[str, Any], directory: str | Path, step: int, keep_last: int, best: bool
) -> Path:
    """Write ``ckpt-<step>.pt`` atomically, prune to the newest ``keep_last``, and write ``best.pt`` too
    when ``best``."""
    directory = Path(directory)
    path = directory / f"ckpt-{step:08d}.pt"
    atomic_save(state, path)
    if best:
        atomic_save(state, directory / "best.pt")
    for old in list_checkpoints(directory)[: -max(keep_last, 1)]:
        old.unlink(missing_ok=True)
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, read with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


TRAIN_CONFIG_KEY = "chunkformer.train_config"
"""The safetensors metadata key under which the engine records the run's configuration (JSON)."""


def read_run_config(path: str | Path) -> dict[str, Any] | None:
    """The training configuration (``TrainConfig`` as a plain dict) a checkpoint records: the ``config``
    entry of a training checkpoint, or the ``chunkformer.train_config`` metadata of the weights the engine
    writes. None for a file without one."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(TRAIN_CONFIG_KEY)
        return None if text is None else json.loads(text)
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    config = saved.get("config") if isinstance(saved, dict) else None
    return config if isinstance(config, dict) else None
