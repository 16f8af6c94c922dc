"""Reusable ``nn.Module`` layers for video transformers."""

from chunkformer.layers.attention import Attention
from chunkformer.layers.block import PreNormBlock
from chunkformer.layers.chunk_attention import ChunkAttention
from chunkformer.layers.clip_encoder import ClipEncoder
from chunkformer.layers.divided_space_time_attention import DividedSpaceTimeAttention
from chunkformer.layers.drop import DropPath, drop_path
from chunkformer.layers.factorized_self_attention import FactorizedSelfAttention
from chunkformer.layers.linear_pooling import LinearPooling
from chunkformer.layers.lsh_attention import LSHAttention
from chunkformer.layers.mlp import Mlp
from chunkformer.layers.neighborhood_attention import NeighborhoodAttention2D, NeighborhoodAttention3D
from chunkformer.layers.patch_embed import ChunkPatchEmbed
from chunkformer.layers.shifted_attention import ShiftedAttention
from chunkformer.layers.window_attention_3d import WindowAttention3D

__all__ = [
    "Attention",
    "ChunkAttention",
    "ChunkPatchEmbed",
    "ClipEncoder",
    "DropPath",
    "LSHAttention",
    "LinearPooling",
    "Mlp",
    "PreNormBlock",
    "ShiftedAttention",
    "drop_path",
    "DividedSpaceTimeAttention",
    "FactorizedSelfAttention",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "WindowAttention3D",
]
