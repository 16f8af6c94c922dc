"""Functional kernels without parameters: attention dispatch and window partitioning."""

from chunkformer.ops.attention import (
    BACKENDS,
    ENV_VAR,
    AttentionBackendError,
    BackendStatus,
    attention,
    available_backends,
    current_backend,
    use_backend,
)
from chunkformer.ops.window import (
    pad_to_multiple,
    to_pair,
    window_padding_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "AttentionBackendError",
    "BackendStatus",
    "attention",
    "available_backends",
    "current_backend",
    "pad_to_multiple",
    "to_pair",
    "use_backend",
    "window_padding_mask",
    "window_partition",
    "window_reverse",
]
