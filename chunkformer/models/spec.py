"""What a model is, as data: the registered name and build arguments a checkpoint needs to rebuild it.

``create_model`` attaches a ``ModelSpec`` to every model it builds (``model.model_spec``), as timm attaches
``pretrained_cfg``; ``save_checkpoint`` writes it into safetensors metadata (and the training engine into
its checkpoints), so that ``create_model(checkpoint_path=path)`` rebuilds the model from the file alone,
with the class names it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["METADATA_KEY", "ModelSpec", "read_model_spec"]

METADATA_KEY = "chunkformer.model_spec"
"""The safetensors metadata key (and training checkpoint entry ``model_spec``) holding the spec as JSON."""


@dataclass
class ModelSpec:
    """The arguments of ``create_model`` that built a model, and the names of its classes.

    Attributes:
        name: the registered model name.
        num_classes: classes of the head (0: the model returns clip features).
        num_frames: frames per clip the clip position embedding covers.
        overrides: the other keyword arguments (``img_size``, config fields), JSON values only.
        class_names: name of each class index, when known (the engine records its training list's).
    """

    name: str
    num_classes: int
    num_frames: int
    overrides: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None

    def to_json(self) -> str:
        """The spec as a JSON object; a ValueError names an override that JSON cannot hold."""
        for key, value in self.overrides.items():
            try:
                json.dumps(value)
            except TypeError as error:
                raise ValueError(
                    f"ModelSpec: override {key}={value!r} ({type(value).__name__}) is not a JSON value, so a "
                    "checkpoint cannot record how to rebuild the model"
                ) from error
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "") -> ModelSpec:
        """Parse ``to_json``'s output; a ValueError names ``source`` and what is wrong."""
        where = f" in {source}" if source else ""
        try:
            data = json.loads(text)
            spec = cls(**data)
        except (ValueError, TypeError) as error:
            raise ValueError(f"model spec{where} is not valid ({error}): {text[:200]!r}") from error
        if not isinstance(spec.name, str) or not isinstance(spec.num_classes, int):
            raise ValueError(f"model spec{where} needs a string name and integer num_classes: {text[:200]!r}")
        if spec.class_names is not None and len(spec.class_names) != spec.num_classes:
            raise ValueError(
                f"model spec{where} names {len(spec.class_names)} classes for a {spec.num_classes}-class head"
            )
        # Tuples come back from JSON as lists; model configs want tuples (e.g. a scale range).
        spec.overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.overrides.items()}
        return spec


def read_model_spec(path: str | Path) -> ModelSpec | None:
    """The spec recorded in a checkpoint: safetensors metadata, or the ``model_spec`` entry of a training
    checkpoint. None for a file without one (plain state dicts, files written elsewhere)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(METADATA_KEY)
        return None if text is None else ModelSpec.from_json(text, str(path))
    # mmap: only the small entry is read from a possibly large training checkpoint.
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(saved, dict) and isinstance(saved.get("model_spec"), str):
        return ModelSpec.from_json(saved["model_spec"], str(path))
    return None
