"""Functional kernels without parameters: attention dispatch, LSH attention (and its slow reference),
tiled neighbourhood attention and window partitioning."""

from chunkformer.ops.dispatch import (
    BACKENDS,
    ENV_VAR,
    AttentionBackendError,
    BackendStatus,
    attention,
    automatic_selection,
    available_backends,
    current_backend,
    use_backend,
)
from chunkformer.ops.lsh import default_n_buckets
from chunkformer.ops.lsh_kernel import lsh_attention
from chunkformer.ops.lsh_reference import lsh_attention_reference
from chunkformer.ops.neighborhood import (
    NeighborhoodTiles,
    default_tile_size,
    neighborhood_attention,
    neighborhood_attention_dense,
    neighborhood_mask,
    neighborhood_tiles,
)
from chunkformer.ops.window import (
    pad_to_multiple,
    to_pair,
    window_padding_mask,
    window_partition,
    window_reverse,
    window_valid_mask,
)

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "AttentionBackendError",
    "BackendStatus",
    "NeighborhoodTiles",
    "attention",
    "automatic_selection",
    "available_backends",
    "current_backend",
    "default_n_buckets",
    "default_tile_size",
    "lsh_attention",
    "lsh_attention_reference",
    "neighborhood_attention",
    "neighborhood_attention_dense",
    "neighborhood_mask",
    "neighborhood_tiles",
    "pad_to_multiple",
    "to_pair",
    "use_backend",
    "window_padding_mask",
    "window_partition",
    "window_reverse",
    "window_valid_mask",
]
