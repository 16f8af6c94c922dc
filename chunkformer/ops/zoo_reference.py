"""Slow, independent references for the attention zoo's layers, as NATTEN ships its reference backend.

Each function recomputes a layer's forward pass in float64 from the layer's weights, one query at a time:
it states which keys a query sees from the paper's definition (modular arithmetic for Video Swin's shifted
windows, NATTEN's ``get_window_start`` for neighbourhoods) and shares no code with the layers or with
``chunkformer.ops.attention``. The tests compare the fast layers against these; use them to check a
port or a new backend, never in a model (they loop in Python).

Every function runs the layer as in evaluation: no dropout, no drop path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "divided_space_time_reference",
    "factorized_self_attention_reference",
    "natten_window_start",
    "neighborhood_indices",
    "neighborhood_reference",
    "shifted_window_keys",
    "window_attention_3d_reference",
]


# ----------------------------------------------------------------------------------------------------------
# Plain building blocks, float64
# ----------------------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    out = x.double() @ layer.weight.detach().double().T
    return out if layer.bias is None else out + layer.bias.detach().double()


def _layer_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    if not isinstance(norm, nn.LayerNorm):
        raise TypeError(f"the zoo references support nn.LayerNorm norms only, got {type(norm).__name__}")
    x = x.double()
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    out = (x - mean) / torch.sqrt(var + norm.eps)
    if norm.weight is not None:
        out = out * norm.weight.detach().double() + norm.bias.detach().double()
    return out


def _project(tokens: torch.Tensor, attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of (n, C) tokens through the stacked qkv projection, each (n, heads, head_dim)."""
    dim = tokens.shape[-1]
    heads = attn.num_heads
    qkv = _linear(tokens, attn.qkv)
    q, k, v = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
    return tuple(t.reshape(-1, heads, dim // heads) for t in (q, k, v))  # type: ignore[return-value]


def _attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """One query (heads, d) over its keys (n, heads, d), heads concatenated: (heads * d,). ``bias`` is
    (heads, n), added to the logits."""
    out = []
    for head in range(q.shape[0]):
        logits = k[:, head] @ q[head] / math.sqrt(q.shape[-1])
        if bias is not None:
            logits = logits + bias[head]
        weights = torch.exp(logits - logits.max())
        out.append((weights / weights.sum()) @ v[:, head])
    return torch.cat(out)


def _full_attention(tokens: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """Every token of one (n, C) sequence over all of them, output projection included."""
    q, k, v = _project(tokens, attn)
    out = torch.stack([_attend_one(q[i], k, v) for i in range(tokens.shape[0])])
    return _linear(out, attn.proj)


# ----------------------------------------------------------------------------------------------------------
# TimeSformer, ViViT
# ----------------------------------------------------------------------------------------------------------


def divided_space_time_reference(
    layer: nn.Module, x: torch.Tensor, cls_token: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``DividedSpaceTimeAttention`` written out: a loop over positions, then over frames.

    Shape:
        - x: (B, T, N, C) -> (B, T, N, C), float64
        - cls_token: optional (B, 1, C); then the output is ((B, T, N, C), (B, 1, C))
    """
    batch, frames, tokens, _ = x.shape
    xt = x.double().clone()
    for b in range(batch):
        for n in range(tokens):
            sequence = x[b, :, n].double()
            res = _full_attention(_layer_norm(sequence, layer.temporal_norm1), layer.temporal_attn)
            xt[b, :, n] = sequence + _linear(res, layer.temporal_fc)
    out = xt.clone()
    cls_out = None if cls_token is None else cls_token.double().clone()
    for b in range(batch):
        cls_updates = []
        for t in range(frames):
            sequence = xt[b, t]
            if cls_token is not None:
                sequence = torch.cat([cls_token[b].double(), sequence])
            res = _full_attention(_layer_norm(sequence, layer.norm1), layer.attn)
            if cls_token is not None:
                cls_updates.append(res[0])
                res = res[1:]
            out[b, t] = xt[b, t] + res
        if cls_out is not None:
            cls_out[b, 0] = cls_out[b, 0] + sum(cls_updates) / frames
    return out if cls_out is None else (out, cls_out)


def factorized_self_attention_reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``FactorizedSelfAttention`` written out: a loop over frames, then over positions.

    Shape:
        - x: (B, T, N, C) -> (B, T, N, C), float64
    """
    batch, frames, tokens, _ = x.shape
    y = x.double().clone()
    for b in range(batch):
        for t in range(frames):
            y[b, t] = y[b, t] + _full_attention(_layer_norm(y[b, t], layer.spatial_norm), layer.spatial_attn)
    z = y.clone()
    for b in range(batch):
        for n in range(tokens):
            z[b, :, n] = y[b, :, n] + _full_attention(
                _layer_norm(y[b, :, n], layer.temporal_norm), layer.temporal_attn
            )
    return z


# ----------------------------------------------------------------------------------------------------------
# Video Swin
# ----------------------------------------------------------------------------------------------------------


def shifted_window_keys(
    query: Sequence[int], sizes: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The real keys a query attends to in Video Swin's shifted windows, with their offsets in the window.

    The clip, padded at the end of each axis to a multiple P of the window w, is rolled by -s: position p
    lands at (p - s) mod P, in window ((p - s) mod P) // w. A key is seen when it is real (inside
    ``sizes``), lands in the query's window, and along every axis both or neither wrapped around (p < s),
    which is what Video Swin's region mask says. The shift is 0 along an axis no longer than the window.

    Returns:
        (key position, query offset minus key offset inside the window) for each key, in row-major order.
    """
    shift = [s if n > w else 0 for n, w, s in zip(sizes, window_size, shift_size, strict=True)]
    padded = [math.ceil(n / w) * w for n, w in zip(sizes, window_size, strict=True)]

    def landed(p: Sequence[int]) -> list[int]:
        return [(pi - si) % full for pi, si, full in zip(p, shift, padded, strict=True)]

    q_landed = landed(query)
    keys = []
    for key in _grid(sizes):
        k_landed = landed(key)
        same_window = all(a // w == b // w for a, b, w in zip(q_landed, k_landed, window_size, strict=True))
        same_wrap = all((qi < s) == (ki < s) for qi, ki, s in zip(query, key, shift, strict=True))
        if same_window and same_wrap:
            offset = tuple(a % w - b % w for a, b, w in zip(q_landed, k_landed, window_size, strict=True))
            keys.append((key, offset))
    return keys


def window_attention_3d_reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``WindowAttention3D`` written out: a loop over queries, each over ``shifted_window_keys``.

    Shape:
        - x: (B, T, H, W, C) -> (B, T, H, W, C), float64
    """
    wt, wh, ww = layer.window_size
    table = layer.relative_position_bias_table.detach().double()
    sizes = tuple(x.shape[1:4])
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        q, k, v = _project(x[b].reshape(-1, x.shape[-1]), layer)
        for query in _grid(sizes):
            keys = shifted_window_keys(query, sizes, layer.window_size, layer.shift_size)
            rows = [_flat(key, sizes) for key, _ in keys]
            # Video Swin's relative_position_index: the offset (dt, dh, dw) as a row of the table.
            table_rows = [
                ((dt + wt - 1) * (2 * wh - 1) + dh + wh - 1) * (2 * ww - 1) + dw + ww - 1
                for _, (dt, dh, dw) in keys
            ]
            bias = table[table_rows].T
            out[(b, *query)] = _attend_one(q[_flat(query, sizes)], k[rows], v[rows], bias)
    return _linear(out, layer.proj)


# ----------------------------------------------------------------------------------------------------------
# Neighbourhood attention
# ----------------------------------------------------------------------------------------------------------


def natten_window_start(index: int, length: int, kernel_size: int, dilation: int) -> int:
    """NATTEN's ``get_window_start``: the first neighbour of ``index`` along an axis (not causal).

    Valid when the query's dilation group holds at least ``kernel_size`` positions.
    """
    radius = kernel_size // 2
    if dilation <= 1:
        return max(index - radius, 0) + (index + radius >= length) * (length - index - radius - 1)
    if index - radius * dilation < 0:
        return index % dilation
    if index + radius * dilation >= length:
        remainder = index % dilation
        whole = (length // dilation) * dilation
        rest = length - whole
        if remainder < rest:
            return length - rest + remainder - 2 * radius * dilation
        return whole + remainder - kernel_size * dilation
    return index - radius * dilation


def neighborhood_indices(index: int, length: int, kernel_size: int, dilation: int, causal: bool) -> list[int]:
    """The neighbours of ``index`` along one axis, ascending.

    Causal: ``index``, ``index - dilation``, ... (at most ``kernel_size``, none below 0). Otherwise NATTEN's
    window of ``kernel_size`` positions ``dilation`` apart; a dilation group shorter than the kernel (where
    NATTEN raises) is seen whole.
    """
    if causal:
        return sorted(index - j * dilation for j in range(kernel_size) if index - j * dilation >= 0)
    group = list(range(index % dilation, length, dilation))
    if len(group) < kernel_size:
        return group
    start = natten_window_start(index, length, kernel_size, dilation)
    return [start + j * dilation for j in range(kernel_size)]


def neighborhood_reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``NeighborhoodAttention2D`` / ``3D`` written out: a loop over queries, each over its neighbours.

    With the layer's relative position bias (``layer.rpb``, NATTEN's), the logit of each neighbour gains
    ``rpb[h, t, u, ...]``, one table index per axis: how many neighbours (steps of ``dilation``) the key
    lies from the query along that axis, shifted by ``kernel - 1`` so that the leftmost possible key reads 0.

    Shape:
        - x: (B, *grid, C) -> (B, *grid, C), float64
    """
    sizes = tuple(x.shape[1:-1])
    rpb = getattr(layer, "rpb", None)
    table = None if rpb is None else rpb.detach().double()
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        q, k, v = _project(x[b].reshape(-1, x.shape[-1]), layer)
        for query in _grid(sizes):
            per_axis = [
                neighborhood_indices(i, n, kernel, step, causal)
                for i, n, kernel, step, causal in zip(
                    query, sizes, layer.kernel_size, layer.dilation, layer.is_causal, strict=True
                )
            ]
            keys = _product(per_axis)
            rows = [_flat(key, sizes) for key in keys]
            bias = None
            if table is not None:
                bias = torch.stack([table[(slice(None), *_rpb_entry(query, key, layer))] for key in keys], 1)
            out[(b, *query)] = _attend_one(q[_flat(query, sizes)], k[rows], v[rows], bias)
    return _linear(out, layer.proj)


def _rpb_entry(query: Sequence[int], key: Sequence[int], layer: nn.Module) -> tuple[int, ...]:
    """NATTEN's rpb index of ``key`` seen from ``query``: per axis, key - query in neighbours + kernel - 1."""
    # A neighbour shares the query's dilation group, so the division is exact.
    return tuple(
        (j - i) // step + kernel - 1
        for i, j, kernel, step in zip(query, key, layer.kernel_size, layer.dilation, strict=True)
    )


# ----------------------------------------------------------------------------------------------------------
# Index helpers
# ----------------------------------------------------------------------------------------------------------


def _product(axes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    combos: list[tuple[int, ...]] = [()]
    for values in axes:
        combos = [(*combo, value) for combo in combos for value in values]
    return combos


def _grid(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    return _product([range(n) for n in sizes])


def _flat(position: Sequence[int], sizes: Sequence[int]) -> int:
    index = 0
    for p, n in zip(position, sizes, strict=True):
        index = index * n + p
    return index
