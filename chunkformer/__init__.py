"""chunkformer: efficient attention layers for video transformers, and the Shifted Chunk Transformer."""

from chunkformer import layers, ops

__version__ = "0.1.0"

__all__ = ["__version__", "layers", "ops"]
