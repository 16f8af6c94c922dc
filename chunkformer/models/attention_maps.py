"""Attention maps of Fig. 3: per-frame [CLS] attention over patches, clip [CLS] attention over frames."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import nn

from chunkformer.layers import Attention, ShiftedAttention


class AttentionMaps(NamedTuple):
    """What ``capture_attention_maps`` returns.

    Key index 0 of both maps is the [CLS] token itself (it is one of the keys the softmax runs over), so
    every row sums to one; ``frame[..., 1:]`` are the patch tokens in row-major order of ``grid``.

    Shape:
        - frame: (B, T, heads, 1 + h * w). ``frame[:, t]`` weights the tokens of frame t: it is the
          attention of the [CLS] of frame ``(t + shift) mod T`` in the last shifted MSA, whose keys come
          from frame t. Indexed by the frame that is looked at, so it overlays directly on frame t.
        - clip: (B, heads, 1 + T), the clip encoder's last block: its [CLS] over [CLS] + the T frames.
        - grid: (h, w), the token grid of the last shifted MSA.
        - output: the model's ordinary output (logits or features).
    """

    frame: torch.Tensor
    clip: torch.Tensor
    grid: tuple[int, int]
    output: torch.Tensor


def cls_attention(attn: Attention, x: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """softmax(q_cls k^T / sqrt(d)) of the [CLS] (token 0), from ``attn``'s own qkv projection.

    Plain softmax attention, no dropout: the weights the layer's kernel computes internally.

    Args:
        attn: the attention layer whose projections to use.
        x: the layer's (normalised) input.
        shift: for a shifted MSA, keys of frame t come from frame t - shift (axis 1).

    Shape:
        - x: (B, N, C) -> (B, heads, N), or (B, T, N, C) -> (B, T, heads, N)
    """
    qkv = rearrange(attn.qkv(x), "... n (three h d) -> three ... h n d", three=3, h=attn.num_heads)
    query, keys = qkv[0][..., :1, :], qkv[1]
    if shift:
        keys = keys.roll(shift, dims=1)
    logits = torch.matmul(query, keys.transpose(-1, -2)) * attn.head_dim**-0.5
    return logits.float().softmax(dim=-1)[..., 0, :]


def capture_attention_maps(model: nn.Module, x: torch.Tensor) -> AttentionMaps:
    """Run ``model(x)`` with forward hooks on just two layers (the last shifted MSA and the last clip
    encoder attention) that recompute their [CLS] attention weights from the layers' inputs.

    The hooks exist only during this call, so the ordinary forward path is untouched (and no slower)
    when maps are not requested.

    Args:
        model: a ``ShiftedChunkTransformer``.
        x: one batch of clips.

    Shape:
        - x: (B, C, T, H, W); see ``AttentionMaps`` for the outputs.
    """
    shifted = model.shifted_blocks[-1].attn
    clip = model.clip_encoder.blocks[-1].attn
    if not isinstance(shifted, ShiftedAttention):
        raise TypeError(f"capture_attention_maps: expected a ShiftedAttention, got {type(shifted).__name__}")
    captured: dict[str, torch.Tensor] = {}

    def on_shifted(module: ShiftedAttention, args: tuple[Any, ...], output: torch.Tensor) -> None:
        weights = cls_attention(module, args[0], shift=module.shift)
        # Row t of `weights` is frame t's [CLS] looking at frame t - shift: re-index by the frame looked at.
        captured["frame"] = weights.roll(-module.shift, dims=1)

    def on_clip(module: Attention, args: tuple[Any, ...], output: torch.Tensor) -> None:
        captured["clip"] = cls_attention(module, args[0])

    handles = [shifted.register_forward_hook(on_shifted), clip.register_forward_hook(on_clip)]
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    tokens = captured["frame"].shape[-1] - 1
    grid = _last_grid(model, x, tokens)
    return AttentionMaps(captured["frame"], captured["clip"], grid, output)


def _last_grid(model: nn.Module, x: torch.Tensor, tokens: int) -> tuple[int, int]:
    """The (h, w) token grid of the last stage: the patch grid halved (rounding up) at each pooling."""
    height, width = x.shape[-2] // model.config.patch_size, x.shape[-1] // model.config.patch_size
    for _ in range(model.config.num_poolings):
        height, width = -(-height // 2), -(-width // 2)
    assert height * width == tokens
    return height, width
