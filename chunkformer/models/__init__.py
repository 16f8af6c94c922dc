"""Models built from chunkformer layers: the Shifted Chunk Transformer, its presets, the attention zoo's
models (TimeSformer, ViViT, Video Swin, neighbourhood attention) and a timm-style registry."""

from chunkformer.models.attention_maps import AttentionMaps, capture_attention_maps
from chunkformer.models.config import SCTConfig, StageConfig
from chunkformer.models.loading import load_checkpoint, read_checkpoint, save_checkpoint
from chunkformer.models.nat import NATConfig, NeighborhoodVideoTransformer, nat_tiny
from chunkformer.models.registry import create_model, list_models, register_model
from chunkformer.models.sct import ShiftedChunkTransformer, sct_config, sct_l, sct_m, sct_s
from chunkformer.models.spec import ModelSpec, read_model_spec
from chunkformer.models.timesformer import TimeSformer, TimeSformerConfig, timesformer_base, timesformer_tiny
from chunkformer.models.tiny import sct_tiny, sct_tiny_config
from chunkformer.models.video_classifier import VideoClassifier
from chunkformer.models.video_swin import VideoSwinConfig, VideoSwinTransformer, video_swin_t, video_swin_tiny
from chunkformer.models.vivit import ViViTConfig, ViViTFactorisedEncoder, vivit_b_fe, vivit_tiny

__all__ = [
    "AttentionMaps",
    "ModelSpec",
    "NATConfig",
    "NeighborhoodVideoTransformer",
    "SCTConfig",
    "ShiftedChunkTransformer",
    "StageConfig",
    "TimeSformer",
    "TimeSformerConfig",
    "VideoClassifier",
    "VideoSwinConfig",
    "VideoSwinTransformer",
    "ViViTConfig",
    "ViViTFactorisedEncoder",
    "capture_attention_maps",
    "create_model",
    "list_models",
    "load_checkpoint",
    "nat_tiny",
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
    "timesformer_base",
    "timesformer_tiny",
    "video_swin_t",
    "video_swin_tiny",
    "vivit_b_fe",
    "vivit_tiny",
]
