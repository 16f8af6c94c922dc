"""Attention maps of Fig. 3 from forward hooks."""

from __future__ import annotations

import torch

from chunkformer.models.attention_maps import cls_attention
from tests.models._tiny import tiny_model


def test_shapes_and_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    model = tiny_model(num_frames=3).eval()
    x = torch.randn(2, 3, 3, 16, 24)
    with torch.no_grad():
        maps = model.forward_attention_maps(x)
        assert torch.equal(maps.output, model(x))
    heads = model.config.stages[-1].shifted_heads
    assert maps.grid == (2, 3)  # (16 / 2 / 4, 24 / 2 / 4)
    assert maps.frame.shape == (2, 3, heads, 1 + 2 * 3)
    assert maps.clip.shape == (2, model.config.clip_heads, 1 + 3)
    torch.testing.assert_close(maps.frame.sum(-1), torch.ones(2, 3, heads))
    torch.testing.assert_close(maps.clip.sum(-1), torch.ones(2, model.config.clip_heads))


def test_hooks_are_removed() -> None:
    model = tiny_model().eval()
    with torch.no_grad():
        model.forward_attention_maps(torch.randn(1, 3, 2, 16, 16))
    assert not any(module._forward_hooks for module in model.modules())


def test_matches_the_layer_attention() -> None:
    # The recomputed weights reproduce the layer's output: weights @ v, projected, equals its [CLS] row.
    torch.manual_seed(0)
    attn = tiny_model().clip_encoder.blocks[0].attn.eval()
    x = torch.randn(2, 4, attn.dim)
    with torch.no_grad():
        weights = cls_attention(attn, x)
        v = attn.qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim))[:, :, 2]
        cls = attn.proj(torch.einsum("bhn,bnhd->bhd", weights, v).flatten(1))
        torch.testing.assert_close(cls, attn(x)[:, 0], atol=1e-5, rtol=1e-5)
