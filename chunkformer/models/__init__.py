"""Models built from chunkformer layers: the Shifted Chunk Transformer, its presets, a timm-style registry."""

from chunkformer.models.attention_maps import AttentionMaps, capture_attention_maps
from chunkformer.models.config import SCTConfig, StageConfig
from chunkformer.models.loading import load_checkpoint, read_checkpoint, save_checkpoint
from chunkformer.models.registry import create_model, list_models, register_model
from chunkformer.models.sct import ShiftedChunkTransformer, sct_config, sct_l, sct_m, sct_s
from chunkformer.models.spec import ModelSpec, read_model_spec
from chunkformer.models.tiny import sct_tiny, sct_tiny_config

__all__ = [
    "AttentionMaps",
    "ModelSpec",
    "SCTConfig",
    "ShiftedChunkTransformer",
    "StageConfig",
    "capture_attention_maps",
    "create_model",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "read_model_spec",
    "register_model",
    "save_checkpoint",
    "sct_config",
    "sct_l",
    "sct_m",
    "sct_s",
    "sct_tiny",
    "sct_tiny_config",
]
